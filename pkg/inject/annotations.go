package inject

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/tether-mesh/tether/pkg/proxy/capture"
)

// AnnotationRedirect, with the value RedirectCNI, is how the injector in
// cni mode marks a pod whose capture rules the node's CNI plugin installs
// (tether-cni, docs/cni.md) instead of a tether-init container. tether-cni
// reads it at ADD time; it also treats a pod carrying tether-sidecar without
// tether-init as marked, since annotations can change after admission and
// containers cannot. Any other value fails the pod's network setup.
const (
	AnnotationRedirect = "tether.dev/redirect"
	RedirectCNI        = "cni"
)

// options are a pod's validated Tether annotations.
type options struct {
	excludeInbound  string // normalized, "" for none
	excludeOutbound string
	excludeCIDRs    string
	localhostPorts  string // ports the sidecar may deliver to 127.0.0.1
	inboundMode     string
	outboundMode    string
	cpu, memory     *resource.Quantity
	warnings        []string
}

// maxQuantity bounds the proxy's resources: beyond it a value is a typo.
var maxQuantity = resource.MustParse("1Ti")

var known = map[string]bool{
	AnnotationExcludeInboundPorts:  true,
	AnnotationExcludeOutboundPorts: true,
	AnnotationExcludeOutboundCIDRs: true,
	AnnotationInboundMode:          true,
	AnnotationOutboundMode:         true,
	AnnotationProxyCPU:             true,
	AnnotationProxyMemory:          true,
	AnnotationOriginalProbes:       true,
	AnnotationRedirect:             true,

	AnnotationLocalhostInboundPorts: true,
}

// sidecarPorts are the ports the sidecar itself listens on in the pod.
var sidecarPorts = map[int]string{
	capture.DefaultOutboundPort: "the sidecar's outbound capture port",
	capture.DefaultInboundPort:  "the sidecar's inbound capture port",
	capture.DefaultAdminPort:    "the sidecar's admin port",
	capture.DefaultDNSPort:      "the sidecar's DNS port",
}

// parseAnnotations validates the pod's tether.dev/ annotations. Unknown
// tether.dev/ keys are not an error (a newer injector may know them) but
// give a warning, so a typo does not pass silently.
func parseAnnotations(a map[string]string) (options, error) {
	o := options{inboundMode: "strict", outboundMode: "passthrough"}
	bad := func(key string, err error) error {
		return fmt.Errorf("%w %s=%q: %v", ErrInvalidAnnotation, key, clip(a[key]), err)
	}
	if v, ok := a[AnnotationExcludeInboundPorts]; ok {
		ports, err := capture.ParsePorts(v)
		if err != nil {
			return o, bad(AnnotationExcludeInboundPorts, err)
		}
		o.excludeInbound = joinInts(ports)
	}
	if v, ok := a[AnnotationExcludeOutboundPorts]; ok {
		ports, err := capture.ParsePorts(v)
		if err != nil {
			return o, bad(AnnotationExcludeOutboundPorts, err)
		}
		o.excludeOutbound = joinInts(ports)
	}
	if v, ok := a[AnnotationExcludeOutboundCIDRs]; ok {
		cidrs, err := capture.ParseCIDRs(v)
		if err != nil {
			return o, bad(AnnotationExcludeOutboundCIDRs, err)
		}
		s := make([]string, len(cidrs))
		for i, c := range cidrs {
			s[i] = c.String()
		}
		o.excludeCIDRs = strings.Join(s, ",")
	}
	if v, ok := a[AnnotationLocalhostInboundPorts]; ok {
		ports, err := capture.ParsePorts(v)
		if err != nil {
			return o, bad(AnnotationLocalhostInboundPorts, err)
		}
		excluded, _ := capture.ParsePorts(o.excludeInbound)
		for _, p := range ports {
			// Delivering a mesh caller to 127.0.0.1:15001 would hand it
			// the outbound listener: an open proxy with the pod's identity.
			if what, ok := sidecarPorts[p]; ok {
				return o, bad(AnnotationLocalhostInboundPorts, fmt.Errorf("port %d is %s, never an app port", p, what))
			}
			if slices.Contains(excluded, p) {
				return o, bad(AnnotationLocalhostInboundPorts, fmt.Errorf("port %d is also in %s: its inbound traffic skips the sidecar", p, AnnotationExcludeInboundPorts))
			}
		}
		o.localhostPorts = joinInts(ports)
	}
	if v, ok := a[AnnotationInboundMode]; ok {
		switch v {
		case "strict", "permissive":
			o.inboundMode = v
		default:
			return o, bad(AnnotationInboundMode, fmt.Errorf("want strict or permissive"))
		}
	}
	if v, ok := a[AnnotationOutboundMode]; ok {
		switch v {
		case "passthrough", "registry-only":
			o.outboundMode = v
		default:
			return o, bad(AnnotationOutboundMode, fmt.Errorf("want passthrough or registry-only"))
		}
	}
	for _, key := range []string{AnnotationProxyCPU, AnnotationProxyMemory} {
		v, ok := a[key]
		if !ok {
			continue
		}
		q, err := resource.ParseQuantity(strings.TrimSpace(v))
		if err != nil {
			return o, bad(key, fmt.Errorf("not a Kubernetes quantity such as 100m or 256Mi"))
		}
		if q.Sign() <= 0 {
			return o, bad(key, fmt.Errorf("must be more than zero"))
		}
		if q.Cmp(maxQuantity) > 0 {
			return o, bad(key, fmt.Errorf("too large"))
		}
		if key == AnnotationProxyCPU {
			o.cpu = &q
		} else {
			o.memory = &q
		}
	}
	var unknown []string
	for k := range a {
		if strings.HasPrefix(k, "tether.dev/") && !known[k] {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		o.warnings = append(o.warnings, fmt.Sprintf("tether: unknown annotation %s is ignored", k))
	}
	return o, nil
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

// clip shortens untrusted input quoted in a message.
func clip(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
