package flows

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const (
	web = "spiffe://cluster.local/ns/shop/sa/web"
	api = "spiffe://cluster.local/ns/shop/sa/api"
)

var t0 = time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)

func callerKey(dec Decision) Key {
	return Key{Source: web, Namespace: "shop", Service: "api", Port: 8080, Decision: dec, Rule: "r", Side: Caller}
}

func TestAggregatorCountsAndFlush(t *testing.T) {
	a := NewAggregator(10)
	a.Observe(callerKey(Allow), t0.Add(2*time.Second))
	a.Observe(callerKey(Allow), t0)
	a.Observe(callerKey(Allow), t0.Add(time.Second))
	a.Observe(callerKey(Deny), t0)
	edges, dropped := a.Flush()
	if dropped != 0 || len(edges) != 2 {
		t.Fatalf("got %d edges, %d dropped; want 2, 0: %+v", len(edges), dropped, edges)
	}
	// Sorted by key: allow before deny.
	if e := edges[0]; e.Decision != Allow || e.Connections != 3 || !e.FirstSeen.Equal(t0) || !e.LastSeen.Equal(t0.Add(2*time.Second)) {
		t.Errorf("allow edge %+v: want 3 connections from t0 to t0+2s", e)
	}
	if e := edges[1]; e.Decision != Deny || e.Connections != 1 {
		t.Errorf("deny edge %+v", e)
	}
	if edges, _ := a.Flush(); len(edges) != 0 {
		t.Errorf("second flush: %d edges, want none (deltas)", len(edges))
	}
}

func TestAggregatorBound(t *testing.T) {
	a := NewAggregator(3)
	for port := uint16(1); port <= 5; port++ {
		k := callerKey(Allow)
		k.Port = port
		ok := a.Observe(k, t0)
		if ok != (port <= 3) {
			t.Errorf("port %d: Observe %v", port, ok)
		}
	}
	// A key already held still counts when full.
	k := callerKey(Allow)
	k.Port = 1
	if !a.Observe(k, t0) {
		t.Error("a held key was refused when full")
	}
	if a.Len() != 3 {
		t.Errorf("len %d, want 3", a.Len())
	}
	edges, dropped := a.Flush()
	if len(edges) != 3 || dropped != 2 {
		t.Errorf("flush: %d edges, %d dropped; want 3, 2", len(edges), dropped)
	}
	// Restore puts an undelivered report back; what does not fit is lost.
	b := NewAggregator(2)
	k.Port = 9
	b.Observe(k, t0)
	if lost := b.Restore(edges, dropped); lost != 2 {
		t.Errorf("restore lost %d connections, want 2 (one held key + one new fit)", lost)
	}
	got, d := b.Flush()
	if len(got) != 2 || d != 2+2 {
		t.Errorf("after restore: %d edges, %d dropped; want 2, 4", len(got), d)
	}
}

func TestAggregatorConcurrent(t *testing.T) {
	a := NewAggregator(100)
	var wg sync.WaitGroup
	var total uint64
	var mu sync.Mutex
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				k := callerKey(Allow)
				k.Port = uint16(1 + (g*1000+i)%10)
				a.Observe(k, t0)
				if i%100 == 0 {
					edges, _ := a.Flush()
					mu.Lock()
					for _, e := range edges {
						total += e.Connections
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	edges, dropped := a.Flush()
	for _, e := range edges {
		total += e.Connections
	}
	if total != 8000 || dropped != 0 {
		t.Errorf("counted %d connections, %d dropped; want 8000, 0", total, dropped)
	}
}

func edge(k Key, n uint64, first, last time.Time) Edge {
	return Edge{Key: k, Connections: n, FirstSeen: first, LastSeen: last}
}

func TestStoreSumsAndSorts(t *testing.T) {
	s := NewStore(StoreConfig{Replica: "r1", Now: func() time.Time { return t0.Add(time.Minute) }})
	s.Add(web, []Edge{edge(callerKey(Allow), 2, t0.Add(time.Second), t0.Add(2*time.Second))}, 0)
	s.Add(web, []Edge{edge(callerKey(Allow), 3, t0, t0.Add(time.Second)), edge(callerKey(Deny), 1, t0, t0)}, 5)
	tab := s.Table(Filter{})
	if tab.Replica != "r1" || tab.Unsummed != 5 || len(tab.Edges) != 2 {
		t.Fatalf("table %+v", tab)
	}
	if e := tab.Edges[0]; e.Connections != 5 || !e.FirstSeen.Equal(t0) || !e.LastSeen.Equal(t0.Add(2*time.Second)) || e.Key != callerKey(Allow) {
		t.Errorf("allow edge %+v: want 5 connections, t0 to t0+2s", e)
	}
}

func TestStoreBounds(t *testing.T) {
	s := NewStore(StoreConfig{MaxEdges: 10, MaxEdgesPerReporter: 4, Now: func() time.Time { return t0 }})
	many := func(src string, n int) []Edge {
		var out []Edge
		for i := range n {
			k := callerKey(Allow)
			k.Source, k.Port = src, uint16(100+i)
			out = append(out, edge(k, 1, t0, t0))
		}
		return out
	}
	// One reporter cannot take more than its share...
	if taken, dropped := s.Add(web, many(web, 6), 0); taken != 4 || dropped != 2 {
		t.Errorf("web: taken %d dropped %d, want 4, 2", taken, dropped)
	}
	// ...but still adds to the edges it holds.
	if taken, dropped := s.Add(web, many(web, 4), 0); taken != 4 || dropped != 0 {
		t.Errorf("web again: taken %d dropped %d, want 4, 0", taken, dropped)
	}
	// Others fill the rest, up to MaxEdges.
	for i := range 3 {
		src := fmt.Sprintf("spiffe://cluster.local/ns/shop/sa/s%d", i)
		s.Add(src, many(src, 4), 0)
	}
	st := s.Stats()
	if st.Edges != 10 || st.Dropped != 2+6 {
		t.Errorf("stats %+v: want 10 edges, 8 dropped", st)
	}
}

func TestStoreExpiry(t *testing.T) {
	now := t0
	s := NewStore(StoreConfig{Retention: time.Hour, MaxEdgesPerReporter: 2, Now: func() time.Time { return now }})
	old, fresh := callerKey(Allow), callerKey(Deny)
	s.Add(web, []Edge{edge(old, 1, t0.Add(-2*time.Hour), t0.Add(-90*time.Minute)), edge(fresh, 1, t0, t0)}, 0)
	// Expired edges are hidden before Expire forgets them.
	if tab := s.Table(Filter{}); len(tab.Edges) != 1 || tab.Edges[0].Key != fresh {
		t.Errorf("table %+v: want only the fresh edge", tab.Edges)
	}
	if n := s.Expire(); n != 1 {
		t.Errorf("expired %d, want 1", n)
	}
	// The reporter's share is freed with it.
	k := callerKey(AuditDeny)
	if taken, _ := s.Add(web, []Edge{edge(k, 1, t0, t0)}, 0); taken != 1 {
		t.Error("the reporter's share was not freed by expiry")
	}
	now = t0.Add(2 * time.Hour)
	if n := s.Expire(); n != 2 || s.Stats().Edges != 0 {
		t.Errorf("expired %d, %d left; want 2, 0", n, s.Stats().Edges)
	}
}

func TestStoreFilter(t *testing.T) {
	s := NewStore(StoreConfig{Now: func() time.Time { return t0 }})
	intoShop := callerKey(Allow)
	fromShop := Key{Source: web, Namespace: "pay", Service: "card", Port: 443, Decision: Deny, Side: Caller}
	other := Key{Source: "spiffe://cluster.local/ns/ops/sa/x", Namespace: "pay", Service: "card", Port: 443, Decision: Allow, Side: Destination}
	s.Add(web, []Edge{edge(intoShop, 1, t0.Add(-2*time.Hour), t0.Add(-2*time.Hour)), edge(fromShop, 1, t0, t0)}, 0)
	s.Add(api, []Edge{edge(other, 1, t0, t0)}, 0)
	if got := s.Table(Filter{Namespace: "shop"}).Edges; len(got) != 2 {
		t.Errorf("namespace shop: %d edges, want 2 (into it and from it)", len(got))
	}
	if got := s.Table(Filter{Namespace: "ops"}).Edges; len(got) != 1 || got[0].Key != other {
		t.Errorf("namespace ops: %+v", got)
	}
	if got := s.Table(Filter{Since: t0.Add(-time.Hour)}).Edges; len(got) != 2 {
		t.Errorf("since 1h: %d edges, want 2", len(got))
	}
}

func TestMerge(t *testing.T) {
	a := Table{Time: t0, Replica: "b", Dropped: 1, MaxEdges: 10, Edges: []Edge{edge(callerKey(Allow), 2, t0, t0.Add(time.Second))}}
	b := Table{Time: t0.Add(time.Minute), Replica: "a", DroppedReports: 2, Unsummed: 3, MaxEdges: 10, Edges: []Edge{
		edge(callerKey(Deny), 1, t0, t0),
		edge(callerKey(Allow), 5, t0.Add(-time.Second), t0),
	}}
	m := Merge(a, b)
	want := Table{Time: t0.Add(time.Minute), Replica: "a,b", Dropped: 1, DroppedReports: 2, Unsummed: 3, MaxEdges: 20, Edges: []Edge{
		edge(callerKey(Allow), 7, t0.Add(-time.Second), t0.Add(time.Second)),
		edge(callerKey(Deny), 1, t0, t0),
	}}
	if fmt.Sprint(m) != fmt.Sprint(want) {
		t.Errorf("merge:\n got %+v\nwant %+v", m, want)
	}
	if e := Merge().Edges; e == nil || len(e) != 0 {
		t.Errorf("merge of nothing: %v, want an empty list", e)
	}
}

func TestValidateRefuses(t *testing.T) {
	good := edge(callerKey(Allow), 1, t0, t0)
	if err := good.Validate(t0); err != nil {
		t.Fatalf("good edge: %v", err)
	}
	cases := map[string]func(e *Edge){
		"bad decision":       func(e *Edge) { e.Decision = "maybe" },
		"empty decision":     func(e *Edge) { e.Decision = "" },
		"bad side":           func(e *Edge) { e.Side = "both" },
		"source not an ID":   func(e *Edge) { e.Source = "web" },
		"long source":        func(e *Edge) { e.Source = web + strings.Repeat("a", MaxIDLength) },
		"no destination":     func(e *Edge) { e.Service = "" },
		"both destinations":  func(e *Edge) { e.Workload = api },
		"service no ns":      func(e *Edge) { e.Namespace = "" },
		"service not label":  func(e *Edge) { e.Service = "API!" },
		"namespace too long": func(e *Edge) { e.Namespace = strings.Repeat("a", 64) },
		"workload not an ID": func(e *Edge) { e.Service, e.Workload = "", "api" },
		"port 0":             func(e *Edge) { e.Port = 0 },
		"oversize rule":      func(e *Edge) { e.Rule = strings.Repeat("r", MaxRuleLength+1) },
		"control in rule":    func(e *Edge) { e.Rule = "a\nb" },
		"invalid utf-8 rule": func(e *Edge) { e.Rule = "a\xffb" },
		"no connections":     func(e *Edge) { e.Connections = 0 },
		"no first seen":      func(e *Edge) { e.FirstSeen = time.Time{} },
		"first after last":   func(e *Edge) { e.FirstSeen = t0.Add(time.Second) },
		"in the future":      func(e *Edge) { e.LastSeen = t0.Add(2 * MaxClockSkew) },
	}
	for name, mutate := range cases {
		e := good
		mutate(&e)
		err := e.Validate(t0)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
		if err := ValidateReport([]Edge{good, e}, t0); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "edge 1") {
			t.Errorf("%s: report: %v, want edge 1 refused", name, err)
		}
	}
	big := make([]Edge, MaxReportEdges+1)
	for i := range big {
		big[i] = good
	}
	if err := ValidateReport(big, t0); !errors.Is(err, ErrInvalid) {
		t.Errorf("oversize report: %v", err)
	}
	if err := ValidateReport(big[:MaxReportEdges], t0); err != nil {
		t.Errorf("report of MaxReportEdges: %v", err)
	}
}

func TestClipMakesValid(t *testing.T) {
	for _, r := range []string{strings.Repeat("é", MaxRuleLength), "a\nb\x00c", "bad \xff utf8"} {
		k := callerKey(Allow)
		k.Rule = Clip(r)
		if err := k.Validate(); err != nil {
			t.Errorf("Clip(%q): %v", r[:10], err)
		}
	}
	if Clip("plain rule") != "plain rule" {
		t.Error("Clip changed a valid rule")
	}
}

func TestCheckReporter(t *testing.T) {
	webID, apiID := spiffeid.RequireFromString(web), spiffeid.RequireFromString(api)
	serves := func(id spiffeid.ID, ns, name string, port uint16) bool {
		return id == apiID && ns == "shop" && name == "api" && port == 8080
	}
	dest := Key{Source: web, Namespace: "shop", Service: "api", Port: 8080, Decision: Allow, Side: Destination}
	workload := Key{Source: web, Namespace: "shop", Workload: api, Port: 9090, Decision: Deny, Side: Destination}
	ok := []struct {
		reporter spiffeid.ID
		k        Key
	}{{webID, callerKey(Allow)}, {apiID, dest}, {apiID, workload}}
	for _, c := range ok {
		if err := CheckReporter(c.reporter, edge(c.k, 1, t0, t0), serves); err != nil {
			t.Errorf("%s reporting %+v: %v", c.reporter, c.k, err)
		}
	}
	otherPort := dest
	otherPort.Port = 9999
	lies := []struct {
		name     string
		reporter spiffeid.ID
		k        Key
	}{
		{"a call made by someone else", apiID, callerKey(Allow)},
		{"a service it does not serve", webID, dest},
		{"a port of its service it does not serve", apiID, otherPort},
		{"another workload", webID, workload},
		{"itself in another namespace", apiID, func() Key { k := workload; k.Namespace = "pay"; return k }()},
	}
	for _, c := range lies {
		if err := CheckReporter(c.reporter, edge(c.k, 1, t0, t0), serves); !errors.Is(err, ErrNotSeen) {
			t.Errorf("%s: %v, want ErrNotSeen", c.name, err)
		}
	}
}

// BenchmarkObserve is the data path's cost per connection: one Observe
// of a key already held, from every CPU at once.
func BenchmarkObserve(b *testing.B) {
	a := NewAggregator(0)
	k := Key{Source: web, Namespace: "shop", Service: "api", Port: 8080, Decision: Allow,
		Rule: "AccessPolicy shop/allow-web allows spiffe://cluster.local/ns/shop/sa/web to shop/api:8080", Side: Caller}
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			a.Observe(k, now)
		}
	})
}
