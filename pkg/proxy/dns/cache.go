package dns

import (
	"container/list"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// Cache lifetimes: negative answers live for the SOA minimum up to
// maxNegativeTTL; nothing lives longer than maxCacheTTL.
const (
	maxNegativeTTL = 5 * time.Minute
	maxCacheTTL    = time.Hour
)

type cacheKey struct {
	name  string // canonical
	qtype uint16
	class uint16
	edns  bool // answers to EDNS queries carry an OPT record; keep them apart
}

type cacheEntry struct {
	key     cacheKey
	msg     *mdns.Msg // never modified after insertion
	stored  time.Time
	expires time.Time
}

// cache is a bounded LRU of upstream answers, each kept until its TTL ends.
type cache struct {
	size int

	mu    sync.Mutex
	ll    *list.List // front = most recently used; values are *cacheEntry
	items map[cacheKey]*list.Element
}

func newCache(size int) *cache {
	return &cache{size: size, ll: list.New(), items: make(map[cacheKey]*list.Element)}
}

// get returns a copy of the cached answer with TTLs lowered by its age.
func (c *cache) get(k cacheKey, now time.Time) (*mdns.Msg, bool) {
	if c.size <= 0 {
		return nil, false
	}
	c.mu.Lock()
	el, ok := c.items[k]
	if !ok {
		c.mu.Unlock()
		return nil, false
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) {
		c.ll.Remove(el)
		delete(c.items, k)
		c.mu.Unlock()
		return nil, false
	}
	c.ll.MoveToFront(el)
	c.mu.Unlock()

	m := e.msg.Copy()
	age := uint32(now.Sub(e.stored) / time.Second)
	for _, sec := range [][]mdns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			h := rr.Header()
			if h.Rrtype == mdns.TypeOPT {
				continue
			}
			if h.Ttl > age {
				h.Ttl -= age
			} else {
				h.Ttl = 0
			}
		}
	}
	return m, true
}

// put stores resp if it is cacheable: a complete NOERROR or NXDOMAIN answer
// with a non-zero lifetime.
func (c *cache) put(k cacheKey, resp *mdns.Msg, now time.Time) {
	if c.size <= 0 || resp.Truncated {
		return
	}
	ttl, ok := cacheTTL(resp)
	if !ok || ttl <= 0 {
		return
	}
	e := &cacheEntry{key: k, msg: resp.Copy(), stored: now, expires: now.Add(ttl)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		el.Value = e
		c.ll.MoveToFront(el)
		return
	}
	c.items[k] = c.ll.PushFront(e)
	for c.ll.Len() > c.size {
		last := c.ll.Back()
		c.ll.Remove(last)
		delete(c.items, last.Value.(*cacheEntry).key)
	}
}

// cacheTTL is the smallest TTL in a positive answer, or the SOA minimum
// (bounded by the SOA's own TTL) for a negative one.
func cacheTTL(m *mdns.Msg) (time.Duration, bool) {
	negative := m.Rcode == mdns.RcodeNameError || (m.Rcode == mdns.RcodeSuccess && len(m.Answer) == 0)
	if m.Rcode != mdns.RcodeSuccess && m.Rcode != mdns.RcodeNameError {
		return 0, false
	}
	if negative {
		for _, rr := range m.Ns {
			if soa, ok := rr.(*mdns.SOA); ok {
				ttl := time.Duration(min(soa.Minttl, soa.Hdr.Ttl)) * time.Second
				return min(ttl, maxNegativeTTL), true
			}
		}
		return 0, false // no SOA: not cacheable (RFC 2308 section 5)
	}
	ttl := maxCacheTTL
	for _, sec := range [][]mdns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			h := rr.Header()
			if h.Rrtype == mdns.TypeOPT {
				continue
			}
			ttl = min(ttl, time.Duration(h.Ttl)*time.Second)
		}
	}
	return ttl, true
}
