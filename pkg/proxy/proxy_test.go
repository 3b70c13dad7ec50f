package proxy_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	tu "github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
	"github.com/tether-mesh/tether/pkg/proxy"
)

var (
	clientID = tu.ID("/ns/default/sa/client")
	serverID = tu.ID("/ns/default/sa/server")
	evilID   = tu.ID("/ns/default/sa/evil")
)

// static is a fixed SVID and bundle.
type static struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

func (s static) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }
func (s static) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.bundle, nil
}

// mesh is one CA whose fake clock the test sets before issuing.
type mesh struct {
	t     *testing.T
	clock *tu.FakeClock
	ca    *identity.CA
}

func newMesh(t *testing.T) *mesh {
	clock := tu.NewFakeClock()
	clock.Set(time.Now().Add(-3 * time.Hour)) // so expired SVIDs can be made
	return &mesh{t: t, clock: clock, ca: tu.NewCA(t, clock, nil)}
}

// identity issues an SVID for id, valid now unless expired is set.
func (m *mesh) identity(id spiffeid.ID, expired bool) static {
	m.t.Helper()
	if expired {
		m.clock.Set(time.Now().Add(-2 * time.Hour))
	} else {
		m.clock.Set(time.Now())
	}
	return m.identityAtClock(id)
}

// identityAtClock issues an SVID for id at the CA clock's current time.
func (m *mesh) identityAtClock(id spiffeid.ID) static {
	m.t.Helper()
	csr, key := tu.NewCSR(m.t, nil, nil)
	iss, err := m.ca.Sign(id, csr)
	if err != nil {
		m.t.Fatal(err)
	}
	var certs []*x509.Certificate
	for _, der := range iss.Chain {
		c, _ := x509.ParseCertificate(der)
		certs = append(certs, c)
	}
	return static{svid: &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}, bundle: m.ca.Bundle().Bundle}
}

func echo(t *testing.T, banner string) string { return tu.EchoServer(t, banner) }

type side struct {
	p       *proxy.Proxy
	addr    string
	reg     *prometheus.Registry
	log     *bytes.Buffer
	logMu   *sync.Mutex
	cancel  context.CancelFunc
	stopped chan error
}

func (s *side) accessLog() string {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	return s.log.String()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func start(t *testing.T, cfg proxy.Config, serve func(p *proxy.Proxy, ctx context.Context, l net.Listener) error) *side {
	t.Helper()
	return startOn(t, "127.0.0.1:0", cfg, serve)
}

// startOn is start with the listener on addr.
func startOn(t *testing.T, addr string, cfg proxy.Config, serve func(p *proxy.Proxy, ctx context.Context, l net.Listener) error) *side {
	t.Helper()
	s := &side{reg: prometheus.NewRegistry(), log: &bytes.Buffer{}, logMu: &sync.Mutex{}, stopped: make(chan error, 1)}
	if cfg.TrustDomain.IsZero() {
		cfg.TrustDomain = tu.TrustDomain
	}
	cfg.Metrics = proxy.NewMetrics(s.reg)
	if cfg.AccessLog == nil {
		cfg.AccessLog = proxy.NewAccessLog(lockedWriter{s.logMu, s.log}, 1)
	}
	p, err := proxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.p, s.addr, s.cancel = p, l.Addr().String(), cancel
	go func() { s.stopped <- serve(p, ctx, l) }()
	t.Cleanup(func() {
		cancel()
		sctx, c := context.WithTimeout(context.Background(), time.Second)
		defer c()
		p.Shutdown(sctx)
	})
	return s
}

func inbound(t *testing.T, id static, app string, cfg proxy.Config) *side {
	cfg.Identity = id
	target, err := proxy.FixedTarget(app)
	if err != nil {
		t.Fatal(err)
	}
	return start(t, cfg, func(p *proxy.Proxy, ctx context.Context, l net.Listener) error { return p.ServeInbound(ctx, l, target) })
}

func outbound(t *testing.T, id static, dest proxy.Destination, cfg proxy.Config) *side {
	cfg.Identity = id
	return start(t, cfg, func(p *proxy.Proxy, ctx context.Context, l net.Listener) error {
		return p.ServeOutbound(ctx, l, proxy.FixedRoute(dest))
	})
}

// roundTrip writes msg and expects it echoed.
func roundTrip(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return errors.New("echo mismatch: " + string(buf))
	}
	return nil
}

func counter(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metric
				}
			}
			total += m.GetCounter().GetValue()
		}
	}
	return total
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tu.Eventually(t, what, 5*time.Second, cond)
}
