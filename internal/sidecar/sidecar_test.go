package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/tether-mesh/tether/internal/caserver"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
	"github.com/tether-mesh/tether/pkg/proxy"
)

var (
	clientID = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/client")
	serverID = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/server")
)

type testCA struct {
	svc    *caserver.Service
	addr   string
	bundle string
}

// startCA runs tether-ca for cluster.local on loopback; mods change its
// configuration.
func startCA(t *testing.T, mods ...func(*caserver.Config)) *testCA {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cfg := caserver.Config{
		TrustDomain: "cluster.local", ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		Store: "dir", StoreDir: dir, SVIDTTL: time.Hour, IntermediateTTL: 720 * time.Hour, RootTTL: 8760 * time.Hour,
		TickInterval: time.Second,
	}
	for _, m := range mods {
		m(&cfg)
	}
	svc, err := caserver.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { svc.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	bundle := filepath.Join(dir, "bundle.pem")
	waitFor(t, "CA", func() bool {
		_, err := os.Stat(bundle)
		return svc.Addr("grpc") != nil && err == nil
	})
	return &testCA{svc: svc, addr: svc.Addr("grpc").String(), bundle: bundle}
}

func (c *testCA) token(t *testing.T, id spiffeid.ID) string {
	create := c.svc.CA().CreateJoinToken
	if identity.IsReserved(id) { // discovery's own ID
		create = c.svc.CA().CreateReservedJoinToken
	}
	tok, _, err := create(context.Background(), id, time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, what, 15*time.Second, cond)
}

func startSidecar(t *testing.T, cfg Config) (*Sidecar, chan error) {
	t.Helper()
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = "cluster.local"
	}
	cfg.AdminAddr = "127.0.0.1:0"
	cfg.InboundMode = proxy.Strict
	if cfg.AccessLog == "" {
		cfg.AccessLog = "off"
	}
	cfg.DrainTimeout = time.Second
	if cfg.WorkloadSocket == "" {
		cfg.WorkloadSocket = filepath.Join(t.TempDir(), "workload.sock")
	}
	if os.Getenv("TETHER_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, "sidecar ready", func() bool {
		a := s.Addr("admin")
		if a == nil {
			return false
		}
		resp, err := http.Get("http://" + a.String() + "/healthz/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return s, done
}

func echoApp(t *testing.T) string { return testutil.EchoServer(t, "") }

// pair starts a server sidecar in front of an echo app and a client
// sidecar with an outbound listener to it.
func pair(t *testing.T, ca *testCA) (client, server *Sidecar, outAddr string) {
	app := echoApp(t)
	_, port, _ := net.SplitHostPort(app)
	allow := AllowListFor(t, clientID.String()+"="+port)
	server, _ = startSidecar(t, Config{CAAddr: ca.addr, BundleFile: ca.bundle, JoinToken: ca.token(t, serverID),
		Inbound: []InboundListener{{Listen: "127.0.0.1:0", App: app}}, Allow: allow})
	client, _ = startSidecar(t, Config{CAAddr: ca.addr, BundleFile: ca.bundle, JoinToken: ca.token(t, clientID),
		Outbound: []OutboundListener{{Listen: "127.0.0.1:0", Dest: proxy.Destination{Name: "server", Addr: server.Addr("inbound/0").String(), IDs: []spiffeid.ID{serverID}}}}})
	return client, server, client.Addr("outbound/0").String()
}

func AllowListFor(t *testing.T, entries ...string) proxy.AllowList {
	l := proxy.AllowList{}
	for _, e := range entries {
		if err := l.ParseAllow(e); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

func call(addr, msg string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	return echoOnce(c, msg)
}

func echoOnce(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	b := make([]byte, len(msg))
	if _, err := io.ReadFull(c, b); err != nil {
		return err
	}
	if string(b) != msg {
		return errors.New("bad echo")
	}
	return nil
}

// TestRotationUnderTraffic renews both SVIDs and rotates the root
// (prepare, activate, retire) while new and long-lived connections run:
// no request may fail.
func TestRotationUnderTraffic(t *testing.T) {
	ca := startCA(t)
	client, server, out := pair(t, ca)

	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 { // new connection per request: a handshake each time
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := call(out, "ping"); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	long, err := net.Dial("tcp", out) // one connection for the whole test
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if err := echoOnce(long, "long-lived"); err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, errors.New("long-lived connection: "+err.Error()))
				return
			}
			ok.Add(1)
		}
	}()

	serial := func(s *Sidecar) string {
		svid, _ := s.Agent().GetX509SVID()
		return svid.Certificates[0].SerialNumber.String()
	}
	issuer := func(s *Sidecar) string {
		svid, _ := s.Agent().GetX509SVID()
		return string(svid.Certificates[1].Raw)
	}
	renewBoth := func(what string) {
		cs, ss := serial(client), serial(server)
		client.Agent().RenewNow()
		server.Agent().RenewNow()
		waitFor(t, what, func() bool { return serial(client) != cs && serial(server) != ss })
	}
	roots := func(n int) func() bool {
		return func() bool {
			return len(client.Agent().Bundle().X509Authorities()) == n && len(server.Agent().Bundle().X509Authorities()) == n
		}
	}
	ctx := context.Background()
	rot := ca.svc.CA()
	time.Sleep(100 * time.Millisecond)
	renewBoth("SVID renewal")
	oldIssuer := issuer(client)
	if err := rot.Rotate(ctx, identity.StepPrepare, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both sidecars to trust the prepared root", roots(2))
	time.Sleep(100 * time.Millisecond)
	if err := rot.Rotate(ctx, identity.StepActivate, true); err != nil { // the wait above is what the delay protects
		t.Fatal(err)
	}
	renewBoth("SVIDs from the new generation")
	if issuer(client) == oldIssuer || issuer(server) == oldIssuer {
		t.Fatal("renewed SVIDs still come from the old intermediate")
	}
	time.Sleep(100 * time.Millisecond)
	if err := rot.Rotate(ctx, identity.StepRetire, true); err != nil { // no SVID of the old generation is in use now
		t.Fatal(err)
	}
	waitFor(t, "both sidecars to drop the retired root", roots(1))
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	if f := failed.Load(); f != 0 {
		t.Fatalf("%d of %d requests failed during rotation; first: %v", f, f+ok.Load(), firstErr.Load())
	}
	if ok.Load() < 50 {
		t.Fatalf("only %d requests ran: the load loop did not exercise the rotation", ok.Load())
	}
	t.Logf("%d requests, 0 failed, across renewal and a full root rotation", ok.Load())
}

func TestAdminEndpointsAndWorkloadAPI(t *testing.T) {
	ca := startCA(t)
	_, server, _ := pair(t, ca)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	x509ctx, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+server.cfg.WorkloadSocket))
	if err != nil {
		t.Fatalf("stock go-spiffe client against the sidecar's socket: %v", err)
	}
	if got := x509ctx.DefaultSVID().ID; got != serverID {
		t.Fatalf("Workload API SVID %s, want %s", got, serverID)
	}
	base := "http://" + server.Addr("admin").String()
	resp, err := http.Get(base + "/debug/identity")
	if err != nil {
		t.Fatal(err)
	}
	var dbg map[string]any
	json.NewDecoder(resp.Body).Decode(&dbg)
	resp.Body.Close()
	if dbg["spiffe_id"] != serverID.String() || dbg["serial"] == "" {
		t.Fatalf("/debug/identity = %v", dbg)
	}
	resp, err = http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{"tether_sidecar_svid_expiry_timestamp_seconds", "tether_sidecar_svid_fetches_total"} {
		if !strings.Contains(string(body), m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
}

func TestNotReadyWithoutCA(t *testing.T) {
	ca := startCA(t)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := l.Addr().String()
	l.Close()
	s, err := New(Config{TrustDomain: "cluster.local", CAAddr: dead, BundleFile: ca.bundle, JoinToken: "tjt_x",
		AdminAddr: "127.0.0.1:0", InboundMode: proxy.Strict, AccessLog: "off", Inbound: []InboundListener{{Listen: "127.0.0.1:0", App: "127.0.0.1:1"}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	waitFor(t, "admin", func() bool { return s.Addr("admin") != nil })
	time.Sleep(100 * time.Millisecond)
	resp, err := http.Get("http://" + s.Addr("admin").String() + "/healthz/ready")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("/healthz/ready without an SVID = %d, want 503", resp.StatusCode)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
}

func TestQuitQuitQuit(t *testing.T) {
	ca := startCA(t)
	_, server, _ := pair(t, ca)
	resp, err := http.Post("http://"+server.Addr("admin").String()+"/quitquitquit", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	waitFor(t, "the inbound listener to close", func() bool {
		c, err := net.DialTimeout("tcp", server.Addr("inbound/0").String(), 100*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
}

func TestParseFlagsRefusesBadInput(t *testing.T) {
	env := func(string) string { return "" }
	base := []string{"--ca", "x:1", "--bundle", "b.pem", "--join-token", "t", "--inbound", "127.0.0.1:1=127.0.0.1:2"}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no listeners", []string{"--ca", "x:1", "--bundle", "b", "--join-token", "t"}, "nothing to proxy"},
		{"no credential", []string{"--ca", "x:1", "--bundle", "b", "--inbound", "a:1=b:2"}, "exactly one of --join-token"},
		{"bad inbound", append(base, "--inbound", "nonsense"), "LISTEN=APP"},
		{"inbound app without port", append(base, "--inbound", "127.0.0.1:3=app"), "--inbound"},
		{"bad outbound", append(base, "--outbound", "127.0.0.1:9=peer"), "PEER@SPIFFE_ID"},
		{"bad outbound id", append(base, "--outbound", "127.0.0.1:9=peer:1@web"), "expected identity"},
		{"bad allow", append(base, "--allow", "spiffe://cluster.local/x=abc"), "port"},
		{"bad mode", append(base, "--inbound-mode", "lenient"), "strict or permissive"},
		{"bad sample", append(base, "--access-log-sample", "2"), "fraction"},
		{"bad trust domain", append(base, "--trust-domain", "spiffe://x/y"), "--trust-domain"},
		{"stray argument", append(base, "extra"), "unexpected arguments"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseFlags(tc.args, env)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
	if _, err := ParseFlags(base, env); err != nil {
		t.Fatalf("valid flags refused: %v", err)
	}
}
