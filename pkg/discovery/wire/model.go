package wire

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ServiceKey names a service: its namespace and name.
type ServiceKey struct {
	Namespace, Name string
}

// String returns "namespace/name".
func (k ServiceKey) String() string { return k.Namespace + "/" + k.Name }

// WorkloadID returns spiffe://<td>/ns/<namespace>/sa/<serviceAccount>, the
// identity of a Kubernetes-style workload.
func WorkloadID(td spiffeid.TrustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	id, err := spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity of %s/%s: %w", namespace, serviceAccount, err)
	}
	return id, nil
}

// ParseWorkloadID returns the namespace and service account of a
// Kubernetes workload ID (spiffe://<td>/ns/<ns>/sa/<sa>), and false for any
// other ID.
func ParseWorkloadID(id spiffeid.ID) (ns, sa string, ok bool) {
	rest, ok := strings.CutPrefix(id.Path(), "/ns/")
	if !ok {
		return "", "", false
	}
	ns, sa, ok = strings.Cut(rest, "/sa/")
	if !ok || ns == "" || sa == "" || strings.Contains(ns, "/") || strings.Contains(sa, "/") {
		return "", "", false
	}
	return ns, sa, true
}

// WorkloadNamespace returns the namespace of a Kubernetes workload ID
// (spiffe://<td>/ns/<ns>/sa/<sa>), and false for any other ID.
func WorkloadNamespace(id spiffeid.ID) (string, bool) {
	ns, _, ok := ParseWorkloadID(id)
	return ns, ok
}

// ChooseForPod makes PodChains' choice among chains of any type: those
// whose sorted addresses (chainAddrs) list one of addrs, or all of them if
// none does.
func ChooseForPod[C any](chains []C, chainAddrs func(C) []netip.Addr, addrs []netip.Addr) []C {
	var mine []C
	for _, c := range chains {
		if slices.ContainsFunc(addrs, func(a netip.Addr) bool {
			_, ok := slices.BinarySearchFunc(chainAddrs(c), a.Unmap(), netip.Addr.Compare)
			return ok
		}) {
			mine = append(mine, c)
		}
	}
	if len(mine) == 0 {
		return chains
	}
	return mine
}

// Default is what applies to a service that no AccessPolicy names.
type Default int

const (
	// AllowMesh lets every workload of the trust domain in.
	AllowMesh Default = iota + 1
	// SameNamespace lets in only the workloads of the service's namespace.
	SameNamespace
	// Deny lets nobody in.
	Deny
)

var defaultNames = map[Default]string{
	AllowMesh:     "allow-mesh",
	SameNamespace: "same-namespace",
	Deny:          "deny",
}

// String returns the flag and annotation spelling of d.
func (d Default) String() string {
	if s, ok := defaultNames[d]; ok {
		return s
	}
	return fmt.Sprintf("Default(%d)", int(d))
}

// Valid reports whether d is one of the defaults.
func (d Default) Valid() bool {
	_, ok := defaultNames[d]
	return ok
}

// ErrUnknownDefault is returned by ParseDefault for a value it does not know.
var ErrUnknownDefault = errors.New("unknown default policy")

// ParseDefault parses "allow-mesh", "same-namespace" or "deny".
func ParseDefault(s string) (Default, error) {
	for d, name := range defaultNames {
		if s == name {
			return d, nil
		}
	}
	return 0, fmt.Errorf("%w %q: use allow-mesh, same-namespace or deny", ErrUnknownDefault, s)
}

// Decision is the outcome of Engine.Decide and the rule that produced it,
// worded for logs.
type Decision struct {
	// Allowed is the enforced decision: the connection passes.
	Allowed bool
	// Rule is the rule that decided Allowed.
	Rule string
	// AuditDenied is set when Allowed is but the would-be decision (with
	// every policy and default in audit mode enforcing) denies: the
	// connection passes and is logged and counted as "audit-deny".
	AuditDenied bool
	// AuditRule is the would-be rule that denies, when AuditDenied.
	AuditRule string
}
