package flows

import (
	"cmp"
	"slices"
	"strings"
	"sync"
	"time"
	"unique"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// Defaults of StoreConfig.
const (
	DefaultMaxEdges            = 100_000
	DefaultMaxEdgesPerReporter = 10_000
	DefaultRetention           = 24 * time.Hour
)

// StoreConfig bounds a Store.
type StoreConfig struct {
	// MaxEdges bounds the edges held (default DefaultMaxEdges).
	MaxEdges int
	// MaxEdgesPerReporter bounds the edges one reporter (SPIFFE ID) may
	// have added and that are still held (default
	// DefaultMaxEdgesPerReporter, at most MaxEdges).
	MaxEdgesPerReporter int
	// Retention drops an edge not seen for this long (default
	// DefaultRetention).
	Retention time.Duration
	// Replica names the Tables the store returns.
	Replica string
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Store is tether-discovery's bounded mesh-wide edge table: the sum of
// the reports sidecars sent this replica. It holds at most MaxEdges edges,
// at most MaxEdgesPerReporter of them added by one reporter, and forgets an
// edge once it has not been seen for Retention. Strings repeated across
// edges (IDs, names, rules) are held once (package unique), so an edge
// costs a fixed size plus its share of the distinct strings; see
// docs/BENCHMARKS.md for the measured bound. Its methods are safe for
// concurrent use.
type Store struct {
	cfg StoreConfig

	mu       sync.Mutex
	edges    map[skey]*sval
	owners   map[unique.Handle[string]]int // edges held, by the reporter that added them
	dropped  uint64
	reports  uint64 // refused
	unsummed uint64 // connections reporters dropped
}

type str = unique.Handle[string]

// skey is a Key with its strings interned.
type skey struct {
	source, namespace, service, workload, rule str
	port                                       uint16
	decision                                   Decision
	side                                       Side
}

type sval struct {
	n           uint64
	first, last int64 // Unix nanoseconds
	owner       str
}

// NewStore returns an empty Store bounded by cfg.
func NewStore(cfg StoreConfig) *Store {
	if cfg.MaxEdges <= 0 {
		cfg.MaxEdges = DefaultMaxEdges
	}
	if cfg.MaxEdgesPerReporter <= 0 {
		cfg.MaxEdgesPerReporter = DefaultMaxEdgesPerReporter
	}
	cfg.MaxEdgesPerReporter = min(cfg.MaxEdgesPerReporter, cfg.MaxEdges)
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Store{cfg: cfg, edges: map[skey]*sval{}, owners: map[str]int{}}
}

// Config is the store's configuration, defaults filled in.
func (s *Store) Config() StoreConfig { return s.cfg }

func intern(k Key) skey {
	// Decision and Side are constants of this package once validated:
	// keep the constants, not the reporter's strings.
	return skey{
		source: unique.Make(k.Source), namespace: unique.Make(k.Namespace), service: unique.Make(k.Service),
		workload: unique.Make(k.Workload), rule: unique.Make(k.Rule), port: k.Port,
		decision: canonicalDecision(k.Decision), side: canonicalSide(k.Side),
	}
}

func canonicalDecision(d Decision) Decision {
	switch d {
	case Allow:
		return Allow
	case Deny:
		return Deny
	}
	return AuditDeny
}

func canonicalSide(s Side) Side {
	if s == Caller {
		return Caller
	}
	return Destination
}

func (k skey) key() Key {
	return Key{Source: k.source.Value(), Namespace: k.namespace.Value(), Service: k.service.Value(),
		Workload: k.workload.Value(), Port: k.port, Decision: k.decision, Rule: k.rule.Value(), Side: k.side}
}

// Add adds the edges of one report from reporter, which the caller has
// checked (ValidateReport, CheckReporter): counts are summed into the
// edges held, first and last seen widened. An edge the store cannot take
// (full, or the reporter's share full) is dropped and counted; unsummed
// is what the reporter says it dropped itself. It returns how many edges
// were taken and dropped.
func (s *Store) Add(reporter string, edges []Edge, unsummed uint64) (taken, dropped int) {
	owner := unique.Make(reporter)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unsummed += unsummed
	for _, e := range edges {
		k := intern(e.Key)
		v, ok := s.edges[k]
		if !ok {
			if len(s.edges) >= s.cfg.MaxEdges || s.owners[owner] >= s.cfg.MaxEdgesPerReporter {
				dropped++
				continue
			}
			v = &sval{first: e.FirstSeen.UnixNano(), last: e.LastSeen.UnixNano(), owner: owner}
			s.edges[k] = v
			s.owners[owner]++
		}
		v.n += e.Connections
		v.first = min(v.first, e.FirstSeen.UnixNano())
		v.last = max(v.last, e.LastSeen.UnixNano())
		taken++
	}
	s.dropped += uint64(dropped)
	return taken, dropped
}

// RefuseReport counts a report refused whole.
func (s *Store) RefuseReport() {
	s.mu.Lock()
	s.reports++
	s.mu.Unlock()
}

// Expire forgets the edges last seen before now minus Retention and
// returns how many.
func (s *Store) Expire() int {
	cut := s.cfg.Now().Add(-s.cfg.Retention).UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k, v := range s.edges {
		if v.last < cut {
			delete(s.edges, k)
			if s.owners[v.owner]--; s.owners[v.owner] <= 0 {
				delete(s.owners, v.owner)
			}
			n++
		}
	}
	return n
}

// Stats are a Store's counters.
type Stats struct {
	Edges          int
	Dropped        uint64
	DroppedReports uint64
	Unsummed       uint64
}

// Stats returns the store's counters.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Edges: len(s.edges), Dropped: s.dropped, DroppedReports: s.reports, Unsummed: s.unsummed}
}

// Filter selects edges of a Table.
type Filter struct {
	// Since, if set, keeps the edges last seen at or after it.
	Since time.Time
	// Namespace, if set, keeps the edges into that namespace or from a
	// workload of it (Key.Involves).
	Namespace string
}

// Involves reports whether k is a call into namespace ns or from a
// workload of ns (a Source of the form spiffe://<td>/ns/<ns>/sa/<sa>).
func (k Key) Involves(ns string) bool {
	if k.Namespace == ns {
		return true
	}
	src, ok := sourceNamespace(k.Source)
	return ok && src == ns
}

func sourceNamespace(s string) (string, bool) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return "", false
	}
	return wire.WorkloadNamespace(id)
}

// Table returns the edges held that f selects, sorted, with the counters:
// GET /debug/flows's body. Expired edges are left out even before Expire
// forgets them.
func (s *Store) Table(f Filter) Table {
	now := s.cfg.Now()
	cut := now.Add(-s.cfg.Retention).UnixNano()
	if !f.Since.IsZero() {
		cut = max(cut, f.Since.UnixNano())
	}
	s.mu.Lock()
	t := Table{Time: now.UTC(), Replica: s.cfg.Replica, Dropped: s.dropped, DroppedReports: s.reports,
		Unsummed: s.unsummed, MaxEdges: s.cfg.MaxEdges, Edges: make([]Edge, 0, len(s.edges))}
	for k, v := range s.edges {
		if v.last < cut || f.Namespace != "" && !k.key().Involves(f.Namespace) {
			continue
		}
		t.Edges = append(t.Edges, Edge{Key: k.key(), Connections: v.n,
			FirstSeen: time.Unix(0, v.first).UTC(), LastSeen: time.Unix(0, v.last).UTC()})
	}
	s.mu.Unlock()
	SortEdges(t.Edges)
	return t
}

// Compare orders keys by source, namespace, service, workload, port,
// decision, rule, side.
func (k Key) Compare(o Key) int {
	return cmp.Or(
		strings.Compare(k.Source, o.Source), strings.Compare(k.Namespace, o.Namespace),
		strings.Compare(k.Service, o.Service), strings.Compare(k.Workload, o.Workload),
		cmp.Compare(k.Port, o.Port), strings.Compare(string(k.Decision), string(o.Decision)),
		strings.Compare(k.Rule, o.Rule), strings.Compare(string(k.Side), string(o.Side)),
	)
}

// SortEdges sorts edges by Key.
func SortEdges(edges []Edge) {
	slices.SortFunc(edges, func(a, b Edge) int { return a.Key.Compare(b.Key) })
}

// Merge merges the tables of several replicas (or reads) into one: the
// counts of an edge several hold are summed and its times widened (each
// report reaches one replica, so the sum counts every connection once);
// the counters are summed, Time is the latest, Replica lists the replicas
// and MaxEdges is the sum of their bounds.
func Merge(tables ...Table) Table {
	var out Table
	byKey := map[Key]int{}
	var replicas []string
	for _, t := range tables {
		if t.Time.After(out.Time) {
			out.Time = t.Time
		}
		if t.Replica != "" {
			replicas = append(replicas, t.Replica)
		}
		out.Dropped += t.Dropped
		out.DroppedReports += t.DroppedReports
		out.Unsummed += t.Unsummed
		out.MaxEdges += t.MaxEdges
		for _, e := range t.Edges {
			i, ok := byKey[e.Key]
			if !ok {
				byKey[e.Key] = len(out.Edges)
				out.Edges = append(out.Edges, e)
				continue
			}
			m := &out.Edges[i]
			m.Connections += e.Connections
			if e.FirstSeen.Before(m.FirstSeen) {
				m.FirstSeen = e.FirstSeen
			}
			if e.LastSeen.After(m.LastSeen) {
				m.LastSeen = e.LastSeen
			}
		}
	}
	slices.Sort(replicas)
	out.Replica = strings.Join(slices.Compact(replicas), ",")
	if out.Edges == nil {
		out.Edges = []Edge{}
	}
	SortEdges(out.Edges)
	return out
}
