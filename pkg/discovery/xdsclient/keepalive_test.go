package xdsclient_test

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
)

// freezer is a TCP proxy that can stop forwarding without closing
// anything, as a host that vanished does: no FIN, no RST, no answer.
type freezer struct {
	l      net.Listener
	target string
	gate   sync.RWMutex // held for writing while frozen
	frozen bool         // only the test's goroutine uses it
}

func startFreezer(t *testing.T, target string) *freezer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{l: l, target: target}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		if f.frozen {
			f.unfreeze() // (a failed test) so that the pipes can end
		}
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, in, out)
			mu.Unlock()
			wg.Go(func() { f.pipe(out, in) })
			wg.Go(func() { f.pipe(in, out) })
		}
	})
	return f
}

// pipe copies src to dst, holding each chunk while frozen.
func (f *freezer) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			f.gate.RLock()
			_, werr := dst.Write(buf[:n])
			f.gate.RUnlock()
			if werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				src.Close()
			}
			return
		}
	}
}

func (f *freezer) freeze()   { f.gate.Lock(); f.frozen = true }
func (f *freezer) unfreeze() { f.frozen = false; f.gate.Unlock() }

// A discovery that stops answering without closing the connection is
// noticed by the keepalive pings: the client drops the connection, keeps
// its view, and connects again. (gRPC pings at most every 10s, so this
// test takes about 11s.)
func TestClientNoticesSilentDiscovery(t *testing.T) {
	p := newPKI(t)
	reg := shopRegistry(t)
	d := startDiscovery(t, p, reg, "")
	f := startFreezer(t, d.addr)
	c := runClient(t, p, f.l.Addr().String(), webID, func(cfg *xdsclient.Config) {
		cfg.KeepaliveTime, cfg.KeepaliveTimeout = 10*time.Second, time.Second
	})
	v := c.ready(t, 5*time.Second)
	f.freeze()
	frozen := time.Now()
	testutil.Eventually(t, "the client to drop the silent connection", 20*time.Second, func() bool {
		return c.metric(t, "tether_sidecar_xds_connected") == 0
	})
	t.Logf("noticed after %s", time.Since(frozen).Round(100*time.Millisecond))
	if c.View() != v {
		t.Error("the view changed when the connection was dropped")
	}
	f.unfreeze()
	testutil.Eventually(t, "the client to reconnect", 10*time.Second, func() bool {
		return c.metric(t, "tether_sidecar_xds_connected") == 1
	})
}
