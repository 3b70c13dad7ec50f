// Package flows is the observed-traffic model shared by the sidecar, which
// summarises the connections it saw, tether-discovery, which keeps a
// bounded mesh-wide edge table of what sidecars report, and the CLI
// (`tether policy graph --observed`, `tether policy suggest`), which reads
// that table from every discovery replica's GET /debug/flows.
//
// An Edge is keyed by who called (the caller's verified SPIFFE ID), what
// it reached (a service port, or a workload port no Service covers), the
// decision and the rule that made it. Counts and times are merged across
// the two ends that saw the connection and across discovery replicas.
package flows

import (
	"time"
)

// Decision is what the sidecar did with a connection.
type Decision string

// The decisions an Edge records.
const (
	// Allow: the enforced policy allowed the connection.
	Allow Decision = "allow"
	// Deny: the enforced policy refused it.
	Deny Decision = "deny"
	// AuditDeny: the connection passed, but the policy in audit mode would
	// have refused it (see docs/policy.md, "Audit mode").
	AuditDeny Decision = "audit-deny"
)

// Valid reports whether d is one of the decisions.
func (d Decision) Valid() bool {
	switch d {
	case Allow, Deny, AuditDeny:
		return true
	}
	return false
}

// Side says which end of a connection saw it.
type Side string

// The sides.
const (
	// Caller: the sidecar of the workload that opened the connection.
	Caller Side = "caller"
	// Destination: the sidecar of the workload that was called.
	Destination Side = "destination"
)

// Key identifies an Edge.
type Key struct {
	// Source is the caller's SPIFFE ID.
	Source string `json:"source"`
	// Namespace and Service name the destination Service; Service is empty
	// for a connection to a workload port no Service covers, which then
	// names the called workload's SPIFFE ID in Workload.
	Namespace string `json:"namespace"`
	Service   string `json:"service,omitempty"`
	Workload  string `json:"workload,omitempty"`
	// Port is the service port (the target port when Service is empty).
	Port uint16 `json:"port"`
	// Decision and Rule are what decided, as the sidecar logged them.
	Decision Decision `json:"decision"`
	Rule     string   `json:"rule"`
	// Side is the end that saw it.
	Side Side `json:"side"`
}

// Edge is one Key with what was seen of it.
type Edge struct {
	Key
	// Connections counts the connections seen.
	Connections uint64 `json:"connections"`
	// FirstSeen and LastSeen bound when they were seen (UTC).
	FirstSeen time.Time `json:"firstSeen"`
	LastSeen  time.Time `json:"lastSeen"`
}

// Table is the body of tether-discovery's GET /debug/flows: one replica's
// edge table.
type Table struct {
	// Time is when the table was read; Replica names the replica (its pod
	// or host name).
	Time    time.Time `json:"time"`
	Replica string    `json:"replica"`
	// Edges are sorted by Key (source, namespace, service, workload,
	// port, decision, rule, side).
	Edges []Edge `json:"edges"`
	// Dropped counts the edges refused because the table was full, and
	// DroppedReports the reports refused (malformed, or claiming what the
	// reporter cannot have seen). A non-zero Dropped means the table is
	// incomplete: a suggestion made from it may miss calls.
	Dropped        uint64 `json:"dropped"`
	DroppedReports uint64 `json:"droppedReports"`
	// Unsummed counts the connections sidecars saw but could not
	// summarise (their summary between two reports was full); like
	// Dropped, non-zero means the table is incomplete.
	Unsummed uint64 `json:"unsummed"`
	// MaxEdges is the table's bound.
	MaxEdges int `json:"maxEdges"`
}
