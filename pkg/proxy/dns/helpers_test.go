package dns

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// fakeClock is an injected clock the tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startServer runs a Server on 127.0.0.1:0 until the test ends.
func startServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	select {
	case <-s.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	return s
}

// upstream is a fake resolver on UDP and TCP of one port.
type upstream struct {
	addr string
	udp  atomic.Int32
	tcp  atomic.Int32
}

// startUpstream serves h (told whether the query came over TCP).
func startUpstream(t *testing.T, h func(r *mdns.Msg, tcp bool) *mdns.Msg) *upstream {
	t.Helper()
	pc, ln, err := listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{addr: pc.LocalAddr().String()}
	handler := mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		_, isTCP := w.RemoteAddr().(*net.TCPAddr)
		if isTCP {
			u.tcp.Add(1)
		} else {
			u.udp.Add(1)
		}
		if m := h(r, isTCP); m != nil {
			_ = w.WriteMsg(m)
		}
	})
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // runs last: cleanups are LIFO
	for _, srv := range []*mdns.Server{{PacketConn: pc, Handler: handler}, {Listener: ln, Handler: handler}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		wg.Go(func() { _ = srv.ActivateAndServe() })
		<-started
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
	return u
}

func (u *upstream) queries() int { return int(u.udp.Load() + u.tcp.Load()) }

// answerA is an upstream handler answering every A query with ip and ttl.
func answerA(ip string, ttl uint32) func(*mdns.Msg, bool) *mdns.Msg {
	return func(r *mdns.Msg, _ bool) *mdns.Msg {
		m := new(mdns.Msg).SetReply(r)
		if r.Question[0].Qtype == mdns.TypeA {
			m.Answer = append(m.Answer, rr("%s %d IN A %s", r.Question[0].Name, ttl, ip))
		}
		return m
	}
}

// rr parses one record in zone file syntax.
func rr(format string, args ...any) mdns.RR {
	s := format
	if len(args) > 0 {
		s = fmt.Sprintf(format, args...)
	}
	r, err := mdns.NewRR(s)
	if err != nil {
		panic(err)
	}
	return r
}

// exchange sends one query to the server over network, with a fixed ID that
// the reply must echo.
func exchange(t *testing.T, network, addr, name string, qtype uint16, edns bool) *mdns.Msg {
	t.Helper()
	q := new(mdns.Msg).SetQuestion(name, qtype)
	q.Id = 0x4242
	if edns {
		q.SetEdns0(4096, false)
	}
	c := &mdns.Client{Net: network, Timeout: 3 * time.Second}
	resp, _, err := c.Exchange(q, addr)
	if err != nil {
		t.Fatalf("%s %s %s: %v", network, name, mdns.TypeToString[qtype], err)
	}
	if resp.Id != 0x4242 {
		t.Fatalf("reply ID %#x, want the query's 0x4242", resp.Id)
	}
	return resp
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// closedPort is an address where nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().(*net.UDPAddr)
	_ = pc.Close()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(addr.Port))
}
