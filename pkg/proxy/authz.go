package proxy

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ErrDenied wraps every authorization refusal.
var ErrDenied = errors.New("denied")

// DeniedError is a refusal that names the policy rule that decided. It
// wraps ErrDenied; Authorizers return it so that the denial metric and the
// access log can name the rule.
type DeniedError struct {
	// Rule is the rule that decided, worded for logs, e.g. "allow-list" or
	// "no AccessPolicy allows spiffe://cluster.local/ns/default/sa/web to
	// default/db:5432". It labels tether_sidecar_authz_denials_total.
	Rule string
	// Detail adds context for the log; optional.
	Detail string
}

func (e *DeniedError) Error() string {
	if e.Detail == "" {
		return "denied by " + e.Rule
	}
	return "denied by " + e.Rule + ": " + e.Detail
}

// Unwrap returns ErrDenied.
func (e *DeniedError) Unwrap() error { return ErrDenied }

// ruleOf is the rule a denial error names, for the metric.
func ruleOf(err error) string {
	if de, ok := errors.AsType[*DeniedError](err); ok && de.Rule != "" {
		return de.Rule
	}
	return "authorizer"
}

// Authorizer decides whether the workload src may reach the local app on
// port. It returns nil to allow, or an error wrapping ErrDenied that says
// which rule decided. It must be safe for concurrent use.
type Authorizer func(src spiffeid.ID, port uint16) error

// AuditAuthorizer is an Authorizer that also reports audit mode: when it
// allows (err nil) while a policy or default in audit mode would deny,
// auditRule is that would-be rule, and the connection passes, logged with
// decision "audit-deny" and counted in
// tether_sidecar_authz_audit_denials_total. It must be safe for
// concurrent use.
type AuditAuthorizer func(src spiffeid.ID, port uint16) (auditRule string, err error)

// AllowList is a static authorization table: SPIFFE ID → ports (empty
// means every port). It is the policy until discovery provides one.
type AllowList map[spiffeid.ID][]uint16

// Authorizer returns the allow-list as an Authorizer.
func (l AllowList) Authorizer() Authorizer {
	return func(src spiffeid.ID, port uint16) error {
		ports, ok := l[src]
		if !ok {
			return &DeniedError{Rule: "allow-list", Detail: src.String() + " is not on the allow-list"}
		}
		if len(ports) > 0 && !slices.Contains(ports, port) {
			return &DeniedError{Rule: "allow-list", Detail: fmt.Sprintf("%s may not reach port %d", src, port)}
		}
		return nil
	}
}

// AllowAll allows every authenticated peer of the trust domain.
func AllowAll(spiffeid.ID, uint16) error { return nil }

// ParseAllow parses one allow-list entry, "spiffe://td/path" or
// "spiffe://td/path=8080,8443", into l.
func (l AllowList) ParseAllow(s string) error {
	idPart, portPart, hasPorts := strings.Cut(s, "=")
	id, err := spiffeid.FromString(strings.TrimSpace(idPart))
	if err != nil {
		return fmt.Errorf("allow %q: %v", s, err)
	}
	if !hasPorts {
		l[id] = nil
		return nil
	}
	ports, err := ParsePorts(portPart)
	if err != nil {
		return fmt.Errorf("allow %q: %v", s, err)
	}
	if len(ports) == 0 {
		return fmt.Errorf("allow %q: no ports after '='", s)
	}
	l[id] = append(l[id], ports...)
	return nil
}

// ParsePorts parses a comma-separated list of TCP ports.
func ParsePorts(s string) ([]uint16, error) {
	var out []uint16
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.ParseUint(f, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("port %q: want a number from 1 to 65535", f)
		}
		out = append(out, uint16(n))
	}
	return out, nil
}
