package caserver

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// runService runs a tether-ca from c until the test ends.
func runService(t *testing.T, c Config) *Service {
	t.Helper()
	return testutil.Start(t, "Run", func(ctx context.Context) (*Service, error) { return New(ctx, c) }, (*Service).Run)
}

// startService runs a tether-ca from c until the test ends and returns it
// with the trust bundle it wrote.
func startService(t *testing.T, c Config) (*Service, *x509bundle.Bundle) {
	t.Helper()
	svc := runService(t, c)
	var bundle *x509bundle.Bundle
	var err error
	testutil.Eventually(t, "CA serving", 10*time.Second, func() bool {
		bundle, err = identity.LoadBundlePEM(filepath.Join(c.StoreDir, "bundle.pem"), c.TrustDomain)
		return err == nil && svc.Addr("grpc") != nil && svc.Addr("admin") != nil
	})
	return svc, bundle
}

// attackers holds idle connections to the CA and notices when the CA
// closes them.
type attackers struct {
	mu     sync.Mutex
	conns  []net.Conn
	open   atomic.Int64
	opened atomic.Int64
}

// dial opens one connection from src; with handshake it completes a TLS
// handshake without a client certificate (as a bootstrapping workload
// does) and then sends nothing, else it sends nothing at all.
func (a *attackers) dial(addr, src string, handshake bool) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return
	}
	if handshake {
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS13}) // the attacker does not care who the CA is
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tc.Handshake(); err != nil {
			c.Close()
			return
		}
		tc.SetDeadline(time.Time{})
		c = tc
	}
	a.mu.Lock()
	a.conns = append(a.conns, c)
	a.mu.Unlock()
	a.opened.Add(1)
	a.open.Add(1)
	go func() {
		io.Copy(io.Discard, c) // until the CA closes it
		a.open.Add(-1)
	}()
}

func (a *attackers) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range a.conns {
		c.Close()
	}
}

// flood opens n connections spread over the sources, half of them
// completing a TLS handshake, 64 at a time.
func (a *attackers) flood(addr string, sources []string, n int) {
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			a.dial(addr, sources[i%len(sources)], i%2 == 0)
		}()
	}
	wg.Wait()
}

// metricValue reads one sample from the CA's /metrics.
func metricValue(t *testing.T, svc *Service, name, labels string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + svc.Addr("admin").String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name+labels) + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

// issue bootstraps one SVID with a fresh join token over a new connection,
// trying up to 6 times with backoff from 200ms (as an agent retries: a
// flood of handshakes may evict a handshake); it returns the time taken.
func issue(ctx context.Context, svc *Service, bundle *x509bundle.Bundle, n int) (time.Duration, error) {
	id := testutil.ID(fmt.Sprintf("/ns/default/sa/legit-%d", n))
	tok, _, err := svc.CA().CreateJoinToken(ctx, id, time.Hour, true) // reusable: a retry after a lost answer still works
	if err != nil {
		return 0, err
	}
	start := time.Now()
	for try := 0; ; try++ {
		cl, err := identity.Dial(svc.Addr("grpc").String(), bundle.TrustDomain(), bundle, nil)
		if err != nil {
			return 0, err
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, _, err = cl.FetchSVID(rctx, &cav1.Credential{Kind: identity.KindJoinToken, Token: tok})
		cancel()
		cl.Close()
		if err == nil {
			return time.Since(start), nil
		}
		if try == 5 {
			return 0, err
		}
		time.Sleep(200 * time.Millisecond << try)
	}
}

// TestUnauthenticatedFlood opens 2,000 idle connections (half raw TCP, half
// with a completed TLS handshake and no SVID) from 8 loopback sources
// against a CA capped at 200: the CA never holds more than the cap, closes
// them all within the handshake and idle deadlines, counts them, and
// issues SVIDs to a legitimate caller throughout.
func TestUnauthenticatedFlood(t *testing.T) {
	c := validConfig(t)
	c.ConnLimits = identity.ConnLimits{
		MaxConns: 200, MaxConnsPerSource: 150,
		HandshakeTimeout: 2 * time.Second, PressureHandshakeTimeout: time.Second,
		IdleTimeout: time.Second,
	}
	svc, bundle := startService(t, c)
	addr := svc.Addr("grpc").String()
	ctx := context.Background()

	var sources []string
	for i := 2; i < 10; i++ {
		sources = append(sources, fmt.Sprintf("127.0.0.%d", i))
	}
	a := &attackers{}
	defer a.close()

	floodDone := make(chan struct{})
	go func() { a.flood(addr, sources, 2000); close(floodDone) }()
	// A legitimate caller keeps bootstrapping during the flood.
	var issued, failed int
	for n := 0; ; n++ {
		select {
		case <-floodDone:
		default:
			if _, err := issue(ctx, svc, bundle, n); err != nil {
				failed++
				t.Logf("legitimate issuance %d failed: %v", n, err)
			} else {
				issued++
			}
			continue
		}
		break
	}
	t.Logf("flood: %d attacker connections opened; legitimate issuance during it: %d ok, %d failed", a.opened.Load(), issued, failed)
	if failed > 0 || issued == 0 {
		t.Errorf("legitimate issuance during the flood: %d ok, %d failed", issued, failed)
	}
	// The CA holds at most its cap, whatever was opened.
	testutil.Eventually(t, "attacker connections held at most at the cap", 3*time.Second, func() bool {
		return a.open.Load() <= int64(c.ConnLimits.MaxConns)
	})
	// Issuance still works right after the flood, with the table full.
	if _, err := issue(ctx, svc, bundle, -1); err != nil {
		t.Errorf("legitimate issuance with the table full of attackers: %v", err)
	}
	// None survive the handshake and idle deadlines.
	testutil.Eventually(t, "every attacker connection closed by the deadlines", 5*time.Second, func() bool {
		return a.open.Load() == 0
	})
	for _, reason := range []string{identity.RefusedEvicted, identity.RefusedIdleTimeout} {
		if v := metricValue(t, svc, "tether_ca_connections_refused_total", `{reason="`+reason+`"}`); v == 0 {
			t.Errorf("tether_ca_connections_refused_total{reason=%q} = 0", reason)
		}
	}
}

// TestPerSourceCap: one source cannot hold more than its share of
// unauthenticated connections; others still get in.
func TestPerSourceCap(t *testing.T) {
	c := validConfig(t)
	c.ConnLimits = identity.ConnLimits{MaxConns: 1000, MaxConnsPerSource: 50}
	svc, bundle := startService(t, c)
	addr := svc.Addr("grpc").String()
	a := &attackers{}
	defer a.close()
	a.flood(addr, []string{"127.0.0.2"}, 200)
	testutil.Eventually(t, "one source held at its cap", 3*time.Second, func() bool {
		return a.open.Load() <= 50
	})
	if v := metricValue(t, svc, "tether_ca_connections_refused_total", `{reason="per_source"}`); v < 150 {
		t.Errorf("tether_ca_connections_refused_total{reason=\"per_source\"} = %v, want at least 150", v)
	}
	if _, err := issue(context.Background(), svc, bundle, 0); err != nil {
		t.Errorf("issuance from another source: %v", err)
	}
}

// TestHandshakeDeadline: a connection that never starts its TLS handshake
// is closed after the handshake timeout.
func TestHandshakeDeadline(t *testing.T) {
	c := validConfig(t)
	c.ConnLimits = identity.ConnLimits{HandshakeTimeout: 500 * time.Millisecond}
	svc, _ := startService(t, c)
	conn, err := net.Dial("tcp", svc.Addr("grpc").String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.Copy(io.Discard, conn)
	if took := time.Since(start); err != nil || took > 2*time.Second {
		t.Fatalf("silent connection closed after %v (%v), want about 500ms", took, err)
	}
	testutil.Eventually(t, "the timeout counted", 2*time.Second, func() bool {
		return metricValue(t, svc, "tether_ca_connections_refused_total", `{reason="handshake_timeout"}`) == 1
	})
}

// TestPressureHandshakeDeadline: while more than half of the table is in
// use, a connection must start its handshake within the short deadline,
// but one that has sent its first bytes gets the full time.
func TestPressureHandshakeDeadline(t *testing.T) {
	c := validConfig(t)
	c.ConnLimits = identity.ConnLimits{MaxConns: 4, HandshakeTimeout: 3 * time.Second, PressureHandshakeTimeout: 300 * time.Millisecond}
	svc, _ := startService(t, c)
	addr := svc.Addr("grpc").String()
	closedAfter := func(conn net.Conn, start time.Time, res chan<- time.Duration) {
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.Copy(io.Discard, conn)
		res <- time.Since(start)
	}
	var conns []net.Conn
	for range 4 {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conns = append(conns, conn)
	}
	start := time.Now()
	// The last one speaks: the start of a TLS record, as a slow client's
	// ClientHello would begin.
	if _, err := conns[3].Write([]byte{0x16, 0x03, 0x01}); err != nil {
		t.Fatal(err)
	}
	silent, speaking := make(chan time.Duration, 1), make(chan time.Duration, 1)
	go closedAfter(conns[2], start, silent) // admitted under pressure
	go closedAfter(conns[3], start, speaking)
	if d := <-silent; d > 1500*time.Millisecond {
		t.Errorf("silent connection under pressure closed after %v, want about 300ms", d)
	}
	if d := <-speaking; d < 2*time.Second || d > 5*time.Second {
		t.Errorf("connection that sent its first bytes under pressure closed after %v, want about 3s", d)
	}
}
