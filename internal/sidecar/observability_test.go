package sidecar

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
)

func getDenials(t *testing.T, s *Sidecar) DenialsResponse {
	t.Helper()
	resp, err := http.Get("http://" + s.Addr("admin").String() + "/debug/denials")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK || ct != "application/json" {
		t.Fatalf("/debug/denials: %s, %s", resp.Status, ct)
	}
	var out DenialsResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDebugDenials: GET /debug/denials on the admin port lists the
// denials of both directions, newest first, with the rule that decided.
func TestDebugDenials(t *testing.T) {
	ca := startCA(t)
	web, api, db := webAPIDB(t)
	disc := startDiscovery(t, ca, meshYAML(web, api, db, "api"))
	start := func(a *meshApp, outbound ...OutboundListener) {
		a.sidecar, a.done = startSidecar(t, Config{
			CAAddr: ca.addr, BundleFile: ca.bundle, JoinToken: ca.token(t, testutil.ID("/ns/default/sa/"+a.name)),
			Inbound: []InboundListener{{Listen: "127.0.0.1:0", App: a.app}}, Outbound: outbound, DiscoveryAddr: disc.addr,
		})
	}
	out := func(spec string) OutboundListener {
		o, err := ParseOutbound(spec)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	start(db)
	if d := getDenials(t, db.sidecar); d.Total != 0 || len(d.Denials) != 0 || d.Capacity != 100 || d.SpiffeID != dbID.String() {
		t.Errorf("db before any denial: %+v", d)
	}
	start(web, out("127.0.0.1:0=default/db:5432"), out("127.0.0.1:0="+db.sidecar.Addr("inbound/0").String()+"@"+dbID.String()))
	disc.write(t, meshYAML(web, api, db, "api"))
	waitView(t, "web to learn db is out of reach", web.sidecar, func(v *xdsclient.View) bool { _, ok := v.Service(key("db")); return v != nil && !ok })
	waitView(t, "db to learn its inbound policy", db.sidecar, func(v *xdsclient.View) bool { return !v.Authorize(webID, mustPort(db.port())).Allowed })

	began := time.Now().Add(-time.Second)
	byView, direct := web.sidecar.Addr("outbound/0").String(), web.sidecar.Addr("outbound/1").String()
	refused(t, byView)
	refused(t, direct)
	refused(t, byView)
	var w, d DenialsResponse
	waitFor(t, "the denials to be listed", func() bool {
		w, d = getDenials(t, web.sidecar), getDenials(t, db.sidecar)
		return w.Total == 2 && d.Total == 1
	})
	if w.SpiffeID != webID.String() || len(w.Denials) != 2 {
		t.Fatalf("web: %+v", w)
	}
	for _, x := range w.Denials {
		if x.Direction != "outbound" || x.Source != webID.String() || x.Destination != "default/db:5432" ||
			x.Rule != ruleUnknownService || x.Time.Before(began) || x.Time.After(time.Now()) {
			t.Errorf("web's denial: %+v", x)
		}
	}
	if !w.Denials[0].Time.After(w.Denials[1].Time) {
		t.Errorf("not newest first: %v, %v", w.Denials[0].Time, w.Denials[1].Time)
	}
	x := d.Denials[0]
	if x.Direction != "inbound" || x.Source != webID.String() || x.Destination != db.app || !strings.Contains(x.Rule, webID.String()) {
		t.Errorf("db's denial: %+v", x)
	}
}
