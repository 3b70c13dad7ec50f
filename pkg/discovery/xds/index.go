package xds

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	discoveryv1 "github.com/tether-mesh/tether/api/discovery/v1"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// index is what every node's view of one registry snapshot shares: the
// services with their Cluster, ClusterLoadAssignment and per-port RBAC
// filter (each built once, when first needed, and shared by every node),
// each identity's inbound Listener (built from its pods' chains, see
// discovery.InboundChains), the distinct per-port decision lists the
// nodes' name tables are made of, and which identity serves which service.
//
// An index built from the previous one (see newIndex) reuses what a change
// did not touch. It relies on the contract of policy.Engine.Decide: the
// decision for a service depends only on the policies naming it and, when
// none of them is enforcing, on its namespace's default and its mode (else
// the mesh default), besides the source. (The mesh default, its mode and
// the trust domain are the registry's, fixed.) A service whose value,
// policies and default are unchanged is
// "clean": every source gets the same decisions, Cluster and
// ClusterLoadAssignment as before, and its ports the same RBAC filters
// (policy.Engine.Admitted depends on nothing else). Listeners are built
// again for each index, from those shared filters.
type index struct {
	snap          *discovery.Snapshot
	clusterDomain string
	td            spiffeid.TrustDomain
	eng           *policy.Engine

	services []discovery.Service // sorted by key, as the snapshot holds them
	entries  []*entry            // one per service
	served   map[spiffeid.ID][]int
	// inbound holds each identity's inbound Listener, built when first
	// needed: spiffeid.ID → *lazyListener.
	inbound    sync.Map
	hashOrder  []int // service indexes sorted by HiddenID (the order of the name table's hidden entries)
	entryOrder []int // service indexes sorted by "<namespace>/<name>" (the order of the name-table entries)

	// prev is the index this one was diffed against, until the next index
	// replaces this one; prevOf[i] is service i's index in prev (-1: new),
	// and dirty lists the services that are not clean.
	prev   atomic.Pointer[index]
	prevOf []int
	dirty  []int
	// sameServices: the services are prev's, in the same order (only
	// their contents or policies may differ).
	sameServices bool

	// layouts cut the chunked types into chunks (prev's, when the
	// services are the same), and chunks are the distinct chunks of the
	// nodes' views of this index.
	layouts [len(chunkedTypes)]*layout
	chunks  chunkTable
}

// entry is one service's shared resources.
type entry struct {
	svc  *discovery.Service
	fqdn string
	hash []byte
	ids  []spiffeid.ID

	hashEntry *lazyHash

	res      *lazyResources
	variants *variants
	rbac     *lazyRBAC
}

// lazyRBAC is a service's RBAC filter config per port, built when first
// needed; clean services share it with the previous index (it depends
// only on the service's policies or default).
type lazyRBAC struct {
	mu     sync.Mutex
	byPort map[uint16]*anypb.Any
}

// variants are the distinct decision lists sources got for a service
// they may reach on some port, each with its ServiceName; a node's view
// refers to them by number (1-based; 0 is unreachable). Append-only.
type variants struct {
	mu   sync.Mutex
	list []*variant
}

type variant struct {
	decisions []policy.Decision
	sn        *discoveryv1.ServiceName
	outOnce   sync.Once
	tec       *corev3.TypedExtensionConfig // sn's name-table entry
	out       *marshaled                   // tec, marshaled once for every node
}

// entryOut returns v's name-table entry, marshaled.
func (v *variant) entryOut() *marshaled {
	v.outOnce.Do(func() {
		v.tec = serviceEntry(v.sn)
		v.out, _ = newMarshaled(v.tec)
	})
	return v.out
}

// lazyHash is an unreachable service's name-table entry (wire.NameHiddenPrefix),
// built when first needed and shared by every node and by the next
// indexes while the service is the same.
type lazyHash struct {
	once sync.Once
	tec  *corev3.TypedExtensionConfig
	out  *marshaled
}

// lazyResources are a service's Cluster and ClusterLoadAssignment, built
// and marshaled when first needed; clean services share them with the
// previous index.
type lazyResources struct {
	once sync.Once
	out  [2]*marshaled // cluster and cla, marshaled once for every node
}

type lazyListener struct {
	once sync.Once
	l    types.Resource
	out  *marshaled
	err  error
}

// newIndex indexes snap; with prev (an index of an older snapshot of the
// same registry) it reuses prev's work for the clean services.
func newIndex(snap *discovery.Snapshot, prev *index, clusterDomain string) *index {
	if clusterDomain == "" {
		clusterDomain = wire.DefaultClusterDomain
	}
	x := &index{
		snap: snap, clusterDomain: clusterDomain, td: snap.TrustDomain(), eng: snap.Engine(),
		services: snap.Services(), served: map[spiffeid.ID][]int{},
	}
	if prev != nil && (prev.td != x.td || prev.clusterDomain != x.clusterDomain) {
		prev = nil
	}
	var prevPol map[discovery.ServiceKey][]policy.AccessPolicy
	var prevIdx map[discovery.ServiceKey]int
	var prevDefs, defs map[string]policy.Default
	var prevModes, modes map[string]policy.Mode
	pol := policiesByService(snap)
	if prev != nil {
		prevPol = policiesByService(prev.snap)
		prevDefs, defs = prev.snap.NamespaceDefaults(), snap.NamespaceDefaults()
		prevModes, modes = prev.snap.NamespaceDefaultModes(), snap.NamespaceDefaultModes()
		prevIdx = make(map[discovery.ServiceKey]int, len(prev.services))
		for i := range prev.services {
			prevIdx[prev.services[i].Key] = i
		}
		x.prevOf = make([]int, len(x.services))
	}
	x.entries = make([]*entry, len(x.services))
	for i := range x.services {
		svc := &x.services[i]
		if prev != nil {
			x.prevOf[i] = -1
			if j, ok := prevIdx[svc.Key]; ok {
				x.prevOf[i] = j
				pe := prev.entries[j]
				if sameService(pe.svc, svc) && reflect.DeepEqual(prevPol[svc.Key], pol[svc.Key]) &&
					(enforces(pol[svc.Key]) || sameDefault(prevDefs, defs, svc.Key.Namespace) && sameMode(prevModes, modes, svc.Key.Namespace)) {
					x.entries[i] = &entry{svc: svc, fqdn: pe.fqdn, hash: pe.hash, hashEntry: pe.hashEntry, ids: pe.ids, res: pe.res, variants: pe.variants, rbac: pe.rbac}
					x.addServed(i)
					continue
				}
			}
			x.dirty = append(x.dirty, i)
		}
		fqdn := wire.FQDN(svc.Key, clusterDomain)
		x.entries[i] = &entry{svc: svc, fqdn: fqdn, hash: HiddenID(svc.Key), hashEntry: &lazyHash{}, ids: svc.Identities(x.td),
			res: &lazyResources{}, variants: &variants{}, rbac: &lazyRBAC{}}
		x.addServed(i)
	}
	if prev != nil && len(prev.entries) == len(x.entries) {
		x.sameServices = true
		for i, p := range x.prevOf {
			x.sameServices = x.sameServices && p == i
		}
	}
	x.hashOrder = make([]int, len(x.entries))
	for i := range x.hashOrder {
		x.hashOrder[i] = i
	}
	slices.SortFunc(x.hashOrder, func(a, b int) int { return strings.Compare(string(x.entries[a].hash), string(x.entries[b].hash)) })
	x.entryOrder = make([]int, len(x.entries))
	for i := range x.entryOrder {
		x.entryOrder[i] = i
	}
	slices.SortFunc(x.entryOrder, func(a, b int) int {
		return strings.Compare(x.services[a].Key.String(), x.services[b].Key.String())
	})
	if x.sameServices {
		x.layouts = prev.layouts
	} else {
		x.layouts = x.newLayouts()
	}
	if prev != nil {
		x.prev.Store(prev)
	}
	return x
}

func (x *index) addServed(i int) {
	for _, id := range x.entries[i].ids {
		x.served[id] = append(x.served[id], i)
	}
}

// sameDefault reports whether namespace ns has the same default override
// (or none) in a and b: the rule text names an override even when it
// equals the mesh default.
func sameDefault(a, b map[string]policy.Default, ns string) bool {
	da, oka := a[ns]
	db, okb := b[ns]
	return oka == okb && da == db
}

// sameMode reports whether namespace ns has the same default mode in a
// and b (absent and empty are Enforce, but the rule texts differ).
func sameMode(a, b map[string]policy.Mode, ns string) bool {
	ma, oka := a[ns]
	mb, okb := b[ns]
	return oka == okb && ma == mb
}

// enforces reports whether one of ps is enforcing: then they alone make
// the enforced decision, and the default does not matter.
func enforces(ps []policy.AccessPolicy) bool {
	return slices.ContainsFunc(ps, func(p policy.AccessPolicy) bool { return !p.Spec.Mode.Audited() })
}

// sameService reports whether a and b are equal in every field.
func sameService(a, b *discovery.Service) bool {
	return a.Key == b.Key && slices.Equal(a.ClusterIPs, b.ClusterIPs) && slices.Equal(a.Ports, b.Ports) && slices.Equal(a.Endpoints, b.Endpoints)
}

// policiesByService groups snap's policies by the service they name, in
// the order reported.
func policiesByService(snap *discovery.Snapshot) map[discovery.ServiceKey][]policy.AccessPolicy {
	out := map[discovery.ServiceKey][]policy.AccessPolicy{}
	for _, p := range snap.Policies() {
		k := discovery.ServiceKey{Namespace: p.Namespace, Name: p.Spec.Destination.Service}
		if k.Namespace == "" {
			k.Namespace = "default"
		}
		out[k] = append(out[k], p)
	}
	return out
}

// marshaled returns service i's Cluster and ClusterLoadAssignment,
// marshaled. (Only the marshaled forms are kept: they are what is sent.)
func (x *index) marshaled(i int) *[2]*marshaled {
	e := x.entries[i]
	r := e.res
	r.once.Do(func() {
		r.out[0], _ = newMarshaled(buildCluster(e.svc, x.td))
		r.out[1], _ = newMarshaled(buildCLA(e.svc))
	})
	return &r.out
}

// listener returns id's inbound Listener (ll.l nil: id serves nothing).
func (x *index) listener(id spiffeid.ID) (*lazyListener, error) {
	v, _ := x.inbound.LoadOrStore(id, &lazyListener{})
	ll := v.(*lazyListener)
	ll.once.Do(func() {
		svcs := make([]*discovery.Service, 0, len(x.served[id]))
		for _, i := range x.served[id] {
			svcs = append(svcs, x.entries[i].svc)
		}
		chains := discovery.InboundChains(x.eng, x.td, id, svcs)
		if len(chains) == 0 {
			return
		}
		l, err := buildInbound(chains, x.rbacFilter)
		if err != nil {
			ll.err = fmt.Errorf("inbound listener of %s: %w", id, err)
			return
		}
		ll.l = l
		ll.out, _ = newMarshaled(l)
	})
	return ll, ll.err
}

// rbacFilter returns the RBAC filter config of a service port, built once
// per service and port.
func (x *index) rbacFilter(sp discovery.ServicePort) (*anypb.Any, error) {
	i, ok := slices.BinarySearchFunc(x.services, sp.Service, func(s discovery.Service, k discovery.ServiceKey) int {
		return cmp.Or(strings.Compare(s.Key.Namespace, k.Namespace), strings.Compare(s.Key.Name, k.Name))
	})
	if !ok || x.services[i].Key != sp.Service {
		return rbacFilter(x.eng, sp)
	}
	r := x.entries[i].rbac
	r.mu.Lock()
	defer r.mu.Unlock()
	if a, ok := r.byPort[sp.Port]; ok {
		return a, nil
	}
	a, err := rbacFilter(x.eng, sp)
	if err != nil {
		return nil, err
	}
	if r.byPort == nil {
		r.byPort = map[uint16]*anypb.Any{}
	}
	r.byPort[sp.Port] = a
	return a, nil
}

// decide returns id's variant of service i (0: unreachable).
func (x *index) decide(id spiffeid.ID, i int) uint32 {
	e := x.entries[i]
	svc := e.svc
	reach := false
	for _, p := range svc.Ports {
		if x.eng.Allowed(id, svc.Key.Namespace, svc.Key.Name, p.Port) {
			reach = true
			break
		}
	}
	if !reach {
		return 0 // (without spelling out the rules)
	}
	ds := make([]policy.Decision, len(svc.Ports))
	for k, p := range svc.Ports {
		ds[k] = x.eng.Decide(id, svc.Key.Namespace, svc.Key.Name, p.Port)
	}
	vs := e.variants
	vs.mu.Lock()
	defer vs.mu.Unlock()
	for k, v := range vs.list {
		if slices.Equal(v.decisions, ds) {
			return uint32(k + 1)
		}
	}
	sn := &discoveryv1.ServiceName{Namespace: svc.Key.Namespace, Name: svc.Key.Name, Fqdn: e.fqdn}
	for k, p := range svc.Ports {
		sn.Ports = append(sn.Ports, &discoveryv1.ServicePort{
			Name: p.Name, Protocol: "tcp", Port: uint32(p.Port), TargetPort: uint32(p.TargetPort),
			Allowed: ds[k].Allowed, Rule: ds[k].Rule,
		})
	}
	for _, a := range svc.ClusterIPs {
		sn.Addresses = append(sn.Addresses, a.String())
	}
	vs.list = append(vs.list, &variant{decisions: ds, sn: sn})
	return uint32(len(vs.list))
}

func (e *entry) variant(v uint32) *variant {
	e.variants.mu.Lock()
	defer e.variants.mu.Unlock()
	return e.variants.list[v-1]
}

// nodeView is one identity's view of an index: which variant of each
// service it gets, and (once x.sets has built them) its resources.
type nodeView struct {
	idx  *index
	id   spiffeid.ID
	vid  vidList // per service of idx
	sets map[resource.Type]*typeSet
}

// vidList is a node's variant of each service (0: unreachable), a byte
// each: a thousand nodes' views of ten thousand services are 10 MB, not
// 40. The rare variant numbers from bigVid up are kept in a map.
type vidList struct {
	small []uint8
	big   map[int]uint32
}

const bigVid = 255

func newVidList(n int) vidList { return vidList{small: make([]uint8, n)} }

func (l *vidList) len() int { return len(l.small) }

func (l *vidList) get(i int) uint32 {
	if n := l.small[i]; n != bigVid {
		return uint32(n)
	}
	return l.big[i]
}

func (l *vidList) set(i int, n uint32) {
	if n < bigVid {
		l.small[i] = uint8(n)
		delete(l.big, i)
		return
	}
	l.small[i] = bigVid
	if l.big == nil {
		l.big = map[int]uint32{}
	}
	l.big[i] = n
}

// view computes id's view of x. With old, a view of x's previous index,
// only the services that are not clean are decided again.
func (x *index) view(id spiffeid.ID, old *nodeView) *nodeView {
	v := &nodeView{idx: x, id: id, vid: newVidList(len(x.entries))}
	if old != nil && old.id == id && x.prev.Load() == old.idx && old.idx != nil {
		for i, p := range x.prevOf {
			if p >= 0 {
				v.vid.set(i, old.vid.get(p))
			}
		}
		for _, i := range x.dirty {
			v.vid.set(i, x.decide(id, i))
		}
	} else {
		for i := range x.entries {
			v.vid.set(i, x.decide(id, i))
		}
	}
	return v
}

func (x *index) inboundDefault(id spiffeid.ID) string {
	ns, _ := wire.WorkloadNamespace(id) // "" (the mesh default) for other IDs
	return x.eng.DefaultFor(ns).String()
}

// listeners returns v's inbound Listeners.
func (x *index) listeners(v *nodeView) ([]types.Resource, error) {
	out := []types.Resource{}
	ll, err := x.listener(v.id)
	if err != nil {
		return nil, err
	}
	if ll.l != nil {
		out = append(out, ll.l)
	}
	return out, nil
}

// items returns v's resources of type typ.
func (x *index) items(v *nodeView, typ resource.Type) ([]types.Resource, error) {
	switch typ {
	case resource.ClusterType, resource.EndpointType:
		k := 0
		if typ == resource.EndpointType {
			k = 1
		}
		out := []types.Resource{}
		for i := range v.vid.len() {
			if v.vid.get(i) == 0 {
				continue
			}
			m, err := x.marshaled(i)[k].any.UnmarshalNew()
			if err != nil {
				return nil, err
			}
			out = append(out, m)
		}
		return out, nil
	case resource.ListenerType:
		return x.listeners(v)
	case resource.ExtensionConfigType:
		nt, _ := x.nameTable(v)
		return nt, nil
	}
	return nil, fmt.Errorf("unknown resource type %s", typ)
}

// hashOut returns service i's unreachable-name entry, marshaled.
func (x *index) hashOut(i int) *lazyHash {
	h := x.entries[i].hashEntry
	h.once.Do(func() {
		h.tec = hiddenEntry(x.entries[i].hash, hiddenAddrs(x.entries[i].svc))
		h.out, _ = newMarshaled(h.tec)
	})
	return h
}

// nameTable returns v's name-table entries, as buildNameTable makes them,
// sorted by name: the globals (the cluster domain and the default for
// ports no service covers), the hidden entries of the services it may
// not reach (shared by every node), and every service it may reach on some
// port with its addresses and per-port decisions (shared by every node
// with the same decisions), with their marshaled forms. The names sort in
// that order ("global" < "hidden/" < "svc/"; hex keeps the ids' order),
// so no node's list needs sorting.
func (x *index) nameTable(v *nodeView) ([]types.Resource, []*marshaled) {
	g := globalsEntry(x.clusterDomain, x.inboundDefault(v.id))
	gm, _ := newMarshaled(g)
	res := make([]types.Resource, 1, v.vid.len()+1)
	ms := make([]*marshaled, 1, v.vid.len()+1)
	res[0], ms[0] = g, gm
	for _, i := range x.hashOrder {
		if v.vid.get(i) == 0 {
			h := x.hashOut(i)
			res, ms = append(res, h.tec), append(ms, h.out)
		}
	}
	for _, i := range x.entryOrder {
		if n := v.vid.get(i); n != 0 {
			vr := x.entries[i].variant(n)
			m := vr.entryOut()
			res, ms = append(res, vr.tec), append(ms, m)
		}
	}
	return res, ms
}

// build returns every resource of v: what BuildResources returns for v's
// identity (TestIncrementalViewsEqualFreshOnes checks they agree).
func (x *index) build(v *nodeView) (map[resource.Type][]types.Resource, error) {
	out := map[resource.Type][]types.Resource{}
	for _, typ := range []resource.Type{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.ExtensionConfigType} {
		items, err := x.items(v, typ)
		if err != nil {
			return nil, err
		}
		out[typ] = items
	}
	return out, nil
}

// marshalResource marshals m deterministically, once, as it is sent to
// every node that may see it, and returns it with its SHA-256.
func marshalResource(m proto.Message) (*anypb.Any, [sha256.Size]byte) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		// Marshaling a well-formed generated message does not fail.
		panic(fmt.Sprintf("marshal %T: %v", m, err))
	}
	return &anypb.Any{TypeUrl: resource.APITypePrefix + string(m.ProtoReflect().Descriptor().FullName()), Value: b}, sha256.Sum256(b)
}

// marshaled is one resource as it is sent: its name, its marshaled form
// and its version (for delta xDS, a prefix of its SHA-256), made once and
// shared by every set that holds it.
type marshaled struct {
	name    string
	any     *anypb.Any
	version string
}

func newMarshaled(m types.Resource) (*marshaled, [sha256.Size]byte) {
	a, sum := marshalResource(m)
	return &marshaled{name: cachev3.GetResourceName(m), any: a, version: hex.EncodeToString(sum[:8])}, sum
}
