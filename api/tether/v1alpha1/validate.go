package v1alpha1

import (
	"errors"
	"fmt"
	"regexp"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ErrInvalidPolicy marks every error returned by Validate.
var ErrInvalidPolicy = errors.New("invalid AccessPolicy")

// The patterns of the kubebuilder markers in accesspolicy_types.go, which
// the CRD schema enforces.
var (
	// DNS-1035 label: Service names.
	serviceRE = regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)
	// DNS-1123 label: namespaces.
	namespaceRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	// DNS-1123 subdomain: service account names.
	subdomainRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	// SPIFFE ID: trust domain and path segments in the characters the SPIFFE spec allows.
	spiffeIDRE = regexp.MustCompile(`^spiffe://[a-z0-9._-]+(/[a-zA-Z0-9._-]+)*$`)
	// SPIFFE trust domain name.
	trustDomainRE = regexp.MustCompile(`^[a-z0-9._-]+$`)
)

// Validate checks the policy as the CRD schema does: a name, a valid
// destination service, ports in 1-65535 without repeats, and 1 to
// MaxSources sources each setting exactly one kind (a trustDomain is a
// trust domain name), and a mode that is
// empty, Enforce or Audit. It also parses SPIFFE IDs
// with the SPIFFE library, which refuses a few IDs the schema's pattern lets
// through (such as "." or ".." segments). All problems are reported, joined;
// each wraps ErrInvalidPolicy.
func (p *AccessPolicy) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w %s: %s: %s", ErrInvalidPolicy, p.ref(), field, fmt.Sprintf(format, args...)))
	}
	if p.Name == "" {
		bad("metadata.name", "required")
	}
	if p.Namespace != "" && !validName(namespaceRE, p.Namespace, 63) {
		bad("metadata.namespace", "%q is not a valid namespace name", p.Namespace)
	}
	d := p.Spec.Destination
	switch {
	case d.Service == "":
		bad("spec.destination.service", "required")
	case !validName(serviceRE, d.Service, 63):
		bad("spec.destination.service", "%q is not a valid Service name (lower-case DNS label)", d.Service)
	}
	if len(d.Ports) > MaxPorts {
		bad("spec.destination.ports", "%d ports, at most %d allowed", len(d.Ports), MaxPorts)
	}
	seen := make(map[int32]bool, len(d.Ports))
	for i, port := range d.Ports {
		if port < 1 || port > 65535 {
			bad(fmt.Sprintf("spec.destination.ports[%d]", i), "%d is outside 1-65535", port)
		}
		if seen[port] {
			bad(fmt.Sprintf("spec.destination.ports[%d]", i), "port %d is listed twice", port)
		}
		seen[port] = true
	}
	switch p.Spec.Mode {
	case "", Enforce, Audit:
	default:
		bad("spec.mode", "%q is not a mode: use %s or %s", p.Spec.Mode, Enforce, Audit)
	}
	switch n := len(p.Spec.Sources); {
	case n == 0:
		bad("spec.sources", "at least one source is required")
	case n > MaxSources:
		bad("spec.sources", "%d sources, at most %d allowed", n, MaxSources)
	}
	for i, s := range p.Spec.Sources {
		field := fmt.Sprintf("spec.sources[%d]", i)
		kinds := 0
		if s.ServiceAccount != nil {
			kinds++
			switch sa := s.ServiceAccount; {
			case sa.Name == "":
				bad(field+".serviceAccount.name", "required")
			case !validName(subdomainRE, sa.Name, 253):
				bad(field+".serviceAccount.name", "%q is not a valid service account name", sa.Name)
			}
			if ns := s.ServiceAccount.Namespace; ns != "" && !validName(namespaceRE, ns, 63) {
				bad(field+".serviceAccount.namespace", "%q is not a valid namespace name", ns)
			}
		}
		if s.Namespace != "" {
			kinds++
			if !validName(namespaceRE, s.Namespace, 63) {
				bad(field+".namespace", "%q is not a valid namespace name", s.Namespace)
			}
		}
		if s.SpiffeID != "" {
			kinds++
			if !validName(spiffeIDRE, s.SpiffeID, 2048) {
				bad(field+".spiffeID", "%q is not a SPIFFE ID (spiffe://<trust-domain>/<path>)", s.SpiffeID)
			} else if _, err := spiffeid.FromString(s.SpiffeID); err != nil {
				bad(field+".spiffeID", "%q: %v", s.SpiffeID, err)
			}
		}
		if s.TrustDomain != "" {
			kinds++
			if !validName(trustDomainRE, s.TrustDomain, 255) {
				bad(field+".trustDomain", "%q is not a trust domain name (lower-case letters, digits, '.', '-' and '_')", s.TrustDomain)
			} else if _, err := spiffeid.TrustDomainFromString(s.TrustDomain); err != nil {
				bad(field+".trustDomain", "%q: %v", s.TrustDomain, err)
			}
		}
		if kinds != 1 {
			bad(field, "set exactly one of serviceAccount, namespace, spiffeID or trustDomain (%d set)", kinds)
		}
	}
	return errors.Join(errs...)
}

func validName(re *regexp.Regexp, s string, maxLen int) bool {
	return len(s) <= maxLen && re.MatchString(s)
}

// ref is "namespace/name" for messages.
func (p *AccessPolicy) ref() string {
	if p.Namespace == "" {
		return p.Name
	}
	return p.Namespace + "/" + p.Name
}
