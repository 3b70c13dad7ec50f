package xds

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// A node's resources of a type are a typeSet: a list of chunks, each the
// node's resources among a fixed run of services (chunkSize of them, in
// the order of their resources' names). Chunks are immutable and shared:
// every node whose resources in a run are the same holds the same chunk,
// so a thousand nodes' views of ten thousand services cost a few hundred
// chunk pointers each, and a change to one service makes each node
// rebuild one chunk per type, not its whole set. The version of a set is
// a hash of its chunks' hashes; each distinct chunk is hashed once.

// chunkSize is how many services one chunk covers. A variable so that
// tests can cut small meshes into many chunks.
var chunkSize = 64

// slotKind is which resource of its services a chunk holds.
type slotKind uint8

const (
	slotCluster slotKind = iota // the Cluster of each service the node may reach
	slotCLA                     // the ClusterLoadAssignment of each, likewise
	slotHash                    // the hidden entry of each service it may not reach
	slotName                    // the name-table entry of each service it may reach
	slotGlobals                 // the name table's globals entry (no services)
)

// chunkSpec is the services one chunk covers, in name order.
type chunkSpec struct {
	kind     slotKind
	services []int
}

// layout is how one type's resources are cut into chunks. Indexes with
// the same services in the same order share their layouts, so the chunks
// at one position of two sets of the same layout cover the same names.
type layout struct {
	typ   resource.Type
	specs []chunkSpec
	// chunksOf[i] are the positions of the chunks that cover service i.
	chunksOf [][]int32
}

// The types that are cut into chunks (listeners are few per node, and
// kept in one chunk), by their position in index.layouts.
var chunkedTypes = [...]resource.Type{resource.ClusterType, resource.EndpointType, resource.ExtensionConfigType}

func newLayout(typ resource.Type, services int, runs ...[]int) *layout {
	l := &layout{typ: typ, chunksOf: make([][]int32, services)}
	add := func(kind slotKind, order []int) {
		for start := 0; start < len(order); start += chunkSize {
			run := order[start:min(start+chunkSize, len(order))]
			for _, i := range run {
				l.chunksOf[i] = append(l.chunksOf[i], int32(len(l.specs)))
			}
			l.specs = append(l.specs, chunkSpec{kind: kind, services: run})
		}
	}
	switch typ {
	case resource.ClusterType:
		add(slotCluster, runs[0])
	case resource.EndpointType:
		add(slotCLA, runs[0])
	case resource.ExtensionConfigType:
		// wire.NameGlobalsName < wire.NameHiddenPrefix... < wire.NameServicePrefix...
		l.specs = append(l.specs, chunkSpec{kind: slotGlobals})
		add(slotHash, runs[0])
		add(slotName, runs[1])
	}
	return l
}

// newLayouts cuts x's chunked types into chunks, in chunkedTypes order.
func (x *index) newLayouts() [len(chunkedTypes)]*layout {
	n := len(x.entries)
	return [...]*layout{
		newLayout(resource.ClusterType, n, x.entryOrder), // wire.ClusterName is "<namespace>/<name>"
		newLayout(resource.EndpointType, n, x.entryOrder),
		newLayout(resource.ExtensionConfigType, n, x.hashOrder, x.entryOrder),
	}
}

// chunk is a run of resources of one type, sorted by name, shared by
// every set that holds the same resources at its position.
type chunk struct {
	items []*marshaled
	sum   [sha256.Size]byte // of the items' names and versions
}

func newChunk(items []*marshaled) *chunk {
	c := &chunk{items: items}
	h := sha256.New()
	for _, m := range items {
		h.Write([]byte(m.name))
		h.Write([]byte{0})
		h.Write([]byte(m.version))
		h.Write([]byte{0})
	}
	h.Sum(c.sum[:0])
	return c
}

// A chunk's key in an index's table is its type (position in
// chunkedTypes), its position in the layout (4 bytes), and what the node
// gets of each of its services (see chunkContent).
func chunkKeyPrefix(b []byte, t int, pos int32) []byte {
	return binary.BigEndian.AppendUint32(append(b, byte(t)), uint32(pos))
}

// chunkTable is an index's distinct chunks.
type chunkTable struct {
	mu sync.Mutex
	m  map[string]*chunk
	// dirty[t] are the chunk positions of type t that cover a service
	// that is not clean (see index), when the index was diffed against
	// one with the same layouts.
	dirtyOnce sync.Once
	dirty     [len(chunkedTypes)][]int32
}

// chunkContent appends to b what v gets of the services spec covers: for
// the Cluster, CLA and hash kinds a bit per service, for the name kind
// each service's variant, for the globals the inbound default.
func (x *index) chunkContent(b []byte, v *nodeView, spec *chunkSpec) []byte {
	switch spec.kind {
	case slotGlobals:
		return append(b, x.inboundDefault(v.id)...)
	case slotName:
		for _, i := range spec.services {
			b = binary.AppendUvarint(b, uint64(v.vid.get(i)))
		}
		return b
	}
	var bits byte
	for k, i := range spec.services {
		in := v.vid.get(i) != 0
		if spec.kind == slotHash {
			in = !in
		}
		if in {
			bits |= 1 << (k % 8)
		}
		if k%8 == 7 {
			b, bits = append(b, bits), 0
		}
	}
	if len(spec.services)%8 != 0 {
		b = append(b, bits)
	}
	return b
}

// buildChunk returns v's resources among the services spec covers.
func (x *index) buildChunk(v *nodeView, spec *chunkSpec) *chunk {
	var items []*marshaled
	switch spec.kind {
	case slotGlobals:
		m, _ := newMarshaled(globalsEntry(x.clusterDomain, x.inboundDefault(v.id)))
		items = []*marshaled{m}
	case slotCluster, slotCLA:
		k := 0
		if spec.kind == slotCLA {
			k = 1
		}
		for _, i := range spec.services {
			if v.vid.get(i) != 0 {
				items = append(items, x.marshaled(i)[k])
			}
		}
	case slotHash:
		for _, i := range spec.services {
			if v.vid.get(i) == 0 {
				items = append(items, x.hashOut(i).out)
			}
		}
	case slotName:
		for _, i := range spec.services {
			if n := v.vid.get(i); n != 0 {
				items = append(items, x.entries[i].variant(n).entryOut())
			}
		}
	}
	return newChunk(items)
}

// chunkFor returns v's chunk at position pos of type t, from x's table
// (or, for a chunk the change did not touch, from the previous index's)
// when a node already has the same one.
func (x *index) chunkFor(v *nodeView, t int, pos int32) *chunk {
	spec := &x.layouts[t].specs[pos]
	var buf [128]byte
	key := x.chunkContent(chunkKeyPrefix(buf[:0], t, pos), v, spec)
	tab := &x.chunks
	tab.mu.Lock()
	c := tab.m[string(key)] // (no allocation for the lookup)
	tab.mu.Unlock()
	if c != nil {
		return c
	}
	if p := x.prev.Load(); p != nil && x.sameServices && !isDirty(x.dirtyChunks(t), pos) {
		p.chunks.mu.Lock()
		c = p.chunks.m[string(key)]
		p.chunks.mu.Unlock()
	}
	if c == nil {
		c = x.buildChunk(v, spec)
	}
	tab.mu.Lock()
	defer tab.mu.Unlock()
	if had := tab.m[string(key)]; had != nil {
		return had
	}
	if tab.m == nil {
		tab.m = map[string]*chunk{}
	}
	tab.m[string(key)] = c
	return c
}

// dirtyChunks returns the positions of type t's chunks that cover a
// service that is not clean, for an index with prev's layouts.
func (x *index) dirtyChunks(t int) []int32 {
	tab := &x.chunks
	tab.dirtyOnce.Do(func() {
		for tt, l := range x.layouts {
			var set []int32
			for _, i := range x.dirty {
				set = append(set, l.chunksOf[i]...)
			}
			slices.Sort(set)
			tab.dirty[tt] = slices.Compact(set)
		}
	})
	return tab.dirty[t]
}

// typeSet is one type's resources of a node's view, marshaled, in chunks.
// It is immutable once built: responses for the node refer to the
// chunks' *anypb.Any values, which every node shares.
type typeSet struct {
	typ     resource.Type
	version string
	layout  *layout // of chunks; nil for a set of one chunk (listeners)
	chunks  []*chunk
	full    []int32 // positions of the chunks that are not empty
	n       int     // resources
}

func newTypeSet(typ resource.Type, l *layout, chunks []*chunk) *typeSet {
	ts := &typeSet{typ: typ, layout: l, chunks: chunks}
	h := sha256.New()
	for pos, c := range chunks {
		h.Write(c.sum[:])
		if len(c.items) > 0 {
			ts.full = append(ts.full, int32(pos))
			ts.n += len(c.items)
		}
	}
	ts.version = hex.EncodeToString(h.Sum(nil))[:16]
	return ts
}

// each calls f with each resource of s, in name order.
func (s *typeSet) each(f func(*marshaled)) {
	for _, pos := range s.full {
		for _, m := range s.chunks[pos].items {
			f(m)
		}
	}
}

// flat returns s's resources, in name order.
func (s *typeSet) flat() []*marshaled {
	out := make([]*marshaled, 0, s.n)
	s.each(func(m *marshaled) { out = append(out, m) })
	return out
}

// anys returns s's resources' marshaled forms, in name order.
func (s *typeSet) anys() []*anypb.Any {
	out := make([]*anypb.Any, 0, s.n)
	s.each(func(m *marshaled) { out = append(out, m.any) })
	return out
}

// get returns the resource of s named name, or nil.
func (s *typeSet) get(name string) *marshaled {
	// The first non-empty chunk whose last name is not before name.
	k, _ := slices.BinarySearchFunc(s.full, name, func(pos int32, name string) int {
		items := s.chunks[pos].items
		return strings.Compare(items[len(items)-1].name, name)
	})
	if k == len(s.full) {
		return nil
	}
	items := s.chunks[s.full[k]].items
	if i, ok := slices.BinarySearchFunc(items, name, func(m *marshaled, name string) int { return strings.Compare(m.name, name) }); ok {
		return items[i]
	}
	return nil
}

// has reports whether s holds a resource named name.
func (s *typeSet) has(name string) bool { return s.get(name) != nil }

// sets returns v's typeSets, one per type. With old, the node's view of
// x's previous index (whose sets it holds), only the chunks that cover a
// service the change touched are looked up again (the globals too: the
// inbound default may have changed), and a type whose version is the
// same keeps old's set.
func (x *index) sets(v, old *nodeView) (map[resource.Type]*typeSet, error) {
	incremental := old != nil && old.sets != nil && old.id == v.id && x.sameServices && x.prev.Load() == old.idx
	out := make(map[resource.Type]*typeSet, len(typeOrder))
	keep := func(ts *typeSet) *typeSet {
		if old != nil && old.sets[ts.typ] != nil && old.sets[ts.typ].version == ts.version {
			return old.sets[ts.typ]
		}
		return ts
	}
	for t, l := range x.layouts {
		var chunks []*chunk
		if ots := old.set(l.typ); incremental && ots != nil && ots.layout == l {
			chunks = slices.Clone(ots.chunks)
			for _, pos := range x.dirtyChunks(t) {
				chunks[pos] = x.chunkFor(v, t, pos)
			}
			if l.typ == resource.ExtensionConfigType {
				chunks[0] = x.chunkFor(v, t, 0)
			}
		} else {
			chunks = make([]*chunk, len(l.specs))
			for pos := range chunks {
				chunks[pos] = x.chunkFor(v, t, int32(pos))
			}
		}
		out[l.typ] = keep(newTypeSet(l.typ, l, chunks))
	}
	var listeners []*marshaled
	ll, err := x.listener(v.id)
	if err != nil {
		return nil, err
	}
	if ll.out != nil {
		listeners = append(listeners, ll.out)
	}
	out[resource.ListenerType] = keep(newTypeSet(resource.ListenerType, nil, []*chunk{newChunk(listeners)}))
	if len(out) != len(typeOrder) {
		return nil, fmt.Errorf("built %d resource types, want %d", len(out), len(typeOrder))
	}
	return out, nil
}

// set returns v's set of type typ, or nil (also for a nil v).
func (v *nodeView) set(typ resource.Type) *typeSet {
	if v == nil {
		return nil
	}
	return v.sets[typ]
}

// isDirty reports whether pos is in the sorted list dirty.
func isDirty(dirty []int32, pos int32) bool {
	_, ok := slices.BinarySearch(dirty, pos)
	return ok
}
