package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tether-mesh/tether/internal/sidecar"
	"github.com/tether-mesh/tether/pkg/inject"
	"github.com/tether-mesh/tether/pkg/proxy/capture"
)

// TestSameRulesAsTetherInit: for pods the injector injects in init mode,
// the rules tether-cni derives from the injected pod are exactly those
// `tether-sidecar init`, run with the tether-init container's arguments,
// installs (its --dry-run output, IPv6 on for both).
func TestSameRulesAsTetherInit(t *testing.T) {
	for name, c := range map[string]struct {
		annotations map[string]string
		discovery   bool
	}{
		"defaults":       {nil, true},
		"no discovery":   {nil, false},
		"registry-only":  {map[string]string{inject.AnnotationOutboundMode: "registry-only"}, true},
		"exclusions":     {map[string]string{inject.AnnotationExcludeOutboundPorts: "5432, 443", inject.AnnotationExcludeInboundPorts: "9090", inject.AnnotationExcludeOutboundCIDRs: "10.96.0.0/12, fd00:96::/64, 192.168.1.7"}, true},
		"all, no DNS":    {map[string]string{inject.AnnotationOutboundMode: "registry-only", inject.AnnotationExcludeOutboundPorts: "53", inject.AnnotationExcludeOutboundCIDRs: "10.0.0.0/8"}, false},
		"explicit modes": {map[string]string{inject.AnnotationOutboundMode: "passthrough", inject.AnnotationInboundMode: "permissive"}, true},
	} {
		t.Run(name, func(t *testing.T) {
			injected := injectInitMode(t, c.annotations, c.discovery)

			var initArgs []string
			for _, ic := range injected.Spec.InitContainers {
				if ic.Name == inject.InitContainerName {
					initArgs = ic.Args
				}
			}
			if len(initArgs) == 0 || initArgs[0] != "init" {
				t.Fatalf("tether-init args %q", initArgs)
			}
			var out, errOut bytes.Buffer
			if code := sidecar.Init(context.Background(), append(initArgs[1:], "--dry-run", "--ipv6=true"), &out, &errOut, nil); code != 0 {
				t.Fatalf("tether-sidecar %q --dry-run: exit %d: %s", initArgs, code, errOut.String())
			}

			// The plugin reads the pod as the API server serves it (JSON).
			b, err := json.Marshal(injected)
			if err != nil {
				t.Fatal(err)
			}
			var p pod
			if err := json.Unmarshal(b, &p); err != nil {
				t.Fatal(err)
			}
			cfg, err := captureConfig(&p)
			if err != nil {
				t.Fatal(err)
			}
			cfg.IPv6 = true
			rs, err := capture.Rules(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if rs.String() != out.String() {
				t.Fatalf("tether-cni's rules differ from tether-init's (%q):\ntether-cni:\n%s\ntether-init:\n%s", initArgs, rs, out.String())
			}
		})
	}
}

// injectInitMode runs the injector (init mode) on a pod with annotations
// and applies its patch as the API server would.
func injectInitMode(t *testing.T, annotations map[string]string, discovery bool) *corev1.Pod {
	t.Helper()
	cfg := inject.DefaultConfig("registry.invalid/tether:test")
	if !discovery {
		cfg.DiscoveryAddr = inject.DiscoveryOff
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	in := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", Annotations: annotations},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app"}}},
	}
	res, err := cfg.Mutate(in, "shop")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	pj, err := res.Patch.JSON()
	if err != nil {
		t.Fatal(err)
	}
	patch, err := jsonpatch.DecodePatch(pj)
	if err != nil {
		t.Fatal(err)
	}
	out, err := patch.Apply(doc)
	if err != nil {
		t.Fatal(err)
	}
	var injected corev1.Pod
	if err := json.Unmarshal(out, &injected); err != nil {
		t.Fatal(err)
	}
	return &injected
}
