package xds

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/anypb"

	discoveryv1 "github.com/tether-mesh/tether/api/discovery/v1"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// hiddenKey keys HiddenID. It never leaves the process: the ids of a
// discovery replica are its own, and a restart changes them (sidecars
// then reconnect and get the whole table anyway).
var hiddenKey = func() []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic(fmt.Sprintf("xds: random key for hidden names: %v", err))
	}
	return k
}()

// HiddenID is the id of the name-table entry of service key when a caller
// may reach it on no port: an HMAC-SHA-256 of "<namespace>/<name>" under a
// per-process secret, truncated to 16 bytes. Unlike a plain hash of the
// name, it cannot be computed from a guessed name without the secret.
func HiddenID(key discovery.ServiceKey) []byte {
	m := hmac.New(sha256.New, hiddenKey)
	m.Write([]byte(key.Namespace + "/" + key.Name))
	return m.Sum(nil)[:wire.HiddenIDLen]
}

// hiddenAddrs are the addresses a hidden entry of svc carries: its
// ClusterIPs, or a headless service's endpoint addresses, as sorted
// unique IP literals.
func hiddenAddrs(svc *discovery.Service) []string {
	var out []string
	for _, a := range svc.ClusterIPs {
		out = append(out, a.String())
	}
	if len(svc.ClusterIPs) == 0 {
		for _, e := range svc.Endpoints {
			out = append(out, e.Addr.String())
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func nameTEC(name string, nt *discoveryv1.NameTable) *corev3.TypedExtensionConfig {
	a, err := anypb.New(nt)
	if err != nil {
		// Marshaling a well-formed generated message does not fail.
		panic(fmt.Sprintf("marshal name table: %v", err))
	}
	return &corev3.TypedExtensionConfig{Name: name, TypedConfig: a}
}

// globalsEntry is the entry with the cluster domain and inbound default.
func globalsEntry(clusterDomain, inboundDefault string) *corev3.TypedExtensionConfig {
	return nameTEC(wire.NameGlobalsName, &discoveryv1.NameTable{ClusterDomain: strings.Trim(clusterDomain, "."), InboundDefault: inboundDefault})
}

// serviceEntry is a reachable service's entry.
func serviceEntry(sn *discoveryv1.ServiceName) *corev3.TypedExtensionConfig {
	return nameTEC(wire.NameServicePrefix+sn.GetNamespace()+"/"+sn.GetName(), &discoveryv1.NameTable{Services: []*discoveryv1.ServiceName{sn}})
}

// hiddenEntry is an unreachable service's entry: its id and addresses.
func hiddenEntry(id []byte, addrs []string) *corev3.TypedExtensionConfig {
	return nameTEC(wire.NameHiddenPrefix+hex.EncodeToString(id), &discoveryv1.NameTable{UnreachableAddresses: addrs})
}

// servicePort is the name-table port of p with the caller's decision d.
func servicePort(p discovery.Port, d policy.Decision) *discoveryv1.ServicePort {
	return &discoveryv1.ServicePort{
		Name: p.Name, Protocol: "tcp", Port: uint32(p.Port), TargetPort: uint32(p.TargetPort),
		Allowed: d.Allowed, Rule: d.Rule, AuditDenied: d.AuditDenied, AuditRule: d.AuditRule,
	}
}

// buildNameTable returns id's name table entries, sorted by name: the
// globals (the cluster domain and the default for ports no service
// covers), every service it may reach on some port with its addresses and
// per-port decisions, and, for each of the others, an entry with a keyed id
// and its addresses (see HiddenID).
func buildNameTable(snap *discovery.Snapshot, id spiffeid.ID, clusterDomain string) ([]types.Resource, error) {
	if clusterDomain == "" {
		clusterDomain = wire.DefaultClusterDomain
	}
	eng := snap.Engine()
	ns, _ := wire.WorkloadNamespace(id) // "" (the mesh default) for other IDs
	out := []*corev3.TypedExtensionConfig{globalsEntry(clusterDomain, eng.DefaultFor(ns).String())}
	for _, svc := range snap.Services() {
		fqdn := wire.FQDN(svc.Key, clusterDomain)
		sn := &discoveryv1.ServiceName{Namespace: svc.Key.Namespace, Name: svc.Key.Name, Fqdn: fqdn}
		reach := false
		for _, p := range svc.Ports {
			d := eng.Decide(id, svc.Key.Namespace, svc.Key.Name, p.Port)
			reach = reach || d.Allowed
			sn.Ports = append(sn.Ports, servicePort(p, d))
		}
		if !reach {
			out = append(out, hiddenEntry(HiddenID(svc.Key), hiddenAddrs(&svc)))
			continue
		}
		for _, a := range svc.ClusterIPs {
			sn.Addresses = append(sn.Addresses, a.String())
		}
		out = append(out, serviceEntry(sn))
	}
	slices.SortFunc(out, func(a, b *corev3.TypedExtensionConfig) int { return strings.Compare(a.Name, b.Name) })
	res := make([]types.Resource, len(out))
	for i, t := range out {
		res[i] = t
	}
	return res, nil
}
