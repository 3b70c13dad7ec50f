package identity

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

type gateClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *gateClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *gateClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// gateCA is a CA on a fake clock whose reports the test records directly,
// with SVID chains the CA really signed.
type gateCA struct {
	t     *testing.T
	ca    *CA
	clock *gateClock
	log   *lockedBuffer
}

func newGateCA(t *testing.T, mod func(*Config)) *gateCA {
	t.Helper()
	store, err := NewDiskStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	g := &gateCA{t: t, clock: &gateClock{now: time.Now()}, log: &lockedBuffer{}}
	cfg := Config{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), Store: store, Clock: g.clock,
		SVIDTTL: time.Hour, PropagationDelay: time.Minute, Replica: "ca-0",
		Logger: slog.New(slog.NewTextHandler(g.log, nil))}
	if mod != nil {
		mod(&cfg)
	}
	if g.ca, err = NewCA(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	return g
}

// svid signs an SVID for path with the active generation and returns its
// chain, leaf first.
func (g *gateCA) svid(path string) []*x509.Certificate {
	g.t.Helper()
	id := spiffeid.RequireFromPath(g.ca.TrustDomain(), path)
	s := g.ca.SignUnrecordedForTest(g.t, id)
	return s.Certificates
}

// anchors returns the anchor fingerprints of the bundle now.
func (g *gateCA) anchors() []string {
	var out []string
	for _, c := range g.ca.Bundle().Bundle.X509Authorities() {
		out = append(out, Fingerprint(c.Raw))
	}
	return out
}

// report records what a sidecar at ip with this chain says it trusts, the
// way Server.Report does.
func (g *gateCA) report(id, instance, ip string, chain []*x509.Certificate, trusted []string) error {
	holds := g.ca.anchorOf(chain)
	return g.ca.reports.Record(ip+":1000", SidecarReport{ID: "spiffe://example.org" + id, Instance: instance, Version: "v-test", PeerIP: ip,
		Trusted: trusted, Holds: holds, Claimed: holds, SVIDSerial: chain[0].SerialNumber.Text(16), SVIDNotAfter: chain[0].NotAfter})
}

// activeRoot is the fingerprint of the active generation's root.
func (g *gateCA) activeRoot() string {
	g.ca.mu.Lock()
	defer g.ca.mu.Unlock()
	return Fingerprint(g.ca.state.active().Roots[0])
}

func (g *gateCA) rotate(step Step, force bool) ([]string, error) {
	return g.ca.RotateStep(context.Background(), step, force)
}

func wantRefused(t *testing.T, err error, contains ...string) {
	t.Helper()
	if !errors.Is(err, ErrRotation) {
		t.Fatalf("err = %v, want a refusal (ErrRotation)", err)
	}
	for _, c := range contains {
		if !strings.Contains(err.Error(), c) {
			t.Errorf("refusal does not say %q:\n%v", c, err)
		}
	}
}

// TestActivateAndRetireGates: activate waits until every reporting sidecar
// trusts the new root and names the one that does not; retire waits while
// a sidecar presents an SVID from the old root; --force takes the step
// with a warning, in the result and in the log.
func TestActivateAndRetireGates(t *testing.T) {
	g := newGateCA(t, nil)
	oldRoot := g.anchors()
	webOld, apiOld := g.svid("/ns/a/sa/web"), g.svid("/ns/a/sa/api")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(g.report("/ns/a/sa/web", "web-1", "10.0.0.1", webOld, oldRoot))
	must(g.report("/ns/a/sa/api", "api-1", "10.0.0.2", apiOld, oldRoot))
	if _, err := g.rotate(StepPrepare, false); err != nil {
		t.Fatal(err)
	}
	both := g.anchors()
	g.clock.Add(2 * time.Minute) // past the propagation delay
	must(g.report("/ns/a/sa/web", "web-1", "10.0.0.1", webOld, both))

	_, err := g.rotate(StepActivate, false)
	wantRefused(t, err, "1 of 2 reporting sidecars do not trust the root of generation 2", "spiffe://example.org/ns/a/sa/api (instance api-1, version v-test", "--force")
	if strings.Contains(err.Error(), "web") {
		t.Errorf("the refusal names web, which trusts the new root: %v", err)
	}
	rs := g.ca.RotationStatus(context.Background())
	if len(rs.Generations) != 2 || rs.Generations[0].Trusting != 2 || rs.Generations[0].Holding != 2 || rs.Generations[1].Trusting != 1 || rs.Generations[1].Holding != 0 {
		t.Errorf("counts %+v, want generation 1 trusted and held by 2, generation 2 trusted by 1", rs.Generations)
	}
	if len(rs.ActivateLaggards) != 1 || rs.ActivateLaggards[0].Instance != "api-1" {
		t.Errorf("activate laggards %+v, want api-1", rs.ActivateLaggards)
	}

	must(g.report("/ns/a/sa/api", "api-1", "10.0.0.2", apiOld, both))
	if w, err := g.rotate(StepActivate, false); err != nil || len(w) != 0 {
		t.Fatalf("activate once every sidecar trusts the new root: warnings %v, err %v", w, err)
	}

	// web renews onto the new root; api keeps its old SVID.
	webNew := g.svid("/ns/a/sa/web")
	must(g.report("/ns/a/sa/web", "web-1", "10.0.0.1", webNew, both))
	g.clock.Add(30 * time.Minute) // api's old SVID (1h) is still valid, reports keep coming
	must(g.report("/ns/a/sa/web", "web-1", "10.0.0.1", webNew, both))
	must(g.report("/ns/a/sa/api", "api-1", "10.0.0.2", apiOld, both))
	_, err = g.rotate(StepRetire, false)
	wantRefused(t, err, "1 of 2 reporting sidecars still hold an SVID chaining to the root of generation 1", "ns/a/sa/api", "instance api-1")
	rs = g.ca.RotationStatus(context.Background())
	if rs.Generations[0].Holding != 1 || rs.Generations[1].Holding != 1 {
		t.Errorf("holding counts %+v, want 1 and 1", rs.Generations)
	}

	// --force retires now, with a warning for each gate it overrode.
	w, err := g.rotate(StepRetire, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(w) != 2 || !strings.Contains(w[0], "--force: retire taken although 1 of 2 reporting sidecars still hold") || !strings.Contains(w[1], "valid until") {
		t.Errorf("warnings %q, want the report gate's and the time gate's", w)
	}
	if !strings.Contains(g.log.String(), "rotation gate overridden with --force") {
		t.Errorf("the override is not logged:\n%s", g.log.String())
	}
}

// TestGatesTrustTheVerifiedChainNotTheClaim: a sidecar that presents an
// old-root SVID while claiming a new-root one still blocks retire (the CA
// verifies the chain itself) and is flagged; a sidecar that claims to
// trust a root it lacks lets activate pass, which only breaks that
// sidecar's own connections.
func TestGatesTrustTheVerifiedChainNotTheClaim(t *testing.T) {
	g := newGateCA(t, nil)
	old := g.svid("/ns/a/sa/liar")
	g.rotate(StepPrepare, false)
	g.clock.Add(2 * time.Minute)
	both := g.anchors()
	newFP := Fingerprint(g.ca.state.find(Prepared).Roots[0])
	rep := SidecarReport{ID: "spiffe://example.org/ns/a/sa/liar", Instance: "liar-1", PeerIP: "10.0.0.9", Trusted: both,
		Holds: g.ca.anchorOf(old), Claimed: newFP, SVIDSerial: old[0].SerialNumber.Text(16), SVIDNotAfter: old[0].NotAfter}
	rep.ClaimMismatch = rep.Claimed != rep.Holds
	if err := g.ca.reports.Record("10.0.0.9:1", rep); err != nil {
		t.Fatal(err)
	}
	if _, err := g.rotate(StepActivate, false); err != nil {
		t.Fatalf("a claim to trust the new root lets activate pass: %v", err)
	}
	g.clock.Add(2 * time.Hour) // past the old generation's retire time; the report is refreshed
	rep.SVIDNotAfter = g.clock.Now().Add(time.Hour)
	g.ca.reports.Record("10.0.0.9:1", rep)
	_, err := g.rotate(StepRetire, false)
	wantRefused(t, err, "liar-1")
	rs := g.ca.RotationStatus(context.Background())
	if len(rs.RetireLaggards) != 1 || !rs.RetireLaggards[0].ClaimMismatch {
		t.Errorf("retire laggards %+v, want the liar flagged with a claim mismatch", rs.RetireLaggards)
	}
}

// TestReportExpiry: a sidecar that stops reporting turns silent after
// ReportMissedHeartbeats intervals and keeps blocking with what it last
// said until the SVID it presented expires; one that leaves is forgotten
// at once.
func TestReportExpiry(t *testing.T) {
	g := newGateCA(t, func(c *Config) { c.ReportInterval = 10 * time.Second })
	chain := g.svid("/ns/a/sa/gone")
	g.report("/ns/a/sa/gone", "gone-1", "10.0.0.3", chain, g.anchors())
	g.report("/ns/a/sa/left", "left-1", "10.0.0.4", g.svid("/ns/a/sa/left"), g.anchors())
	g.rotate(StepPrepare, false)
	g.clock.Add(2 * time.Minute)
	if rs := g.ca.RotationStatus(context.Background()); rs.Reporting != 2 || rs.Silent != 2 {
		t.Errorf("after 2m without reports: reporting %d silent %d, want 2 and 2 (TTL %s)", rs.Reporting, rs.Silent, rs.TTL)
	}
	g.ca.reports.Leave("10.0.0.4:1000", SidecarReport{ID: "spiffe://example.org/ns/a/sa/left", Instance: "left-1", PeerIP: "10.0.0.4"})
	_, err := g.rotate(StepActivate, false)
	wantRefused(t, err, "gone-1", "silent")
	if strings.Contains(err.Error(), "left-1") {
		t.Errorf("a sidecar that left still blocks: %v", err)
	}
	g.clock.Add(time.Until(chain[0].NotAfter) - 2*time.Minute + time.Second)
	if rs := g.ca.RotationStatus(context.Background()); rs.Reporting != 0 {
		t.Errorf("after the silent sidecar's SVID expired: %d reports, want 0", rs.Reporting)
	}
	if _, err := g.rotate(StepActivate, false); err != nil {
		t.Errorf("activate once the silent sidecar's SVID expired: %v", err)
	}
}

// TestReportBound: reports over the bound are refused, and the gates
// refuse until none has been refused for a TTL; a known sidecar keeps
// reporting.
func TestReportBound(t *testing.T) {
	g := newGateCA(t, func(c *Config) { c.MaxReports = 2; c.ReportInterval = 10 * time.Second })
	for i, ip := range []string{"10.0.0.1", "10.0.0.2"} {
		if err := g.report("/ns/a/sa/web", string(rune('a'+i)), ip, g.svid("/ns/a/sa/web"), g.anchors()); err != nil {
			t.Fatal(err)
		}
	}
	err := g.report("/ns/a/sa/web", "c", "10.0.0.3", g.svid("/ns/a/sa/web"), g.anchors())
	if !errors.Is(err, ErrTooManyReports) {
		t.Fatalf("third report with a bound of 2: %v", err)
	}
	if err := g.report("/ns/a/sa/web", "a", "10.0.0.1", g.svid("/ns/a/sa/web"), g.anchors()); err != nil {
		t.Errorf("a known sidecar's report over the bound: %v", err)
	}
	g.rotate(StepPrepare, false)
	g.clock.Add(2 * time.Minute) // past the propagation delay, and more than the TTL (30s) since the refusal
	g.report("/ns/a/sa/web", "a", "10.0.0.1", g.svid("/ns/a/sa/web"), g.anchors())
	g.report("/ns/a/sa/web", "b", "10.0.0.2", g.svid("/ns/a/sa/web"), g.anchors())
	g.report("/ns/a/sa/web", "c", "10.0.0.3", g.svid("/ns/a/sa/web"), g.anchors()) // refused again: incomplete
	_, err = g.rotate(StepActivate, false)
	wantRefused(t, err, "refused sidecar reports over its bound")
	g.clock.Add(31 * time.Second)
	g.report("/ns/a/sa/web", "a", "10.0.0.1", g.svid("/ns/a/sa/web"), g.anchors())
	g.report("/ns/a/sa/web", "b", "10.0.0.2", g.svid("/ns/a/sa/web"), g.anchors())
	if _, err := g.rotate(StepActivate, false); err != nil {
		t.Errorf("activate a TTL after the last refused report: %v", err)
	}
}

// TestPeerReportsMerged: the gates count the other replicas' reports (the
// latest report of a sidecar wins, a replica that stopped publishing is
// left out) and refuse when the other replicas cannot be read.
func TestPeerReportsMerged(t *testing.T) {
	var peers []ReportSnapshot
	var peersErr error
	g := newGateCA(t, func(c *Config) {
		c.PeerReports = func(context.Context) ([]ReportSnapshot, error) { return peers, peersErr }
	})
	chain := g.svid("/ns/b/sa/db")
	g.rotate(StepPrepare, false)
	g.clock.Add(2 * time.Minute)
	now := g.clock.Now()
	lag := SidecarReport{ID: "spiffe://example.org/ns/b/sa/db", Instance: "db-1", PeerIP: "10.0.1.1", Trusted: []string{g.activeRoot()},
		Holds: g.ca.anchorOf(chain), SVIDNotAfter: chain[0].NotAfter, LastReport: now.Add(-5 * time.Second), Replica: "ca-1"}
	peers = []ReportSnapshot{{Replica: "ca-1", PublishedAt: now.Add(-time.Second), TTL: 90 * time.Second, Reports: []SidecarReport{lag}}}
	_, err := g.rotate(StepActivate, false)
	wantRefused(t, err, "db-1")

	// The same sidecar reported since to this replica, trusting both: the
	// latest report wins.
	g.report("/ns/b/sa/db", "db-1", "10.0.1.1", chain, g.anchors())
	if rs := g.ca.RotationStatus(context.Background()); rs.Reporting != 1 || len(rs.ActivateLaggards) != 0 || len(rs.Replicas) != 2 {
		t.Errorf("merged: reporting %d, laggards %d, replicas %v; want 1, 0, [ca-0 ca-1]", rs.Reporting, len(rs.ActivateLaggards), rs.Replicas)
	}
	// A replica that stopped publishing is left out and named stale.
	peers[0].PublishedAt = now.Add(-10 * time.Minute)
	peers[0].Reports[0].LastReport = now
	if rs := g.ca.RotationStatus(context.Background()); len(rs.StaleReplicas) != 1 || rs.StaleReplicas[0] != "ca-1" {
		t.Errorf("stale replicas %v, want [ca-1]", rs.StaleReplicas)
	}
	peersErr = errors.New("configmaps is forbidden")
	_, err = g.rotate(StepActivate, false)
	wantRefused(t, err, "reading the reports of the other CA replicas: configmaps is forbidden")
	peersErr = nil
	if _, err := g.rotate(StepActivate, false); err != nil {
		t.Fatal(err)
	}
}

// TestScheduledActivateWaits: scheduled rotation takes activate only once
// every reporting sidecar trusts the new root, and logs why it waits.
func TestScheduledActivateWaits(t *testing.T) {
	g := newGateCA(t, func(c *Config) { c.AutoRotate = true; c.RootTTL = 60 * 24 * time.Hour })
	chain := g.svid("/ns/a/sa/web")
	ctx := context.Background()
	g.clock.Add(31 * 24 * time.Hour) // half the root's life: prepare
	g.report("/ns/a/sa/web", "web-1", "10.0.0.1", chain, g.anchors())
	if err := g.ca.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if p := g.ca.state.find(Prepared); p == nil {
		t.Fatal("no prepared generation at half the root's life")
	}
	oldOnly := []string{g.activeRoot()}
	g.clock.Add(20 * 24 * time.Hour) // 1/6 left: activate is due
	g.report("/ns/a/sa/web", "web-1", "10.0.0.1", g.svid("/ns/a/sa/web"), oldOnly)
	if err := g.ca.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if g.ca.state.find(Superseded) != nil {
		t.Fatal("scheduled activate taken while web does not trust the new root")
	}
	if !strings.Contains(g.log.String(), "scheduled rotation step waits for the sidecars") || !strings.Contains(g.log.String(), "web-1") {
		t.Errorf("the wait is not logged with the laggard:\n%s", g.log.String())
	}
	g.report("/ns/a/sa/web", "web-1", "10.0.0.1", g.svid("/ns/a/sa/web"), g.anchors())
	if err := g.ca.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if g.ca.state.find(Superseded) == nil {
		t.Error("scheduled activate not taken once web trusts the new root")
	}
}
