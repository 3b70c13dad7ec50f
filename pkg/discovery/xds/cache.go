package xds

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// scopedCache is the go-control-plane cache the Server answers from: per
// node, the typeSets of its current view. go-control-plane's server runs
// the protocol (streams, nonces, ACK and NACK); the cache supplies the
// responses, built from the resources each typeSet holds already
// marshaled, so a resource is marshaled once per version however many
// nodes receive it. A node only ever receives resources of its own sets.
//
// It is safe for concurrent use.
type scopedCache struct {
	mu     sync.Mutex
	nodes  map[string]*nodeCache
	nextID int64
}

var _ cachev3.Cache = (*scopedCache)(nil)

// errFetchUnsupported is returned by Fetch: discovery serves ADS only.
var errFetchUnsupported = errors.New("fetch is not served; use ADS")

// typeOrder is the order a change is pushed in (ADS: clusters before
// their endpoints, listeners, then the name table).
var typeOrder = []resource.Type{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.ExtensionConfigType}

type nodeCache struct {
	sets    map[resource.Type]*typeSet
	watches map[int64]*cacheWatch
	// sent is what the node was last sent of each type in state of the
	// world. Per node, not per stream: go-control-plane's state-of-the-
	// world server gives each watch a new channel, so a stream has no
	// identity here. Two streams of one node (a reconnect that overlaps
	// the old stream) share it; only requests at the current version for
	// a subset of names consult it.
	sent map[resource.Type]*sentSet
	// synced is, per delta stream (known by its response channel) and
	// type, the set a wildcard subscription was last brought up to date
	// with. Entries go when the node's last stream closes.
	synced map[chan cachev3.DeltaResponse]map[resource.Type]*typeSet
}

// cacheWatch is an open request of one stream for one type. Exactly one
// of sotw and delta is set.
type cacheWatch struct {
	typ   resource.Type
	sub   cachev3.Subscription
	sotw  chan cachev3.Response
	delta chan cachev3.DeltaResponse
	req   *discoveryv3.DiscoveryRequest      // sotw: without the resource names
	dreq  *discoveryv3.DeltaDiscoveryRequest // delta: without the resource names
}

// sentSet is what a node was last sent of a type in state of the world:
// the version, and the names when that was not the whole set.
type sentSet struct {
	version string
	names   map[string]struct{} // nil: the whole set
}

func newScopedCache() *scopedCache {
	return &scopedCache{nodes: map[string]*nodeCache{}}
}

// set installs node's sets (one per type in typeOrder; nil keeps none) and
// answers the node's open watches whose type changed.
func (c *scopedCache) set(node string, sets map[resource.Type]*typeSet) {
	c.mu.Lock()
	defer c.mu.Unlock()
	nc := c.node(node)
	old := nc.sets
	nc.sets = sets
	ids := slices.Sorted(maps.Keys(nc.watches))
	for _, typ := range typeOrder {
		ts := sets[typ]
		if ts == nil || (old[typ] != nil && old[typ].version == ts.version) {
			continue
		}
		for _, id := range ids {
			w := nc.watches[id]
			if w == nil || w.typ != typ {
				continue
			}
			if c.respond(nc, w, ts) {
				delete(nc.watches, id)
			}
		}
	}
}

// clear forgets node's sets; its open watches stay open.
func (c *scopedCache) clear(node string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if nc, ok := c.nodes[node]; ok {
		nc.sets, nc.sent = nil, map[resource.Type]*sentSet{}
		nc.synced = map[chan cachev3.DeltaResponse]map[resource.Type]*typeSet{}
		if len(nc.watches) == 0 {
			delete(c.nodes, node)
		}
	}
}

// node returns node's cache entry, creating it. c.mu must be held.
func (c *scopedCache) node(node string) *nodeCache {
	nc, ok := c.nodes[node]
	if !ok {
		nc = &nodeCache{watches: map[int64]*cacheWatch{}, sent: map[resource.Type]*sentSet{},
			synced: map[chan cachev3.DeltaResponse]map[resource.Type]*typeSet{}}
		c.nodes[node] = nc
	}
	return nc
}

// respond answers w from ts if w's client lacks something of ts, and
// reports whether it did. c.mu must be held. The response channels have
// room for one response per type, and a watch gets at most one.
func (c *scopedCache) respond(nc *nodeCache, w *cacheWatch, ts *typeSet) bool {
	if w.sotw != nil {
		last := nc.sent[w.typ]
		if last == nil {
			last = &sentSet{}
			nc.sent[w.typ] = last
		}
		resp := sotwResponse(w.req, w.sub, ts, last)
		if resp == nil {
			return false
		}
		w.sotw <- resp
		return true
	}
	synced := nc.synced[w.delta]
	if synced == nil {
		synced = map[resource.Type]*typeSet{}
		nc.synced[w.delta] = synced
	}
	var resp cachev3.DeltaResponse
	if w.sub.IsWildcard() {
		resp = deltaWildcardResponse(w.dreq, w.sub, ts, synced[w.typ])
		if resp != nil {
			synced[w.typ] = ts
		}
	} else {
		delete(synced, w.typ) // the returned-resources map tells what the client has
		resp = deltaResponse(w.dreq, w.sub, ts)
	}
	if resp == nil {
		return false
	}
	w.delta <- resp
	return true
}

// watch registers w for node and returns its cancel function, unless the
// node's current set answers it at once. c.mu must be held.
func (c *scopedCache) watch(node string, w *cacheWatch) func() {
	nc := c.node(node)
	if ts := nc.sets[w.typ]; ts != nil && c.respond(nc, w, ts) {
		return func() {}
	}
	c.nextID++
	id := c.nextID
	nc.watches[id] = w
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if nc, ok := c.nodes[node]; ok {
			delete(nc.watches, id)
			if nc.sets == nil && len(nc.watches) == 0 {
				delete(c.nodes, node)
			}
		}
	}
}

// CreateWatch answers a state-of-the-world request from the node's sets,
// at once when the client lacks the current version (or a resource it
// newly asks for), else when the node's set of that type changes.
func (c *scopedCache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	// Keep neither the resource names nor the node: the subscription has
	// the names, and a watch may stay open for a long time.
	short := &discoveryv3.DiscoveryRequest{
		VersionInfo: req.GetVersionInfo(), TypeUrl: req.GetTypeUrl(),
		ResponseNonce: req.GetResponseNonce(), ErrorDetail: req.GetErrorDetail(),
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.watch(req.GetNode().GetId(), &cacheWatch{typ: req.GetTypeUrl(), sub: sub, sotw: ch, req: short}), nil
}

// CreateDeltaWatch answers an incremental request from the node's sets
// with the resources whose version the client does not have and the
// names it has that the set no longer holds.
func (c *scopedCache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	short := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: req.GetTypeUrl(), ResponseNonce: req.GetResponseNonce(), ErrorDetail: req.GetErrorDetail()}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.watch(req.GetNode().GetId(), &cacheWatch{typ: req.GetTypeUrl(), sub: sub, delta: ch, dreq: short}), nil
}

// Fetch is not served.
func (c *scopedCache) Fetch(context.Context, *cachev3.Request) (cachev3.Response, error) {
	return nil, errFetchUnsupported
}

// sotwResponse is the state-of-the-world response of ts for a client
// whose last request was req with subscription sub and that was last sent
// last, or nil when the client has all of it already (or NACKed this very
// version: it gets the next one). It records what it sends in last.
//
// The returned-resources map of the responses is nil: go-control-plane's
// server edits that map when a request changes the subscription, so it
// cannot be shared, and a map of thousands of names per stream is what
// the cache avoids keeping. What was sent is in last instead.
func sotwResponse(req *discoveryv3.DiscoveryRequest, sub cachev3.Subscription, ts *typeSet, last *sentSet) cachev3.Response {
	full := sub.IsWildcard() || cachev3.ResourceRequiresFullStateInSotw(ts.typ)
	if req.GetVersionInfo() == ts.version || (req.GetErrorDetail() != nil && last.version == ts.version) {
		// The client has (or refused) this version: answer only if it now
		// asks for a resource of the set it was not sent.
		if full || last.version != ts.version || last.names == nil {
			return nil
		}
		missing := false
		for name := range sub.SubscribedResources() {
			if _, had := last.names[name]; !had && ts.has(name) {
				missing = true
				break
			}
		}
		if !missing {
			return nil
		}
	}
	*last = sentSet{version: ts.version}
	var anys []*anypb.Any
	if !full {
		var items []*marshaled
		for name := range sub.SubscribedResources() {
			if m := ts.get(name); m != nil {
				items = append(items, m)
			}
		}
		if len(items) < ts.n {
			slices.SortFunc(items, func(a, b *marshaled) int { return strings.Compare(a.name, b.name) })
			anys = make([]*anypb.Any, len(items))
			last.names = make(map[string]struct{}, len(items))
			for k, m := range items {
				anys[k] = m.any
				last.names[m.name] = struct{}{}
			}
		} else {
			full = true
		}
	}
	if full {
		anys = ts.anys()
	}
	return &cachev3.PassthroughResponse{
		Request: req,
		// A new message per response (the server sets its nonce); the
		// resources are the set's, shared.
		DiscoveryResponse: &discoveryv3.DiscoveryResponse{VersionInfo: ts.version, Resources: anys, TypeUrl: ts.typ},
	}
}

// deltaWildcardResponse is the incremental response of ts for a wildcard
// subscription that was brought up to date with base (nil: with nothing,
// a new stream), or nil when the client has it all. What the client has
// is base, overlaid with the subscription's returned resources: the
// initial_resource_versions of a new stream, or the names the server
// marked to be sent again. The response's returned-resources map is a
// new empty map: the cache keeps base instead of a map of every name per
// stream. Two sets of the same layout are compared chunk by chunk, and
// most of their chunks are the same shared ones, so a change costs what
// it touched, not the size of the set.
func deltaWildcardResponse(req *discoveryv3.DeltaDiscoveryRequest, sub cachev3.Subscription, ts, base *typeSet) cachev3.DeltaResponse {
	overlay := sub.ReturnedResources()
	if base == ts && len(overlay) == 0 {
		return nil
	}
	var out []*discoveryv3.Resource
	var removed []string
	send := func(m *marshaled) {
		out = append(out, &discoveryv3.Resource{Name: m.name, Version: m.version, Resource: m.any})
	}
	if len(overlay) == 0 && base != nil && base.layout != nil && base.layout == ts.layout {
		for pos, c := range ts.chunks {
			if b := base.chunks[pos]; b != c {
				removed = diffSorted(b.items, c.items, removed, send)
			}
		}
	} else {
		var bItems []*marshaled
		if base != nil {
			bItems = base.flat()
		}
		if len(overlay) == 0 {
			removed = diffSorted(bItems, ts.flat(), removed, send)
		} else {
			// What the client has: base, overlaid.
			has := func(m *marshaled, baseVersion string, inBase bool) {
				v, ok := overlay[m.name]
				if !ok {
					v, ok = baseVersion, inBase
				}
				if !ok || v != m.version {
					send(m)
				}
			}
			items := ts.flat()
			i, j := 0, 0
			for i < len(bItems) || j < len(items) {
				switch {
				case j == len(items) || (i < len(bItems) && bItems[i].name < items[j].name):
					removed = append(removed, bItems[i].name) // gone
					i++
				case i == len(bItems) || items[j].name < bItems[i].name:
					has(items[j], "", false) // new
					j++
				default:
					has(items[j], bItems[i].version, true)
					i++
					j++
				}
			}
			for name := range overlay {
				if !ts.has(name) && (base == nil || !base.has(name)) {
					removed = append(removed, name)
				}
			}
		}
	}
	slices.Sort(removed)
	if len(out) == 0 && len(removed) == 0 && req.GetResponseNonce() != "" {
		return nil
	}
	return &cachev3.DeltaPassthroughResponse{
		DeltaRequest:   req,
		NextVersionMap: map[string]string{},
		DeltaDiscoveryResponse: &discoveryv3.DeltaDiscoveryResponse{
			SystemVersionInfo: ts.version, Resources: out, RemovedResources: removed, TypeUrl: ts.typ,
		},
	}
}

// diffSorted compares two runs of resources sorted by name, what the
// client has and what it should have: it calls send with each resource of
// want that is new or changed, and appends the names of have that want
// lacks to removed.
func diffSorted(have, want []*marshaled, removed []string, send func(*marshaled)) []string {
	i, j := 0, 0
	for i < len(have) || j < len(want) {
		switch {
		case j == len(want) || (i < len(have) && have[i].name < want[j].name):
			removed = append(removed, have[i].name)
			i++
		case i == len(have) || want[j].name < have[i].name:
			send(want[j])
			j++
		default:
			if have[i] != want[j] && have[i].version != want[j].version {
				send(want[j])
			}
			i++
			j++
		}
	}
	return removed
}

// deltaResponse is the incremental response of ts for a client that has
// the resources sub returned (at their versions), or nil when it has them
// all.
func deltaResponse(req *discoveryv3.DeltaDiscoveryRequest, sub cachev3.Subscription, ts *typeSet) cachev3.DeltaResponse {
	returned := sub.ReturnedResources()
	wildcard := sub.IsWildcard()
	subscribed := sub.SubscribedResources()
	next := maps.Clone(returned)
	if next == nil {
		next = map[string]string{}
	}
	var out []*discoveryv3.Resource
	add := func(m *marshaled) {
		if v, had := returned[m.name]; had && v == m.version {
			return
		}
		out = append(out, &discoveryv3.Resource{Name: m.name, Version: m.version, Resource: m.any})
		next[m.name] = m.version
	}
	if wildcard {
		ts.each(add)
	} else {
		names := slices.Sorted(maps.Keys(subscribed))
		for _, name := range names {
			if m := ts.get(name); m != nil {
				add(m)
			}
		}
	}
	var removed []string
	for name := range returned {
		if !ts.has(name) {
			removed = append(removed, name)
			delete(next, name)
		}
	}
	slices.Sort(removed)
	if len(out) == 0 && len(removed) == 0 && req.GetResponseNonce() != "" {
		return nil // (the first request of a type is always answered)
	}
	return &cachev3.DeltaPassthroughResponse{
		DeltaRequest:   req,
		NextVersionMap: next,
		DeltaDiscoveryResponse: &discoveryv3.DeltaDiscoveryResponse{
			SystemVersionInfo: ts.version, Resources: out, RemovedResources: removed, TypeUrl: ts.typ,
		},
	}
}
