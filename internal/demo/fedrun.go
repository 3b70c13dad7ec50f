package demo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/caadmin"
)

// run starts both meshes, tells the story, keeps traffic flowing until
// the end (Ctrl-C, --duration, or a failure), and stops everything.
func (f *fedDemo) run(parent context.Context) (err error) {
	d := f.demo
	r, err := d.startRun(parent, f.plan)
	if err != nil {
		return err
	}
	defer r.end(nil)
	d.summary = f.summary
	defer func() {
		if f.traffic != nil {
			f.traffic.halt()
		}
		for _, m := range []*fedMesh{f.a, f.b} {
			if m.closeAdmin != nil {
				m.closeAdmin()
			}
		}
		err = errors.Join(err, d.shutdown(r.reason, r.began, err))
	}()
	ctx := r.ctx

	d.sayStart(fmt.Sprintf("Tether demo --federation: two meshes with their own trust domains, %s and %s, on loopback, without root.", fedDomainA, fedDomainB))
	for _, step := range []func(context.Context) error{f.startCAs, f.startDiscoveries, f.startServices, f.tellIdentities} {
		if err := step(ctx); err != nil {
			return r.interrupted(err)
		}
	}
	f.tellPolicy()
	if err := f.tellCalls(ctx); err != nil {
		return r.interrupted(err)
	}
	f.tellLookAround()

	f.traffic = newFedTraffic(f.web.app, f.batch.app, d.cfg.rate)
	r.result = f.traffic.result
	f.traffic.start(ctx)
	stopAt, stopTimer := d.durationTimer()
	defer stopTimer()
	var last fedCounts
	return d.keepTraffic(r, stopAt, fmt.Sprintf("web → api (%s → %s) %s times a second, and batch → api every 2 seconds", fedDomainA, fedDomainB, d.rateText()), func() {
		now := f.traffic.counts()
		through := ""
		if now.through > 0 {
			through = fmt.Sprintf(", %d went through so far (did a mesh.yaml change?)", now.through)
		}
		d.say("  %s  web → api: %d calls, %d ok, %d failed   batch → api: %d tried, %d refused%s",
			time.Now().Format("15:04:05"), now.tried-last.tried, now.ok-last.ok, now.failed-last.failed,
			now.deniedTried-last.deniedTried, now.refused-last.refused, through)
		last = now
	})
}

// summary is the traffic line of the shutdown.
func (f *fedDemo) summary() {
	if f.traffic == nil {
		return
	}
	c := f.traffic.counts()
	through := ""
	if c.through > 0 {
		through = ", went through " + count(c.through, "time", "times")
	}
	f.say("  Traffic: %s web → api (%s → %s), %d ok, %d failed; batch → api tried %s, refused %s%s.",
		count(c.tried, "call", "calls"), fedDomainA, fedDomainB, c.ok, c.failed,
		count(c.deniedTried, "time", "times"), count(c.refused, "time", "times"), through)
}

// fedCAFlags shorten the federation's timers so the demo moves on within
// seconds: the CAs reread their federation files every second.
var fedCAFlags = []string{"--tick", "1s", "--bundle-endpoint-refresh-hint", "5s", "--federation-min-refresh", "1s"}

// startCAs starts both CAs with their bundle endpoints, then has each
// follow the other's: b.example's first (a.example's bundle file exists
// by then), then a.example's.
func (f *fedDemo) startCAs(ctx context.Context) error {
	d := f.demo
	d.say("\nControl planes: a tether-ca per trust domain, each serving its bundle at a SPIFFE bundle endpoint (https_spiffe)")
	for _, m := range []*fedMesh{f.a, f.b} {
		if err := f.startCA(ctx, m); err != nil {
			return err
		}
	}
	for _, c := range []struct{ m, other *fedMesh }{{f.b, f.a}, {f.a, f.b}} {
		endpoint := d.ports[c.other.key+"-bundle"]
		if err := writeAtomic(c.m.fedFile, federationFile(c.other, endpoint)); err != nil {
			return fmt.Errorf("write %s: %w", c.m.fedFile, err)
		}
		var seq float64
		if err := waitUntil(ctx, f.procNamed("tether-ca ("+c.m.td+")"), "federated with "+c.other.td, demoStartTimeout, func() error {
			var err error
			seq, err = metric(d.ports[c.m.key+"-ca-admin"], "tether_ca_federated_bundle_sequence", map[string]string{"trust_domain": c.other.td})
			if err == nil && seq < 1 {
				err = fmt.Errorf("no bundle of %s fetched yet from https://%s", c.other.td, endpoint)
			}
			return err
		}); err != nil {
			return err
		}
		d.say("  %s's tether-ca follows %s's bundle endpoint https://%s (%s): holds its bundle, sequence %g",
			c.m.td, c.other.td, endpoint, c.other.endpointID(), seq)
	}
	return nil
}

// procNamed finds a started process by name.
func (f *fedDemo) procNamed(name string) *proc {
	f.procsMu.Lock()
	defer f.procsMu.Unlock()
	for _, p := range f.procs {
		if p.name == name {
			return p
		}
	}
	return nil
}

func (f *fedDemo) startCA(ctx context.Context, m *fedMesh) error {
	d, p := f.demo, f.ports
	args := append([]string{"--trust-domain", m.td, "--store-dir", m.caDir, "--listen", p[m.key+"-ca"], "--admin-listen", p[m.key+"-ca-admin"],
		"--bundle-endpoint-listen", p[m.key+"-bundle"], "--federation-file", m.fedFile}, fedCAFlags...)
	ca, err := d.start("tether-ca ("+m.td+")", m.key+"-tether-ca.log", d.bin("tether-ca"), args, demoEnv())
	if err != nil {
		return err
	}
	if err := waitUntil(ctx, ca, "ready", demoStartTimeout, func() error {
		for _, file := range []string{m.socket(), m.bundle()} {
			if _, err := os.Stat(file); err != nil {
				return err
			}
		}
		_, err := httpOK("http://" + p[m.key+"-ca-admin"] + "/readyz")
		return err
	}); err != nil {
		return err
	}
	if m.admin, m.closeAdmin, err = caadmin.Dial(m.socket()); err != nil {
		return err
	}
	d.say("  %-11s tether-ca  pid %-7d gRPC %s, bundle endpoint https://%s, metrics http://%s/metrics",
		m.td, ca.pid(), p[m.key+"-ca"], p[m.key+"-bundle"], p[m.key+"-ca-admin"])
	return nil
}

// joinToken creates a single-use join token for id from m's CA.
func (m *fedMesh) joinToken(ctx context.Context, id string) (string, error) {
	resp, err := m.admin.CreateJoinToken(ctx, &cav1.CreateJoinTokenRequest{SpiffeId: id, TtlSeconds: 600, AllowReserved: id == m.discoveryID()})
	if err != nil {
		return "", caadmin.RPCError("create a join token for "+id, err)
	}
	return resp.GetToken(), nil
}

// startDiscoveries starts each mesh's tether-discovery on its mesh.yaml.
func (f *fedDemo) startDiscoveries(ctx context.Context) error {
	d, p := f.demo, f.ports
	for _, m := range []*fedMesh{f.a, f.b} {
		token, err := m.joinToken(ctx, m.discoveryID())
		if err != nil {
			return err
		}
		disc, err := d.start("tether-discovery ("+m.td+")", m.key+"-tether-discovery.log", d.bin("tether-discovery"), []string{
			"--trust-domain", m.td, "--mesh-file", m.meshFile, "--ca", p[m.key+"-ca"], "--bundle", m.bundle(),
			"--listen", p[m.key+"-discovery"], "--admin-listen", p[m.key+"-discovery-admin"],
		}, demoEnv("TETHER_JOIN_TOKEN="+token))
		if err != nil {
			return err
		}
		if err := waitUntil(ctx, disc, "ready", demoStartTimeout, func() error {
			_, err := httpOK("http://" + p[m.key+"-discovery-admin"] + "/readyz")
			return err
		}); err != nil {
			return err
		}
		d.say("  %-11s tether-discovery pid %-7d xDS %s, serving %s", m.td, disc.pid(), p[m.key+"-discovery"], m.meshFile)
	}
	return nil
}

// startServices starts api (b.example), web and batch (a.example), each
// behind its own sidecar in explicit mode, and waits until the sidecars
// are ready.
func (f *fedDemo) startServices(ctx context.Context) error {
	d, p := f.demo, f.ports
	d.say("\nServices, each behind its own tether-sidecar in explicit mode")
	for _, s := range f.services() {
		args := []string{"demo", "app", "--name", s.name, "--listen", s.app}
		if s.out != "" {
			args = append(args, "--call", "api="+s.out)
		}
		var err error
		if s.appProc, err = d.start(s.name+" app", s.mesh.key+"-"+s.name+"-app.log", d.cfg.self, args, demoEnv()); err != nil {
			return err
		}
	}
	for _, s := range f.services() {
		if err := waitUntil(ctx, s.appProc, "listening", demoStartTimeout, func() error { return dialOK(s.app) }); err != nil {
			return err
		}
	}
	for _, s := range f.services() {
		m := s.mesh
		token, err := m.joinToken(ctx, s.id())
		if err != nil {
			return err
		}
		args := []string{
			"--trust-domain", m.td, "--ca", p[m.key+"-ca"], "--bundle", m.bundle(), "--discovery", p[m.key+"-discovery"],
			"--admin-listen", s.admin, "--workload-socket", s.socket, "--access-log", s.accessLog,
			"--inbound-mode", "strict", "--drain-timeout", "2s",
		}
		if s.inbound != "" {
			args = append(args, "--inbound", s.inbound+"="+s.app)
		}
		if s.out != "" {
			args = append(args, "--outbound", s.out+"="+demoNamespace+"/api:80")
		}
		if s.sidecar, err = d.start(s.name+"'s sidecar", m.key+"-"+s.name+"-sidecar.log", d.bin("tether-sidecar"), args, demoEnv("TETHER_JOIN_TOKEN="+token)); err != nil {
			return err
		}
	}
	for _, s := range f.services() {
		if err := waitUntil(ctx, s.sidecar, "ready", demoStartTimeout, func() error {
			_, err := httpOK("http://" + s.admin + "/healthz/ready")
			return err
		}); err != nil {
			return err
		}
		route := "inbound " + s.inbound + " → app"
		if s.out != "" {
			route = "outbound " + s.out + " → " + demoNamespace + "/api:80 (remote service of " + fedDomainB + ")"
		}
		d.say("  %-11s %-5s app pid %-7d on %s; sidecar pid %-7d %s", s.mesh.td, s.name, s.appProc.pid(), s.app, s.sidecar.pid(), route)
	}
	return nil
}

// tellIdentities lists each sidecar's SVID and the trust domains its
// Workload API hands the application (go-spiffe's client).
func (f *fedDemo) tellIdentities(ctx context.Context) error {
	f.say("\nIdentities: each CA issued its own domain's SVIDs; each Workload API also hands the app the other domain's bundle")
	for _, s := range f.services() {
		id, err := debugIdentity(s.admin)
		if err != nil {
			return fmt.Errorf("%s's identity: %w", s.name, err)
		}
		var tds []string
		fetch, cancel := context.WithTimeout(ctx, 5*time.Second)
		bundles, err := workloadapi.FetchX509Bundles(fetch, workloadapi.WithAddr("unix://"+s.socket))
		cancel()
		if err != nil {
			return fmt.Errorf("%s's Workload API: %w", s.name, err)
		}
		for _, b := range bundles.Bundles() {
			tds = append(tds, b.TrustDomain().Name())
		}
		slices.Sort(tds)
		f.say("  %-40s expires %s; bundles of %s", id.SPIFFEID, id.NotAfter.UTC().Format("15:04:05"), strings.Join(tds, ", "))
		if !slices.Contains(tds, fedDomainA) || !slices.Contains(tds, fedDomainB) {
			return fmt.Errorf("%s's Workload API hands out the bundles of %v, want both %s and %s", s.name, tds, fedDomainA, fedDomainB)
		}
	}
	return nil
}

// tellPolicy says who may call whom across the domains.
func (f *fedDemo) tellPolicy() {
	f.say("\nPolicy (defaultPolicy deny in both meshes):")
	f.say("  %s (%s): remote service %s/api → %s's api at %s, expected to present %s;",
		fedDomainA, f.a.meshFile, demoNamespace, fedDomainB, f.api.inbound, f.b.id("api"))
	f.say("      AccessPolicy %s/api-from-web-and-batch lets web and batch call it", demoNamespace)
	f.say("  %s (%s): AccessPolicy %s/api-from-a-web admits %s, and no one else", fedDomainB, f.b.meshFile, demoNamespace, f.a.id("web"))
}
