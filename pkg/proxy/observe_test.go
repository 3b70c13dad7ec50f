package proxy_test

import (
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/proxy"
)

// observed collects the entries a Proxy's Observe hook is given.
type observed struct {
	mu      sync.Mutex
	entries []proxy.Entry
}

func (o *observed) observe(e *proxy.Entry) {
	o.mu.Lock()
	o.entries = append(o.entries, *e)
	o.mu.Unlock()
}

func (o *observed) list() []proxy.Entry {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]proxy.Entry(nil), o.entries...)
}

// TestObserveSeesEveryConnection: the Observe hook gets every finished
// connection at both ends, allowed and denied, even when the access log
// samples allowed connections out entirely, with the target service port
// (outbound) and the app port (inbound) the flow summary needs.
func TestObserveSeesEveryConnection(t *testing.T) {
	m := newMesh(t)
	app := echo(t, "")
	_, ps, _ := net.SplitHostPort(app)
	appPort, _ := strconv.Atoi(ps)
	var inObs, outObs observed
	unsampled := proxy.NewAccessLog(io.Discard, 0)
	in := inbound(t, m.identity(serverID, false), app, proxy.Config{Authorize: allowPort(clientID, ps), Observe: inObs.observe, AccessLog: unsampled})
	out := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "default/server:80", Addr: in.addr, IDs: []spiffeid.ID{serverID}},
		proxy.Config{Observe: outObs.observe, AccessLog: unsampled})
	c, err := net.Dial("tcp", out.addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(c, "hi"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	// A caller the destination refuses.
	evilOut := outbound(t, m.identity(evilID, false), proxy.Destination{Name: "default/server:80", Addr: in.addr, IDs: []spiffeid.ID{serverID}},
		proxy.Config{Observe: outObs.observe})
	if c, err := net.Dial("tcp", evilOut.addr); err == nil {
		roundTrip(c, "x")
		c.Close()
	}
	eventually(t, "two entries at each end", func() bool { return len(inObs.list()) == 2 && len(outObs.list()) == 2 })
	for _, e := range inObs.list() {
		if e.Direction != "inbound" || e.Port != uint16(appPort) || e.DestID != serverID.String() {
			t.Errorf("inbound entry %+v: want direction inbound, port %d, destination ID %s", e, appPort, serverID)
		}
		switch e.SourceID {
		case clientID.String():
			if e.Decision != "allow" {
				t.Errorf("client's stream: decision %q, want allow", e.Decision)
			}
		case evilID.String():
			if e.Decision != "deny" || e.Rule != "allow-list" {
				t.Errorf("evil's stream: decision %q rule %q, want deny by allow-list", e.Decision, e.Rule)
			}
		default:
			t.Errorf("inbound entry from %q", e.SourceID)
		}
	}
	for _, e := range outObs.list() {
		if e.Direction != "outbound" || e.Target != "default/server:80" {
			t.Errorf("outbound entry %+v: want direction outbound, target default/server:80", e)
		}
		if e.SourceID == evilID.String() && (e.Decision != "deny" || !strings.HasPrefix(e.Rule, "refused by the destination's sidecar: denied by allow-list")) {
			t.Errorf("refused caller's entry: decision %q rule %q, want deny naming the destination's rule", e.Decision, e.Rule)
		}
	}
}
