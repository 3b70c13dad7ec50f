package admin_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-mesh/tether/internal/admin"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/internal/version"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// serve runs an admin server with limits on a loopback port until the test
// ends and returns its address and registry.
func serve(t *testing.T, limits admin.Limits) (string, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	s := admin.New("", func() error { return nil }, reg, quiet, admin.WithLimits(limits), admin.WithMetrics("test", reg))
	s.HandleLocal("GET /debug/secret", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "secret\n") })
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr().String(), reg
}

// closedWithin reports how long c took to be closed by the server (EOF or
// reset on read), failing the test if it stays open for max.
func closedWithin(t *testing.T, c net.Conn, max time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(max))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server kept the connection open for %s", max)
	}
	return time.Since(start)
}

func TestIdleKeepAliveConnectionIsClosed(t *testing.T) {
	addr, _ := serve(t, admin.Limits{IdleTimeout: 300 * time.Millisecond})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("first request: %v %+v (want 200, kept alive)", err, resp)
	}
	resp.Body.Close()
	if d := closedWithin(t, c, 5*time.Second); d < 200*time.Millisecond {
		t.Errorf("idle connection closed after %s, before the 300ms idle timeout", d)
	}
}

func TestSlowHeaderClientIsClosed(t *testing.T) {
	addr, _ := serve(t, admin.Limits{ReadHeaderTimeout: 300 * time.Millisecond})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A byte every 50ms: never idle long, never a whole header.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for _, b := range []byte("GET /healthz HTTP/1.1\r\nHost: admin\r\nX-Slow: " + strings.Repeat("a", 200)) {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := c.Write([]byte{b}); err != nil {
				return
			}
		}
	}()
	if d := closedWithin(t, c, 5*time.Second); d < 250*time.Millisecond {
		t.Errorf("slow-header connection closed after %s, before the 300ms read-header timeout", d)
	}
}

func TestConnectionCapHolds(t *testing.T) {
	const max = 4
	addr, reg := serve(t, admin.Limits{MaxConns: max, ReadHeaderTimeout: time.Minute, IdleTimeout: time.Minute})
	var held []net.Conn
	for range max {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	open := func() float64 {
		return metric(t, reg, "tether_admin_connections", "")
	}
	testutil.Eventually(t, "the held connections to be accepted", 5*time.Second, func() bool { return open() == max })

	// Over the cap: accepted and closed at once, even though the caller
	// is silent (a capped server would otherwise wait a minute).
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	closedWithin(t, extra, 2*time.Second)
	if n := refused(t, reg, admin.ReasonConnectionCap); n != 1 {
		t.Errorf("refused{connection_cap} = %v, want 1", n)
	}

	// A slot freed by a caller that leaves serves the next one.
	held[0].Close()
	testutil.Eventually(t, "the closed connection's slot to free", 5*time.Second, func() bool { return open() == max-1 })
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("after a slot freed: %v %v", err, resp)
	}
	resp.Body.Close()
}

// metric is the value of the gathered metric name (with reason, if not
// empty), failing the test if there is none.
func metric(t *testing.T, reg *prometheus.Registry, name, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if reason == "" {
				return m.GetGauge().GetValue()
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no metric %s{reason=%q}", name, reason)
	return 0
}

func refused(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	return metric(t, reg, "tether_admin_refused_total", reason)
}

func TestLoopbackCallerReachesLocalOnlyPaths(t *testing.T) {
	addr, reg := serve(t, admin.Limits{})
	for path, want := range map[string]int{"/healthz": 200, "/metrics": 200, "/debug/secret": 200} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s from loopback: %s, want %d", path, resp.Status, want)
		}
	}
	if n := refused(t, reg, admin.ReasonNotLoopback); n != 0 {
		t.Errorf("refused{not_loopback} = %v, want 0", n)
	}
}

// TestVersion: every admin server answers GET /version with the binary's
// version and revision, as JSON, to any caller (the API server's pod proxy
// is not on loopback), and only to GET.
func TestVersion(t *testing.T) {
	addr, _ := serve(t, admin.Limits{})
	resp, err := http.Get("http://" + addr + "/version")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatalf("GET /version is not JSON: %v", err)
	}
	want := map[string]any{"version": version.Version, "revision": version.Revision()}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" || !reflect.DeepEqual(got, want) {
		t.Errorf("GET /version: %s %q %v, want 200 application/json %v", resp.Status, resp.Header.Get("Content-Type"), got, want)
	}
	post, err := http.Post("http://"+addr+"/version", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	post.Body.Close()
	if post.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /version: %s, want 405", post.Status)
	}
}
