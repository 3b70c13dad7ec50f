// Package xds serves the discovery registry to sidecars over ADS (xDS v3,
// gRPC, mTLS), scoped to the caller's SPIFFE ID: the services it may reach
// as Clusters and ClusterLoadAssignments (verifying the serving identities
// by URI SAN), and inbound Listeners with the RBAC network filter for the
// services it serves. Snapshots are versioned per resource type by content,
// so a change reaches only the sidecars whose view it changes.
package xds
