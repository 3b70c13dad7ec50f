// Package xdsclient is the sidecar's side of discovery: an ADS client that
// connects to tether-discovery over mTLS with the workload's SVID,
// subscribes to its scoped configuration (Clusters, ClusterLoadAssignments,
// inbound Listeners and the "tether.names/…" name-table entries, merged
// into one table), checks every
// update, and publishes each consistent configuration as an immutable
// View. A View answers the sidecar's questions: where an outbound
// connection to a service port goes and who must serve it, whether an
// inbound caller may reach a local port, and what the DNS server answers
// for mesh names. When discovery is down the last good View stays in place.
package xdsclient
