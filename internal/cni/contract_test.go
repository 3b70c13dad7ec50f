package cni

import (
	"testing"

	"github.com/tether-mesh/tether/pkg/inject"
)

// TestPodContractMatchesInjector: the plugin does not link pkg/inject, so
// it repeats the names the injector writes; they must stay the same.
func TestPodContractMatchesInjector(t *testing.T) {
	for _, c := range []struct{ plugin, injector string }{
		{annotationRedirect, inject.AnnotationRedirect},
		{redirectCNI, inject.RedirectCNI},
		{annotationExcludeInboundPorts, inject.AnnotationExcludeInboundPorts},
		{annotationExcludeOutboundPorts, inject.AnnotationExcludeOutboundPorts},
		{annotationExcludeOutboundCIDRs, inject.AnnotationExcludeOutboundCIDRs},
		{annotationOutboundMode, inject.AnnotationOutboundMode},
		{initContainerName, inject.InitContainerName},
		{sidecarContainerName, inject.SidecarContainerName},
	} {
		if c.plugin != c.injector {
			t.Errorf("tether-cni uses %q where pkg/inject writes %q", c.plugin, c.injector)
		}
	}
}
