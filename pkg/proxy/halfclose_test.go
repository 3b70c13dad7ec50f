package proxy_test

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	tu "github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/proxy"
)

// TestStreamEndsWhenClientLeavesAfterHalfClose: the client half-closes,
// reads part of a long response, then closes. The app's connection must be
// closed soon after, not left streaming into a sidecar that discards it.
func TestStreamEndsWhenClientLeavesAfterHalfClose(t *testing.T) {
	m := newMesh(t)
	var open atomic.Int32
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tu.Serve(t, l, func(c net.Conn) {
		go func() { // an app that streams until its peer goes away
			open.Add(1)
			defer open.Add(-1)
			defer c.Close()
			buf := make([]byte, 16<<10)
			for {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}()
	})
	in := inbound(t, m.identity(serverID, false), l.Addr().String(), proxy.Config{})
	out := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "server", Addr: in.addr, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	c, err := net.Dial("tcp", out.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite() // the client sends END first
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 100<<10)); err != nil {
		t.Fatal(err)
	}
	c.Close() // then goes away while the app is still sending
	eventually(t, "the app's connection to be closed", func() bool { return open.Load() == 0 })
}
