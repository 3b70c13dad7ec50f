package demo

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// fedAllowed is what web answers when web → api went through.
const fedAllowed = "web → api"

// tellCalls makes the allowed call and the refused one, and shows, from
// the access log of b.example's api sidecar, the caller's real SPIFFE ID
// in each.
func (f *fedDemo) tellCalls(ctx context.Context) error {
	client := newFedTraffic(f.web.app, f.batch.app, 1)
	f.say("\nCalls across the trust domains")

	apiLog, webLog := accessLogSize(f.api.accessLog), accessLogSize(f.web.accessLog)
	var took time.Duration
	var err error
	for deadline := time.Now().Add(15 * time.Second); ; {
		began := time.Now()
		if err = client.allowed(ctx); err == nil {
			took = time.Since(began)
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("the allowed call web (%s) → api (%s) fails: %v (logs in %s)", fedDomainA, fedDomainB, err, f.logDir)
		}
		time.Sleep(200 * time.Millisecond)
	}
	f.say("  allowed  web (%s) → api (%s): web answered %q in %s", fedDomainA, fedDomainB, fedAllowed, took.Round(time.Millisecond))
	if e, err := waitAccess(ctx, f.web.accessLog, webLog, 3*time.Second, func(e accessEntry) bool {
		return e.Direction == "outbound" && e.Decision == "allow"
	}); err == nil {
		f.say("           web's sidecar → %s over tether/1, mTLS with its own SVID; the peer proved %q", e.Destination, e.DestID)
	}
	in, err := waitAccess(ctx, f.api.accessLog, apiLog, 3*time.Second, func(e accessEntry) bool {
		return e.Direction == "inbound" && e.Decision == "allow"
	})
	if err != nil {
		return fmt.Errorf("web → api went through, but %s's api sidecar logged no allowed inbound connection: %v", fedDomainB, err)
	}
	if in.SourceID != f.web.id() {
		return fmt.Errorf("%s's api sidecar logged the allowed caller as %q, want %s (the caller's own identity, end to end)", fedDomainB, in.SourceID, f.web.id())
	}
	f.say("           %s's api sidecar access log: \"source_id\":%q, \"destination_id\":%q, \"decision\":%q", fedDomainB, in.SourceID, in.DestID, in.Decision)

	apiLog, batchLog := accessLogSize(f.api.accessLog), accessLogSize(f.batch.accessLog)
	err = client.refused(ctx)
	if err == nil {
		return fmt.Errorf("batch (%s) → api (%s) went through, although %s's policy does not name %s", fedDomainA, fedDomainB, fedDomainB, f.batch.id())
	}
	f.say("  refused  batch (%s) → api (%s): batch answered: %s", fedDomainA, fedDomainB, err)
	if e, lerr := waitAccess(ctx, f.batch.accessLog, batchLog, 3*time.Second, func(e accessEntry) bool {
		return e.Direction == "outbound"
	}); lerr == nil && e.Rule != "" {
		f.say("           batch's sidecar let it out (%s's rule %q) and logged %q: %s", fedDomainA, e.Rule, e.Decision, e.Reason)
	}
	deny, lerr := waitAccess(ctx, f.api.accessLog, apiLog, 3*time.Second, func(e accessEntry) bool {
		return e.Direction == "inbound" && e.Decision == "deny"
	})
	if lerr != nil {
		return fmt.Errorf("batch → api failed (%v) but %s's api sidecar logged no refusal: %v", err, fedDomainB, lerr)
	}
	if deny.SourceID != f.batch.id() {
		return fmt.Errorf("%s's api sidecar logged the refused caller as %q, want %s", fedDomainB, deny.SourceID, f.batch.id())
	}
	f.say("           %s's api sidecar access log: \"source_id\":%q, \"decision\":%q, \"rule\":%q", fedDomainB, deny.SourceID, deny.Decision, deny.Rule)
	f.say("           (the destination decides with the caller's real identity: no gateway stands in between)")
	return nil
}

// tellLookAround gives the commands and URLs to explore both meshes.
func (f *fedDemo) tellLookAround() {
	tether := cmdPath(f.cfg.self)
	lines := [][2]string{
		{tether + " identity --socket " + f.web.socket, "web's SVID and the bundles of both trust domains, over the Workload API"},
		{tether + " ca status --socket " + f.a.socket(), fedDomainA + "'s root generations"},
		{"curl -sk https://" + f.ports["a-bundle"] + "/", fedDomainA + "'s SPIFFE bundle, as " + fedDomainB + "'s CA fetches it"},
		{"curl -s http://" + f.ports["b-ca-admin"] + "/metrics | grep tether_ca_federated_bundle", fedDomainB + "'s CA following " + fedDomainA},
		{"curl -s http://" + f.api.admin + "/debug/discovery", "whom api's sidecar admits, and by which rule"},
	}
	f.say("\nLook around while it runs, from another terminal:")
	for _, l := range lines {
		f.say("  %s\n      %s", l[0], l[1])
	}
	f.say("  Logs: %s (the sidecars' access logs are *-sidecar.access.log; mesh.yaml and federation.yaml in %s and %s)",
		f.logDir, filepath.Dir(f.a.meshFile), filepath.Dir(f.b.meshFile))
}

// fedTraffic is the loop of tether demo --federation: web → api at a
// steady rate, and batch → api (refused) every 2 seconds.
type fedTraffic struct {
	callLoop
	web, batch string // the apps' addresses
	total      callStats
}

// fedCounts is a snapshot of fedTraffic's counters.
type fedCounts struct {
	tried, ok, failed, deniedTried, refused, through int64
}

func newFedTraffic(web, batch string, rate float64) *fedTraffic {
	return &fedTraffic{web: web, batch: batch, callLoop: newCallLoop(rate)}
}

// allowed has web call api once.
func (t *fedTraffic) allowed(ctx context.Context) error {
	body, err := demoGet(ctx, t.client, "http://"+t.web+"/")
	if err == nil && body != fedAllowed {
		err = fmt.Errorf("web answered %q, want %q", body, fedAllowed)
	}
	return err
}

// refused has batch call api once; nil means it went through.
func (t *fedTraffic) refused(ctx context.Context) error {
	_, err := demoGet(ctx, t.client, "http://"+t.batch+"/")
	return err
}

func (t *fedTraffic) start(ctx context.Context) {
	t.callLoop.start(ctx, t.allowed, t.total.record, t.refused, "batch → api")
}

func (t *fedTraffic) counts() fedCounts {
	return fedCounts{tried: t.total.attempted.Load(), ok: t.total.ok.Load(), failed: t.total.failed.Load(),
		deniedTried: t.deniedTried.Load(), refused: t.deniedRefused.Load(), through: t.deniedThrough.Load()}
}

// result fails the run if an allowed call failed or the refused one went
// through.
func (t *fedTraffic) result() error {
	c := t.counts()
	var errs []error
	if c.failed > 0 {
		t.total.mu.Lock()
		first := strings.Join(t.total.firstErrors, "; ")
		t.total.mu.Unlock()
		errs = append(errs, fmt.Errorf("%d of %d calls web → api failed; first failures: %s", c.failed, c.tried, first))
	}
	if c.through > 0 {
		errs = append(errs, fmt.Errorf("batch → api, which %s's policy does not admit, went through %d time(s) (last: %s)", fedDomainB, c.through, *t.lastThrough.Load()))
	}
	return errors.Join(errs...)
}
