package dns

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
)

// shutdownTimeout bounds how long Run waits for in-flight TCP exchanges.
const shutdownTimeout = 5 * time.Second

// Server is the sidecar's DNS server. Create it with [New] and start it with
// [Server.Run]. Its methods are safe for concurrent use.
type Server struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	table   tableRef
	cache   *cache
	egress  *egress
	chain   []handler
	// exchange sends m to one upstream over net ("udp" or "tcp"); tests and
	// the fuzz test replace it.
	exchange func(ctx context.Context, network string, m *mdns.Msg, upstream string) (*mdns.Msg, error)

	started atomic.Bool
	baseCtx context.Context // set by Run before serving starts
	ready   chan struct{}
	addr    string // set before ready is closed
	addr2   string // AlsoListen's bound address, if any; set before ready is closed
}

var _ mdns.Handler = (*Server)(nil)

// New validates cfg, fills in defaults and builds a server. It does not
// listen yet; see [Server.Run].
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger.With(slog.String("component", "dns")),
		metrics: newMetrics(cfg.Registerer),
		cache:   newCache(cfg.CacheSize),
		egress:  newEgress(cfg.EgressAllow, cfg.Now),
		ready:   make(chan struct{}),
	}
	s.exchange = s.exchangeUpstream
	s.table.store(cfg.Table)
	s.chain = []handler{s.checkQuery, s.meshNames, s.recordEgress(s.hideUnreachable(s.forward))}
	return s, nil
}

// SetTable replaces the mesh name data; the next query sees the new table.
func (s *Server) SetTable(t Table) { s.table.store(t) }

// AllowedIP reports whether addr answered a name on the egress allow-list
// (directly or through CNAMEs) and that answer's TTL, held for at least
// 30 seconds, has not run out. Registry-only mode lets outbound connections
// to such addresses through.
func (s *Server) AllowedIP(addr netip.Addr) bool { return s.egress.allowed(addr) }

// Ready is closed once Run listens on both UDP and TCP.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr is the address Run listens on (the same port for UDP and TCP); it is
// valid after Ready is closed.
func (s *Server) Addr() string {
	<-s.ready
	return s.addr
}

// AlsoAddr is the address Run listens on for Config.AlsoListen, or "" if
// it is not set or could not be bound; valid after Ready is closed.
func (s *Server) AlsoAddr() string {
	<-s.ready
	return s.addr2
}

// Run serves DNS on UDP and TCP until ctx ends, then drains in-flight TCP
// exchanges for up to 5 seconds. It returns nil after ctx ends, or the error
// that stopped a listener. Run may be called once.
func (s *Server) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("dns: Run called twice")
	}
	pc, ln, err := listen(s.cfg.Listen)
	if err != nil {
		return err
	}
	s.baseCtx = ctx
	s.addr = pc.LocalAddr().String()
	servers := []*mdns.Server{
		{PacketConn: pc, Net: "udp", Handler: s},
		{Listener: ln, Net: "tcp", Handler: s},
	}
	closers := []io.Closer{pc, ln}
	if s.cfg.AlsoListen != "" {
		pc2, ln2, err := listen(s.cfg.AlsoListen)
		switch {
		case errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EAFNOSUPPORT):
			s.log.Debug("dns: second address not available here; not served", slog.String("addr", s.cfg.AlsoListen), slog.Any("error", err))
		case err != nil:
			_ = pc.Close()
			_ = ln.Close()
			return err
		default:
			s.addr2 = pc2.LocalAddr().String()
			servers = append(servers, &mdns.Server{PacketConn: pc2, Net: "udp", Handler: s}, &mdns.Server{Listener: ln2, Net: "tcp", Handler: s})
			closers = append(closers, pc2, ln2)
		}
	}
	errc := make(chan error, len(servers))
	var wg sync.WaitGroup
	for _, srv := range servers {
		wg.Go(func() { errc <- srv.ActivateAndServe() })
	}
	close(s.ready)
	s.log.Info("dns listening", slog.String("addr", s.addr), slog.String("also", s.addr2))

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-errc:
		runErr = fmt.Errorf("dns: serve: %w", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	for _, srv := range servers {
		_ = srv.ShutdownContext(sctx) // "not started" if it already failed
	}
	// Closing the sockets ourselves also stops a server that had not
	// started yet when Shutdown ran.
	for _, c := range closers {
		_ = c.Close()
	}
	wg.Wait()
	return runErr
}

// listen opens UDP and TCP on the same address; with port 0 it retries
// until both get the same free port.
func listen(addr string) (net.PacketConn, net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dns: listen address %q: %w", addr, err)
	}
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("dns: listen udp %s: %w", addr, err)
		}
		p := port
		if p == "0" {
			p = strconv.Itoa(pc.LocalAddr().(*net.UDPAddr).Port)
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(host, p))
		if err == nil {
			return pc, ln, nil
		}
		_ = pc.Close()
		lastErr = err
		if port != "0" {
			break
		}
	}
	return nil, nil, fmt.Errorf("dns: listen tcp %s: %w", addr, lastErr)
}

// ServeDNS implements miekg/dns's Handler. miekg/dns has already dropped
// packets that do not parse; odd but parseable queries get FORMERR or
// NOTIMP from the chain.
func (s *Server) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("dns handler panic; query dropped", slog.Any("panic", v))
		}
	}()
	base := s.baseCtx
	if base == nil {
		base = context.Background()
	}
	ctx, cancel := context.WithTimeout(base, s.cfg.UpstreamTimeout*time.Duration(2*len(s.cfg.Upstreams))+time.Second)
	defer cancel()
	resp := s.handle(ctx, r)
	if resp == nil {
		return
	}
	if _, ok := w.RemoteAddr().(*net.UDPAddr); ok {
		resp.Truncate(udpSize(r))
	}
	if err := w.WriteMsg(resp); err != nil {
		s.log.Debug("dns write reply", slog.String("client", w.RemoteAddr().String()), slog.Any("error", err))
	}
}

// udpSize is the largest UDP reply the client accepts.
func udpSize(r *mdns.Msg) int {
	if opt := r.IsEdns0(); opt != nil {
		return max(int(opt.UDPSize()), mdns.MinMsgSize)
	}
	return mdns.MinMsgSize
}

// request is a query on its way through the handler chain.
type request struct {
	msg  *mdns.Msg
	q    mdns.Question // msg.Question[0], once checkQuery has passed
	name string        // q.Name, canonical
}

// handler answers a request, or returns a nil message to pass it on to the
// next handler. result labels the query metric.
type handler func(ctx context.Context, req *request) (resp *mdns.Msg, result string)

// handle runs the chain and returns the reply, or nil to drop the query.
func (s *Server) handle(ctx context.Context, r *mdns.Msg) *mdns.Msg {
	if r == nil || r.Response {
		return nil
	}
	req := &request{msg: r}
	for _, h := range s.chain {
		resp, result := h(ctx, req)
		if resp == nil {
			continue
		}
		resp.Id = r.Id
		typ := "other"
		if len(r.Question) == 1 {
			typ = typeLabel(r.Question[0].Qtype)
		}
		s.metrics.queries.WithLabelValues(typ, result).Inc()
		return resp
	}
	return nil
}

// checkQuery answers queries of a shape the sidecar does not serve.
func (s *Server) checkQuery(_ context.Context, req *request) (*mdns.Msg, string) {
	r := req.msg
	switch {
	case r.Opcode != mdns.OpcodeQuery:
		return reply(r, mdns.RcodeNotImplemented), resultRejected
	case len(r.Question) != 1:
		return reply(r, mdns.RcodeFormatError), resultRejected
	}
	q := r.Question[0]
	if _, ok := mdns.IsDomainName(q.Name); !ok || len(q.Name) > 255 {
		return reply(r, mdns.RcodeFormatError), resultRejected
	}
	switch {
	case q.Qclass != mdns.ClassINET:
		return reply(r, mdns.RcodeNotImplemented), resultRejected
	case q.Qtype == mdns.TypeAXFR || q.Qtype == mdns.TypeIXFR:
		return reply(r, mdns.RcodeRefused), resultRejected
	case q.Qtype == mdns.TypeOPT || q.Qtype == mdns.TypeNone:
		return reply(r, mdns.RcodeFormatError), resultRejected
	}
	req.q = q
	req.name = mdns.CanonicalName(q.Name)
	return nil, ""
}

// reply is an empty answer to r with rcode, echoing EDNS0 if r used it.
func reply(r *mdns.Msg, rcode int) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetRcode(r, rcode)
	m.RecursionAvailable = true
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(max(opt.UDPSize(), mdns.MinMsgSize), false)
	}
	return m
}
