package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Identity is the pod's SVID and trust bundle, read at every handshake so
// rotations apply to new connections at once.
type Identity interface {
	x509svid.Source
	x509bundle.Source
}

// Mode is the inbound mode of a pod.
type Mode string

// Inbound modes.
const (
	// Strict accepts only mTLS from the mesh.
	Strict Mode = "strict"
	// Permissive also passes plaintext (and TLS not meant for the mesh)
	// from outside the mesh to the app.
	Permissive Mode = "permissive"
)

// Config configures a Proxy. Zero values take the defaults in fill.
type Config struct {
	// Identity is the SVID presented and the own trust domain's bundle.
	Identity    Identity
	TrustDomain spiffeid.TrustDomain
	// ForeignBundles holds the bundles of the federated trust domains: the
	// peers of another trust domain, both ways, are verified with it (nil:
	// no foreign peer ever verifies). It is never asked for TrustDomain,
	// and a bundle it returns for another domain than asked is refused.
	ForeignBundles x509bundle.Source
	// AcceptForeign decides, at the inbound handshake, whether a caller of
	// another trust domain with a verified SVID may open a tunnel: true
	// when some inbound rule of this workload names it (nil: refuse every
	// foreign caller). Each stream is then decided by Authorize.
	AcceptForeign func(spiffeid.ID) bool
	// Authorize decides inbound connections (nil: AllowAll).
	Authorize Authorizer
	// AuthorizeAudit, when set, decides inbound streams at their start in
	// place of Authorize, and also says when the stream is audit-denied
	// (see AuditAuthorizer). Authorize still re-decides open streams
	// (Revalidate): audit mode never closes one.
	AuthorizeAudit AuditAuthorizer
	// AuthorizeUnauthenticated decides whether a caller with no identity
	// (plaintext or TLS without tether/1, permissive mode) may reach the
	// app's port: nil to allow, or an error wrapping ErrDenied. Default:
	// allow every port when Authorize is nil (nothing is restricted), else
	// deny every port (a policy that cannot say which ports it leaves open
	// restricts them all).
	AuthorizeUnauthenticated func(port uint16) error
	// ReservedPorts are the sidecar's own ports besides the listeners the
	// proxy serves (which are reserved as they start): no stream or
	// plaintext connection is delivered to them, so a connection addressed
	// to the sidecar itself cannot loop through it.
	ReservedPorts []uint16
	// EndStreamsAtSVIDExpiry closes an open stream when an SVID its tunnel
	// was authenticated with expires (the caller's at the destination; the
	// peer's or our own at the caller), counted as reason svid_expired.
	// Off by default: it cuts every long-lived app connection once per
	// SVID lifetime, though both sides hold renewed SVIDs by then.
	EndStreamsAtSVIDExpiry bool
	InboundMode            Mode
	// HandshakeTimeout bounds the mTLS handshake (default 10s).
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection with no bytes either way for this
	// long (default 1h).
	IdleTimeout time.Duration
	// DialTimeout bounds connecting upstream (default 5s).
	DialTimeout time.Duration
	// PeekTimeout is how long permissive mode waits for a client's first
	// bytes before treating it as a server-first plaintext protocol
	// (default 200ms).
	PeekTimeout time.Duration
	// MaxConnections bounds concurrent connections per direction
	// (default 16384): inbound, authenticated tunnels and plaintext passed
	// to the app; unauthenticated ones are bounded apart (pending.go).
	MaxConnections int
	// MaxPending bounds the inbound connections not yet authenticated
	// (default 1024); over it, the oldest silent one is reset.
	MaxPending int
	// MaxPendingPerSource bounds them per source IP address (default
	// 256); over it, new ones from that address are reset at accept.
	MaxPendingPerSource int
	// PressureHandshakeTimeout bounds the wait for the ClientHello, when
	// shorter than HandshakeTimeout, while more than half of MaxPending is
	// in use (default 1s).
	PressureHandshakeTimeout time.Duration
	AccessLog                *AccessLog
	// Observe, if set, is called with every connection's finished Entry,
	// inbound and outbound, whatever the decision, before the access log
	// samples it (the sidecar's flow summary). It runs on the data path:
	// it must be cheap, must not block, and must not keep e.
	Observe func(e *Entry)
	Metrics *Metrics
	Logger  *slog.Logger

	// Denials, if set, keeps the most recent policy denials (the ones the
	// denial metric counts).
	Denials *RecentDenials
}

func (c *Config) fill() error {
	if c.Identity == nil {
		return errors.New("proxy: no identity")
	}
	if c.TrustDomain.IsZero() {
		return errors.New("proxy: no trust domain")
	}
	if c.AuthorizeUnauthenticated == nil {
		c.AuthorizeUnauthenticated = AllowUnauthenticated
		if c.Authorize != nil {
			c.AuthorizeUnauthenticated = DenyUnauthenticated
		}
	}
	if c.Authorize == nil {
		c.Authorize = AllowAll
	}
	switch c.InboundMode {
	case "":
		c.InboundMode = Strict
	case Strict, Permissive:
	default:
		return fmt.Errorf("proxy: inbound mode %q: want strict or permissive", c.InboundMode)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.HandshakeTimeout, 10*time.Second)
	def(&c.IdleTimeout, time.Hour)
	def(&c.DialTimeout, 5*time.Second)
	def(&c.PeekTimeout, 200*time.Millisecond)
	def(&c.PressureHandshakeTimeout, time.Second)
	if c.MaxConnections <= 0 {
		c.MaxConnections = 16384
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 1024
	}
	if c.MaxPendingPerSource <= 0 {
		c.MaxPendingPerSource = 256
	}
	if c.Metrics == nil {
		c.Metrics = NewMetrics(nil)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Proxy relays connections. Serve* run accept loops; Shutdown drains.
type Proxy struct {
	cfg       Config
	serverTLS *tls.Config
	// trust verifies peers: the own domain from Identity, others from
	// ForeignBundles (foreign.go).
	trust     *trustSource
	slots     map[string]chan struct{}
	dialer    net.Dialer
	appDialer net.Dialer // to the app from a source address (LocalTarget)
	pool      *pool
	pending   *pendingGate

	// own has bit p set for every port of this sidecar (ReservedPorts and
	// the listeners it serves): see loop.go.
	own [1 << 16 / 64]atomic.Uint64

	mu    sync.Mutex
	conns map[net.Conn]bool // value: idle between streams
	inUse map[*tunnel]struct{}
	// streams are the open streams Revalidate re-checks (revoke.go).
	streams map[*liveStream]struct{}
	active  sync.WaitGroup
}

// New validates cfg and builds the proxy.
func New(cfg Config) (*Proxy, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	p := &Proxy{
		cfg: cfg, trust: &trustSource{own: cfg.TrustDomain, local: cfg.Identity, foreign: cfg.ForeignBundles}, conns: map[net.Conn]bool{}, inUse: map[*tunnel]struct{}{}, streams: map[*liveStream]struct{}{}, pool: newPool(64, poolTTL),
		slots:     map[string]chan struct{}{"inbound": make(chan struct{}, cfg.MaxConnections), "outbound": make(chan struct{}, cfg.MaxConnections)},
		dialer:    net.Dialer{Timeout: cfg.DialTimeout},
		appDialer: net.Dialer{Timeout: cfg.DialTimeout, Control: bindAddressNoPort},
		pending:   newPendingGate(cfg.MaxPending, cfg.MaxPendingPerSource),
	}
	p.serverTLS = tlsconfig.MTLSServerConfig(cfg.Identity, p.trust, p.authorizeInboundPeer)
	p.serverTLS.MinVersion = tls.VersionTLS13
	p.serverTLS.NextProtos = []string{ALPN}
	p.serverTLS.GetConfigForClient = refuseWithoutALPN
	p.Reserve(cfg.ReservedPorts...)
	return p, nil
}

// clientTLS is the config for originating mTLS to a server that must be
// one of ids.
func (p *Proxy) clientTLS(ids []spiffeid.ID) *tls.Config {
	c := tlsconfig.MTLSClientConfig(p.cfg.Identity, p.trust, tlsconfig.AuthorizeOneOf(ids...))
	c.MinVersion = tls.VersionTLS13
	c.NextProtos = []string{ALPN}
	return c
}

// serve accepts on l until ctx ends, handing each connection to handle in
// its own goroutine. Outbound connections take a slot of the connection
// limit at accept; inbound ones are admitted as unauthenticated (pd) and
// take a slot once authenticated (takeSlot).
func (p *Proxy) serve(ctx context.Context, l net.Listener, direction string, handle func(c net.Conn, pd *pending)) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	if a, ok := l.Addr().(*net.TCPAddr); ok {
		p.Reserve(uint16(a.Port))
	}
	slots := p.slots[direction]
	var tempDelay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, errTooManyFiles) {
				tempDelay = min(max(2*tempDelay, 5*time.Millisecond), time.Second)
				p.cfg.Logger.Warn("accept failed; retrying", slog.String("direction", direction), slog.Any("error", err))
				time.Sleep(tempDelay)
				continue
			}
			return fmt.Errorf("%s accept: %w", direction, err)
		}
		tempDelay = 0
		var pd *pending
		if direction == "inbound" {
			var evicted *pending
			var refused string
			if pd, evicted, refused = p.pending.admit(c); pd == nil {
				p.cfg.Metrics.unauthRejected.WithLabelValues(refused).Inc()
				reset(c)
				continue
			}
			if evicted != nil {
				p.cfg.Metrics.unauthRejected.WithLabelValues("evicted").Inc()
				reset(evicted.c)
			}
			p.cfg.Metrics.unauth.Inc()
		} else {
			select {
			case slots <- struct{}{}:
			default:
				p.cfg.Metrics.overLimits.WithLabelValues(direction).Inc()
				reset(c)
				continue
			}
		}
		p.track(c, true)
		active := p.cfg.Metrics.active.WithLabelValues(direction)
		active.Inc()
		go func() {
			slot := pd == nil
			defer func() {
				active.Dec()
				p.track(c, false)
				if pd != nil {
					slot = p.authenticated(pd)
				}
				if slot {
					<-slots
				}
			}()
			handle(c, pd)
		}()
	}
}

// authenticated ends pd's unauthenticated phase and reports whether it
// holds a connection slot (taken by takeSlot).
func (p *Proxy) authenticated(pd *pending) bool {
	if !pd.done {
		pd.wasEvicted = p.pending.pass(pd)
		p.cfg.Metrics.unauth.Dec()
	}
	return pd.slot
}

// takeSlot ends pd's unauthenticated phase and takes an inbound
// connection slot. When none is free, it counts the rejection and returns
// false: the caller must refuse the connection.
func (p *Proxy) takeSlot(pd *pending) bool {
	p.authenticated(pd)
	select {
	case p.slots["inbound"] <- struct{}{}:
		pd.slot = true
		return true
	default:
		p.cfg.Metrics.overLimits.WithLabelValues("inbound").Inc()
		return false
	}
}

func (p *Proxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.conns[c] = false
		p.active.Add(1)
		return
	}
	delete(p.conns, c)
	p.active.Done()
}

// setIdle marks a tracked inbound tunnel as waiting for its next stream.
func (p *Proxy) setIdle(c net.Conn, idle bool) {
	p.mu.Lock()
	if _, ok := p.conns[c]; ok {
		p.conns[c] = idle
	}
	p.mu.Unlock()
}

// Shutdown waits for open connections to finish until ctx ends, then
// closes the rest. Tunnels idle between streams, inbound or pooled
// outbound, are closed at once. Call it after the Serve contexts are
// cancelled.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.pool.closeAll()
	p.mu.Lock()
	for c, idle := range p.conns {
		if idle {
			c.Close()
		}
	}
	p.mu.Unlock()
	done := make(chan struct{})
	go func() { p.active.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	p.mu.Lock()
	n := len(p.conns)
	for c := range p.conns {
		c.Close()
	}
	for t := range p.inUse {
		t.conn.Close()
	}
	p.mu.Unlock()
	<-done
	return fmt.Errorf("drain deadline passed; closed %d open connections", n)
}

// using marks an outbound tunnel as carrying a stream, so Shutdown can
// close it past the drain deadline.
func (p *Proxy) using(t *tunnel, on bool) {
	p.mu.Lock()
	if on {
		p.inUse[t] = struct{}{}
	} else {
		delete(p.inUse, t)
	}
	p.mu.Unlock()
}

// reset closes c with an RST, so a refused client learns at once.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// peekedConn is a connection whose first bytes sit in a bufio.Reader.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

func (c *peekedConn) CloseWrite() error {
	if cw, ok := c.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
