package cni

import (
	"fmt"
	"slices"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/tether-mesh/tether/pkg/proxy/capture"
)

// The pod contract, as pkg/inject writes it (a test checks that these
// match; the plugin does not link pkg/inject, which links the Kubernetes
// API types).
const (
	annotationRedirect             = "tether.dev/redirect"
	redirectCNI                    = "cni"
	annotationExcludeInboundPorts  = "tether.dev/exclude-inbound-ports"
	annotationExcludeOutboundPorts = "tether.dev/exclude-outbound-ports"
	annotationExcludeOutboundCIDRs = "tether.dev/exclude-outbound-cidrs"
	annotationOutboundMode         = "tether.dev/outbound-mode"
	initContainerName              = "tether-init"
	sidecarContainerName           = "tether-sidecar"
)

// meshed reports whether the plugin must capture the pod's traffic: the
// injector marked it with tether.dev/redirect=cni, or it carries the
// tether-sidecar container without tether-init (what the injector's cni
// mode produces). The containers are checked too because a pod's
// annotations can be changed after admission and its containers cannot:
// removing the annotation must not leave an injected pod uncaptured. A
// marker with another value is an error, not a silent no-op.
func meshed(p *pod) (bool, error) {
	if v, ok := p.Metadata.Annotations[annotationRedirect]; ok && v != redirectCNI {
		return false, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("tether-cni: annotation %s=%q: the only value is %q (set by tether-injector in cni mode)", annotationRedirect, clip(v), redirectCNI), "")
	}
	if p.Metadata.Annotations[annotationRedirect] == redirectCNI {
		return true, nil
	}
	return p.has(sidecarContainerName) && !p.has(initContainerName), nil
}

func (p *pod) has(name string) bool {
	is := func(c container) bool { return c.Name == name }
	return slices.ContainsFunc(p.Spec.InitContainers, is) || slices.ContainsFunc(p.Spec.Containers, is)
}

func (p *pod) sidecar() (container, bool) {
	for _, c := range append(slices.Clone(p.Spec.InitContainers), p.Spec.Containers...) {
		if c.Name == sidecarContainerName {
			return c, true
		}
	}
	return container{}, false
}

// captureConfig is the capture.Config `tether-sidecar init` gets for the
// pod from the injector: the defaults; DNS captured when the sidecar
// serves DNS (it has --discovery, as the injector gives init
// --capture-dns then); UDP egress rejected in registry-only mode; the
// exclusions of the annotations, parsed by the same functions init's flags
// use. IPv6 is decided in the pod's namespace (see ipv6Plan).
func captureConfig(p *pod) (capture.Config, error) {
	c := capture.DefaultConfig()
	side, _ := p.sidecar()
	c.CaptureDNS = slices.Contains(side.Args, "--discovery")
	a := p.Metadata.Annotations
	bad := func(key string, err error) error {
		return types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("tether-cni: invalid annotation %s=%q: %v; fix the pod's annotation (the pod is not started uncaptured)", key, clip(a[key]), err), "")
	}
	var err error
	if c.ExcludeInboundPorts, err = capture.ParsePorts(a[annotationExcludeInboundPorts]); err != nil {
		return c, bad(annotationExcludeInboundPorts, err)
	}
	if c.ExcludeOutboundPorts, err = capture.ParsePorts(a[annotationExcludeOutboundPorts]); err != nil {
		return c, bad(annotationExcludeOutboundPorts, err)
	}
	if c.ExcludeOutboundCIDRs, err = capture.ParseCIDRs(a[annotationExcludeOutboundCIDRs]); err != nil {
		return c, bad(annotationExcludeOutboundCIDRs, err)
	}
	switch v, ok := a[annotationOutboundMode]; {
	case !ok || v == "passthrough":
	case v == "registry-only":
		c.RejectUDP = true
	default:
		return c, bad(annotationOutboundMode, fmt.Errorf("want passthrough or registry-only"))
	}
	if err := c.Validate(); err != nil {
		return c, types.NewError(types.ErrInvalidNetworkConfig, "tether-cni: capture config", err.Error())
	}
	return c, nil
}

// clip shortens untrusted input quoted in an error message.
func clip(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
