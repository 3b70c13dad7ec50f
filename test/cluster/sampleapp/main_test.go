package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/tether-mesh/tether/internal/testutil"
)

// runCmd runs the binary's run with args and returns its exit code,
// standard output and standard error.
func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func wantExit(t *testing.T, want int, args ...string) (string, string) {
	t.Helper()
	code, out, errOut := runCmd(t, args...)
	if code != want {
		t.Fatalf("tether-sample %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, want, out, errOut)
	}
	return out, errOut
}

func wantContains(t *testing.T, what, got, want string) {
	t.Helper()
	if !strings.Contains(got, want) {
		t.Errorf("%s = %q, want it to contain %q", what, got, want)
	}
}

func TestUsage(t *testing.T) {
	_, errOut := wantExit(t, exitUsage)
	wantContains(t, "stderr", errOut, "usage: tether-sample COMMAND")
	_, errOut = wantExit(t, exitUsage, "frobnicate")
	wantContains(t, "stderr", errOut, `unknown command "frobnicate"`)
	_, errOut = wantExit(t, exitUsage, "get", "--no-such-flag", "http://127.0.0.1/")
	wantContains(t, "stderr", errOut, "no-such-flag")
}

// startApp serves one app of the chain on a loopback port until the test
// ends and returns its URL.
func startApp(t *testing.T, name, marker, next string) string {
	t.Helper()
	a := &app{name: name, marker: marker, client: httpClient(5 * time.Second), log: log.New(io.Discard, "", 0)}
	if next != "" {
		u, err := url.Parse(next)
		if err != nil {
			t.Fatal(err)
		}
		a.next = u
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.run(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", name, err)
		}
	})
	return "http://" + l.Addr().String() + "/"
}

// closedPort returns a loopback address where nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestServeChain(t *testing.T) {
	const m = "MARKER-4f2a"
	db := startApp(t, "db", m, "")
	api := startApp(t, "api", m, db)
	web := startApp(t, "web", m, api)

	out, _ := wantExit(t, exitOK, "get", web)
	want := "web: marker=MARKER-4f2a request-marker=-\n" +
		"  api: marker=MARKER-4f2a request-marker=MARKER-4f2a\n" +
		"    db: marker=MARKER-4f2a request-marker=MARKER-4f2a\n"
	if out != want {
		t.Errorf("web's answer:\n%s\nwant:\n%s", out, want)
	}
	out, _ = wantExit(t, exitOK, "get", strings.TrimSuffix(web, "/")+"/healthz")
	if out != "ok\n" {
		t.Errorf("/healthz = %q, want ok", out)
	}
	out, errOut := wantExit(t, exitFailed, "get", web+"nope")
	wantContains(t, "stderr", errOut, "404")
	wantContains(t, "stdout", out, "404 page not found")
}

func TestServeNextUnreachable(t *testing.T) {
	web := startApp(t, "web", "M", "http://"+closedPort(t)+"/")
	out, errOut := wantExit(t, exitFailed, "get", web)
	wantContains(t, "stderr", errOut, "502 Bad Gateway")
	wantContains(t, "body", out, "web: calling http://")
	wantContains(t, "body", out, "connection refused")
}

func TestServeNextFails(t *testing.T) {
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "db is down", http.StatusServiceUnavailable)
	}))
	defer bad.Close()
	web := startApp(t, "web", "M", bad.URL+"/")
	out, _ := wantExit(t, exitFailed, "get", web)
	wantContains(t, "body", out, "status 503: db is down")
}

func TestServeBadInput(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	t.Setenv("MARKER", "")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--marker", "M"}, exitUsage, "--name is required"},
		{[]string{"--name", "web"}, exitUsage, "--marker (or env MARKER) is required"},
		{[]string{"--name", "web", "--marker", "M", "--next", "api:8080"}, exitUsage, `bad URL "api:8080"`},
		{[]string{"--name", "web", "--marker", "M", "--next", "ftp://api/"}, exitUsage, `bad URL "ftp://api/"`},
		{[]string{"--name", "web", "--marker", "M", "stray"}, exitUsage, "unexpected arguments"},
		{[]string{"--name", "web", "--marker", "M", "--listen", taken.Addr().String()}, exitFailed, "listening on " + taken.Addr().String()},
	} {
		_, errOut := wantExit(t, tc.code, append([]string{"serve"}, tc.args...)...)
		wantContains(t, "stderr of serve "+strings.Join(tc.args, " "), errOut, tc.want)
	}
}

// TestServeEnvMarker: the marker comes from MARKER when --marker is not
// given, and serve stops cleanly when its context ends.
func TestServeEnvMarker(t *testing.T) {
	t.Setenv("MARKER", "FROM-ENV")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var stdout syncBuffer
	go func() { done <- run(ctx, []string{"serve", "--name", "db", "--listen", addr}, &stdout, io.Discard) }()
	var out string
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, o, _ := runCmd(t, "get", "--timeout", "1s", "http://"+addr+"/")
		if code == exitOK {
			out = o
			break
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("serve did not answer within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != exitOK {
		t.Errorf("serve exited %d after its context ended, want 0", code)
	}
	if out != "db: marker=FROM-ENV request-marker=-\n" {
		t.Errorf("answer %q", out)
	}
	wantContains(t, "serve's log", stdout.String(), "GET / from 127.0.0.1:")
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestGetBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, exitUsage, "want one URL, got 0 arguments"},
		{[]string{"http://a/", "http://b/"}, exitUsage, "want one URL, got 2"},
		{[]string{"api:8080"}, exitUsage, `bad URL "api:8080"`},
		{[]string{"http://"}, exitUsage, `bad URL "http://"`},
		{[]string{"http://[::1"}, exitUsage, "bad URL"},
		{[]string{"--timeout", "2s", "http://" + closedPort(t) + "/"}, exitFailed, "connection refused"},
	} {
		_, errOut := wantExit(t, tc.code, append([]string{"get"}, tc.args...)...)
		wantContains(t, "stderr of get "+strings.Join(tc.args, " "), errOut, tc.want)
	}
}

func TestGetTimeout(t *testing.T) {
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	defer slow.Close()
	start := time.Now()
	_, errOut := wantExit(t, exitFailed, "get", "--timeout", "200ms", slow.URL)
	wantContains(t, "stderr", errOut, "Client.Timeout exceeded")
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("get --timeout 200ms took %s", d)
	}
}

func TestLoad(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if n.Add(1)%3 == 0 {
			http.Error(w, "flaky", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "db: marker=M\n")
	}))
	defer srv.Close()
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "db: marker=M\n")
	}))
	defer ok.Close()

	out, _ := wantExit(t, exitOK, "load", "--duration", "300ms", "--interval", "10ms", "--expect", "db: marker=M", ok.URL)
	wantContains(t, "load's summary", out, " failed=0 ")

	out, errOut := wantExit(t, exitFailed, "load", "--duration", "300ms", "--interval", "10ms", srv.URL)
	wantContains(t, "stderr", errOut, "requests failed")
	wantContains(t, "load's summary", out, "503 Service Unavailable")

	out, _ = wantExit(t, exitFailed, "load", "--duration", "100ms", "--interval", "10ms", "--expect", "api:", ok.URL)
	wantContains(t, "load's summary", out, `does not contain "api:"`)

	out, _ = wantExit(t, exitFailed, "load", "--duration", "100ms", "--timeout", "1s", "http://"+closedPort(t)+"/")
	wantContains(t, "load's summary", out, "connection refused")

	wantExit(t, exitUsage, "load", "--duration", "0s", ok.URL)
	wantExit(t, exitUsage, "load", "not-a-url")
}

func TestDial(t *testing.T) {
	// listener accepts on loopback and does what with each connection.
	listener := func(what func(*net.TCPConn)) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go what(c.(*net.TCPConn))
			}
		}()
		return l.Addr().String()
	}
	holds := listener(func(c *net.TCPConn) { time.Sleep(3 * time.Second); c.Close() })
	closes := listener(func(c *net.TCPConn) { c.Close() })
	resets := listener(func(c *net.TCPConn) { c.SetLinger(0); c.Close() })
	greets := listener(func(c *net.TCPConn) { io.WriteString(c, "220 smtp ready\r\n"); time.Sleep(time.Second); c.Close() })

	out, _ := wantExit(t, exitOK, "dial", "--hold", "300ms", holds)
	wantContains(t, "stdout", out, "kept the connection open for 300ms")
	out, _ = wantExit(t, exitOK, "dial", greets)
	wantContains(t, "stdout", out, "sent 16 bytes first")
	_, errOut := wantExit(t, exitFailed, "dial", closes)
	wantContains(t, "stderr", errOut, "closed the connection at once")
	// The reset may come before or after connect returns: exit 1 either way.
	_, errOut = wantExit(t, exitFailed, "dial", resets)
	wantContains(t, "stderr", errOut, "reset")
	_, errOut = wantExit(t, exitFailed, "dial", closedPort(t))
	wantContains(t, "stderr", errOut, "connection refused")

	for _, bad := range []string{"127.0.0.1", "127.0.0.1:0", "127.0.0.1:http", "127.0.0.1:70000", ":8080"} {
		_, errOut := wantExit(t, exitUsage, "dial", bad)
		wantContains(t, "stderr of dial "+bad, errOut, bad)
	}
	wantExit(t, exitUsage, "dial")
	wantExit(t, exitUsage, "dial", "--hold", "0s", holds)
}

// dnsServer answers on a loopback UDP port from a fixed table: names in
// addrs get their A record, "nodata.test." exists without addresses,
// "half.test." is NXDOMAIN for A only,
// "fail.test." gets SERVFAIL, everything else NXDOMAIN.
func dnsServer(t *testing.T, addrs map[string]string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		switch ip, ok := addrs[q.Name]; {
		case ok:
			if q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: net.ParseIP(ip)})
			}
		case q.Name == "nodata.test.":
		case q.Name == "half.test." && q.Qtype == dns.TypeA:
			m.Rcode = dns.RcodeNameError
		case q.Name == "half.test.":
		case q.Name == "fail.test.":
			m.Rcode = dns.RcodeServerFailure
		default:
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})
	srv := &dns.Server{PacketConn: pc, Handler: h}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

func TestLookup(t *testing.T) {
	server := dnsServer(t, map[string]string{"db.story.svc.cluster.local.": "10.96.0.20"})
	conf := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(conf, []byte("nameserver 127.0.0.1\nsearch story.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	lookup := func(code int, name string) (string, string) {
		t.Helper()
		return wantExit(t, code, "lookup", "--resolv-conf", conf, "--server", server, "--timeout", "2s", name)
	}
	out, _ := lookup(exitOK, "db")
	if out != "10.96.0.20\n" {
		t.Errorf("lookup db (search list) = %q", out)
	}
	out, _ = lookup(exitOK, "db.story.svc.cluster.local.")
	if out != "10.96.0.20\n" {
		t.Errorf("lookup of the FQDN = %q", out)
	}
	out, _ = lookup(exitNXDomain, "api")
	if out != "NXDOMAIN\n" {
		t.Errorf("lookup api = %q, want NXDOMAIN", out)
	}
	lookup(exitNXDomain, "api.story.svc.cluster.local.")
	_, errOut := lookup(exitFailed, "nodata.test.")
	wantContains(t, "stderr", errOut, "exists but has no addresses (A: NOERROR with 0 addresses; AAAA: NOERROR with 0 addresses)")
	// NXDOMAIN for A but the name exists for AAAA: not NXDOMAIN.
	_, errOut = lookup(exitFailed, "half.test.")
	wantContains(t, "stderr", errOut, "inconsistent answers (A: NXDOMAIN with 0 addresses; AAAA: NOERROR with 0 addresses)")
	out, _ = wantExit(t, exitNXDomain, "lookup", "--resolv-conf", conf, "--server", server, "--type", "A", "half.test.")
	if out != "NXDOMAIN\n" {
		t.Errorf("lookup --type A half.test. = %q, want NXDOMAIN", out)
	}
	_, errOut = wantExit(t, exitFailed, "lookup", "--resolv-conf", conf, "--server", server, "--type", "AAAA", "half.test.")
	wantContains(t, "stderr", errOut, "exists but has no addresses (AAAA: NOERROR with 0 addresses)")
	out, _ = wantExit(t, exitOK, "lookup", "--resolv-conf", conf, "--server", server, "--type", "A", "db")
	if out != "10.96.0.20\n" {
		t.Errorf("lookup --type A db = %q", out)
	}
	wantExit(t, exitUsage, "lookup", "--resolv-conf", conf, "--type", "MX", "db.")
	_, errOut = lookup(exitFailed, "fail.test.")
	wantContains(t, "stderr", errOut, "SERVFAIL")

	_, errOut = wantExit(t, exitFailed, "lookup", "--resolv-conf", conf, "--server", closedUDP(t), "--timeout", "1s", "db.")
	if strings.Contains(errOut, "NXDOMAIN") {
		t.Errorf("an unreachable server is reported as NXDOMAIN: %s", errOut)
	}
	_, errOut = wantExit(t, exitFailed, "lookup", "--resolv-conf", filepath.Join(t.TempDir(), "missing"), "db.")
	wantContains(t, "stderr", errOut, "missing")
	empty := filepath.Join(t.TempDir(), "empty.conf")
	os.WriteFile(empty, []byte("search cluster.local\n"), 0o644)
	_, errOut = wantExit(t, exitFailed, "lookup", "--resolv-conf", empty, "db.")
	wantContains(t, "stderr", errOut, "names no nameserver")
	wantExit(t, exitUsage, "lookup", "--resolv-conf", conf, "a..b")
	wantExit(t, exitUsage, "lookup", "--resolv-conf", conf, "--server", "127.0.0.1", "db.")
	wantExit(t, exitUsage, "lookup")
}

// closedUDP returns a loopback UDP address where nothing listens.
func closedUDP(t *testing.T) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

func TestSleep(t *testing.T) {
	start := time.Now()
	wantExit(t, exitOK, "sleep", "50ms")
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("sleep 50ms returned after %s", d)
	}
	wantExit(t, exitUsage, "sleep", "soon")
	wantExit(t, exitUsage, "sleep", "-1s")
	wantExit(t, exitUsage, "sleep", "1s", "2s")
}

// staticSource is a Workload API source holding one SVID.
type staticSource struct {
	svid   *x509svid.SVID
	bundle *spiffebundle.Bundle
}

func (s staticSource) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }
func (s staticSource) Bundle() *spiffebundle.Bundle         { return s.bundle }
func (s staticSource) Changed() <-chan struct{}             { return make(chan struct{}) }
func (s staticSource) FetchJWTSVID(context.Context, []string) (*jwtsvid.SVID, error) {
	return nil, errors.New("no JWT-SVIDs here")
}

// newSVID makes a root and an SVID for id signed by it.
func newSVID(t *testing.T, id spiffeid.ID) staticSource {
	t.Helper()
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, URIs: []*url.URL{id.TrustDomain().ID().URL()}}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rootDER)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(0xbeef), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(30 * time.Minute),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs: []*url.URL{id.URL()}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, root, &leafKey.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(leafDER)
	return staticSource{
		svid:   &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{leaf}, PrivateKey: leafKey},
		bundle: spiffebundle.FromX509Authorities(id.TrustDomain(), []*x509.Certificate{root}),
	}
}

func TestSVID(t *testing.T) {
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/story/sa/web")
	path := testutil.ServeWorkloadAPI(t, newSVID(t, id))

	t.Setenv("SPIFFE_ENDPOINT_SOCKET", "unix://"+path)
	out, _ := wantExit(t, exitOK, "svid")
	wantContains(t, "svid's output", out, "spiffe_id: spiffe://cluster.local/ns/story/sa/web\n")
	wantContains(t, "svid's output", out, "serial: beef\n")
	wantContains(t, "svid's output", out, "not_after: ")

	t.Setenv("SPIFFE_ENDPOINT_SOCKET", "")
	_, errOut := wantExit(t, exitFailed, "svid")
	wantContains(t, "stderr", errOut, "SPIFFE_ENDPOINT_SOCKET is not set")
	out, _ = wantExit(t, exitOK, "svid", "--socket", "unix://"+path)
	wantContains(t, "svid's output", out, "spiffe://cluster.local/ns/story/sa/web")

	missing := filepath.Join(t.TempDir(), "workload.sock")
	_, errOut = wantExit(t, exitFailed, "svid", "--socket", "unix://"+missing)
	wantContains(t, "stderr", errOut, "no Workload API socket at "+missing)

	_, errOut = wantExit(t, exitFailed, "svid", "--socket", "http://example/")
	wantContains(t, "stderr", errOut, "Workload API address")

	// A file where the socket should be: connecting fails, within the timeout.
	notSock := filepath.Join(t.TempDir(), "plain-file")
	os.WriteFile(notSock, nil, 0o600)
	start := time.Now()
	_, errOut = wantExit(t, exitFailed, "svid", "--timeout", "2s", "--socket", "unix://"+notSock)
	wantContains(t, "stderr", errOut, "fetching the X.509-SVID from unix://"+notSock)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("svid against a non-socket took %s", d)
	}
}

// TestSVIDNoSVID: a Workload API that has no SVID to give is an error.
func TestSVIDNoSVID(t *testing.T) {
	path := testutil.ServeWorkloadAPI(t, noSVID{})
	_, errOut := wantExit(t, exitFailed, "svid", "--timeout", "2s", "--socket", "unix://"+path)
	wantContains(t, "stderr", errOut, "fetching the X.509-SVID")
}

type noSVID struct{ staticSource }

func (noSVID) GetX509SVID() (*x509svid.SVID, error) { return nil, fmt.Errorf("no SVID yet") }
func (noSVID) Bundle() *spiffebundle.Bundle {
	return spiffebundle.New(spiffeid.RequireTrustDomainFromString("cluster.local"))
}
