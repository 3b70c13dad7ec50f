//go:build linux

package mesh

import (
	"fmt"
	"testing"
	"time"
)

// TestDiscoveryOutage: api's policy lets web in and not other. web and
// other each call api two ways: as the mesh service (their own view
// decides first) and as a fixed peer (only api's inbound side decides).
// tether-discovery is killed (SIGKILL): every sidecar keeps its last
// configuration and enforces it, under load and for new handshakes; a
// policy change made meanwhile (api now lets other in, not web) does not
// apply while discovery is down and applies once it returns.
func TestDiscoveryOutage(t *testing.T) {
	needMesh(t)
	t.Parallel()
	ca := startCA(t)
	app := startApp(t, "api")
	api := svc{name: "api", sa: "api", ip: "10.96.0.20", port: 8080, app: app.addr, endpoint: loopback(t), allowFrom: []string{"web"}}
	disc := startDiscovery(t, ca, meshYAML(api))
	server := startSidecar(t, ca, disc, sidecarSpec{sa: "api", inbound: api.endpoint, app: api.app})
	peer := api.endpoint + "@" + workloadID("default", "api").String()
	web := startSidecar(t, ca, disc, sidecarSpec{sa: "web", outbound: []string{"default/api:8080", peer}})
	other := startSidecar(t, ca, disc, sidecarSpec{sa: "other", outbound: []string{"default/api:8080", peer}})
	sidecars := []*sidecarProc{server, web, other}

	denials := func(s *sidecarProc, direction, source string) float64 {
		return metric(s.metrics(t), "tether_sidecar_authz_denials_total", `direction="`+direction+`"`, `source_id="`+workloadID("default", source).String()+`"`)
	}
	// enforced checks the four calls against who api's policy lets in, and
	// that each denial was counted where it was decided.
	enforced := func(when string, allowed, denied *sidecarProc) {
		t.Helper()
		for i, how := range []string{"as a service", "as a fixed peer"} {
			if err := call(allowed.outbound[i], "api"); err != nil {
				t.Errorf("%s: %s → api %s: %v", when, allowed.name, how, err)
			}
		}
		srcOut := denials(denied, "outbound", denied.sa)
		srcIn := denials(server, "inbound", denied.sa)
		if err := refused(denied.outbound[0]); err != nil {
			t.Errorf("%s: %s → api as a service: %v", when, denied.name, err)
		}
		if err := refused(denied.outbound[1]); err != nil {
			t.Errorf("%s: %s → api as a fixed peer: %v", when, denied.name, err)
		}
		eventually(t, "the denials to be counted", 5*time.Second, func() error {
			if o, i := denials(denied, "outbound", denied.sa)-srcOut, denials(server, "inbound", denied.sa)-srcIn; o != 1 || i != 1 {
				return fmt.Errorf("%v new denials at %s's outbound and %v at api's inbound, want 1 and 1", o, denied.name, i)
			}
			return nil
		})
	}
	eventually(t, "web to reach api", 20*time.Second, func() error { return call(web.outbound[0], "api") })
	enforced("before the outage", web, other)

	// Discovery dies.
	disc.p.kill(t)
	for _, s := range sidecars {
		eventually(t, s.name+" to notice discovery is gone", 20*time.Second, func() error {
			if v := metric(s.metrics(t), "tether_sidecar_xds_connected"); v != 0 {
				return fmt.Errorf("tether_sidecar_xds_connected %v", v)
			}
			return nil
		})
	}
	load := startLoad(t, []route{{name: "web → api", addr: web.outbound[0], want: "api"}}, 50, 2, 25)
	load.setPhase("discovery down")
	enforced("with discovery down", web, other)
	load.burst(80)              // new handshakes, authorized by the kept policy
	time.Sleep(4 * time.Second) // more load while discovery stays down

	// The policy changes while discovery is down: nothing can apply it yet.
	api.allowFrom = []string{"other"}
	disc.write(t, meshYAML(api))
	time.Sleep(time.Second) // give a wrong reload the time to happen (the file is polled every 100ms)
	enforced("with discovery down after the policy changed", web, other)
	for _, s := range sidecars {
		if code, body := s.ready(t); code != 200 {
			t.Errorf("%s: /healthz/ready %d %q with discovery down after its first view, want 200", s.name, code, body)
		}
	}
	load.stop()
	if failed, attempted := load.report(t); failed != 0 {
		t.Errorf("%d of %d allowed requests failed with discovery down", failed, attempted)
	}

	// Discovery returns with the new policy.
	disc.start(t)
	for _, s := range sidecars {
		eventually(t, s.name+" to reconnect to discovery", 40*time.Second, func() error {
			if v := metric(s.metrics(t), "tether_sidecar_xds_connected"); v != 1 {
				return fmt.Errorf("tether_sidecar_xds_connected %v", v)
			}
			return nil
		})
	}
	eventually(t, "other to reach api", 20*time.Second, func() error { return call(other.outbound[0], "api") })
	eventually(t, "api to refuse web", 20*time.Second, func() error { return refused(web.outbound[1]) })
	enforced("after discovery returned", other, web)
	for _, s := range sidecars {
		if !s.p.alive() {
			t.Errorf("%s exited: %v", s.name, s.p.err)
		}
	}
}
