//go:build linux

package mesh

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/testutil"
)

// TestRotationWaitsForBlockedSidecar: web1's connection to tether-ca goes
// through a proxy the test freezes (a black hole: no bytes, no reset) right
// before prepare, so web1 never gets the new root. `tether ca rotate
// activate` refuses, naming web1; `tether ca rotate status` lists it. Once
// the proxy thaws, web1 gets the bundle and reports it, activate passes,
// every sidecar renews onto the new root, retire passes, and no request
// failed under steady load.
func TestRotationWaitsForBlockedSidecar(t *testing.T) {
	needMesh(t)
	t.Parallel()
	// Reports every second: a sidecar is silent after 3s.
	m := &pairMesh{ca: startCA(t, "--propagation-delay", "1s", "--report-interval", "1s")}
	app := startApp(t, "api1")
	m.apps = append(m.apps, app)
	s := svc{name: app.name, sa: app.name, ip: "10.96.0.11", port: 8080, app: app.addr, endpoint: loopback(t), allowFrom: []string{"web1"}}
	m.services = []svc{s}
	m.disc = startDiscovery(t, m.ca, meshYAML(s))
	m.servers = append(m.servers, startSidecar(t, m.ca, m.disc, sidecarSpec{sa: s.sa, inbound: s.endpoint, app: s.app}))
	frozen := testutil.StartFreezer(t, m.ca.addr)
	web := startSidecar(t, m.ca, m.disc, sidecarSpec{sa: "web1", outbound: []string{"default/api1:8080"}, extra: []string{"--ca", frozen.Addr()}})
	m.clients = append(m.clients, web)
	m.routes = []route{{name: web.name + " → api1", addr: web.outbound[0], want: "api1"}}
	eventually(t, "a first call", 20*time.Second, func() error { return call(m.routes[0].addr, "api1") })
	webID := workloadID("default", "web1").String()
	eventually(t, "web1, api1 and tether-discovery to report", 10*time.Second, func() error {
		out, err := m.ca.cli("ca", "rotate", "status")
		if err != nil || !strings.Contains(out, "reporting sidecars: 3") {
			return fmt.Errorf("%v\n%s", err, out)
		}
		return nil
	})

	load := startLoad(t, m.routes, 20, 2, 5)
	load.setPhase("1 web1 cut off from tether-ca")
	frozen.Freeze()
	if _, err := m.ca.cli("ca", "rotate", "prepare"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second) // past the propagation delay; web1 is silent
	out, err := m.ca.cli("ca", "rotate", "activate")
	if err == nil {
		t.Fatalf("activate passed while web1 cannot have the new root:\n%s", out)
	}
	for _, want := range []string{"1 of 3 reporting sidecars do not trust the root of generation 2", webID, "--force"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("activate's refusal does not say %q:\n%v", want, err)
		}
	}
	status, err := m.ca.cli("ca", "rotate", "status")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("tether ca rotate status while web1 is cut off:\n%s", status)
	if !strings.Contains(status, "activate waits") || !strings.Contains(status, webID) || !strings.Contains(status, "(silent)") {
		t.Errorf("rotate status does not name web1 as a silent laggard:\n%s", status)
	}

	load.setPhase("2 web1 back")
	frozen.Unfreeze()
	eventually(t, "activate once web1 has the new root", 30*time.Second, func() error {
		_, err := m.ca.cli("ca", "rotate", "activate")
		return err
	})
	activated := time.Now()
	load.setPhase("3 activated")
	// Retire passes once every SVID of the old root has expired (1m) and no
	// sidecar presents one.
	eventually(t, "retire", 2*time.Minute, func() error {
		_, err := m.ca.cli("ca", "rotate", "retire")
		return err
	})
	t.Logf("retired %s after activate", time.Since(activated).Round(time.Second))
	load.setPhase("4 retired")
	time.Sleep(3 * time.Second)
	load.stop()
	if failed, attempted := load.report(t); failed != 0 || attempted == 0 {
		t.Errorf("%d of %d requests failed during the rotation", failed, attempted)
	}
	status, _ = m.ca.cli("ca", "rotate", "status")
	t.Logf("tether ca rotate status after retire:\n%s", status)
}
