package sidecar

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
)

// openStream dials addr and checks one echo, leaving the stream open.
func openStream(t *testing.T, addr, what string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	t.Cleanup(func() { c.Close() })
	if err := echoOnce(c, what); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return c
}

// TestPolicyRevocationClosesOpenConnections: when discovery's policy stops
// allowing web → db, web's open connections to db are closed within a few
// seconds, both the one web's own view routed (closed at web, outbound)
// and the one to db's sidecar directly (closed at db, inbound), while
// api's open connection to db, still allowed, stays open. Both sides count
// and log the closures with the rule.
func TestPolicyRevocationClosesOpenConnections(t *testing.T) {
	ca := startCA(t)
	web, api, db := webAPIDB(t)
	disc := startDiscovery(t, ca, meshYAML(web, api, db, "api", "web"))
	dir := t.TempDir()
	start := func(a *meshApp, outbound ...string) {
		a.log = filepath.Join(dir, a.name+".access.log")
		cfg := Config{
			CAAddr: ca.addr, BundleFile: ca.bundle, JoinToken: ca.token(t, testutil.ID("/ns/default/sa/"+a.name)),
			Inbound: []InboundListener{{Listen: "127.0.0.1:0", App: a.app}}, DiscoveryAddr: disc.addr, AccessLog: a.log,
		}
		for _, spec := range outbound {
			o, err := ParseOutbound(spec)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Outbound = append(cfg.Outbound, o)
		}
		a.sidecar, a.done = startSidecar(t, cfg)
	}
	start(db)
	start(api, "127.0.0.1:0=default/db:5432")
	start(web, "127.0.0.1:0=default/db:5432", "127.0.0.1:0="+db.sidecar.Addr("inbound/0").String()+"@"+dbID.String())
	disc.write(t, meshYAML(web, api, db, "api", "web"))
	for _, a := range []*meshApp{web, api} {
		waitView(t, a.name+" to learn db's endpoint", a.sidecar, func(v *xdsclient.View) bool {
			s, ok := v.Service(key("db"))
			return ok && len(s.Endpoints) > 0
		})
	}
	waitView(t, "db to admit web", db.sidecar, func(v *xdsclient.View) bool { return v.Authorize(webID, mustPort(db.port())).Allowed })

	byService := openStream(t, web.sidecar.Addr("outbound/0").String(), "web to db by service")
	direct := openStream(t, web.sidecar.Addr("outbound/1").String(), "web to db's sidecar directly")
	stillAllowed := openStream(t, api.sidecar.Addr("outbound/0").String(), "api to db")

	disc.write(t, meshYAML(web, api, db, "api"))
	began := time.Now()
	if !testutil.ClosedWithin(byService, 5*time.Second) {
		t.Error("web's open connection to db by service outlived the revocation by 5s")
	}
	if !testutil.ClosedWithin(direct, 5*time.Second-time.Since(began)) {
		t.Error("web's open connection to db's sidecar outlived the revocation by 5s")
	}
	t.Logf("both closed %s after the policy file changed", time.Since(began))
	if err := echoOnce(stillAllowed, "still allowed"); err != nil {
		t.Errorf("api's open connection to db, still allowed, was closed: %v", err)
	}
	revoked := func(a *meshApp, direction string) float64 {
		return gatherCounter(t, a.sidecar.registry, "tether_sidecar_connections_revoked_total", map[string]string{"direction": direction, "reason": "policy"})
	}
	// db closes the direct stream (web does not re-check a fixed peer);
	// the stream by service is closed by web, by db, or by both, each
	// counting it if it re-checked the stream before the other closed it.
	waitFor(t, "db to count its inbound revocation", func() bool { return revoked(db, "inbound") >= 1 })
	waitFor(t, "web and db to count both streams", func() bool { return revoked(db, "inbound")+revoked(web, "outbound") >= 2 })
	if n := revoked(api, "outbound") + revoked(db, "inbound"); n > 2 {
		t.Errorf("%v revocations at api and db; want at most 2 (web's two streams)", n)
	}
	waitFor(t, "db's access log to name the rule", func() bool {
		l := db.accessLog(t)
		return strings.Contains(l, "revoked: ") && strings.Contains(l, "admits "+webID.String())
	})
	if revoked(web, "outbound") >= 1 {
		waitFor(t, "web's access log to name the rule", func() bool {
			l := web.accessLog(t)
			return strings.Contains(l, "revoked: ") && strings.Contains(l, `"rule":"policy allows no port of default/db"`)
		})
	}
}
