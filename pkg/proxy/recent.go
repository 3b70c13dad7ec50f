package proxy

import (
	"sync"
	"time"
	"unicode/utf8"
)

// DefaultRecentDenials is how many denials a RecentDenials keeps when
// NewRecentDenials is given no positive size.
const DefaultRecentDenials = 100

// maxDenialField bounds each string a Denial keeps, so that the memory a
// RecentDenials holds is bounded whatever a rule or destination says.
const maxDenialField = 512

// Denial is one connection refused by this sidecar's policy, as the denial
// metric (tether_sidecar_authz_denials_total) counts it.
type Denial struct {
	Time time.Time `json:"time"`
	// Direction is inbound (a caller was refused) or outbound (the app's
	// call was).
	Direction string `json:"direction"`
	// Source is the caller's SPIFFE ID.
	Source string `json:"source"`
	// Destination is the service and port (outbound) or the app address
	// (inbound) the call was for.
	Destination string `json:"destination"`
	// Rule is the rule that decided, as in the metric's reason label.
	Rule string `json:"rule"`
	// Reason is the refusal as the caller or the log saw it.
	Reason string `json:"reason,omitempty"`
}

// RecentDenials keeps the most recent denials in a fixed-size ring, for
// GET /debug/denials on the sidecar's admin port. Its methods are safe for
// concurrent use, and Add on a nil *RecentDenials does nothing.
type RecentDenials struct {
	now  func() time.Time
	size int

	mu    sync.Mutex
	ring  []Denial
	next  int    // where the next denial goes
	total uint64 // denials ever added
}

// NewRecentDenials keeps the last n denials (DefaultRecentDenials if n is
// not positive), timestamped with now (time.Now if nil).
func NewRecentDenials(n int, now func() time.Time) *RecentDenials {
	if n <= 0 {
		n = DefaultRecentDenials
	}
	if now == nil {
		now = time.Now
	}
	return &RecentDenials{now: now, size: n, ring: make([]Denial, 0, n)}
}

// Add records d, dropping the oldest denial when the ring is full. A zero
// d.Time is set to now; long strings are cut to a bounded length.
func (r *RecentDenials) Add(d Denial) {
	if r == nil {
		return
	}
	if d.Time.IsZero() {
		d.Time = r.now()
	}
	d.Direction, d.Source, d.Destination = clip(d.Direction), clip(d.Source), clip(d.Destination)
	d.Rule, d.Reason = clip(d.Rule), clip(d.Reason)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.total++
	if len(r.ring) < r.size {
		r.ring = append(r.ring, d)
		return
	}
	r.ring[r.next] = d
	r.next = (r.next + 1) % len(r.ring)
}

// List returns the denials kept, newest first, and how many were ever
// added (so a reader can tell how many fell out of the ring).
func (r *RecentDenials) List() (denials []Denial, total uint64) {
	if r == nil {
		return nil, 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Denial, 0, len(r.ring))
	// Oldest is at next once the ring is full, at 0 before.
	for i := len(r.ring) - 1; i >= 0; i-- {
		out = append(out, r.ring[(r.next+i)%len(r.ring)])
	}
	return out, r.total
}

// Cap is how many denials r keeps.
func (r *RecentDenials) Cap() int {
	if r == nil {
		return 0
	}
	return r.size
}

// clip cuts s to maxDenialField bytes on a rune boundary, marking the cut.
func clip(s string) string {
	if len(s) <= maxDenialField {
		return s
	}
	cut := maxDenialField - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
