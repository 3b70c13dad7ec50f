// Package wire is what tether-discovery and its sidecars must agree on:
// the names of the resources and name-table entries on the xDS wire, the
// node metadata a sidecar reports, the principal regexes, and the words
// they are made of (service keys, workload IDs, inbound defaults and
// decisions).
//
// It links neither Kubernetes nor the xDS server, so that a sidecar, which
// only reads what discovery sends, carries neither (see docs/BENCHMARKS.md,
// "Memory per extra sidecar").
package wire
