package discovery

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/api/tether/v1alpha1"
)

// RemoteAddressRange is where the Registry allocates the virtual address
// of a RemoteService that declares none: 240.240.0.0/16, in the reserved
// 240.0.0.0/4 (never a Kubernetes ClusterIP, a pod IP or an address on the
// internet). Linux pods send to it like any address (the capture rules
// redirect it to the sidecar before it leaves the pod). IPv6 addresses
// are not allocated: declare one in Addresses for IPv6-only callers.
var RemoteAddressRange = netip.MustParsePrefix("240.240.0.0/16")

// ValidateRemoteService checks rs on its own, as the Registry does for a
// mesh of trust domain td: a name and namespace that are DNS labels (an
// empty namespace means "default"), a foreign trust domain, valid
// addresses, unique ports, and at least one endpoint with an address, a
// port and an identity in rs.TrustDomain. It returns every problem, or
// nil.
func ValidateRemoteService(td spiffeid.TrustDomain, rs *RemoteService) []string {
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	if !dnsLabel(serviceRE, rs.Key.Name) {
		bad("name %q is not a valid Service name (lower-case DNS label starting with a letter)", rs.Key.Name)
	}
	if ns := cmpOr(rs.Key.Namespace, "default"); !dnsLabel(namespaceRE, ns) {
		bad("namespace %q is not a valid namespace name (lower-case DNS label)", ns)
	}
	switch {
	case rs.TrustDomain.IsZero():
		bad("trustDomain is missing: the other mesh's SPIFFE trust domain")
	case rs.TrustDomain == td:
		bad("trustDomain %s is this mesh's own: declare a Service of this mesh instead of a RemoteService", td.Name())
	}
	for i, a := range rs.Addresses {
		if reason := badVirtualAddr(a); reason != "" {
			bad("addresses[%d]: %s", i, reason)
		}
	}
	checkPorts(rs.Ports, bad)
	if len(rs.Ports) == 0 {
		bad("ports: at least one port is required")
	}
	if len(rs.Endpoints) == 0 {
		bad("endpoints: at least one endpoint (a sidecar of the other mesh) is required")
	}
	// The CRD's bounds.
	for _, n := range []struct {
		what     string
		got, max int
	}{
		{"ports", len(rs.Ports), v1alpha1.MaxRemotePorts},
		{"endpoints", len(rs.Endpoints), v1alpha1.MaxRemoteEndpoints},
		{"addresses", len(rs.Addresses), v1alpha1.MaxRemoteAddresses},
	} {
		if n.got > n.max {
			bad("%s: %d listed, at most %d allowed", n.what, n.got, n.max)
		}
	}
	for i, e := range rs.Endpoints {
		if !e.Addr.IsValid() || e.Addr.IsUnspecified() || e.Addr.IsMulticast() {
			bad("endpoints[%d]: address is missing or not a unicast IP address", i)
		}
		if e.Port == 0 {
			bad("endpoints[%d]: port is missing: the port of the other mesh's sidecar's tether/1 inbound listener (1-65535)", i)
		}
		switch {
		case e.ID.IsZero():
			bad("endpoints[%d]: identity is missing: the SPIFFE ID the endpoint must present, spiffe://<trustDomain>/...", i)
		case !rs.TrustDomain.IsZero() && e.ID.TrustDomain() != rs.TrustDomain:
			bad("endpoints[%d]: identity %s is outside trust domain %s", i, e.ID, rs.TrustDomain.Name())
		}
	}
	return errs
}

// badVirtualAddr says why a cannot be a virtual address callers' sidecars
// capture, or "".
func badVirtualAddr(a netip.Addr) string {
	switch {
	case !a.IsValid():
		return "not a valid IP address"
	case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(), a.IsLinkLocalUnicast(), a.Unmap() == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Sprintf("%s is not a unicast address a sidecar captures (unspecified, loopback, multicast, link-local and broadcast are not)", a)
	}
	return ""
}

// checkPorts reports the problems of ports to bad and sets each zero
// TargetPort to its Port.
func checkPorts(ports []Port, bad func(format string, args ...any)) {
	seen := make(map[uint16]bool)
	names := make(map[string]bool)
	for i := range ports {
		p := &ports[i]
		if p.Port == 0 {
			bad("ports[%d]: port 0 is outside 1-65535", i)
		}
		if seen[p.Port] {
			bad("ports[%d]: port %d is listed twice", i, p.Port)
		}
		seen[p.Port] = true
		if p.TargetPort == 0 {
			p.TargetPort = p.Port
		}
		if p.Name != "" {
			if !dnsLabel(serviceRE, p.Name) {
				bad("ports[%d]: name %q is not a valid port name (lower-case DNS label)", i, p.Name)
			}
			if names[p.Name] {
				bad("ports[%d]: name %q is used twice", i, p.Name)
			}
			names[p.Name] = true
		}
	}
}

// addRemoteServices checks the remote services of st and adds those that
// may be served to services (sorted by key, indexed by index), returning
// the refused ones. A remote service that does not validate, or is
// listed twice, is reported to bad (the whole State is invalid, as for a
// bad Service). One that is valid but cannot be served without taking
// something from this mesh is refused, and the rest of the State goes on:
// its name is a Service's (the local Service wins), or an address it
// declares, or one of its endpoints, is already an address of another
// service (a declared address, a ClusterIP, an endpoint), which would let
// it capture that service's callers. Then the remote services without a
// declared address get one from RemoteAddressRange (see allocate).
func (r *Registry) addRemoteServices(st *State, services []Service, index map[ServiceKey]int, bad func(format string, args ...any)) ([]Service, []Refusal) {
	refused := slices.Clone(st.Refused)
	remotes := make([]RemoteService, 0, len(st.RemoteServices))
	seen := make(map[ServiceKey]bool)
	for i := range st.RemoteServices {
		rs := st.RemoteServices[i].clone()
		rs.Key.Namespace = cmpOr(rs.Key.Namespace, "default")
		ref := "remote service " + rs.Key.String()
		if rs.Key.Name == "" {
			ref = fmt.Sprintf("remoteServices[%d]", i)
		}
		if errs := ValidateRemoteService(r.td, &rs); len(errs) > 0 {
			for _, e := range errs {
				bad("%s: %s", ref, e)
			}
			continue
		}
		if seen[rs.Key] {
			bad("%s is listed twice", ref)
			continue
		}
		seen[rs.Key] = true
		remotes = append(remotes, rs)
	}
	slices.SortFunc(remotes, func(a, b RemoteService) int { return compareKeys(a.Key, b.Key) })

	// Every address local services answer to: a remote service may take
	// none of them, nor one another remote service took before it.
	taken := make(map[netip.Addr]ServiceKey)
	takenEP := make(map[netip.AddrPort]ServiceKey)
	for _, s := range services {
		for _, a := range s.ClusterIPs {
			taken[a.Unmap()] = s.Key
		}
		for _, e := range s.Endpoints {
			taken[e.Addr.Unmap()] = s.Key // a headless service's DNS answer
			for _, p := range s.Ports {
				takenEP[netip.AddrPortFrom(e.Addr.Unmap(), cmp0(e.Port, p.TargetPort))] = s.Key
			}
		}
	}
	var accepted []RemoteService
	for _, rs := range remotes {
		if _, dup := index[rs.Key]; dup {
			refused = append(refused, Refusal{Key: rs.Key, Cause: v1alpha1.RemoteServiceReasonNameConflict,
				Reason: fmt.Sprintf("a Service %s of this mesh has the name; the Service keeps it (rename the RemoteService)", rs.Key)})
			continue
		}
		if cause, reason := remoteConflict(&rs, taken, takenEP); reason != "" {
			refused = append(refused, Refusal{Key: rs.Key, Cause: cause, Reason: reason})
			continue
		}
		for _, a := range rs.Addresses {
			taken[a.Unmap()] = rs.Key
		}
		for _, e := range rs.Endpoints {
			takenEP[netip.AddrPortFrom(e.Addr.Unmap(), e.Port)] = rs.Key
		}
		accepted = append(accepted, rs)
	}
	for i := range accepted {
		if len(accepted[i].Addresses) == 0 {
			a, ok := allocate(accepted[i].Key, taken)
			if !ok {
				refused = append(refused, Refusal{Key: accepted[i].Key, Cause: v1alpha1.RemoteServiceReasonAddressRangeFull,
					Reason: fmt.Sprintf("no free address left in %s: declare its addresses", RemoteAddressRange)})
				continue
			}
			taken[a] = accepted[i].Key
			accepted[i].Addresses = []netip.Addr{a}
		}
		services = append(services, accepted[i].service())
	}
	slices.SortFunc(refused, func(a, b Refusal) int { return compareKeys(a.Key, b.Key) })
	return services, refused
}

// remoteConflict says which address of rs another service already has
// (the v1alpha1 reason and the message), or "", "".
func remoteConflict(rs *RemoteService, taken map[netip.Addr]ServiceKey, takenEP map[netip.AddrPort]ServiceKey) (cause, reason string) {
	for _, a := range rs.Addresses {
		if k, ok := taken[a.Unmap()]; ok {
			return v1alpha1.RemoteServiceReasonAddressConflict,
				fmt.Sprintf("address %s is already an address of %s; callers of that service would reach the other mesh instead", a, k)
		}
	}
	for _, e := range rs.Endpoints {
		if k, ok := takenEP[netip.AddrPortFrom(e.Addr.Unmap(), e.Port)]; ok {
			return v1alpha1.RemoteServiceReasonEndpointConflict,
				fmt.Sprintf("endpoint %s is already an endpoint of %s", netip.AddrPortFrom(e.Addr, e.Port), k)
		}
	}
	return "", ""
}

func cmp0(a, b uint16) uint16 {
	if a != 0 {
		return a
	}
	return b
}

// allocate returns the virtual address of a remote service named key that
// declares none: the address of RemoteAddressRange at an offset taken from
// the SHA-256 of "<namespace>/<name>" (never the range's first or last
// address), or, while that one is taken, the next free one. Every
// discovery replica given the same services allocates the same addresses;
// a remote service keeps its address as long as no other name hashes to
// it before it in key order. It returns false when the range is full.
func allocate(key ServiceKey, taken map[netip.Addr]ServiceKey) (netip.Addr, bool) {
	sum := sha256.Sum256([]byte(key.Namespace + "/" + key.Name))
	size := uint32(1) << (32 - RemoteAddressRange.Bits()) // 65536
	base := binary.BigEndian.Uint32(RemoteAddressRange.Addr().AsSlice())
	off := binary.BigEndian.Uint32(sum[:4]) % (size - 2)
	for range size - 2 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], base+1+off)
		a := netip.AddrFrom4(b)
		if _, ok := taken[a]; !ok {
			return a, true
		}
		off = (off + 1) % (size - 2)
	}
	return netip.Addr{}, false
}

// service is rs as a Service of the snapshot.
func (rs *RemoteService) service() Service {
	s := Service{Key: rs.Key, Remote: rs.TrustDomain, ClusterIPs: rs.Addresses, Ports: rs.Ports}
	for _, e := range rs.Endpoints {
		s.Endpoints = append(s.Endpoints, Endpoint{Addr: e.Addr, Port: e.Port, ID: e.ID})
	}
	return s
}

// RefusedRemoteServices returns the remote services left out of this
// snapshot, by the source or by the Registry, sorted by key.
func (s *Snapshot) RefusedRemoteServices() []Refusal { return slices.Clone(s.refused) }

// RemoteServices returns the services of the snapshot that are remote
// services (Service.Remote set), sorted by key.
func (s *Snapshot) RemoteServices() []Service {
	var out []Service
	for _, svc := range s.services {
		if !svc.Remote.IsZero() {
			out = append(out, svc)
		}
	}
	return out
}

// String is "<namespace>/<name>: <reason>".
func (f Refusal) String() string { return f.Key.String() + ": " + f.Reason }

// NewRefusals returns the refusals of next that prev does not hold, for
// logging each refusal once.
func NewRefusals(prev, next []Refusal) []Refusal {
	var out []Refusal
	for _, f := range next {
		if !slices.Contains(prev, f) {
			out = append(out, f)
		}
	}
	return out
}

// LogRefusals logs at Warn each remote service next refuses that prev
// did not (prev may be nil), so a refusal is logged once, not at every
// update.
func LogRefusals(log *slog.Logger, prev, next *Snapshot) {
	var before []Refusal
	if prev != nil {
		before = prev.refused
	}
	for _, f := range NewRefusals(before, next.refused) {
		log.Warn("remote service refused; it is not served", slog.String("remote_service", f.Key.String()), slog.String("reason", f.Reason))
	}
}
