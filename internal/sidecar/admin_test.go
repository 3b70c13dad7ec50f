package sidecar

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/admin"
)

// TestAdminPortClosesIdleConnections: the sidecar's admin server runs with
// admin.Limits: a keep-alive connection left idle is closed (before, it
// stayed open for ever), and the port's own metrics are exported.
func TestAdminPortClosesIdleConnections(t *testing.T) {
	ca := startCA(t)
	s, _ := startSidecar(t, Config{CAAddr: ca.addr, BundleFile: ca.bundle, JoinToken: ca.token(t, serverID),
		Inbound: []InboundListener{{Listen: "127.0.0.1:0", App: echoApp(t)}}, AdminLimits: admin.Limits{IdleTimeout: 300 * time.Millisecond}})
	c, err := net.Dial("tcp", s.Addr("admin").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %v %v", err, resp)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{`tether_admin_connections{component="sidecar"} `, `tether_admin_refused_total{component="sidecar",reason="connection_cap"} 0`} {
		if !strings.Contains(string(body), m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the idle keep-alive connection was still open after 5s (idle timeout 300ms)")
		}
	}
}
