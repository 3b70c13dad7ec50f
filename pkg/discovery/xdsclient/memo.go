package xdsclient

import (
	"crypto/sha256"
	"net/netip"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	discoveryv1 "github.com/tether-mesh/tether/api/discovery/v1"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// memo keeps what parsing each resource gave, so that an update costs
// parsing what it changed rather than everything held. It is keyed by the
// decoded resource: apply carries a resource the update does not change
// over as the same pointer, and decoded resources are never modified, so a
// result holds for as long as the pointer does. Only successes are kept;
// a failure is parsed again, and fails the same way.
//
// A zero memo keeps nothing (its maps are nil): NewView parses everything.
type memo struct {
	clusters  map[*clusterv3.Cluster][]spiffeid.ID
	clas      map[*endpointv3.ClusterLoadAssignment][]netip.AddrPort
	listeners map[*listenerv3.Listener][]*chain
	names     map[*corev3.TypedExtensionConfig]wire.NameTableEntry
	// services is keyed by the messages of the tables in names; a service
	// is checked against the cluster domain of the table it is in.
	services map[*discoveryv1.ServiceName]domainService
	digests  map[types.Resource][sha256.Size]byte // for fingerprint
}

type domainService struct {
	clusterDomain string
	svc           Service
}

func newMemo() *memo {
	return &memo{
		clusters:  make(map[*clusterv3.Cluster][]spiffeid.ID),
		clas:      make(map[*endpointv3.ClusterLoadAssignment][]netip.AddrPort),
		listeners: make(map[*listenerv3.Listener][]*chain),
		names:     make(map[*corev3.TypedExtensionConfig]wire.NameTableEntry),
		services:  make(map[*discoveryv1.ServiceName]domainService),
		digests:   make(map[types.Resource][sha256.Size]byte),
	}
}

// lookup returns parse(k), from results if k was parsed before, and keeps
// a success in results unless results is nil.
func lookup[K comparable, V any](results map[K]V, k K, parse func(K) (V, error)) (V, error) {
	if v, ok := results[k]; ok {
		return v, nil
	}
	v, err := parse(k)
	if err == nil && results != nil {
		results[k] = v
	}
	return v, err
}

func (m *memo) nameEntry(tec *corev3.TypedExtensionConfig) (wire.NameTableEntry, error) {
	return lookup(m.names, tec, wire.ParseNameTableEntry)
}

func (m *memo) service(sn *discoveryv1.ServiceName, clusterDomain string) (Service, error) {
	if ds, ok := m.services[sn]; ok && ds.clusterDomain == clusterDomain {
		return ds.svc, nil
	}
	s, err := parseService(sn, clusterDomain)
	if err == nil && m.services != nil {
		m.services[sn] = domainService{clusterDomain, s}
	}
	return s, err
}

// prune forgets the resources that gone holds under the names resp
// changes or removes and kept does not: after an update, gone is what was
// held before and kept what is held now; after a rejected one, the
// reverse.
func (m *memo) prune(resp *discoveryv3.DeltaDiscoveryResponse, gone, kept map[string]types.Resource) {
	drop := func(name string) {
		if r, ok := gone[name]; ok && kept[name] != r {
			m.forget(r)
		}
	}
	for _, name := range resp.GetRemovedResources() {
		drop(name)
	}
	for _, r := range resp.GetResources() {
		drop(r.GetName())
	}
}

func (m *memo) forget(r types.Resource) {
	delete(m.digests, r)
	switch r := r.(type) {
	case *clusterv3.Cluster:
		delete(m.clusters, r)
	case *endpointv3.ClusterLoadAssignment:
		delete(m.clas, r)
	case *listenerv3.Listener:
		delete(m.listeners, r)
	case *corev3.TypedExtensionConfig:
		for _, sn := range m.names[r].Table.GetServices() {
			delete(m.services, sn)
		}
		delete(m.names, r)
	}
}
