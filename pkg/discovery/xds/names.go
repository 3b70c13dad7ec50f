package xds

import (
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/anypb"

	discoveryv1 "github.com/tether-mesh/tether/api/discovery/v1"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
)

// NameTableName is the name of the TypedExtensionConfig that carries a
// sidecar's [discoveryv1.NameTable].
const NameTableName = "tether.names"

// DefaultClusterDomain is the cluster DNS domain when none is configured.
const DefaultClusterDomain = "cluster.local"

// FQDN returns the fully qualified, lower-case DNS name of key in
// clusterDomain, with the trailing dot: "web.shop.svc.cluster.local.".
func FQDN(key discovery.ServiceKey, clusterDomain string) string {
	return strings.ToLower(key.Name + "." + key.Namespace + ".svc." + strings.Trim(clusterDomain, ".") + ".")
}

// HashName is how a NameTable names a service the caller may not reach:
// the SHA-256 of its FQDN (see FQDN).
func HashName(fqdn string) []byte {
	h := sha256.Sum256([]byte(strings.ToLower(fqdn)))
	return h[:]
}

// buildNameTable returns id's name table: every service it may reach on
// some port with its addresses and per-port decisions, the hashes of the
// names of the others, and the default for ports no service covers.
func buildNameTable(snap *discovery.Snapshot, id spiffeid.ID, clusterDomain string) (*corev3.TypedExtensionConfig, error) {
	if clusterDomain == "" {
		clusterDomain = DefaultClusterDomain
	}
	eng := snap.Engine()
	nt := &discoveryv1.NameTable{ClusterDomain: strings.Trim(clusterDomain, ".")}
	ns, _ := policy.WorkloadNamespace(id) // "" (the mesh default) for other IDs
	nt.InboundDefault = eng.DefaultFor(ns).String()
	for _, svc := range snap.Services() {
		fqdn := FQDN(svc.Key, clusterDomain)
		sn := &discoveryv1.ServiceName{Namespace: svc.Key.Namespace, Name: svc.Key.Name, Fqdn: fqdn}
		reach := false
		for _, p := range svc.Ports {
			d := eng.Decide(id, svc.Key.Namespace, svc.Key.Name, p.Port)
			reach = reach || d.Allowed
			sn.Ports = append(sn.Ports, &discoveryv1.ServicePort{
				Name: p.Name, Protocol: "tcp", Port: uint32(p.Port), TargetPort: uint32(p.TargetPort),
				Allowed: d.Allowed, Rule: d.Rule,
			})
		}
		if !reach {
			nt.UnreachableSha256 = append(nt.UnreachableSha256, HashName(fqdn))
			continue
		}
		for _, a := range svc.ClusterIPs {
			sn.Addresses = append(sn.Addresses, a.String())
		}
		nt.Services = append(nt.Services, sn)
	}
	slices.SortFunc(nt.UnreachableSha256, func(a, b []byte) int { return strings.Compare(string(a), string(b)) })
	a, err := anypb.New(nt)
	if err != nil {
		return nil, fmt.Errorf("marshal name table: %w", err)
	}
	return &corev3.TypedExtensionConfig{Name: NameTableName, TypedConfig: a}, nil
}
