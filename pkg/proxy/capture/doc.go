// Package capture installs and removes the transparent-capture rules that
// `tether-sidecar init` puts into a pod's network namespace, and tells the
// sidecar where a captured connection was going (OriginalDst).
//
// # What is captured
//
// All rules live in the nat table, in chains named TETHER_*, reached from the
// built-in chains by one jump each:
//
//	PREROUTING -p tcp           → TETHER_INBOUND → TETHER_IN_REDIRECT: REDIRECT to InboundPort (15006)
//	OUTPUT     -p tcp           → TETHER_OUTPUT  → TETHER_REDIRECT:    REDIRECT to OutboundPort (15001)
//	OUTPUT     -p udp --dport 53 → TETHER_DNS:                          REDIRECT to DNSPort (15053)
//	(TCP to port 53 goes from TETHER_OUTPUT to TETHER_DNS too)
//
// Not captured:
//   - anything sent by the proxy's UID or GID (1337), so the sidecar's own
//     upstream connections and DNS forwarding leave the pod as they are
//     (but see the hairpin below);
//   - connections from DeliverySource (127.0.0.6; DeliverySource6, ::6, for
//     IPv6) out of lo: the sidecar's deliveries of inbound traffic to the
//     application at the pod IP;
//   - loopback: traffic out of lo or to 127.0.0.0/8 (::1 for IPv6);
//   - inbound connections to the proxy's own ports (InboundPort, OutboundPort,
//     DNSPort, AdminPort 15020), so kubelet probes, which the injector rewrites
//     to the admin port, and the proxy itself work, plus ExcludeInboundPorts;
//   - outbound connections to ExcludeOutboundPorts or ExcludeOutboundCIDRs.
//     These exclusions apply to TCP capture only: DNS capture is governed by
//     CaptureDNS alone.
//
// The sidecar must therefore listen on 127.0.0.1:OutboundPort (REDIRECT in
// OUTPUT rewrites the destination to the loopback address), on all addresses
// (or the pod IP) at InboundPort (REDIRECT in PREROUTING rewrites it to the
// address of the interface the packet came in on), and on 127.0.0.1:DNSPort
// for UDP and TCP. It must deliver inbound traffic to the application either
// over loopback or at the pod IP from DeliverySource: a connection of its own
// to the pod IP from any other address is the hairpin below, and comes back
// to the inbound listener.
//
// # Hairpin: a pod calling its own IP
//
// When the application connects to its own pod IP the packets go out of lo,
// so the connection is not captured and goes straight to the application:
// both ends are the same workload, there is no network hop to protect and no
// other identity to check. When the proxy (UID/GID 1337) connects to its own
// pod IP, which happens when a pod calls a service that it backs itself, the
// connection is sent to TETHER_INBOUND, so it reaches the inbound listener and
// gets the same mTLS termination and policy check as a call from another pod
// (unless the port is excluded from inbound capture). The proxy's deliveries
// to the application at the pod IP are told apart by their source address,
// DeliverySource, which the proxy binds for them: its other connections to
// the pod IP come from the pod IP, the source the kernel picks. Without that,
// an application that listens on its pod IP only could not be reached
// through the sidecar. (For other processes the rule changes nothing: what
// they send out of lo is not captured anyway.)
//
// # Applying and removing
//
// Apply reads the nat table with iptables-save and writes one
// `iptables-restore --noflush` transaction that (re)creates the TETHER chains,
// fills them, removes stale TETHER chains and the jumps a previous Apply left,
// and adds the jumps once. Rules outside the TETHER chains and jumps are never
// touched. Applying twice gives the same table; applying a different Config
// replaces the old rules. Cleanup removes every TETHER_* chain and every rule
// that jumps to one, in one transaction, and is a no-op when there are none.
// Rules returns the transaction Apply would write into an empty nat table, for
// --dry-run and golden tests. Verify reads the tables back and checks that
// the TETHER chains and the jumps into them are exactly what Apply installs
// (the CNI plugin's CHECK). The TETHER_ prefix is reserved for this package.
//
// # Which iptables
//
// The package runs whatever iptables-save and iptables-restore (and
// ip6tables-save/ip6tables-restore) are first on PATH. In the Debian-based
// image these are iptables-nft, which works on every kernel Kubernetes
// supports; the kernel applies nft and legacy rules alike within the pod's
// namespace. To use the legacy backend instead, put iptables-legacy on PATH
// first under the plain names (update-alternatives --set iptables
// /usr/sbin/iptables-legacy on Debian). Cleanup must use the same backend as
// Apply did.
//
// # IPv6
//
// With Config.IPv6 set, the same chains are installed with ip6tables (loopback
// ::1, IPv6 entries of ExcludeOutboundCIDRs), and the sidecar must also listen
// on [::1]:OutboundPort, [::]:InboundPort and [::1]:DNSPort; OriginalDst
// handles both families. The IPv6 delivery source is DeliverySource6 (::6),
// which AddDeliverySource6 puts on lo (Linux has no IPv6 loopback range, so
// Istio does the same). `tether-sidecar init` sets IPv6 whenever the pod has
// IPv6 (PodIPv6, IPv6Enabled) and fails when the pod has an address other
// than link-local and the rules cannot be installed. IPv6 entries of
// ExcludeOutboundCIDRs are ignored while it is off.
//
// # UDP
//
// With Config.RejectUDP (registry-only egress), the filter table gets a chain
// TETHER_UDP, reached from OUTPUT for UDP, that rejects the application's UDP
// leaving the pod (the sender's write fails with EPERM): the sidecar proxies
// TCP only. The proxy's own UDP, traffic out of lo or to loopback (which
// includes DNS that the nat rules sent to DNSPort), DNS to port 53 when
// CaptureDNS is off, and ExcludeOutboundCIDRs and ExcludeOutboundPorts are let
// through. Apply and Cleanup manage the filter chain like the nat ones.
//
// # Privileges
//
// Apply and Cleanup need CAP_NET_ADMIN in the pod's namespace (the tether-init
// container); Check is a preflight that says what is missing in words an
// operator can act on.
package capture
