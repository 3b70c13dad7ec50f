package proxy

import (
	"sync"
	"time"
)

// pool keeps idle tunnels per destination (address and expected IDs), so
// that a new connection reuses an authenticated one instead of doing a
// handshake.
type pool struct {
	mu      sync.Mutex
	idle    map[string][]*tunnel
	maxIdle int
	// ttl is how long a tunnel may sit idle; the server side waits longer
	// (serverIdle), so the client closes first and never reuses a tunnel the
	// server is about to drop.
	ttl time.Duration
}

// expiryMargin is how long before its expiry a tunnel stops being
// reused: a stream started just before would reach the peer after it
// (scheduling, network, clock skew), and the peer refuses streams from a
// caller whose SVID has expired.
const expiryMargin = 5 * time.Second

func newPool(maxIdle int, ttl time.Duration) *pool {
	return &pool{idle: map[string][]*tunnel{}, maxIdle: maxIdle, ttl: ttl}
}

// get returns an idle tunnel for key whose peer SVID is still valid and
// whose anchors trusted still accepts (see anchor.go), or nil.
func (p *pool) get(key string, trusted func(...anchor) bool) *tunnel {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.idle[key]
	for len(list) > 0 {
		t := list[len(list)-1]
		list = list[:len(list)-1]
		if now.Sub(t.idleSince) < p.ttl && now.Add(expiryMargin).Before(t.peerExpiry) && trusted(t.anchors...) {
			p.idle[key] = list
			return t
		}
		t.conn.Close()
	}
	delete(p.idle, key)
	return nil
}

// put keeps t for reuse, or closes it when the pool for key is full.
func (p *pool) put(key string, t *tunnel) {
	t.idleSince = time.Now()
	p.mu.Lock()
	if len(p.idle[key]) >= p.maxIdle {
		p.mu.Unlock()
		t.conn.Close()
		return
	}
	p.idle[key] = append(p.idle[key], t)
	p.mu.Unlock()
}

// sweep closes tunnels idle for longer than ttl.
func (p *pool) sweep() {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	for key, list := range p.idle {
		keep := list[:0]
		for _, t := range list {
			if now.Sub(t.idleSince) < p.ttl && now.Add(expiryMargin).Before(t.peerExpiry) {
				keep = append(keep, t)
			} else {
				t.conn.Close()
			}
		}
		if len(keep) == 0 {
			delete(p.idle, key)
		} else {
			p.idle[key] = keep
		}
	}
}

// closeAll closes every idle tunnel.
func (p *pool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for key, list := range p.idle {
		for _, t := range list {
			t.conn.Close()
		}
		delete(p.idle, key)
	}
}
