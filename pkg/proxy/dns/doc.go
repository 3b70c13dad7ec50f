// Package dns is the sidecar's DNS server (:15053, UDP and TCP).
//
// It answers A, AAAA and SRV queries for mesh services from discovery data
// (a [Table]), honouring the pod's resolv.conf search rules; answers NXDOMAIN
// for mesh services the pod may not reach (a Table's Reachable false, or an
// upstream answer holding a [HiddenTable] address; unless configured to
// leave the refusal to the proxy); forwards everything else to the pod's original
// resolvers with a TTL-bounded cache and TCP fallback; and remembers which
// addresses answered egress-allowed names so that registry-only mode can let
// connections to exactly those through ([Server.AllowedIP]).
//
// Queries flow through a small chain of handlers: checks on the query shape,
// mesh names, then egress recording around the hidden-address check around
// the cached forwarder.
package dns
