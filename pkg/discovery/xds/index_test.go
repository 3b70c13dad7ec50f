package xds

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/tether-mesh/tether/internal/discoverytest"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
)

var testTD = spiffeid.RequireTrustDomainFromString("cluster.local")

// The incremental views (an index built from the previous one, a view
// and its chunked sets from the node's previous ones) equal views built
// from scratch, in resources and in versions, through random changes;
// and the delta between a node's old and new sets turns the old into the
// new. Run with chunks of one, three and the default number of services,
// so that changes land in every position of a chunk.
func TestIncrementalViewsEqualFreshOnes(t *testing.T) {
	for _, size := range []int{1, 3, chunkSize} {
		t.Run(fmt.Sprintf("chunk%d", size), func(t *testing.T) {
			defer func(old int) { chunkSize = old }(chunkSize)
			chunkSize = size
			testIncrementalViews(t)
		})
	}
}

func testIncrementalViews(t *testing.T) {
	ids := []spiffeid.ID{
		spiffeid.RequireFromPath(testTD, "/ns/ns0/sa/s0"),
		spiffeid.RequireFromPath(testTD, "/ns/ns1/sa/s5"),
		spiffeid.RequireFromPath(testTD, "/ns/ns2/sa/s2"),
		spiffeid.RequireFromPath(testTD, "/ns/ns3/sa/nobody"),
		spiffeid.RequireFromPath(testTD, "/vm/s3"),
		spiffeid.RequireFromPath(testTD, "/ns/ns1/sa/new"),
	}
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 1))
		// Odd seeds run with audit modes, which switch at random steps;
		// seeds 3, 7, ... with the mesh default in audit mode too.
		var opts []discovery.RegistryOption
		if seed%4 == 3 {
			opts = append(opts, discovery.WithMeshDefaultMode(policy.Audit))
		}
		reg, err := discovery.NewRegistry(testTD, []policy.Default{policy.AllowMesh, policy.SameNamespace, policy.Deny}[seed%3], opts...)
		if err != nil {
			t.Fatal(err)
		}
		st := discoverytest.RandomState(r, testTD)
		if seed%2 == 1 {
			discoverytest.RandomModes(r, &st)
		}
		if err := reg.Update(st); err != nil {
			t.Fatal(err)
		}
		x := newIndex(reg.Snapshot(), nil, "")
		views := map[spiffeid.ID]*nodeView{}
		for _, id := range ids {
			v := x.view(id, nil)
			if v.sets, err = x.sets(v, nil); err != nil {
				t.Fatal(err)
			}
			views[id] = v
		}
		for step := range 30 {
			discoverytest.Mutate(r, testTD, &st)
			if seed%2 == 1 && r.IntN(2) == 0 {
				discoverytest.FlipMode(r, &st)
			}
			if err := reg.Update(st); err != nil {
				t.Fatalf("seed %d step %d: %v", seed, step, err)
			}
			nx := newIndex(reg.Snapshot(), x, "")
			fresh := newIndex(reg.Snapshot(), nil, "")
			for _, id := range ids {
				what := fmt.Sprintf("seed %d step %d %s", seed, step, id)
				old := views[id]
				v := nx.view(id, old)
				got, err := nx.build(v)
				if err != nil {
					t.Fatal(err)
				}
				if v.sets, err = nx.sets(v, old); err != nil {
					t.Fatal(err)
				}
				fv := fresh.view(id, nil)
				if fv.sets, err = fresh.sets(fv, nil); err != nil {
					t.Fatal(err)
				}
				want, err := BuildResources(reg.Snapshot(), id, "")
				if err != nil {
					t.Fatal(err)
				}
				oldRes, _ := x.build(old)
				for typ, w := range want {
					g := got[typ]
					if len(g) != len(w) {
						t.Fatalf("%s %s: %d resources, want %d", what, typ, len(g), len(w))
					}
					for k := range w {
						if !proto.Equal(g[k], w[k]) {
							t.Fatalf("%s %s[%d]:\n got %v\nwant %v", what, typ, k, g[k], w[k])
						}
					}
					// What is sent: the node's chunked, marshaled set.
					ts := v.sets[typ]
					checkSet(t, ts, w, what+" "+typ)
					if ts.version != fv.sets[typ].version {
						t.Errorf("%s %s: version %s, fresh %s", what, typ, ts.version, fv.sets[typ].version)
					}
					// A version changes when the resources do, and only
					// then while the services are the same (a new layout
					// may give the same resources a new version).
					same := len(oldRes[typ]) == len(g)
					for k := 0; same && k < len(g); k++ {
						same = proto.Equal(oldRes[typ][k], g[k])
					}
					os := old.sets[typ]
					if (!same && os.version == ts.version) || (same && nx.sameServices && os.version != ts.version) {
						t.Errorf("%s %s: resources same %v (same services %v), but versions %s → %s", what, typ, same, nx.sameServices, os.version, ts.version)
					}
					checkDelta(t, os, ts, what+" "+typ)
				}
				views[id] = v
			}
			x = nx
		}
	}
}

// checkDelta checks that the delta response from a wildcard subscriber's
// base to ts, applied to base, gives ts, and that a client with nothing
// gets all of ts.
func checkDelta(t *testing.T, base, ts *typeSet, what string) {
	t.Helper()
	apply := func(have map[string]string, from *typeSet) {
		sub := streamv3.NewDeltaSubscription(nil, nil, nil, true)
		resp := deltaWildcardResponse(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: ts.typ, ResponseNonce: "1"}, sub, ts, from)
		if resp == nil {
			return
		}
		r, err := resp.GetDeltaDiscoveryResponse()
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range r.GetRemovedResources() {
			if _, ok := have[name]; !ok {
				t.Errorf("%s: removes %s, which the client does not have", what, name)
			}
			delete(have, name)
		}
		for _, res := range r.GetResources() {
			if have[res.GetName()] == res.GetVersion() {
				t.Errorf("%s: sends %s at the version the client has", what, res.GetName())
			}
			have[res.GetName()] = res.GetVersion()
		}
	}
	want := map[string]string{}
	ts.each(func(m *marshaled) { want[m.name] = m.version })
	have := map[string]string{}
	base.each(func(m *marshaled) { have[m.name] = m.version })
	apply(have, base)
	if !maps.Equal(have, want) {
		t.Errorf("%s: base and its delta make %v, want %v", what, have, want)
	}
	have = map[string]string{}
	apply(have, nil)
	if !maps.Equal(have, want) {
		t.Errorf("%s: the delta for a new stream makes %v, want %v", what, have, want)
	}
}

// checkSet checks that ts holds exactly want (in any order), marshaled.
func checkSet(t *testing.T, ts *typeSet, want []types.Resource, what string) {
	t.Helper()
	flat := ts.flat()
	if len(flat) != len(want) || ts.n != len(want) || len(ts.anys()) != len(want) {
		t.Fatalf("%s: sent %d resources, want %d", what, len(flat), len(want))
	}
	if !slices.IsSortedFunc(flat, func(a, b *marshaled) int { return strings.Compare(a.name, b.name) }) {
		t.Fatalf("%s: resources not sorted by name", what)
	}
	for _, w := range want {
		got := ts.get(cachev3.GetResourceName(w))
		if got == nil {
			t.Fatalf("%s: %s not sent", what, cachev3.GetResourceName(w))
		}
		m, err := got.any.UnmarshalNew()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if !proto.Equal(m, w) {
			t.Fatalf("%s: sent %v\nwant %v", what, m, w)
		}
		if got.any.TypeUrl != ts.typ {
			t.Fatalf("%s: type %s in a %s set", what, got.any.TypeUrl, ts.typ)
		}
	}
	if ts.get("no such resource") != nil || ts.get("") != nil || ts.get("\xff") != nil {
		t.Fatalf("%s: found a resource that is not there", what)
	}
}

// A view keeps variant numbers of any size, though most fit in a byte.
func TestVidListKeepsLargeVariants(t *testing.T) {
	l := newVidList(4)
	for _, n := range []uint32{0, 1, bigVid - 1, bigVid, bigVid + 1, 1 << 20, 3} {
		l.set(2, n)
		if got := l.get(2); got != n {
			t.Fatalf("set %d, got %d", n, got)
		}
		if l.get(1) != 0 || l.get(3) != 0 {
			t.Fatalf("set %d at 2 changed its neighbours", n)
		}
	}
	if len(l.big) != 0 {
		t.Fatalf("a small variant left %v in the map", l.big)
	}
}
