//go:build linux

package mesh

import (
	"crypto/x509"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Calls across two federated meshes: each mesh's callers reach the other
// mesh's api as a remote service (mesh.yaml remoteServices), over tether/1
// with their own SVIDs; each api's AccessPolicy names the foreign callers
// it admits.

// localSvc is a service of a mesh with the callers its AccessPolicy
// admits: service accounts of the mesh, foreign SPIFFE IDs, whole foreign
// trust domains.
type localSvc struct {
	svc
	allowIDs []spiffeid.ID
	allowTDs []spiffeid.TrustDomain
}

// remoteSvc is a service of the other mesh declared in this one: the
// address of its sidecar's tether/1 inbound listener and the identity it
// must present, with the local service accounts allowed to call it.
type remoteSvc struct {
	name       string
	td         spiffeid.TrustDomain
	port       int
	targetPort string // the port of the app behind the remote sidecar
	endpoint   string
	identity   spiffeid.ID
	allowFrom  []string
}

// fedMeshYAML is a mesh.yaml for trust domain td, deny by default.
func fedMeshYAML(td spiffeid.TrustDomain, locals []localSvc, remotes []remoteSvc) string {
	var b strings.Builder
	fmt.Fprintf(&b, "trustDomain: %s\ndefaultPolicy: deny\n", td.Name())
	if len(locals) > 0 {
		b.WriteString("services:\n")
	}
	for _, s := range locals {
		s.writeYAML(&b)
	}
	if len(remotes) > 0 {
		b.WriteString("remoteServices:\n")
	}
	for _, r := range remotes {
		host, ep, _ := net.SplitHostPort(r.endpoint)
		fmt.Fprintf(&b, "  - name: %s\n    trustDomain: %s\n    ports: [{name: tcp, port: %d, targetPort: %s}]\n", r.name, r.td.Name(), r.port, r.targetPort)
		fmt.Fprintf(&b, "    endpoints: [{address: %s, port: %s, identity: %s}]\n", host, ep, r.identity)
	}
	b.WriteString("policies:\n")
	policy := func(name string, sources []string) {
		fmt.Fprintf(&b, "  - apiVersion: tether.dev/v1alpha1\n    kind: AccessPolicy\n    metadata: {name: %s-clients, namespace: default}\n    spec:\n      destination: {service: %s}\n      sources:\n", name, name)
		for _, s := range sources {
			fmt.Fprintf(&b, "        - %s\n", s)
		}
	}
	for _, s := range locals {
		var src []string
		for _, sa := range s.allowFrom {
			src = append(src, "serviceAccount: {name: "+sa+"}")
		}
		for _, id := range s.allowIDs {
			src = append(src, "spiffeID: "+id.String())
		}
		for _, td := range s.allowTDs {
			src = append(src, "trustDomain: "+td.Name())
		}
		policy(s.name, src)
	}
	for _, r := range remotes {
		var src []string
		for _, sa := range r.allowFrom {
			src = append(src, "serviceAccount: {name: "+sa+"}")
		}
		policy(r.name, src)
	}
	return b.String()
}

// crossMeshes is two federated meshes calling each other:
//
//	a.example: api (admits the whole trust domain b.example); web and
//	           batch call b.example's api as the remote service api-b
//	b.example: api (admits spiffe://a.example/ns/default/sa/web only); web
//	           calls a.example's api as the remote service api-a
type crossMeshes struct {
	a, b               *fedDomain
	appA, appB         *echoApp
	apiA, apiB         *sidecarProc
	webA, batchA, webB *sidecarProc
	routeAB, routeBA   route
	localA, localB     localSvc
	remoteAB, remoteBA remoteSvc
}

func startCrossMeshes(t *testing.T, caFlags ...string) *crossMeshes {
	t.Helper()
	m := &crossMeshes{}
	m.a, m.b = startFederatedPair(t, caFlags...)
	m.appA, m.appB = startApp(t, "api@a.example"), startApp(t, "api@b.example")
	local := func(app *echoApp) localSvc {
		return localSvc{svc: svc{name: "api", sa: "api", ip: "10.96.0.10", port: 8080, app: app.addr, endpoint: loopback(t)}}
	}
	m.localA, m.localB = local(m.appA), local(m.appB)
	m.localA.allowTDs = []spiffeid.TrustDomain{m.b.td()}
	m.localB.allowIDs = []spiffeid.ID{m.a.ca.id("default", "web")}
	remote := func(name string, to *fedDomain, l localSvc, from ...string) remoteSvc {
		_, tp, _ := net.SplitHostPort(l.app)
		return remoteSvc{name: name, td: to.td(), port: 8080, targetPort: tp, endpoint: l.endpoint, identity: to.ca.id("default", "api"), allowFrom: from}
	}
	m.remoteAB, m.remoteBA = remote("api-b", m.b, m.localB, "web", "batch"), remote("api-a", m.a, m.localA, "web")
	m.a.disc = startDiscovery(t, m.a.ca, fedMeshYAML(m.a.td(), []localSvc{m.localA}, []remoteSvc{m.remoteAB}))
	m.b.disc = startDiscovery(t, m.b.ca, fedMeshYAML(m.b.td(), []localSvc{m.localB}, []remoteSvc{m.remoteBA}))
	m.apiA = startSidecar(t, m.a.ca, m.a.disc, sidecarSpec{sa: "api", inbound: m.localA.endpoint, app: m.appA.addr})
	m.apiB = startSidecar(t, m.b.ca, m.b.disc, sidecarSpec{sa: "api", inbound: m.localB.endpoint, app: m.appB.addr})
	m.webA = startSidecar(t, m.a.ca, m.a.disc, sidecarSpec{sa: "web", outbound: []string{"default/api-b:8080"}})
	m.batchA = startSidecar(t, m.a.ca, m.a.disc, sidecarSpec{sa: "batch", outbound: []string{"default/api-b:8080"}})
	m.webB = startSidecar(t, m.b.ca, m.b.disc, sidecarSpec{sa: "web", outbound: []string{"default/api-a:8080"}})
	m.routeAB = route{name: "a.example web → b.example api", addr: m.webA.outbound[0], want: m.appB.name}
	m.routeBA = route{name: "b.example web → a.example api", addr: m.webB.outbound[0], want: m.appA.name}
	for _, r := range []route{m.routeAB, m.routeBA} {
		eventually(t, "a first call "+r.name, 30*time.Second, func() error { return call(r.addr, r.want) })
	}
	return m
}

// sidecars are every sidecar of domain d.
func (m *crossMeshes) sidecars(d *fedDomain) []*sidecarProc {
	if d == m.a {
		return []*sidecarProc{m.apiA, m.webA, m.batchA}
	}
	return []*sidecarProc{m.apiB, m.webB}
}

// inboundFrom waits for the last inbound entry of decision in s's access
// log whose source_id is id.
func inboundFrom(t *testing.T, s *sidecarProc, decision string, id spiffeid.ID) accessEntry {
	t.Helper()
	var e accessEntry
	eventually(t, s.name+"'s access log to show "+decision+" of "+id.String(), 5*time.Second, func() error {
		var err error
		e, err = findEntry(t, s.accessLog, "inbound "+decision+" from "+id.String(), func(e accessEntry) bool {
			return e.Direction == "inbound" && e.Decision == decision && e.SourceID == id.String()
		})
		return err
	})
	return e
}

// TestCrossDomainCalls: a.example's web calls b.example's api as a remote
// service and is admitted by the AccessPolicy that names its SPIFFE ID;
// b.example's access log shows web's own ID (no gateway stands in for it).
// a.example's batch, which a.example lets out but b.example's policy does
// not name, is refused by b.example's api sidecar, which logs batch's ID.
// b.example's web reaches a.example's api, whose policy admits the trust
// domain b.example. A workload of c.example (federated with b.example on
// its side only) with the path of a.example's web is refused.
func TestCrossDomainCalls(t *testing.T) {
	needMesh(t)
	t.Parallel()
	m := startCrossMeshes(t)
	webA, batchA, webB := m.a.ca.id("default", "web"), m.a.ca.id("default", "batch"), m.b.ca.id("default", "web")

	if err := call(m.routeAB.addr, m.routeAB.want); err != nil {
		t.Fatalf("%s: %v", m.routeAB.name, err)
	}
	if in := inboundFrom(t, m.apiB, "allow", webA); in.DestinationID != m.b.ca.id("default", "api").String() {
		t.Errorf("b.example's api sidecar logged its own ID as %q", in.DestinationID)
	}
	out, err := findEntry(t, m.webA.accessLog, "outbound allow", func(e accessEntry) bool { return e.Direction == "outbound" && e.Decision == "allow" })
	if err != nil || out.DestinationID != m.b.ca.id("default", "api").String() {
		t.Errorf("a.example's web logged the peer as %q (%v), want b.example's api", out.DestinationID, err)
	}

	if err := call(m.routeBA.addr, m.routeBA.want); err != nil {
		t.Fatalf("%s: %v", m.routeBA.name, err)
	}
	inboundFrom(t, m.apiA, "allow", webB)

	// batch: let out by a.example, refused by b.example.
	accepted := m.appB.accepted.Load()
	if err := refused(m.batchA.outbound[0]); err != nil {
		t.Fatalf("a.example's batch → b.example's api: %v", err)
	}
	inboundFrom(t, m.apiB, "deny", batchA)
	// batch's own sidecar let it out by a.example's rule (its connection
	// then failed at b.example's handshake).
	if _, err := findEntry(t, m.batchA.accessLog, "outbound by a.example's rule", func(e accessEntry) bool {
		return e.Direction == "outbound" && e.Decision != "deny" && e.Rule == "AccessPolicy default/api-b-clients"
	}); err != nil {
		t.Errorf("batch's own sidecar should let it out (a.example's policy allows it), so that b.example decides: %v", err)
	}

	// c.example follows b.example's bundle, b.example does not follow
	// c.example's: its web, same path as a.example's, goes straight to
	// b.example's api sidecar.
	c := startFedCA(t, "c.example")
	c.federateWith(t, m.b)
	webC := startSidecar(t, c.ca, nil, sidecarSpec{sa: "web", outbound: []string{m.localB.endpoint + "@" + m.b.ca.id("default", "api").String()}})
	if err := refused(webC.outbound[0]); err != nil {
		t.Errorf("c.example's web → b.example's api: %v", err)
	}
	if n := m.appB.accepted.Load(); n != accepted {
		t.Errorf("b.example's api app accepted %d connections from refused callers", n-accepted)
	}
	for _, e := range accessLog(t, m.apiB.accessLog) {
		if e.Decision == "allow" && e.SourceID != webA.String() {
			t.Errorf("b.example's api sidecar allowed %q: %+v", e.SourceID, e)
		}
	}
}

// TestCrossDomainRotation: a root rotation in a.example (prepare, activate
// once the propagation delay and the bundle endpoint's gate allow it,
// retire once every old SVID has expired) under continuous traffic
// a.example → b.example and b.example → a.example, on new and kept
// connections, with bursts of new handshakes in every phase: no request
// fails. b.example's sidecars hold a.example's new root before it signs,
// and drop the old one after the retire.
func TestCrossDomainRotation(t *testing.T) {
	needMesh(t)
	t.Parallel()
	m := startCrossMeshes(t, "--propagation-delay", "5s")
	oldRoot := m.a.ca.rootFingerprints(t)
	if len(oldRoot) != 1 {
		t.Fatalf("a fresh CA's bundle holds %d roots", len(oldRoot))
	}
	load := startLoad(t, []route{m.routeAB, m.routeBA}, 20, 2, 5)
	burst := func() { load.burst(70) } // more than the 64 tunnels a sidecar keeps idle
	began := time.Now()
	load.setPhase("1 before rotation")
	time.Sleep(2 * time.Second)
	burst()

	load.setPhase("2 prepared")
	if _, err := m.a.ca.cli("ca", "rotate", "prepare"); err != nil {
		t.Fatal(err)
	}
	preparedAt := time.Now()
	var both []string
	eventually(t, "a.example's bundle file to hold two roots", 5*time.Second, func() error {
		if both = m.a.ca.rootFingerprints(t); len(both) != 2 {
			return fmt.Errorf("%d roots", len(both))
		}
		return nil
	})
	newRoot := both[0]
	if newRoot == oldRoot[0] {
		newRoot = both[1]
	}
	// Every sidecar of both meshes trusts a.example's new root before it
	// signs: b.example's through its CA's federation.
	for _, d := range []*fedDomain{m.a, m.b} {
		for _, s := range m.sidecars(d) {
			eventually(t, s.name+" of "+d.td().Name()+" to trust a.example's new root", 15*time.Second, func() error {
				got, err := s.federatedRoots(m.a.td())
				if err != nil {
					return err
				}
				if !slices.Equal(got, both) {
					return fmt.Errorf("a.example roots %v", got)
				}
				return nil
			})
		}
	}
	t.Logf("a.example's new root reached every sidecar of both meshes %s after prepare", time.Since(preparedAt).Round(100*time.Millisecond))
	burst()

	time.Sleep(time.Until(preparedAt.Add(5*time.Second + 200*time.Millisecond)))
	load.setPhase("3 activated")
	var out string
	eventually(t, "a.example's CA to activate (propagation delay and bundle endpoint gate)", 30*time.Second, func() error {
		var err error
		out, err = m.a.ca.cli("ca", "rotate", "activate")
		return err
	})
	var retireAfter time.Time
	for _, g := range parseStatus(out) {
		if g.state == "superseded" {
			var err error
			if retireAfter, err = time.Parse(time.RFC3339, g.retireAfter); err != nil {
				t.Fatalf("RETIRE AFTER: %v\n%s", err, out)
			}
		}
	}
	if retireAfter.IsZero() {
		t.Fatalf("no superseded generation after activate:\n%s", out)
	}
	t.Logf("activated %s after the start; the old generation may retire at %s", time.Since(began).Round(time.Second), retireAfter.Format(time.TimeOnly))
	burst()
	for lastBurst := time.Now(); time.Now().Before(retireAfter.Add(1100 * time.Millisecond)); time.Sleep(500 * time.Millisecond) {
		if time.Since(lastBurst) > 10*time.Second {
			burst()
			lastBurst = time.Now()
		}
	}
	// Before the retire, every sidecar of a.example holds an SVID of the
	// new root: the old one may go.
	var newCert *x509.Certificate
	for _, r := range m.a.ca.roots(t) {
		if fingerprint(r) == newRoot {
			newCert = r
		}
	}
	for _, s := range m.sidecars(m.a) {
		x, err := s.x509Context()
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := x509svid.Verify(x.DefaultSVID().Certificates, x509bundle.FromX509Authorities(m.a.td(), []*x509.Certificate{newCert})); err != nil {
			t.Errorf("%s's SVID does not chain to a.example's new root at retire time: %v", s.name, err)
		}
	}

	load.setPhase("4 retired")
	if _, err := m.a.ca.cli("ca", "rotate", "retire"); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*fedDomain{m.a, m.b} {
		for _, s := range m.sidecars(d) {
			eventually(t, s.name+" of "+d.td().Name()+" to drop a.example's old root", 15*time.Second, func() error {
				got, err := s.federatedRoots(m.a.td())
				if err != nil {
					return err
				}
				if !slices.Equal(got, []string{newRoot}) {
					return fmt.Errorf("a.example roots %v", got)
				}
				return nil
			})
		}
	}
	burst() // new handshakes with a.example's new root only, in both directions
	time.Sleep(2 * time.Second)
	load.stop()
	failed, attempted := load.report(t)
	if failed != 0 {
		t.Errorf("%d of %d cross-domain requests failed during a.example's rotation", failed, attempted)
	}
	if attempted == 0 {
		t.Fatal("no request was attempted")
	}
}
