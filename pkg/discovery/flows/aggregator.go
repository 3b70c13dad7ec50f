package flows

import (
	"sync"
	"sync/atomic"
	"time"
)

// DefaultAggregatorKeys is how many distinct keys an Aggregator holds
// between two reports when NewAggregator is given no positive bound: as
// many as one report may carry.
const DefaultAggregatorKeys = MaxReportEdges

// Aggregator is the sidecar's bounded summary of the connections it saw
// since its last report. Observe is on the data path: it takes a mutex
// held only for one map lookup and update, never waits on the network, and
// once the summary holds its bound of distinct keys it counts a new key as
// dropped instead of growing. Its methods are safe for concurrent use.
type Aggregator struct {
	max     int
	dropped atomic.Uint64 // connections whose key did not fit, since the last Flush

	mu    sync.Mutex
	edges map[Key]*counts
}

type counts struct {
	n           uint64
	first, last time.Time
}

// NewAggregator holds at most max distinct keys (DefaultAggregatorKeys if
// max is not positive).
func NewAggregator(max int) *Aggregator {
	if max <= 0 {
		max = DefaultAggregatorKeys
	}
	return &Aggregator{max: max, edges: make(map[Key]*counts)}
}

// Max is the bound on distinct keys.
func (a *Aggregator) Max() int { return a.max }

// Observe counts one connection of k seen at t. It reports false when the
// summary is full and k is not in it: the connection is counted as
// dropped.
func (a *Aggregator) Observe(k Key, t time.Time) bool {
	return a.add(k, 1, t, t)
}

func (a *Aggregator) add(k Key, n uint64, first, last time.Time) bool {
	a.mu.Lock()
	c, ok := a.edges[k]
	if !ok {
		if len(a.edges) >= a.max {
			a.mu.Unlock()
			a.dropped.Add(n)
			return false
		}
		a.edges[k] = &counts{n: n, first: first, last: last}
		a.mu.Unlock()
		return true
	}
	c.n += n
	if first.Before(c.first) {
		c.first = first
	}
	if last.After(c.last) {
		c.last = last
	}
	a.mu.Unlock()
	return true
}

// Flush takes what was seen since the last Flush, and the connections
// dropped since then, and empties the summary.
func (a *Aggregator) Flush() (edges []Edge, dropped uint64) {
	a.mu.Lock()
	m := a.edges
	a.edges = make(map[Key]*counts, len(m))
	dropped = a.dropped.Swap(0)
	a.mu.Unlock()
	edges = make([]Edge, 0, len(m))
	for k, c := range m {
		edges = append(edges, Edge{Key: k, Connections: c.n, FirstSeen: c.first.UTC(), LastSeen: c.last.UTC()})
	}
	SortEdges(edges)
	return edges, dropped
}

// Restore puts back edges a report could not deliver, so that the next
// report carries them, and the dropped count with them. What no longer
// fits is counted as dropped; it returns how many connections that was.
func (a *Aggregator) Restore(edges []Edge, dropped uint64) uint64 {
	var lost uint64
	for _, e := range edges {
		if !a.add(e.Key, e.Connections, e.FirstSeen, e.LastSeen) {
			lost += e.Connections
		}
	}
	a.dropped.Add(dropped)
	return lost
}

// Len is how many distinct keys the summary holds now.
func (a *Aggregator) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.edges)
}
