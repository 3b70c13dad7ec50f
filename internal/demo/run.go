package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/caadmin"
)

// Timeouts of the start: each component gets this long to become ready.
const demoStartTimeout = 30 * time.Second

// run starts the mesh, tells its story, keeps traffic flowing until the
// end (Ctrl-C, --duration, or a failure), and stops everything.
func (d *demo) run(parent context.Context) (err error) {
	r, err := d.startRun(parent, d.plan)
	if err != nil {
		return err
	}
	defer r.end(nil)
	defer func() {
		err = errors.Join(err, d.shutdown(r.reason, r.began, err))
	}()
	ctx := r.ctx

	d.sayStart("Tether demo: the standalone mesh on this machine, on loopback, without root.")
	if err := d.startControlPlane(ctx); err != nil {
		return r.interrupted(err)
	}
	if err := d.startServices(ctx); err != nil {
		return r.interrupted(err)
	}
	if err := d.tellIdentities(ctx); err != nil {
		return r.interrupted(err)
	}
	d.tellPolicy(ctx)
	if err := d.tellCalls(ctx); err != nil {
		return r.interrupted(err)
	}
	d.tellLookAround()

	d.traffic = newTraffic(d.service("web").app, d.cfg.rate)
	r.result = d.trafficResult
	d.traffic.start(ctx)
	stopAt, stopTimer := d.durationTimer()
	defer stopTimer()
	if d.cfg.rotate {
		if err := d.rotate(ctx); err != nil {
			return r.interrupted(err)
		}
	}
	var lastTried, lastOK, lastFailed, lastDenied, lastRefused int64
	return d.keepTraffic(r, stopAt, "you → web → api → db "+d.rateText()+" times a second, and web → db every 2 seconds", func() {
		t := d.traffic
		tried, ok, fail := t.total.attempted.Load(), t.total.ok.Load(), t.total.failed.Load()
		denied, refused := t.deniedTried.Load(), t.deniedRefused.Load()
		through := ""
		if n := t.deniedThrough.Load(); n > 0 {
			through = fmt.Sprintf(", %d went through so far (did mesh.yaml change?)", n)
		}
		d.say("  %s  web → api → db: %d calls, %d ok, %d failed   web → db: %d tried, %d refused%s",
			time.Now().Format("15:04:05"), tried-lastTried, ok-lastOK, fail-lastFailed, denied-lastDenied, refused-lastRefused, through)
		lastTried, lastOK, lastFailed, lastDenied, lastRefused = tried, ok, fail, denied, refused
	})
}

// runState is what a run of a demo keeps until its end: its context,
// when it began, why it ends, and the traffic's verdict once traffic runs.
type runState struct {
	parent, ctx context.Context
	end         context.CancelCauseFunc
	began       time.Time
	reason      string
	result      func() error // nil before the traffic starts
}

// startRun plans the run (removing the state directory if that fails,
// unless kept) and sets up its context, which a failing component ends
// (d.failed). The caller defers r.end(nil).
func (d *demo) startRun(parent context.Context, plan func() error) (*runState, error) {
	if err := plan(); err != nil {
		if d.dir != "" && !d.cfg.keep {
			os.RemoveAll(d.dir)
		}
		return nil, err
	}
	ctx, failed := context.WithCancelCause(parent)
	d.failed = failed
	return &runState{parent: parent, ctx: ctx, end: failed, began: time.Now(), reason: "a failure"}, nil
}

// interrupted turns the end of parent (Ctrl-C) into a clean stop.
func (r *runState) interrupted(err error) error {
	if r.parent.Err() != nil {
		r.reason = "interrupted"
		if r.result != nil {
			return r.result()
		}
		return nil
	}
	if r.ctx.Err() != nil {
		return context.Cause(r.ctx) // a component exited: say which
	}
	return err
}

// sayStart says what runs and where its state is.
func (d *demo) sayStart(title string) {
	where := "in " + d.dir + " (removed at the end; keep it with --dir)"
	if d.cfg.keep {
		where = "in " + d.dir + " (kept at the end)"
	}
	d.say("%s", title)
	d.say("State, sockets and logs %s.", where)
}

// rateText is --rate as the demo says it.
func (d *demo) rateText() string { return strings.TrimSuffix(fmt.Sprintf("%.1f", d.cfg.rate), ".0") }

// durationTimer fires at the end of --duration (never without one).
func (d *demo) durationTimer() (<-chan time.Time, func()) {
	if d.cfg.duration <= 0 {
		return nil, func() {}
	}
	t := time.NewTimer(d.cfg.duration)
	return t.C, func() { t.Stop() }
}

// keepTraffic says what the traffic is, then calls report every 10
// seconds until the run ends: at stopAt (the traffic's verdict), a failure
// or Ctrl-C.
func (d *demo) keepTraffic(r *runState, stopAt <-chan time.Time, what string, report func()) error {
	stopping := "Ctrl-C stops everything."
	if d.cfg.duration > 0 {
		stopping = fmt.Sprintf("Stopping after --duration %s; Ctrl-C stops earlier.", d.cfg.duration)
	}
	d.say("\nTraffic: %s. %s", what, stopping)
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return r.interrupted(context.Cause(r.ctx))
		case <-stopAt:
			r.reason = "--duration " + d.cfg.duration.String() + " is over"
			return r.result()
		case <-tick.C:
			report()
		}
	}
}

// trafficResult fails the run if an allowed call failed or the denied
// call went through.
func (d *demo) trafficResult() error {
	t := d.traffic
	var errs []error
	if n := t.total.failed.Load(); n > 0 {
		errs = append(errs, fmt.Errorf("%d of %d calls web → api → db failed%s", n, t.total.attempted.Load(), t.total.failures()))
	}
	if n := t.deniedThrough.Load(); n > 0 {
		errs = append(errs, fmt.Errorf("web → db, which the demo's policy denies, went through %d time(s) (last: %s); if you changed %s, that is why", n, *t.lastThrough.Load(), d.meshFile))
	}
	return errors.Join(errs...)
}

// shutdown stops the traffic and every component, and says so.
func (d *demo) shutdown(reason string, began time.Time, runErr error) error {
	if d.traffic != nil {
		d.traffic.halt()
	}
	d.say("\nStopping (%s) after %s.", reason, time.Since(began).Round(time.Second))
	if d.summary != nil {
		d.summary()
	} else if t := d.traffic; t != nil {
		through := ""
		if n := t.deniedThrough.Load(); n > 0 {
			through = ", went through " + count(n, "time", "times")
		}
		d.say("  Traffic: %s web → api → db, %d ok, %d failed; web → db tried %s, refused %s%s.",
			count(t.total.attempted.Load(), "call", "calls"), t.total.ok.Load(), t.total.failed.Load(),
			count(t.deniedTried.Load(), "time", "times"), count(t.deniedRefused.Load(), "time", "times"), through)
	}
	if d.closeAdmin != nil {
		d.closeAdmin()
	}
	n, err := d.stopAll()
	switch {
	case err != nil:
		d.say("  Could not stop everything: %v", err)
	case n == 1:
		d.say("  Stopped the 1 process it had started; nothing is left running.")
	case n > 1:
		d.say("  Stopped %d processes (sidecars, apps, tether-discovery, tether-ca); nothing is left running.", n)
	}
	switch {
	case d.dir == "":
	case d.cfg.keep:
		d.say("  State and logs are kept in %s.", d.dir)
	case runErr != nil || err != nil:
		d.say("  State and logs are kept in %s, to see what went wrong; remove it when done.", d.dir)
	default:
		if rmErr := os.RemoveAll(d.dir); rmErr != nil {
			d.say("  Could not remove %s: %v", d.dir, rmErr)
		} else {
			d.say("  Removed %s.", d.dir)
		}
	}
	return err
}

func (d *demo) bin(name string) string { return filepath.Join(d.cfg.bin, name) }

// startControlPlane starts tether-ca, then tether-discovery with its own
// join token.
func (d *demo) startControlPlane(ctx context.Context) error {
	p := d.ports
	d.say("\nControl plane")
	args := []string{"--trust-domain", demoTrustDomain, "--store-dir", d.caDir, "--listen", p["ca"], "--admin-listen", p["ca-admin"]}
	if d.cfg.rotate {
		args = append(args, demoRotateCAFlags...)
	}
	ca, err := d.start("tether-ca", "tether-ca.log", d.bin("tether-ca"), args, demoEnv())
	if err != nil {
		return err
	}
	socket, bundle := filepath.Join(d.caDir, "admin.sock"), filepath.Join(d.caDir, "bundle.pem")
	if err := waitUntil(ctx, ca, "ready", demoStartTimeout, func() error {
		for _, f := range []string{socket, bundle} {
			if _, err := os.Stat(f); err != nil {
				return err
			}
		}
		_, err := httpOK("http://" + p["ca-admin"] + "/readyz")
		return err
	}); err != nil {
		return err
	}
	d.admin, d.closeAdmin, err = caadmin.Dial(socket)
	if err != nil {
		return err
	}
	d.say("  %-17s pid %-7d gRPC %s, metrics http://%s/metrics, state in %s", "tether-ca", ca.pid(), p["ca"], p["ca-admin"], d.caDir)

	token, err := d.joinToken(ctx, demoDiscoveryID)
	if err != nil {
		return err
	}
	disc, err := d.start("tether-discovery", "tether-discovery.log", d.bin("tether-discovery"), []string{
		"--trust-domain", demoTrustDomain, "--mesh-file", d.meshFile, "--ca", p["ca"], "--bundle", bundle,
		"--listen", p["discovery"], "--admin-listen", p["discovery-admin"],
	}, demoEnv("TETHER_JOIN_TOKEN="+token))
	if err != nil {
		return err
	}
	if err := waitUntil(ctx, disc, "ready", demoStartTimeout, func() error {
		_, err := httpOK("http://" + p["discovery-admin"] + "/readyz")
		return err
	}); err != nil {
		return err
	}
	d.say("  %-17s pid %-7d xDS %s, metrics http://%s/metrics, serving %s", "tether-discovery", disc.pid(), p["discovery"], p["discovery-admin"], d.meshFile)
	return nil
}

// joinToken creates a single-use join token for id, valid 10 minutes
// (tether-discovery's ID is reserved: the demo runs it outside Kubernetes).
func (d *demo) joinToken(ctx context.Context, id string) (string, error) {
	resp, err := d.admin.CreateJoinToken(ctx, &cav1.CreateJoinTokenRequest{SpiffeId: id, TtlSeconds: 600, AllowReserved: id == demoDiscoveryID})
	if err != nil {
		return "", caadmin.RPCError("create a join token for "+id, err)
	}
	return resp.GetToken(), nil
}

// startServices starts the three apps, then their sidecars, each with its
// own join token, and waits until every sidecar is ready (it holds an SVID
// and discovery's configuration).
func (d *demo) startServices(ctx context.Context) error {
	p := d.ports
	d.say("\nServices, each behind its own tether-sidecar in explicit mode")
	for _, s := range d.services {
		args := []string{"demo", "app", "--name", s.name, "--listen", s.app}
		for _, c := range s.calls {
			args = append(args, "--call", c.name+"="+p[c.portKey])
		}
		var err error
		if s.appProc, err = d.start(s.name+" app", s.name+"-app.log", d.cfg.self, args, demoEnv()); err != nil {
			return err
		}
	}
	for _, s := range d.services {
		if err := waitUntil(ctx, s.appProc, "listening", demoStartTimeout, func() error { return dialOK(s.app) }); err != nil {
			return err
		}
	}
	bundle := filepath.Join(d.caDir, "bundle.pem")
	for _, s := range d.services {
		token, err := d.joinToken(ctx, s.id())
		if err != nil {
			return err
		}
		args := []string{
			"--trust-domain", demoTrustDomain, "--ca", p["ca"], "--bundle", bundle, "--discovery", p["discovery"],
			"--admin-listen", s.admin, "--workload-socket", s.socket, "--inbound", s.inbound + "=" + s.app,
			"--access-log", s.accessLog, "--inbound-mode", "strict", "--drain-timeout", "2s",
		}
		for _, c := range s.calls {
			args = append(args, "--outbound", p[c.portKey]+"="+c.target)
		}
		if s.sidecar, err = d.start(s.name+"'s sidecar", s.name+"-sidecar.log", d.bin("tether-sidecar"), args, demoEnv("TETHER_JOIN_TOKEN="+token)); err != nil {
			return err
		}
	}
	for _, s := range d.services {
		if err := waitUntil(ctx, s.sidecar, "ready", demoStartTimeout, func() error {
			_, err := httpOK("http://" + s.admin + "/healthz/ready")
			return err
		}); err != nil {
			return err
		}
		var outs []string
		for _, c := range s.calls {
			to := c.target
			if strings.Contains(to, "@") {
				to = "db's sidecar directly (a fixed route, past web's policy)"
			}
			outs = append(outs, p[c.portKey]+" → "+to)
		}
		d.say("  %-4s app pid %-7d on %s; sidecar pid %-7d inbound %s → app, admin http://%s", s.name, s.appProc.pid(), s.app, s.sidecar.pid(), s.inbound, s.admin)
		if len(outs) > 0 {
			d.say("       outbound %s", strings.Join(outs, "\n                "))
		}
	}
	return nil
}

// tellIdentities lists the SVIDs the CA issued, as the sidecars and
// discovery hold them.
func (d *demo) tellIdentities(ctx context.Context) error {
	d.say("\nIdentities: tether-ca issued an X.509-SVID to each, after it proved itself with a single-use join token")
	exp, err := metric(d.ports["discovery-admin"], "tether_discovery_svid_expiry_timestamp_seconds", nil)
	if err == nil && exp > 0 {
		t := time.Unix(int64(exp), 0).UTC()
		d.say("  %-60s expires %s (%s)", demoDiscoveryID, t.Format(time.RFC3339), until(t))
	}
	for _, s := range d.services {
		id, err := debugIdentity(s.admin)
		if err != nil {
			return fmt.Errorf("%s's identity: %w", s.name, err)
		}
		d.say("  %-60s expires %s (%s), serial %s", id.SPIFFEID, id.NotAfter.UTC().Format(time.RFC3339), until(id.NotAfter), short(id.Serial))
	}
	if n, err := metric(d.ports["ca-admin"], "tether_ca_issuances_total", map[string]string{"result": "ok"}); err == nil {
		d.say("  (tether-ca's tether_ca_issuances_total{result=\"ok\"} is %g)", n)
	}
	return nil
}

// tellPolicy shows who may call whom, as `tether policy graph` says it.
func (d *demo) tellPolicy(ctx context.Context) {
	var out, errOut bytes.Buffer
	d.say("\nPolicy: mesh.yaml says defaultPolicy deny, and two AccessPolicies (tether policy graph --mesh %s):", d.meshFile)
	if err := d.tether(ctx, []string{"policy", "graph", "--mesh", d.meshFile}, &out, &errOut); err != nil {
		d.say("  (policy graph: %v %s)", err, strings.TrimSpace(errOut.String()))
		return
	}
	d.say("%s", indent(strings.TrimRight(out.String(), "\n"), "  "))
	d.say("  Nothing else is allowed: no one may call web, and only api may call db.")
}

// count says n things.
func count(n int64, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// indent prefixes every line of s that is not empty.
func indent(s, prefix string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = prefix + l
		}
	}
	return strings.Join(lines, "\n")
}

// tellCalls makes one allowed call and the two denied ones, and says what
// the sidecars logged and counted about them.
func (d *demo) tellCalls(ctx context.Context) error {
	web, api, db := d.service("web"), d.service("api"), d.service("db")
	client := newTraffic(web.app, 1)
	d.say("\nCalls")

	webLog, apiLog := accessLogSize(web.accessLog), accessLogSize(api.accessLog)
	var took time.Duration
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; {
		began := time.Now()
		if err = client.chain(ctx); err == nil {
			took = time.Since(began)
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("the allowed call you → web → api → db fails: %v (logs in %s)", err, d.logDir)
		}
		time.Sleep(200 * time.Millisecond)
	}
	d.say("  allowed  you → web → api → db: web answered %q in %s", demoChain, took.Round(time.Millisecond))
	outboundAllow := func(e accessEntry) bool { return e.Direction == "outbound" && e.Decision == "allow" }
	if e, err := waitAccess(ctx, web.accessLog, webLog, 2*time.Second, outboundAllow); err == nil {
		d.say("           web's sidecar → api (%s, mTLS as %s): rule %q", e.Destination, e.DestID, e.Rule)
	}
	if e, err := waitAccess(ctx, api.accessLog, apiLog, 2*time.Second, outboundAllow); err == nil {
		d.say("           api's sidecar → db (%s, mTLS as %s): rule %q", e.Destination, e.DestID, e.Rule)
	}

	// web → db, as web's view of the policy decides it.
	webLog = accessLogSize(web.accessLog)
	err = client.direct(ctx, "db")
	if err == nil {
		return errors.New("web → db went through, although the policy denies it")
	}
	deny, lerr := waitAccess(ctx, web.accessLog, webLog, 3*time.Second, func(e accessEntry) bool {
		return e.Direction == "outbound" && e.Decision == "deny"
	})
	if lerr != nil {
		return fmt.Errorf("web → db failed (%v) but web's sidecar logged no denial: %v", err, lerr)
	}
	d.say("  denied   web → db: web's sidecar reset the call before it left web (web answered: %s)", err)
	d.say("           web's sidecar access log: \"decision\":%q, \"destination\":%q, \"rule\":%q", deny.Decision, deny.Destination, deny.Rule)
	if n, err := metric(web.admin, "tether_sidecar_authz_denials_total", map[string]string{"direction": "outbound", "destination": deny.Destination}); err == nil {
		d.say("           web's sidecar metrics: tether_sidecar_authz_denials_total{direction=\"outbound\",destination=%q,reason=%q} %g", deny.Destination, deny.Rule, n)
	}
	var out, errOut bytes.Buffer
	checkArgs := []string{"--mesh", d.meshFile, "--from", demoNamespace + "/web", "--to", demoNamespace + "/db:5432"}
	d.tether(ctx, append([]string{"policy", "check"}, checkArgs...), &out, &errOut)
	if why := strings.TrimSpace(out.String()); why != "" {
		d.say("           why (tether policy check %s):\n             %s", strings.Join(checkArgs, " "), why)
	}

	// web → db by a route fixed past web's view: db's sidecar decides.
	dbLog := accessLogSize(db.accessLog)
	err = client.direct(ctx, "db-fixed")
	if err == nil {
		return errors.New("web → db over a fixed route went through, although the policy denies it")
	}
	deny, lerr = waitAccess(ctx, db.accessLog, dbLog, 3*time.Second, func(e accessEntry) bool {
		return e.Direction == "inbound" && e.Decision == "deny"
	})
	if lerr != nil {
		return fmt.Errorf("web → db over a fixed route failed (%v) but db's sidecar logged no denial: %v", err, lerr)
	}
	d.say("  denied   web → db over a route fixed past web's policy (straight to db's sidecar): db's sidecar refused web's identity")
	d.say("           db's sidecar access log: \"source_id\":%q, \"decision\":%q, \"rule\":%q", deny.SourceID, deny.Decision, deny.Rule)
	d.say("           (policy is enforced twice: early by the caller's sidecar, authoritatively by the destination's)")
	return nil
}

// tellLookAround gives the commands and URLs to explore the running mesh.
func (d *demo) tellLookAround() {
	tether := cmdPath(d.cfg.self)
	web := d.service("web")
	sock := filepath.Join(d.caDir, "admin.sock")
	lines := [][2]string{
		{tether + " identity --socket " + web.socket, "web's SVID, over the SPIFFE Workload API its sidecar serves"},
		{tether + " policy graph --mesh " + d.meshFile, "who may call whom"},
		{tether + " policy check --mesh " + d.meshFile + " --from default/web --to default/db:5432", "why web may not call db"},
		{tether + " ca status --socket " + sock, "the CA's root generations (rotate them with: ca rotate prepare --socket ...)"},
		{"curl -s http://" + web.admin + "/debug/discovery", "what web may reach, and the rule for each port"},
		{"curl -s http://" + web.admin + "/metrics | grep tether_sidecar_authz_denials_total", "denials counted by web's sidecar"},
	}
	d.say("\nLook around while it runs, from another terminal:")
	for _, l := range lines {
		d.say("  %s\n      %s", l[0], l[1])
	}
	d.say("  Metrics: tether-ca http://%s/metrics, tether-discovery http://%s/metrics,", d.ports["ca-admin"], d.ports["discovery-admin"])
	var sc []string
	for _, s := range d.services {
		sc = append(sc, fmt.Sprintf("%s's sidecar http://%s/metrics", s.name, s.admin))
	}
	d.say("           %s", strings.Join(sc, ", "))
	d.say("  Logs: %s (the sidecars' access logs are *-sidecar.access.log)", d.logDir)
}
