package identity

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/stats"
)

// Unauthenticated load. Anyone who can reach the CA's port may open a
// connection and complete a TLS handshake without a client certificate
// (that is how a workload bootstraps with a token), so a flood of idle
// connections must not exhaust the CA's memory nor keep legitimate
// callers out. A ConnGate wraps the gRPC listener and its transport
// credentials (the same idea as the sidecar's pending gate in
// pkg/proxy/pending.go, with the CA's states):
//
//   - every connection takes one of MaxConns slots; a connection that
//     has not presented a verified SVID ("unauthenticated") also counts
//     against MaxConnsPerSource of its source IP address, and one over
//     that is closed at accept;
//   - when all slots are taken, a new connection evicts the oldest
//     unauthenticated one: first those that have sent nothing, then those
//     idle after their handshake (no RPC in progress), then those in their
//     TLS handshake, then those with an RPC in progress.
//     Connections authenticated by an SVID are never evicted; only when
//     all slots hold such connections is a new one closed at accept. So
//     idle attackers cannot keep a caller that speaks at once out;
//   - the TLS handshake (and the HTTP/2 preface) must complete within
//     HandshakeTimeout; while more than half of the slots are taken, the
//     ClientHello must arrive within PressureHandshakeTimeout (then the
//     handshake gets the full time);
//   - an unauthenticated connection with no RPC in progress for
//     IdleTimeout is closed; an authenticated one after MaxConnectionIdle
//     (gRPC keepalive: a GOAWAY, the client reconnects when it needs to).
//
// What a connection costs is bounded (a goroutine or three, the TLS state
// and the gRPC transport buffers, see GRPCServer), and so is their number:
// that bounds the memory a flood can take. Refusals, evictions and
// timeouts are counted in tether_ca_connections_refused_total{reason}.

// Defaults of ConnLimits. DefaultMaxConns is sized from bench/ca: a held
// idle connection (half of them TLS-handshaken) costs about 46 KiB, so a
// full table of 2048 keeps tether-ca near 110 MiB, well under the 256Mi
// limit of the chart's tether-ca (charts/tether/templates/ca.yaml).
const (
	DefaultMaxConns                 = 2048
	DefaultMaxConnsPerSource        = 256
	DefaultHandshakeTimeout         = 5 * time.Second
	DefaultPressureHandshakeTimeout = time.Second
	DefaultUnauthIdleTimeout        = 30 * time.Second
	DefaultMaxConnectionIdle        = 5 * time.Minute
)

// Reasons of tether_ca_connections_refused_total.
const (
	RefusedPerSource        = "per_source"
	RefusedFull             = "full"
	RefusedEvicted          = "evicted"
	RefusedHandshakeTimeout = "handshake_timeout"
	RefusedIdleTimeout      = "idle_timeout"
)

// ConnLimits bound the connections on the CA's gRPC port. Zero fields take
// the defaults.
type ConnLimits struct {
	MaxConns                 int
	MaxConnsPerSource        int
	HandshakeTimeout         time.Duration
	PressureHandshakeTimeout time.Duration
	// IdleTimeout closes an unauthenticated connection that has had no
	// RPC in progress for this long.
	IdleTimeout time.Duration
	// MaxConnectionIdle closes an authenticated connection that has had
	// no RPC in progress for this long (gRPC keepalive).
	MaxConnectionIdle time.Duration
}

func (l ConnLimits) withDefaults() ConnLimits {
	set := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	setD := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	set(&l.MaxConns, DefaultMaxConns)
	set(&l.MaxConnsPerSource, DefaultMaxConnsPerSource)
	setD(&l.HandshakeTimeout, DefaultHandshakeTimeout)
	setD(&l.PressureHandshakeTimeout, DefaultPressureHandshakeTimeout)
	setD(&l.IdleTimeout, DefaultUnauthIdleTimeout)
	setD(&l.MaxConnectionIdle, DefaultMaxConnectionIdle)
	return l
}

// Validate refuses negative values (zero means the default).
func (l ConnLimits) Validate() error {
	if l.MaxConns < 0 || l.MaxConnsPerSource < 0 {
		return fmt.Errorf("%w: connection caps must not be negative (got %d total, %d per source)", ErrConfig, l.MaxConns, l.MaxConnsPerSource)
	}
	if l.HandshakeTimeout < 0 || l.PressureHandshakeTimeout < 0 || l.IdleTimeout < 0 || l.MaxConnectionIdle < 0 {
		return fmt.Errorf("%w: connection timeouts must not be negative", ErrConfig)
	}
	return nil
}

type connState int

const (
	stSilent connState = iota // nothing received yet
	stHello                   // TLS handshake under way (bytes received)
	stIdle                    // unauthenticated, no RPC in progress
	stBusy                    // unauthenticated, an RPC in progress
	stAuth                    // presented a verified SVID
	stGone                    // released
)

var stateNames = [...]string{"handshake", "handshake", "unauthenticated", "unauthenticated", "authenticated"}

// evictionOrder: who makes room first. Silent connections and idle ones
// are what an idle flood holds; a caller that speaks at once is in a
// handshake or an RPC.
var evictionOrder = [...]connState{stSilent, stIdle, stHello, stBusy}

// ConnGate enforces ConnLimits; see the comment at the top of this file.
type ConnGate struct {
	lim ConnLimits
	log *slog.Logger

	conns   *prometheus.GaugeVec
	refused *prometheus.CounterVec

	mu       sync.Mutex
	bySource map[netip.Addr]int
	byAddr   map[string]*gatedConn
	// lists holds the unauthenticated connections by state (stSilent,
	// stHello, stIdle, stBusy), oldest first.
	lists      [4]list.List
	auth       int
	lastWarned time.Time
}

// NewConnGate returns a gate for lim; its metrics are registered in reg
// (which may be nil).
func NewConnGate(lim ConnLimits, reg prometheus.Registerer, log *slog.Logger) *ConnGate {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &ConnGate{
		lim: lim.withDefaults(), log: log,
		bySource: map[netip.Addr]int{}, byAddr: map[string]*gatedConn{},
		conns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tether_ca_connections",
			Help: "Open connections on the CA's gRPC port by state (handshake, unauthenticated, authenticated).",
		}, []string{"state"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_ca_connections_refused_total",
			Help: "Connections on the CA's gRPC port refused at accept (per_source, full) or closed early (evicted, handshake_timeout, idle_timeout).",
		}, []string{"reason"}),
	}
	for _, s := range []string{"handshake", "unauthenticated", "authenticated"} {
		g.conns.WithLabelValues(s)
	}
	for _, r := range []string{RefusedPerSource, RefusedFull, RefusedEvicted, RefusedHandshakeTimeout, RefusedIdleTimeout} {
		g.refused.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(g.conns, g.refused)
	}
	return g
}

// Limits returns the limits in force, defaults filled in.
func (g *ConnGate) Limits() ConnLimits { return g.lim }

// Listener wraps the CA's gRPC listener: connections over the caps are
// closed at accept, or make room by evicting.
func (g *ConnGate) Listener(inner net.Listener) net.Listener {
	return &gateListener{Listener: inner, g: g}
}

// ServerOptions are the gRPC server options that complete the gate: creds
// (the CA's TLS credentials) wrapped to time the handshake and to learn
// whether the caller presented an SVID, a stats handler that sees RPCs
// start and end, and the keepalive of authenticated connections. Pass
// them to Server.GRPCServer.
func (g *ConnGate) ServerOptions(creds credentials.TransportCredentials) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(&gateCreds{TransportCredentials: creds, g: g}),
		grpc.StatsHandler(gateStats{g}),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: g.lim.MaxConnectionIdle}),
		grpc.ConnectionTimeout(g.lim.HandshakeTimeout),
	}
}

// Count returns the open connections by state name.
func (g *ConnGate) Count() map[string]int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return map[string]int{
		"handshake":       g.lists[stSilent].Len() + g.lists[stHello].Len(),
		"unauthenticated": g.lists[stIdle].Len() + g.lists[stBusy].Len(),
		"authenticated":   g.auth,
	}
}

func (g *ConnGate) totalLocked() int {
	return g.lists[stSilent].Len() + g.lists[stHello].Len() + g.lists[stIdle].Len() + g.lists[stBusy].Len() + g.auth
}

func sourceAddr(a net.Addr) netip.Addr {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// admit registers c, or returns the reason it is refused. A connection
// evicted to make room is returned for the caller to close outside the
// lock.
func (g *ConnGate) admit(c net.Conn) (gc, evicted *gatedConn, refused string) {
	src := sourceAddr(c.RemoteAddr())
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.bySource[src] >= g.lim.MaxConnsPerSource {
		return nil, nil, RefusedPerSource
	}
	if g.totalLocked() >= g.lim.MaxConns {
		for _, st := range evictionOrder {
			if l := &g.lists[st]; l.Len() > 0 {
				evicted = l.Front().Value.(*gatedConn)
				evicted.evicted = true
				g.releaseLocked(evicted)
				break
			}
		}
		if evicted == nil {
			return nil, nil, RefusedFull
		}
	}
	gc = &gatedConn{Conn: c, g: g, src: src, key: c.RemoteAddr().String(), state: stSilent}
	gc.elem = g.lists[stSilent].PushBack(gc)
	g.bySource[src]++
	g.byAddr[gc.key] = gc
	g.conns.WithLabelValues("handshake").Inc()
	return gc, evicted, ""
}

// moveLocked changes gc's state, keeping lists, counts and gauges.
func (g *ConnGate) moveLocked(gc *gatedConn, to connState) {
	from := gc.state
	if from == to || from == stGone {
		return
	}
	if gc.elem != nil {
		g.lists[from].Remove(gc.elem)
		gc.elem = nil
	}
	if from == stAuth {
		g.auth--
	}
	if from < stAuth && to >= stAuth { // leaves the unauthenticated
		g.dropSourceLocked(gc.src)
	}
	g.conns.WithLabelValues(stateNames[from]).Dec()
	gc.state = to
	switch to {
	case stGone:
		if g.byAddr[gc.key] == gc { // a new connection may reuse the address
			delete(g.byAddr, gc.key)
		}
		gc.stopIdleLocked()
		return
	case stAuth:
		g.auth++
		gc.stopIdleLocked()
	case stIdle:
		gc.elem = g.lists[to].PushBack(gc)
		gc.armIdleLocked()
	default:
		gc.elem = g.lists[to].PushBack(gc)
		gc.stopIdleLocked()
	}
	g.conns.WithLabelValues(stateNames[to]).Inc()
}

func (g *ConnGate) dropSourceLocked(src netip.Addr) {
	if n := g.bySource[src] - 1; n > 0 {
		g.bySource[src] = n
	} else {
		delete(g.bySource, src)
	}
}

func (g *ConnGate) releaseLocked(gc *gatedConn) { g.moveLocked(gc, stGone) }

// pressure reports whether more than half of the slots are taken.
func (g *ConnGate) pressure() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return 2*g.totalLocked() > g.lim.MaxConns
}

// refuse counts a refusal and logs it at most once a minute: a flood must
// not also flood the log.
func (g *ConnGate) refuse(reason string, from net.Addr) {
	g.refused.WithLabelValues(reason).Inc()
	g.mu.Lock()
	if time.Since(g.lastWarned) < time.Minute {
		g.mu.Unlock()
		return
	}
	g.lastWarned = time.Now()
	g.mu.Unlock()
	g.log.Warn("CA port under unauthenticated load: closing connections (tether_ca_connections_refused_total counts them; see docs/ca.md, Unauthenticated load)",
		slog.String("reason", reason), slog.String("from", from.String()),
		slog.Int("max_conns", g.lim.MaxConns), slog.Int("max_conns_per_source", g.lim.MaxConnsPerSource))
}

type gateListener struct {
	net.Listener
	g *ConnGate
}

func (l *gateListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		gc, evicted, refused := l.g.admit(c)
		if evicted != nil {
			evicted.Conn.Close()
			l.g.refuse(RefusedEvicted, evicted.RemoteAddr())
		}
		if gc == nil {
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0) // reset: nothing kept in TIME_WAIT for a flood
			}
			c.Close()
			l.g.refuse(refused, c.RemoteAddr())
			continue
		}
		return gc, nil
	}
}

// gatedConn is one connection on the gate; the gRPC server closes it.
type gatedConn struct {
	net.Conn
	g     *ConnGate
	src   netip.Addr
	key   string
	state connState // under g.mu
	elem  *list.Element
	rpcs  int         // RPCs in progress, under g.mu
	idle  *time.Timer // armed while stIdle
	gen   uint64      // bumps on every arm/stop, so a stale timer does nothing
	// evicted is set (under g.mu) when the gate closed it to make room.
	evicted bool
}

func (c *gatedConn) Close() error {
	err := c.Conn.Close()
	c.g.mu.Lock()
	c.g.releaseLocked(c)
	c.g.mu.Unlock()
	return err
}

func (c *gatedConn) armIdleLocked() {
	c.gen++
	gen := c.gen
	if c.idle != nil {
		c.idle.Stop()
	}
	c.idle = time.AfterFunc(c.g.lim.IdleTimeout, func() { c.idleExpired(gen) })
}

func (c *gatedConn) stopIdleLocked() {
	c.gen++
	if c.idle != nil {
		c.idle.Stop()
		c.idle = nil
	}
}

func (c *gatedConn) idleExpired(gen uint64) {
	c.g.mu.Lock()
	if c.gen != gen || c.state != stIdle {
		c.g.mu.Unlock()
		return
	}
	c.g.releaseLocked(c)
	c.g.mu.Unlock()
	c.Conn.Close()
	c.g.refuse(RefusedIdleTimeout, c.RemoteAddr())
}

// gateCreds times the TLS handshake and records whether the caller
// presented an SVID (which the TLS layer has verified against the bundle).
type gateCreds struct {
	credentials.TransportCredentials
	g *ConnGate
}

func (c *gateCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	gc, ok := raw.(*gatedConn)
	if !ok {
		return c.TransportCredentials.ServerHandshake(raw)
	}
	// gRPC clears the deadline once the HTTP/2 preface is read too.
	start := time.Now()
	hc := &helloConn{Conn: raw, gc: gc, full: start.Add(c.g.lim.HandshakeTimeout)}
	if c.g.pressure() && c.g.lim.PressureHandshakeTimeout < c.g.lim.HandshakeTimeout {
		// Under pressure the ClientHello must come soon; then the
		// handshake gets the full time, so that a legitimate one slowed
		// by the load (or by the flood itself) is not cut.
		raw.SetDeadline(start.Add(c.g.lim.PressureHandshakeTimeout))
	} else {
		raw.SetDeadline(hc.full)
	}
	conn, info, err := c.TransportCredentials.ServerHandshake(hc)
	if err != nil {
		var ne net.Error
		c.g.mu.Lock()
		evicted := gc.evicted
		c.g.mu.Unlock()
		if !evicted && errors.As(err, &ne) && ne.Timeout() {
			c.g.refuse(RefusedHandshakeTimeout, raw.RemoteAddr())
		}
		return nil, nil, err
	}
	to := stIdle
	if ti, ok := info.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
		to = stAuth
	}
	c.g.mu.Lock()
	c.g.moveLocked(gc, to)
	c.g.mu.Unlock()
	return conn, info, nil
}

// helloConn notes the first bytes (the ClientHello): the connection is
// then no longer silent, and gets the full handshake deadline.
type helloConn struct {
	net.Conn
	gc    *gatedConn
	full  time.Time
	heard bool
}

func (c *helloConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.heard {
		c.heard = true
		c.Conn.SetDeadline(c.full)
		g := c.gc.g
		g.mu.Lock()
		if c.gc.state == stSilent {
			g.moveLocked(c.gc, stHello)
		}
		g.mu.Unlock()
	}
	return n, err
}

func (c *gateCreds) Clone() credentials.TransportCredentials {
	return &gateCreds{TransportCredentials: c.TransportCredentials.Clone(), g: c.g}
}

// gateStats sees RPCs start and end on each connection.
type gateStats struct{ g *ConnGate }

type gateConnKey struct{}

func (s gateStats) TagConn(ctx context.Context, info *stats.ConnTagInfo) context.Context {
	if info.RemoteAddr == nil {
		return ctx
	}
	s.g.mu.Lock()
	gc := s.g.byAddr[info.RemoteAddr.String()]
	s.g.mu.Unlock()
	if gc == nil {
		return ctx
	}
	return context.WithValue(ctx, gateConnKey{}, gc)
}

func (gateStats) HandleConn(context.Context, stats.ConnStats)                     {}
func (gateStats) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

func (s gateStats) HandleRPC(ctx context.Context, st stats.RPCStats) {
	var delta int
	switch st.(type) {
	case *stats.Begin:
		delta = 1
	case *stats.End:
		delta = -1
	default:
		return
	}
	gc, _ := ctx.Value(gateConnKey{}).(*gatedConn)
	if gc == nil {
		return
	}
	s.g.mu.Lock()
	defer s.g.mu.Unlock()
	gc.rpcs += delta
	switch {
	case gc.state == stIdle && gc.rpcs > 0:
		s.g.moveLocked(gc, stBusy)
	case gc.state == stBusy && gc.rpcs <= 0:
		s.g.moveLocked(gc, stIdle)
	}
}
