package identity

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Sidecar reports (docs/ca.md, "Root rotation"): every sidecar tells the CA
// replica it is connected to, over mTLS, which roots it trusts and which
// root its SVID chains to. Root rotation steps wait for them.
const (
	// DefaultReportInterval is how often a sidecar reports when nothing
	// changes (the CA tells it in ReportResponse).
	DefaultReportInterval = 30 * time.Second
	// ReportMissedHeartbeats is how many intervals without a report make a
	// sidecar silent (ReportTTL).
	ReportMissedHeartbeats = 3
	// DefaultMaxReports bounds the reports one replica keeps (and the
	// bundle-watching connections without reports it lists). Reports over
	// the bound are refused, and the gates refuse too until none has been
	// refused for a report TTL: counts that miss sidecars cannot prove
	// that every sidecar is ready.
	DefaultMaxReports = 10000
)

// ErrTooManyReports is returned for a report over the replica's bound.
var ErrTooManyReports = errors.New("too many sidecar reports")

// SidecarReport is what the CA knows about one sidecar instance. Trusted
// is the sidecar's own claim; Holds is verified by the CA from the SVID
// chain the sidecar presented on the connection it reported over.
type SidecarReport struct {
	ID       string `json:"id"`
	Instance string `json:"instance,omitempty"`
	Version  string `json:"version,omitempty"`
	// PeerIP is the address the report came from; with ID and Instance it
	// keys the report, so that a caller cannot overwrite the report of an
	// instance at another address by naming it.
	PeerIP string `json:"ip"`
	// Trusted are the SHA-256 (hex) of the authorities of the bundle the
	// sidecar says it applied.
	Trusted        []string `json:"trusted"`
	BundleSequence uint64   `json:"seq,omitempty"`
	// Holds is the SHA-256 of the trust anchor the presented SVID chain
	// verifies against ("" if none the CA still knows).
	Holds string `json:"holds,omitempty"`
	// Claimed is the anchor the sidecar says its SVID chains to;
	// ClaimMismatch is set when it names the SVID presented (same serial)
	// and differs from Holds.
	Claimed       string    `json:"claimed,omitempty"`
	ClaimMismatch bool      `json:"mismatch,omitempty"`
	SVIDSerial    string    `json:"serial,omitempty"`
	SVIDNotAfter  time.Time `json:"svid_not_after"`
	LastReport    time.Time `json:"last"`
	Replica       string    `json:"replica,omitempty"`

	// conn is the connection (remote address) the last report came over.
	conn string
}

func (r *SidecarReport) key() string { return r.ID + "\x00" + r.Instance + "\x00" + r.PeerIP }

// sameContent reports whether a and b say the same (times aside).
func (r *SidecarReport) sameContent(o *SidecarReport) bool {
	return slices.Equal(r.Trusted, o.Trusted) && r.Holds == o.Holds && r.Claimed == o.Claimed && r.ClaimMismatch == o.ClaimMismatch &&
		r.Version == o.Version && r.SVIDSerial == o.SVIDSerial && r.BundleSequence == o.BundleSequence
}

// Silent reports whether the sidecar has not reported for ttl.
func (r *SidecarReport) Silent(now time.Time, ttl time.Duration) bool {
	return !now.Before(r.LastReport.Add(ttl))
}

// expired reports whether the report no longer counts: the sidecar is
// silent and the SVID it presented has expired (it cannot serve any more),
// or it is silent for longer than maxSilence.
func (r *SidecarReport) expired(now time.Time, ttl, maxSilence time.Duration) bool {
	if !r.Silent(now, ttl) {
		return false
	}
	return !now.Before(r.SVIDNotAfter) || (maxSilence > 0 && !now.Before(r.LastReport.Add(maxSilence)))
}

// NotReportingConn is a connection that watches the trust bundle over
// mTLS but has sent no report (an older sidecar).
type NotReportingConn struct {
	ID      string    `json:"id"`
	Peer    string    `json:"peer"`
	Since   time.Time `json:"since"`
	Replica string    `json:"replica,omitempty"`
}

// ReportSnapshot is one replica's reports at one time, as replicas share
// them.
type ReportSnapshot struct {
	Replica     string        `json:"replica"`
	PublishedAt time.Time     `json:"published_at"`
	Interval    time.Duration `json:"interval"`
	TTL         time.Duration `json:"ttl"`
	// Incomplete: the replica refused reports over its bound within the
	// last TTL.
	Incomplete   bool               `json:"incomplete,omitempty"`
	Reports      []SidecarReport    `json:"reports"`
	NotReporting []NotReportingConn `json:"not_reporting,omitempty"`
}

// Reports keeps the sidecar reports one replica received. It is safe for
// concurrent use and holds at most max reports and max watching
// connections.
type Reports struct {
	replica    string
	interval   time.Duration
	ttl        time.Duration
	maxSilence time.Duration
	max        int
	clock      Clock

	mu      sync.Mutex
	entries map[string]*SidecarReport
	byConn  map[string]string // connection → report key
	watches map[string]*NotReportingConn
	refused time.Time // when a report over the bound was last refused
	changed chan struct{}
}

// ReportsConfig configures Reports.
type ReportsConfig struct {
	// Replica names this CA replica (its pod name).
	Replica string
	// Interval is the heartbeat asked of sidecars (default
	// DefaultReportInterval); a sidecar that misses ReportMissedHeartbeats
	// of them is silent.
	Interval time.Duration
	// MaxSilence drops a silent sidecar's report after this long even if
	// its SVID has not expired (default: the SVID lifetime, set by the CA).
	MaxSilence time.Duration
	// Max bounds the reports kept (default DefaultMaxReports).
	Max   int
	Clock Clock
}

// NewReports makes an empty report registry.
func NewReports(cfg ReportsConfig) *Reports {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultReportInterval
	}
	if cfg.Max <= 0 {
		cfg.Max = DefaultMaxReports
	}
	if cfg.Clock == nil {
		cfg.Clock = RealClock
	}
	return &Reports{replica: cfg.Replica, interval: cfg.Interval, ttl: cfg.Interval * ReportMissedHeartbeats, maxSilence: cfg.MaxSilence,
		max: cfg.Max, clock: cfg.Clock, entries: map[string]*SidecarReport{}, byConn: map[string]string{},
		watches: map[string]*NotReportingConn{}, changed: make(chan struct{})}
}

// Interval is the heartbeat interval asked of sidecars.
func (r *Reports) Interval() time.Duration { return r.interval }

// TTL is how long after its last report a sidecar counts as reporting.
func (r *Reports) TTL() time.Duration { return r.ttl }

// Changed returns a channel closed at the next change of what a snapshot
// would hold (other than report times).
func (r *Reports) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

func (r *Reports) notifyLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// Record stores a report received over connection conn (the remote
// address). rep.ID must come from the verified peer certificate.
func (r *Reports) Record(conn string, rep SidecarReport) error {
	now := r.clock.Now()
	rep.LastReport, rep.Replica, rep.conn = now, r.replica, conn
	rep.Trusted = slices.Clone(rep.Trusted)
	slices.Sort(rep.Trusted)
	rep.Trusted = slices.Compact(rep.Trusted)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pruneLocked(now)
	k := rep.key()
	cur, ok := r.entries[k]
	if !ok && len(r.entries) >= r.max {
		r.refused = now
		return fmt.Errorf("%w: this CA replica keeps at most %d; the rotation gates refuse until reports fit (or use --force)", ErrTooManyReports, r.max)
	}
	if old, ok := r.byConn[conn]; ok && old != k {
		delete(r.entries, old) // the connection now reports as another instance
	}
	r.byConn[conn] = k
	r.entries[k] = &rep
	if !ok || !cur.sameContent(&rep) || cur.Silent(now, r.ttl) {
		r.notifyLocked()
	}
	if _, ok := r.watches[conn]; ok {
		delete(r.watches, conn)
		r.notifyLocked()
	}
	return nil
}

// Leave forgets the report of the instance that reported over conn (it is
// shutting down).
func (r *Reports) Leave(conn string, rep SidecarReport) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := rep.key()
	if _, ok := r.entries[k]; ok {
		delete(r.entries, k)
		r.notifyLocked()
	}
	delete(r.byConn, conn)
}

// Watching records that conn (a connection presenting id) watches the
// trust bundle; the returned function ends it. Until a report comes over
// conn it is listed as not reporting.
func (r *Reports) Watching(conn, id string) (done func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, reported := r.byConn[conn]; !reported && len(r.watches) < r.max {
		r.watches[conn] = &NotReportingConn{ID: id, Peer: conn, Since: r.clock.Now(), Replica: r.replica}
		r.notifyLocked()
	}
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if _, ok := r.watches[conn]; ok {
			delete(r.watches, conn)
			r.notifyLocked()
		}
		delete(r.byConn, conn)
	}
}

// pruneLocked drops the reports that no longer count.
func (r *Reports) pruneLocked(now time.Time) {
	for k, e := range r.entries {
		if e.expired(now, r.ttl, r.maxSilence) {
			delete(r.entries, k)
			if r.byConn[e.conn] == k {
				delete(r.byConn, e.conn)
			}
			r.notifyLocked()
		}
	}
}

// Snapshot returns the reports that count now, sorted by SPIFFE ID and
// instance.
func (r *Reports) Snapshot() ReportSnapshot {
	now := r.clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pruneLocked(now)
	s := ReportSnapshot{Replica: r.replica, PublishedAt: now, Interval: r.interval, TTL: r.ttl,
		Incomplete: !r.refused.IsZero() && now.Before(r.refused.Add(r.ttl)),
		Reports:    make([]SidecarReport, 0, len(r.entries))}
	for _, e := range r.entries {
		s.Reports = append(s.Reports, *e)
	}
	for _, w := range r.watches {
		s.NotReporting = append(s.NotReporting, *w)
	}
	sortReports(s.Reports)
	slices.SortFunc(s.NotReporting, func(a, b NotReportingConn) int {
		return cmpStrings(a.ID+"\x00"+a.Peer, b.ID+"\x00"+b.Peer)
	})
	return s
}

func sortReports(rs []SidecarReport) {
	slices.SortFunc(rs, func(a, b SidecarReport) int { return cmpStrings(a.key(), b.key()) })
}

func cmpStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// MergeSnapshots merges replicas' snapshots: for a sidecar that reported
// to several replicas (it reconnected), the latest report wins. A
// snapshot published more than its TTL before now is left out (its replica
// is gone; its sidecars reconnect elsewhere) and named in stale. Reports
// that expired since their snapshot was published are dropped.
func MergeSnapshots(now time.Time, snaps []ReportSnapshot) (merged ReportSnapshot, replicas, stale []string) {
	byKey := map[string]SidecarReport{}
	for _, s := range snaps {
		if !now.Before(s.PublishedAt.Add(s.TTL)) {
			stale = append(stale, s.Replica)
			continue
		}
		replicas = append(replicas, s.Replica)
		merged.Incomplete = merged.Incomplete || s.Incomplete
		merged.TTL, merged.Interval = max(merged.TTL, s.TTL), max(merged.Interval, s.Interval)
		for _, r := range s.Reports {
			if r.expired(now, s.TTL, 0) {
				continue
			}
			if cur, ok := byKey[r.key()]; !ok || r.LastReport.After(cur.LastReport) {
				byKey[r.key()] = r
			}
		}
		merged.NotReporting = append(merged.NotReporting, s.NotReporting...)
	}
	for _, r := range byKey {
		merged.Reports = append(merged.Reports, r)
	}
	sortReports(merged.Reports)
	merged.PublishedAt = now
	slices.Sort(replicas)
	slices.Sort(stale)
	return merged, replicas, stale
}
