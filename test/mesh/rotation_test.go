//go:build linux

package mesh

import (
	"crypto/x509"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// pairMesh is tether-ca, tether-discovery and sidecar pairs web1 → api1,
// web2 → api2, ..., each client reaching its server as a mesh service
// through discovery, with a policy that allows just that.
type pairMesh struct {
	ca       *caProc
	disc     *discoveryProc
	servers  []*sidecarProc
	clients  []*sidecarProc
	apps     []*echoApp
	routes   []route
	services []svc
}

func startPairMesh(t *testing.T, pairs int, caFlags ...string) *pairMesh {
	t.Helper()
	m := &pairMesh{ca: startCA(t, caFlags...)}
	for i := 1; i <= pairs; i++ {
		app := startApp(t, fmt.Sprintf("api%d", i))
		m.apps = append(m.apps, app)
		m.services = append(m.services, svc{name: app.name, sa: app.name, ip: fmt.Sprintf("10.96.0.%d", 10+i), port: 8080,
			app: app.addr, endpoint: loopback(t), allowFrom: []string{fmt.Sprintf("web%d", i)}})
	}
	m.disc = startDiscovery(t, m.ca, meshYAML(m.services...))
	for i, s := range m.services {
		m.servers = append(m.servers, startSidecar(t, m.ca, m.disc, sidecarSpec{sa: s.sa, inbound: s.endpoint, app: s.app}))
		c := startSidecar(t, m.ca, m.disc, sidecarSpec{sa: fmt.Sprintf("web%d", i+1), outbound: []string{"default/" + s.name + ":8080"}})
		m.clients = append(m.clients, c)
		m.routes = append(m.routes, route{name: c.name + " → " + s.name, addr: c.outbound[0], want: s.name})
	}
	for _, r := range m.routes {
		eventually(t, "a first call through "+r.name, 20*time.Second, func() error { return call(r.addr, r.want) })
	}
	return m
}

func (m *pairMesh) sidecars() []*sidecarProc { return slices.Concat(m.clients, m.servers) }

// handshakes sums the outbound handshakes of the clients.
func (m *pairMesh) handshakes(t *testing.T) []float64 {
	var n []float64
	for _, c := range m.clients {
		n = append(n, c.handshakes(t))
	}
	return n
}

// burst opens 80 connections per route at once and checks that every
// client sidecar made new handshakes for them (80 is more than the 64
// tunnels a sidecar keeps idle).
func (m *pairMesh) burst(t *testing.T, g *loadGen) {
	t.Helper()
	before := m.handshakes(t)
	g.burst(80)
	after := m.handshakes(t)
	for i := range after {
		if after[i]-before[i] < 80-64 {
			t.Errorf("%s made %v new handshakes for a burst of 80 connections in phase %q, want at least 16", m.clients[i].name, after[i]-before[i], g.current())
		}
	}
}

// generation is one row of `tether ca status`.
type generation struct {
	id, state, rootPrefix, retireAfter string
}

var statusRow = regexp.MustCompile(`(?m)^(\d+)\s+(prepared|active|superseded|retired)\s+(\S+?)…?\s+(\S+)\s+(\S+)\s+(\S+)\s*$`)

func parseStatus(out string) []generation {
	var gens []generation
	for _, m := range statusRow.FindAllStringSubmatch(out, -1) {
		gens = append(gens, generation{id: m[1], state: m[2], rootPrefix: strings.TrimSuffix(m[3], "…"), retireAfter: m[6]})
	}
	return gens
}

// TestRotationUnderLoad: 200 requests per second through two sidecar
// pairs (half on new connections, half on connections kept open from
// before the rotation to after it), plus bursts that force new mTLS
// handshakes in every phase, while tether-ca rotates its root with the
// safe schedule: prepare, activate once --propagation-delay (5s) has
// passed, retire once every SVID of the old root has expired (SVID TTL
// 1m). No request may fail. At the end every sidecar and discovery present
// SVIDs that chain to the new root only, and no bundle holds the old root.
func TestRotationUnderLoad(t *testing.T) {
	needMesh(t)
	t.Parallel()
	m := startPairMesh(t, 2, "--propagation-delay", "5s")
	oldRoots := m.ca.roots(t)
	if len(oldRoots) != 1 {
		t.Fatalf("a fresh CA's bundle holds %d roots", len(oldRoots))
	}
	oldRoot := oldRoots[0]

	// 50/s on new connections and 4 × 12.5/s on kept connections, per route.
	load := startLoad(t, m.routes, 50, 4, 12.5)
	began := time.Now()
	load.setPhase("1 before rotation")
	time.Sleep(2 * time.Second) // steady load, no assertion
	m.burst(t, load)

	// Prepare: the new root joins every bundle; the old one still signs.
	load.setPhase("2 prepared")
	out, err := m.ca.cli("ca", "rotate", "prepare")
	if err != nil {
		t.Fatal(err)
	}
	preparedAt := time.Now()
	var newRoot *x509.Certificate
	eventually(t, "the CA's bundle file to hold the old and the new root", 5*time.Second, func() error {
		roots := m.ca.roots(t)
		if len(roots) != 2 || !roots[0].Equal(oldRoot) && !roots[1].Equal(oldRoot) {
			return fmt.Errorf("%d roots\n%s", len(roots), out)
		}
		newRoot = roots[0]
		if newRoot.Equal(oldRoot) {
			newRoot = roots[1]
		}
		return nil
	})
	t.Logf("prepared: old root %s…, new root %s…", fingerprint(oldRoot)[:16], fingerprint(newRoot)[:16])
	for _, s := range m.sidecars() {
		eventually(t, s.name+" to trust both roots", 10*time.Second, func() error {
			d, err := s.debugIdentity()
			if err != nil {
				return err
			}
			if !slices.Contains(d.Roots, fingerprint(newRoot)) || !slices.Contains(d.Roots, fingerprint(oldRoot)) {
				return fmt.Errorf("roots %v", d.Roots)
			}
			return nil
		})
	}
	m.burst(t, load)

	// Activate once the propagation delay has passed, without --force.
	time.Sleep(time.Until(preparedAt.Add(5*time.Second + 200*time.Millisecond)))
	load.setPhase("3 activated")
	if out, err = m.ca.cli("ca", "rotate", "activate"); err != nil {
		t.Fatal(err)
	}
	retireAfter := time.Time{}
	for _, g := range parseStatus(out) {
		if g.state == "superseded" {
			if retireAfter, err = time.Parse(time.RFC3339, g.retireAfter); err != nil {
				t.Fatalf("RETIRE AFTER of generation %s: %v\n%s", g.id, err, out)
			}
		}
	}
	if retireAfter.IsZero() {
		t.Fatalf("no superseded generation after activate:\n%s", out)
	}
	activatedAt := time.Now()
	t.Logf("activated %s after the start; the old generation may retire at %s", time.Since(began).Round(time.Second), retireAfter.Format(time.TimeOnly))
	m.burst(t, load)

	// Sidecars renew onto the new root one by one; bursts while some have
	// and some have not, and every 10s.
	switched := map[string]time.Time{}
	mixedBurst, lastBurst := false, time.Now()
	for time.Now().Before(retireAfter.Add(1100 * time.Millisecond)) {
		for _, s := range m.sidecars() {
			if _, ok := switched[s.name]; ok {
				continue
			}
			x, err := s.x509Context()
			if err != nil {
				t.Fatalf("%s's Workload API: %v", s.name, err)
			}
			if chainsTo(x.DefaultSVID().Certificates, newRoot) == nil {
				switched[s.name] = time.Now()
				t.Logf("%s holds a new-root SVID %s after activation", s.name, time.Since(activatedAt).Round(time.Second))
			}
		}
		if n := len(switched); !mixedBurst && n > 0 && n < len(m.sidecars()) {
			load.setPhase("4 mixed SVIDs")
			m.burst(t, load)
			mixedBurst, lastBurst = true, time.Now()
		} else if time.Since(lastBurst) > 10*time.Second {
			m.burst(t, load)
			lastBurst = time.Now()
		}
		if n := len(switched); n == len(m.sidecars()) && load.current() != "5 all new SVIDs" {
			load.setPhase("5 all new SVIDs")
			m.burst(t, load)
			lastBurst = time.Now()
		}
		time.Sleep(500 * time.Millisecond)
	}
	if len(switched) != len(m.sidecars()) {
		t.Errorf("at the old generation's retire time only %d of %d sidecars hold a new-root SVID", len(switched), len(m.sidecars()))
	}
	if !mixedBurst {
		t.Logf("every sidecar switched between two polls; no burst ran with mixed SVIDs (steady load did)")
	}
	// Discovery serves with a new-root SVID too.
	if chain, err := servedChain(m.disc.addr, "h2"); err != nil || chainsTo(chain, newRoot) != nil {
		t.Errorf("tether-discovery does not serve a new-root SVID before retire: %v", err)
	}

	// Retire, without --force: the schedule allows it now.
	load.setPhase("6 retired")
	if out, err = m.ca.cli("ca", "rotate", "retire"); err != nil {
		t.Fatal(err)
	}
	for _, s := range m.sidecars() {
		eventually(t, s.name+" to drop the old root", 10*time.Second, func() error {
			d, err := s.debugIdentity()
			if err != nil {
				return err
			}
			if !slices.Equal(d.Roots, []string{fingerprint(newRoot)}) {
				return fmt.Errorf("roots %v", d.Roots)
			}
			return nil
		})
	}
	m.burst(t, load) // new handshakes with bundles that hold only the new root
	time.Sleep(2 * time.Second)
	load.stop()
	failed, attempted := load.report(t)
	if failed != 0 {
		t.Errorf("%d of %d requests failed during the rotation", failed, attempted)
	}
	// The rate held: at least 80% of 200/s over the run (bursts on top).
	if planned := int(200 * time.Since(began).Seconds() * 0.8); attempted < planned {
		t.Errorf("only %d requests were attempted, want at least %d: the load generator fell behind", attempted, planned)
	}

	// The end state, as each sidecar and every serving port shows it.
	eventually(t, "the CA's bundle file to hold the new root only", 5*time.Second, func() error {
		if roots := m.ca.roots(t); len(roots) != 1 || !roots[0].Equal(newRoot) {
			return fmt.Errorf("%d roots", len(roots))
		}
		return nil
	})
	for _, s := range m.sidecars() {
		x, err := s.x509Context()
		if err != nil {
			t.Fatalf("%s's Workload API: %v", s.name, err)
		}
		chain := x.DefaultSVID().Certificates
		if err := chainsTo(chain, newRoot); err != nil {
			t.Errorf("%s's SVID does not chain to the new root: %v", s.name, err)
		}
		if chainsTo(chain, oldRoot) == nil {
			t.Errorf("%s's SVID still chains to the old root", s.name)
		}
		b, err := x.Bundles.GetX509BundleForTrustDomain(td)
		if err != nil {
			t.Fatal(err)
		}
		if a := b.X509Authorities(); len(a) != 1 || !a[0].Equal(newRoot) {
			t.Errorf("%s's Workload API bundle holds %d roots, want the new root only", s.name, len(a))
		}
		if !s.p.alive() {
			t.Errorf("%s exited during the rotation: %v", s.name, s.p.err)
		}
	}
	for _, s := range m.servers {
		chain, err := servedChain(s.inbound, "tether/1")
		if err != nil {
			t.Fatalf("%s's inbound: %v", s.name, err)
		}
		if chainsTo(chain, newRoot) != nil || chainsTo(chain, oldRoot) == nil {
			t.Errorf("%s's inbound listener serves a chain that is not new-root only", s.name)
		}
	}
	for name, addr := range map[string]string{"tether-discovery": m.disc.addr, "tether-ca": m.ca.addr} {
		chain, err := servedChain(addr, "h2")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if chainsTo(chain, newRoot) != nil || chainsTo(chain, oldRoot) == nil {
			t.Errorf("%s serves a chain that is not new-root only", name)
		}
	}
	t.Logf("rotation under load took %s", time.Since(began).Round(time.Second))
}
