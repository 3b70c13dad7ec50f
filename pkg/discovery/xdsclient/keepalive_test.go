package xdsclient_test

import (
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
)

// A discovery that stops answering without closing the connection is
// noticed by the keepalive pings: the client drops the connection, keeps
// its view, and connects again. (gRPC pings at most every 10s, so this
// test takes about 11s.)
func TestClientNoticesSilentDiscovery(t *testing.T) {
	p := newPKI(t)
	reg := shopRegistry(t)
	d := startDiscovery(t, p, reg, "")
	f := testutil.StartFreezer(t, d.addr)
	c := runClient(t, p, f.Addr(), webID, func(cfg *xdsclient.Config) {
		cfg.KeepaliveTime, cfg.KeepaliveTimeout = 10*time.Second, time.Second
	})
	v := c.ready(t, 5*time.Second)
	f.Freeze()
	frozen := time.Now()
	testutil.Eventually(t, "the client to drop the silent connection", 20*time.Second, func() bool {
		return c.metric(t, "tether_sidecar_xds_connected") == 0
	})
	t.Logf("noticed after %s", time.Since(frozen).Round(100*time.Millisecond))
	if c.View() != v {
		t.Error("the view changed when the connection was dropped")
	}
	f.Unfreeze()
	testutil.Eventually(t, "the client to reconnect", 10*time.Second, func() bool {
		return c.metric(t, "tether_sidecar_xds_connected") == 1
	})
}
