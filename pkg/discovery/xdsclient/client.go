package xdsclient

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/proxy"
)

// Config configures a Client.
type Config struct {
	// Addr is discovery's host:port.
	Addr string
	// ID is this sidecar's SPIFFE ID, sent as node.id; it must be the ID
	// of the SVIDs.
	ID spiffeid.ID
	// PodAddrs are the addresses of the pod this sidecar serves (one per
	// IP family): its inbound decisions are that pod's (see
	// NewViewForPod). Without them, every inbound chain of the identity
	// applies to the pod (fail closed).
	PodAddrs []netip.Addr
	// ServerID is discovery's expected SPIFFE ID; zero accepts any ID of
	// ID's trust domain.
	ServerID spiffeid.ID
	// SVIDs and Bundles are read at every handshake, so rotated SVIDs and
	// bundles are used on the next connection.
	SVIDs   x509svid.Source
	Bundles x509bundle.Source
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Metrics registers the client's metrics; nil: none.
	Metrics prometheus.Registerer
	// MinBackoff and MaxBackoff bound the wait between connection
	// attempts (defaults 200ms and 30s).
	MinBackoff, MaxBackoff time.Duration

	// AdminAddr and Version, if set, are reported to discovery in
	// node.metadata (admin_addr, version; see wire.NodeMetadata), with the
	// current SVID's expiry (svid_expiry), so that operators can find the
	// sidecar (tether status). AdminAddr is host:port with an IP address,
	// or an empty or unspecified host for the address the client connects
	// from.
	AdminAddr string
	Version   string
	// MetadataRefresh is how often the client checks whether the metadata
	// changed and tells discovery (default DefaultMetadataRefresh).
	MetadataRefresh time.Duration
	// KeepaliveTime and KeepaliveTimeout: the client pings discovery after
	// KeepaliveTime without traffic and drops the connection (then
	// reconnects) if no answer comes within KeepaliveTimeout (defaults
	// DefaultKeepaliveTime and DefaultKeepaliveTimeout; gRPC pings no more
	// often than every 10s). An ADS stream is idle while nothing changes:
	// without pings a sidecar whose discovery vanished without closing the
	// connection (its node died) would wait for it forever.
	KeepaliveTime, KeepaliveTimeout time.Duration
}

// Keepalive defaults (see Config). tether-discovery accepts pings every 5s
// or more.
const (
	DefaultKeepaliveTime    = 30 * time.Second
	DefaultKeepaliveTimeout = 10 * time.Second
)

// Client follows discovery over ADS and publishes consistent Views. Its
// methods are safe for concurrent use; Run must be called once.
type Client struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	auth    tlsconfig.Authorizer

	cur   atomic.Pointer[published]
	ready chan struct{}
	once  sync.Once

	errs errLimiter
	// fingerprint identifies the resources of the current view; only
	// Run's goroutine uses it.
	fingerprint [sha256.Size]byte
}

// published is the current view and the channel closed when it is
// replaced.
type published struct {
	view    *View
	changed chan struct{}
}

// ErrBadConfig marks every error New returns.
var ErrBadConfig = errors.New("xds client config")

// New checks cfg, fills in defaults and registers the metrics.
func New(cfg Config) (*Client, error) {
	var errs []error
	if cfg.Addr == "" {
		errs = append(errs, fmt.Errorf("%w: discovery address is required", ErrBadConfig))
	}
	if cfg.ID.IsZero() {
		errs = append(errs, fmt.Errorf("%w: the sidecar's SPIFFE ID is required", ErrBadConfig))
	}
	if cfg.SVIDs == nil || cfg.Bundles == nil {
		errs = append(errs, fmt.Errorf("%w: an SVID source and a bundle source are required", ErrBadConfig))
	}
	if cfg.KeepaliveTime < 0 || cfg.KeepaliveTimeout < 0 {
		errs = append(errs, fmt.Errorf("%w: keepalive time %s and timeout %s must not be negative", ErrBadConfig, cfg.KeepaliveTime, cfg.KeepaliveTimeout))
	}
	if cfg.MinBackoff < 0 || cfg.MaxBackoff < 0 || (cfg.MaxBackoff > 0 && cfg.MinBackoff > cfg.MaxBackoff) {
		errs = append(errs, fmt.Errorf("%w: backoff %s-%s is not a range", ErrBadConfig, cfg.MinBackoff, cfg.MaxBackoff))
	}
	if _, err := wire.ParseNodeMetadata(wire.NodeMetadata{AdminAddr: cfg.AdminAddr, Version: cfg.Version}.Struct()); err != nil {
		errs = append(errs, fmt.Errorf("%w: %w", ErrBadConfig, err))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 200 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = max(30*time.Second, cfg.MinBackoff)
	}
	if cfg.MetadataRefresh <= 0 {
		cfg.MetadataRefresh = DefaultMetadataRefresh
	}
	if cfg.KeepaliveTime == 0 {
		cfg.KeepaliveTime = DefaultKeepaliveTime
	}
	if cfg.KeepaliveTimeout == 0 {
		cfg.KeepaliveTimeout = DefaultKeepaliveTimeout
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	c := &Client{
		cfg:     cfg,
		log:     cfg.Logger.With(slog.String("discovery", cfg.Addr)),
		metrics: m,
		ready:   make(chan struct{}),
	}
	if cfg.ServerID.IsZero() {
		c.auth = tlsconfig.AuthorizeMemberOf(cfg.ID.TrustDomain())
	} else {
		c.auth = tlsconfig.AuthorizeID(cfg.ServerID)
	}
	c.cur.Store(&published{changed: make(chan struct{})})
	return c, nil
}

// View returns the current view: nil until the first complete one.
func (c *Client) View() *View { return c.cur.Load().view }

// Ready is closed once there is a view.
func (c *Client) Ready() <-chan struct{} { return c.ready }

// Changed is closed when the view after the current one is published
// (before the first view: when the first is). To pair it with a view
// without a race, read Changed before View.
func (c *Client) Changed() <-chan struct{} { return c.cur.Load().changed }

// Authorizer returns an inbound proxy.Authorizer that decides with the
// current view, and denies everything until the first view arrives.
func (c *Client) Authorizer() proxy.Authorizer {
	return func(src spiffeid.ID, port uint16) error { return c.View().authorize(src, port) }
}

func (c *Client) publish(v *View) {
	c.metrics.services.Set(float64(len(v.services)))
	prev := c.cur.Load()
	c.cur.Store(&published{view: v, changed: make(chan struct{})})
	close(prev.changed)
	c.once.Do(func() { close(c.ready) })
}

// Run connects to discovery (gRPC with mTLS from the sources), subscribes
// over incremental (delta) ADS (CDS, EDS and LDS wildcard, ECDS for the
// name table by name; discovery sends only what changed), ACKs good
// updates and NACKs bad ones, publishes a new View whenever what it holds
// is consistent, keeps the last good View while discovery is down, and
// reconnects with jittered exponential backoff until ctx ends. It returns
// nil then.
func (c *Client) Run(ctx context.Context) error {
	failures := 0
	for {
		got, err := c.session(ctx)
		c.metrics.connected.Set(0)
		if ctx.Err() != nil {
			return nil
		}
		if got {
			failures = 0
		}
		wait := c.backoff(failures)
		failures++
		c.errs.report(c.log, got, err, wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// backoff returns the wait before attempt n (from 0), between half and
// all of MinBackoff·2ⁿ capped at MaxBackoff.
func (c *Client) backoff(n int) time.Duration {
	d := c.cfg.MinBackoff << min(n, 30)
	if d <= 0 || d > c.cfg.MaxBackoff {
		d = c.cfg.MaxBackoff
	}
	return d/2 + rand.N(d/2+1)
}

// errLimiter logs connection failures: the first of a kind at Warn, the
// same error again within a minute only at Debug, counting how often.
type errLimiter struct {
	mu         sync.Mutex
	last       string
	at         time.Time
	suppressed int
}

const repeatWindow = time.Minute

func (l *errLimiter) reset() {
	l.mu.Lock()
	l.last, l.suppressed = "", 0
	l.mu.Unlock()
}

func (l *errLimiter) report(log *slog.Logger, wasConnected bool, err error, wait time.Duration) {
	msg := "cannot reach discovery; retrying"
	if wasConnected {
		msg = "disconnected from discovery; keeping the last configuration and reconnecting"
	}
	reason := "stream ended"
	if err != nil {
		reason = err.Error()
	}
	attrs := []any{slog.String("reason", reason), slog.Duration("retry_in", wait.Round(time.Millisecond))}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if !wasConnected && reason == l.last && now.Sub(l.at) < repeatWindow {
		l.suppressed++
		log.Debug(msg, attrs...)
		return
	}
	if l.suppressed > 0 {
		attrs = append(attrs, slog.Int("repeated", l.suppressed))
	}
	l.last, l.at, l.suppressed = reason, now, 0
	log.Warn(msg, attrs...)
}

type metrics struct {
	connected  prometheus.Gauge
	updates    *prometheus.CounterVec
	lastUpdate prometheus.Gauge
	services   prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_sidecar_xds_connected",
			Help: "1 while the sidecar has a working ADS stream to discovery.",
		}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_sidecar_xds_updates_total",
			Help: "Updates received from discovery by type (cds, eds, lds, ecds) and result (ack, nack).",
		}, []string{"type", "result"}),
		lastUpdate: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_sidecar_xds_last_update_timestamp_seconds",
			Help: "Unix time of the last update accepted from discovery.",
		}),
		services: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_sidecar_xds_view_services",
			Help: "Services in the current view (those this workload may reach).",
		}),
	}
	if reg != nil {
		for _, col := range []prometheus.Collector{m.connected, m.updates, m.lastUpdate, m.services} {
			if err := reg.Register(col); err != nil {
				return nil, fmt.Errorf("register xds client metrics: %w", err)
			}
		}
	}
	return m, nil
}
