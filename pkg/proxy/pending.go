package proxy

import (
	"container/list"
	"net"
	"net/netip"
	"sync"
)

// Unauthenticated load. An inbound connection is unauthenticated from
// accept until its mTLS handshake completes (or, in permissive mode, until
// it is passed to the app as plaintext). Anyone who can open a socket can
// hold such connections, so they are kept apart from authenticated ones:
//
//   - they take no slot of MaxConnections (which bounds authenticated
//     tunnels and plaintext passed to the app), so a flood cannot push out
//     a legitimate caller's tunnel;
//   - at most MaxPendingPerSource of them per source IP address: over it,
//     a new one is reset at accept;
//   - at most MaxPending in all: over it, the oldest one that has not yet
//     sent its ClientHello is reset to make room (or, if all have, the
//     oldest), so idle sockets cannot keep a caller that speaks at once
//     from getting in;
//   - the handshake deadline is HandshakeTimeout; while more than half
//     of MaxPending is in use, a new connection must send its ClientHello
//     within PressureHandshakeTimeout (then it gets the full time).
//
// What one costs is bounded (a goroutine, the TLS state, in permissive mode
// the ClientHello peek buffer), and so is their number: that bounds the
// memory a flood can take.

// pendingGate tracks the unauthenticated inbound connections.
type pendingGate struct {
	max, perSource int

	mu       sync.Mutex
	bySource map[netip.Addr]int
	// silent holds the connections that have sent no ClientHello yet,
	// spoke those that have; oldest first in both.
	silent, spoke list.List
}

// pending is one unauthenticated connection.
type pending struct {
	c    net.Conn
	src  netip.Addr
	elem *list.Element // in silent or spoke; nil once passed or evicted
	in   *list.List
	done bool // passed: no longer counted
	// evicted is set (under the gate's lock) when the connection was
	// reset to make room; wasEvicted is what pass found, for the
	// connection's own goroutine.
	evicted, wasEvicted bool
	// slot is set once the connection holds an inbound connection slot
	// (owned by its goroutine).
	slot bool
}

func newPendingGate(max, perSource int) *pendingGate {
	return &pendingGate{max: max, perSource: perSource, bySource: map[netip.Addr]int{}}
}

func sourceOf(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// admit registers c, or returns nil and the reason it is refused
// ("per_source"). A connection evicted to make room is returned too, for
// the caller to reset outside the lock.
func (g *pendingGate) admit(c net.Conn) (pd, evicted *pending, refused string) {
	src := sourceOf(c)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.bySource[src] >= g.perSource {
		return nil, nil, "per_source"
	}
	if g.silent.Len()+g.spoke.Len() >= g.max {
		from := &g.silent
		if from.Len() == 0 {
			from = &g.spoke
		}
		evicted = from.Remove(from.Front()).(*pending)
		evicted.elem, evicted.evicted = nil, true
	}
	pd = &pending{c: c, src: src, in: &g.silent}
	pd.elem = g.silent.PushBack(pd)
	g.bySource[src]++
	return pd, evicted, ""
}

// pressure reports whether more than half of the table is in use.
func (g *pendingGate) pressure() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return 2*(g.silent.Len()+g.spoke.Len()) > g.max
}

// spoke moves pd behind the connections that have sent nothing: it sent
// its ClientHello.
func (g *pendingGate) hello(pd *pending) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if pd.elem != nil && pd.in == &g.silent {
		g.silent.Remove(pd.elem)
		pd.in, pd.elem = &g.spoke, g.spoke.PushBack(pd)
	}
}

// pass ends pd's unauthenticated phase (authenticated, passed to the app,
// or closed). It reports whether pd had been evicted.
func (g *pendingGate) pass(pd *pending) (evicted bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if pd.done {
		return pd.evicted
	}
	pd.done = true
	if pd.elem != nil {
		pd.in.Remove(pd.elem)
		pd.elem = nil
	}
	if n := g.bySource[pd.src] - 1; n > 0 {
		g.bySource[pd.src] = n
	} else {
		delete(g.bySource, pd.src)
	}
	return pd.evicted
}

// count is how many unauthenticated connections are open.
func (g *pendingGate) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.silent.Len() + g.spoke.Len()
}
