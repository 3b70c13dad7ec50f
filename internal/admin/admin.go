// Package admin serves the admin HTTP port every Tether component has:
// liveness, readiness and Prometheus metrics, which the kubelet and
// Prometheus reach on the pod IP, and handlers that answer only callers on
// the pod's loopback (LocalOnly). Every admin server has the same bounds
// (Limits): read-header, read, write and idle timeouts and a cap on open
// connections, so callers that open sockets and say nothing cannot exhaust
// the process's file descriptors.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tether-mesh/tether/internal/version"
)

// Limits bound what callers can hold on an admin port. Zero fields take
// the value of DefaultLimits.
type Limits struct {
	// ReadHeaderTimeout closes a connection whose request headers have not
	// all arrived this long after it started reading them.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, WriteTimeout writing
	// its response.
	ReadTimeout, WriteTimeout time.Duration
	// IdleTimeout closes a keep-alive connection with no request for
	// this long.
	IdleTimeout time.Duration
	// MaxConns is how many connections may be open at once; more are
	// closed as soon as they are accepted.
	MaxConns int
	// MaxHeaderBytes bounds a request's headers.
	MaxHeaderBytes int
}

// DefaultLimits are generous for the kubelet (a probe every few seconds),
// Prometheus (one scrape at a time) and an operator, and small against a
// flood: an attacker's silent connection is gone after ReadHeaderTimeout.
var DefaultLimits = Limits{
	ReadHeaderTimeout: 5 * time.Second,
	ReadTimeout:       10 * time.Second,
	WriteTimeout:      30 * time.Second,
	IdleTimeout:       30 * time.Second,
	MaxConns:          64,
	MaxHeaderBytes:    16 << 10,
}

// withDefaults is l with each field that is not positive taken from
// DefaultLimits.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits
	d.ReadHeaderTimeout = positiveOr(l.ReadHeaderTimeout, d.ReadHeaderTimeout)
	d.ReadTimeout = positiveOr(l.ReadTimeout, d.ReadTimeout)
	d.WriteTimeout = positiveOr(l.WriteTimeout, d.WriteTimeout)
	d.IdleTimeout = positiveOr(l.IdleTimeout, d.IdleTimeout)
	d.MaxConns = positiveOr(l.MaxConns, d.MaxConns)
	d.MaxHeaderBytes = positiveOr(l.MaxHeaderBytes, d.MaxHeaderBytes)
	return d
}

// positiveOr is v if it is positive, else def.
func positiveOr[T time.Duration | int](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}

// Metrics count what the admin bounds refuse.
type Metrics struct {
	open    prometheus.Gauge
	refused *prometheus.CounterVec
}

// Refusal reasons, the reason label of tether_admin_refused_total.
const (
	ReasonConnectionCap = "connection_cap"
	ReasonNotLoopback   = "not_loopback"
)

// NewMetrics registers tether_admin_connections (open now) and
// tether_admin_refused_total{reason} (connections over the cap, requests
// for loopback-only paths from elsewhere) with reg, labelled
// component=part (sidecar, discovery, ca, injector).
func NewMetrics(part string, reg prometheus.Registerer) *Metrics {
	component := prometheus.Labels{"component": part}
	m := &Metrics{
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Name:        "tether_admin_connections",
			Help:        "Connections open on the admin port.",
			ConstLabels: component,
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "tether_admin_refused_total",
			Help:        "Admin connections closed because the connection cap was reached (connection_cap), and requests for a loopback-only path from another address (not_loopback).",
			ConstLabels: component,
		}, []string{"reason"}),
	}
	m.refused.WithLabelValues(ReasonConnectionCap)
	m.refused.WithLabelValues(ReasonNotLoopback)
	reg.MustRegister(m.open, m.refused)
	return m
}

func (m *Metrics) refuse(reason string) {
	if m != nil {
		m.refused.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) add(d float64) {
	if m != nil {
		m.open.Add(d)
	}
}

// HTTPServer returns a server for h with the limits' timeouts. It marks
// each connection's context for LocalOnly; serve it on Listener(l).
func (l Limits) HTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	l = l.withDefaults()
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: l.ReadHeaderTimeout,
		ReadTimeout:       l.ReadTimeout,
		WriteTimeout:      l.WriteTimeout,
		IdleTimeout:       l.IdleTimeout,
		MaxHeaderBytes:    l.MaxHeaderBytes,
		ConnContext:       connContext,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

// Listener caps the connections open on inner at the limits' MaxConns:
// one accepted beyond that is closed at once (and counted in m, which
// may be nil). A slot frees when the server closes the connection, which
// the timeouts guarantee for a caller that stalls.
func (l Limits) Listener(inner net.Listener, m *Metrics, log *slog.Logger) net.Listener {
	l = l.withDefaults()
	return &capListener{Listener: inner, slots: make(chan struct{}, l.MaxConns), m: m, log: log}
}

type capListener struct {
	net.Listener
	slots chan struct{}
	m     *Metrics
	log   *slog.Logger

	mu         sync.Mutex
	lastWarned time.Time
}

func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			l.m.add(1)
			return &capConn{Conn: c, release: sync.OnceFunc(func() { <-l.slots; l.m.add(-1) })}, nil
		default:
			c.Close()
			l.m.refuse(ReasonConnectionCap)
			l.warn(c.RemoteAddr())
		}
	}
}

// warn logs a refusal at most once a minute: a flood must not also flood
// the log.
func (l *capListener) warn(from net.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if time.Since(l.lastWarned) < time.Minute {
		return
	}
	l.lastWarned = time.Now()
	l.log.Warn("admin port: connection cap reached; closing new connections until some end",
		slog.Int("max_conns", cap(l.slots)), slog.String("from", from.String()))
}

type capConn struct {
	net.Conn
	release func()
}

func (c *capConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}

type localKey struct{}

// connContext records where a connection came from and went to.
func connContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, localKey{}, [2]net.Addr{c.LocalAddr(), c.RemoteAddr()})
}

func addrOf(a net.Addr) netip.Addr {
	if t, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(t.IP); ok {
			return ip.Unmap()
		}
	}
	return netip.Addr{}
}

// DeliverySource is the loopback address the sidecar connects from when it
// delivers a remote caller's connection (capture.DeliverySource, which
// internal/sidecar's tests check against this): a connection from it is
// not a local caller, whatever its addresses say.
var DeliverySource = netip.AddrFrom4([4]byte{127, 0, 0, 6})

// IsLoopback reports whether r came over a connection between two
// loopback addresses (127.0.0.0/8 or ::1), not from DeliverySource. Only a
// process in the same network namespace can open such a connection: the
// kernel drops packets for a loopback address that arrive on any other
// interface.
func IsLoopback(r *http.Request) bool {
	addrs, ok := r.Context().Value(localKey{}).([2]net.Addr)
	if !ok {
		return false // not served by HTTPServer: refuse
	}
	local, remote := addrOf(addrs[0]), addrOf(addrs[1])
	return local.IsLoopback() && remote.IsLoopback() && remote != DeliverySource
}

// LocalOnly serves h only to callers IsLoopback accepts; others get 403
// with a message saying where the path is served, and are counted in m
// (which may be nil).
func LocalOnly(h http.Handler, m *Metrics) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !IsLoopback(r) {
			m.refuse(ReasonNotLoopback)
			http.Error(w, r.Method+" "+r.URL.Path+" is served only to callers on loopback (127.0.0.1 or ::1) in the same pod or host: "+
				"run the request there (kubectl exec, kubectl port-forward)", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Server is an admin HTTP server.
type Server struct {
	// Mux answers every caller: register loopback-only handlers with
	// HandleLocal.
	Mux     *http.ServeMux
	srv     *http.Server
	limits  Limits
	metrics *Metrics
	log     *slog.Logger
}

// Option configures New.
type Option func(*Server)

// WithLimits replaces DefaultLimits.
func WithLimits(l Limits) Option { return func(s *Server) { s.limits = l } }

// WithMetrics registers the admin port's metrics as tether_<part>_admin_...
// with reg.
func WithMetrics(part string, reg prometheus.Registerer) Option {
	return func(s *Server) { s.metrics = NewMetrics(part, reg) }
}

// New serves /healthz (always ok while the process runs), /readyz (ok while
// ready returns nil), /metrics (from gatherer) and /version
// (VersionHandler) on addr, to every caller.
func New(addr string, ready func() error, gatherer prometheus.Gatherer, log *slog.Logger, opts ...Option) *Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	mux.Handle("GET /version", VersionHandler())
	s := &Server{Mux: mux, log: log}
	for _, o := range opts {
		o(s)
	}
	s.srv = s.limits.HTTPServer(mux, log)
	s.srv.Addr = addr
	return s
}

// VersionInfo is what GET /version answers, as JSON: the release and the
// VCS revision of the running binary (internal/version), for
// `tether version` and `tether check`.
type VersionInfo struct {
	Version  string `json:"version"`
	Revision string `json:"revision"`
}

// VersionHandler answers GET /version with this binary's VersionInfo.
func VersionHandler() http.Handler {
	body, err := json.Marshal(VersionInfo{Version: version.Version, Revision: version.Revision()})
	if err != nil {
		panic(err) // two strings always encode
	}
	body = append(body, '\n')
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	})
}

// HandleLocal registers h for pattern, answered only to callers on
// loopback (LocalOnly).
func (s *Server) HandleLocal(pattern string, h http.HandlerFunc) {
	s.Mux.Handle(pattern, LocalOnly(h, s.metrics))
}

// Run serves until ctx ends, then shuts down within a few seconds.
func (s *Server) Run(ctx context.Context) error {
	l, err := net.Listen("tcp", s.srv.Addr)
	if err != nil {
		return fmt.Errorf("admin listener: %w", err)
	}
	return s.Serve(ctx, l)
}

// Serve is Run on a listener the caller made.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.limits.Listener(l, s.metrics, s.log)) }()
	s.log.Info("admin server listening", slog.String("addr", l.Addr().String()))
	select {
	case err := <-errc:
		return fmt.Errorf("admin server: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}
