package demo

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/caadmin"
	"github.com/tether-mesh/tether/pkg/identity"
)

// Lifetimes of tether-ca with --rotate: SVIDs live a minute, the least
// tether-ca allows (+1s backdating), so sidecars renew every 30 to 36s; a
// prepared root must be in the bundle 3s before it signs.
const (
	demoSVIDTTL     = time.Minute
	demoBackdate    = time.Second
	demoPropagation = 3 * time.Second
)

// demoRotateCAFlags are tether-ca's flags with --rotate. Scheduled
// rotation is off: the demo takes every step itself.
var demoRotateCAFlags = []string{
	"--svid-ttl", "1m", "--backdate", "1s", "--propagation-delay", "3s", "--auto-rotate=false", "--tick", "1s",
}

// step prints one timed step of the rotation.
func (d *demo) step(format string, args ...any) {
	d.say("  %s  "+format, append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func sleepCtx(ctx context.Context, dur time.Duration) error {
	t := time.NewTimer(dur)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

func generation(st *cav1.StatusResponse, state string) *cav1.Generation {
	for _, g := range st.GetGenerations() {
		if g.GetState() == state {
			return g
		}
	}
	return nil
}

// rotate takes tether-ca through prepare, activate and retire while the
// traffic loop runs, checks that every sidecar ends with an SVID of the
// new root and trusts only it, and reports the calls of each phase.
func (d *demo) rotate(ctx context.Context) (err error) {
	t := d.traffic
	d.say("\nRoot rotation under traffic (tether-ca runs with %s, so it takes about half a minute)", strings.Join(demoRotateCAFlags, " "))
	defer func() {
		t.mu.Lock()
		t.phase = nil // later calls count in the total only
		t.mu.Unlock()
		d.tellPhases(err)
	}()

	st, err := d.admin.Status(ctx, &cav1.StatusRequest{})
	if err != nil {
		return caadmin.RPCError("CA status", err)
	}
	old := generation(st, "active")
	if old == nil || generation(st, "prepared") != nil || generation(st, "superseded") != nil {
		return fmt.Errorf("the CA in %s is in the middle of a rotation already (see tether ca status --socket %s): finish it, or run the demo with a fresh --dir",
			d.caDir, filepath.Join(d.caDir, "admin.sock"))
	}
	t.setPhase(fmt.Sprintf("before: generation %d signs", old.GetId()))
	d.step("generation %d signs (root %s); traffic flows", old.GetId(), short(old.GetRootFingerprint()))
	if err := sleepCtx(ctx, 2*time.Second); err != nil {
		return err
	}

	st, err = d.admin.Rotate(ctx, &cav1.RotateRequest{Step: "prepare"})
	if err != nil {
		return caadmin.RPCError("rotate prepare", err)
	}
	preparedAt := time.Now()
	next := generation(st, "prepared")
	if next == nil {
		return fmt.Errorf("rotate prepare: the CA shows no prepared generation")
	}
	newFP := next.GetRootFingerprint()
	t.setPhase(fmt.Sprintf("prepared: generations %d and %d trusted, %d signs", old.GetId(), next.GetId(), old.GetId()))
	d.step("prepare: generation %d (root %s) joins the trust bundle; generation %d still signs", next.GetId(), short(newFP), old.GetId())
	if err := d.waitSidecars(ctx, 20*time.Second, "trust the new root", func(id sidecarIdentity) bool {
		return slices.Contains(id.Roots, newFP)
	}); err != nil {
		return err
	}
	d.step("every sidecar trusts both roots (pushed over WatchBundle, %s after prepare)", time.Since(preparedAt).Round(time.Millisecond))

	if err := sleepCtx(ctx, time.Until(preparedAt.Add(demoPropagation+200*time.Millisecond))); err != nil {
		return err
	}
	st, err = d.admin.Rotate(ctx, &cav1.RotateRequest{Step: "activate"})
	if err != nil {
		return caadmin.RPCError("rotate activate", err)
	}
	activatedAt := time.Now()
	t.setPhase(fmt.Sprintf("activated: generation %d signs, %d still trusted", next.GetId(), old.GetId()))
	var retireAfter time.Time
	for _, g := range st.GetGenerations() {
		if g.GetId() == old.GetId() {
			retireAfter = time.Unix(g.GetRetireAfterUnix(), 0)
		}
	}
	d.step("activate (after the %s propagation delay): generation %d signs new SVIDs; generation %d is superseded, trusted until what it signed has expired (%s)",
		demoPropagation, next.GetId(), old.GetId(), retireAfter.Format("15:04:05"))

	newRoot, err := d.rootByFingerprint(ctx, newFP)
	if err != nil {
		return err
	}
	newOnly := x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(demoTrustDomain), []*x509.Certificate{newRoot})
	if err := d.waitNewSVIDs(ctx, activatedAt, next.GetId(), newRoot, newOnly); err != nil {
		return err
	}
	// Nothing in use still depends on the old root, so retiring it now
	// breaks nothing; without --force the CA waits until the last SVID
	// it signed has expired, which nobody uses any more.
	if _, err := d.admin.Rotate(ctx, &cav1.RotateRequest{Step: "retire", Force: time.Now().Before(retireAfter)}); err != nil {
		return caadmin.RPCError("rotate retire", err)
	}
	retiredAt := time.Now()
	t.setPhase(fmt.Sprintf("retired: only generation %d trusted", next.GetId()))
	if retiredAt.Before(retireAfter) {
		d.step("retire --force (the CA would otherwise wait until %s, when the last SVID generation %d signed expires; none is in use): generation %d leaves the trust bundle, its keys are erased",
			retireAfter.Format("15:04:05"), old.GetId(), old.GetId())
	} else {
		d.step("retire: generation %d leaves the trust bundle; its keys are erased", old.GetId())
	}
	if err := d.waitSidecars(ctx, 20*time.Second, "drop the old root", func(id sidecarIdentity) bool {
		return len(id.Roots) == 1 && id.Roots[0] == newFP
	}); err != nil {
		return err
	}
	d.step("every sidecar's bundle holds generation %d's root only (%s after retire)", next.GetId(), time.Since(retiredAt).Round(time.Millisecond))
	// Calls so far may ride pooled connections opened before; a burst
	// needs new ones, whose handshakes trust generation 2 alone.
	newConns := func() float64 {
		var n float64
		for _, s := range d.services {
			v, _ := metric(s.admin, "tether_sidecar_outbound_streams_total", map[string]string{"reused": "false"})
			n += v
		}
		return n
	}
	conns := newConns()
	const burst = 16
	failedBurst := t.burst(ctx, burst)
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	if opened := newConns() - conns; opened > 0 {
		d.step("a burst of %d calls at once: %d succeeded, over %g new mTLS connections between the sidecars (tether_sidecar_outbound_streams_total{reused=\"false\"}), every handshake on generation %d alone",
			burst, burst-failedBurst, opened, next.GetId())
	} else {
		d.step("a burst of %d calls at once: %d succeeded (over pooled connections: the sidecars opened no new ones)", burst, burst-failedBurst)
	}
	if err := sleepCtx(ctx, 2*time.Second); err != nil {
		return err
	}

	// The proof: every sidecar's SVID chains to the new root alone, and
	// no sidecar trusts the old one.
	var proof []string
	for _, s := range d.services {
		svid, err := fetchSVID(ctx, s.socket)
		if err != nil {
			return fmt.Errorf("%s's SVID over the Workload API: %w", s.name, err)
		}
		if _, _, err := x509svid.Verify(svid.Certificates, newOnly); err != nil {
			return fmt.Errorf("%s's SVID does not verify against generation %d's root alone: %w", s.name, next.GetId(), err)
		}
		id, err := debugIdentity(s.admin)
		if err != nil {
			return err
		}
		if len(id.Roots) != 1 || id.Roots[0] != newFP {
			return fmt.Errorf("%s's sidecar still trusts %d root(s): %v", s.name, len(id.Roots), id.Roots)
		}
		proof = append(proof, fmt.Sprintf("%s (serial %s)", s.name, short(svid.Certificates[0].SerialNumber.Text(16))))
	}
	d.step("checked: the SVIDs of %s verify against generation %d's root alone (Workload API), and every sidecar's bundle (/debug/identity) holds only that root",
		strings.Join(proof, ", "), next.GetId())
	var out, errOut bytes.Buffer
	sock := filepath.Join(d.caDir, "admin.sock")
	if err := d.tether(ctx, []string{"ca", "status", "--socket", sock}, &out, &errOut); err == nil {
		d.say("\n  tether ca status --socket %s:\n%s", sock, indent(strings.TrimRight(out.String(), "\n"), "    "))
	}
	return nil
}

// waitNewSVIDs waits until every SVID in use comes from generation gen
// (root newRoot): the sidecars' (over their Workload API), discovery's
// (its SVID's expiry says it was issued after activate) and the CA's own
// serving certificate.
func (d *demo) waitNewSVIDs(ctx context.Context, activatedAt time.Time, gen uint64, newRoot *x509.Certificate, newOnly *x509bundle.Bundle) error {
	done := map[string]bool{}
	want := len(d.services) + 2
	check := map[string]func() (string, bool){
		"tether-discovery": func() (string, bool) {
			// Issued after activate means signed by the new generation.
			exp, err := metric(d.ports["discovery-admin"], "tether_discovery_svid_expiry_timestamp_seconds", nil)
			if err != nil || time.Unix(int64(exp), 0).Before(activatedAt.Add(demoSVIDTTL+time.Second)) {
				return "", false
			}
			return "tether-discovery renewed its SVID from generation %d (its expiry metric says it was issued %s after activate)", true
		},
		"tether-ca": func() (string, bool) {
			if err := caServesRoot(d.ports["ca"], newRoot); err != nil {
				return "", false
			}
			return "tether-ca serves with a certificate from generation %d (%s after activate)", true
		},
	}
	for _, s := range d.services {
		check[s.name] = func() (string, bool) {
			svid, err := fetchSVID(ctx, s.socket)
			if err != nil {
				return "", false
			}
			if _, _, err := x509svid.Verify(svid.Certificates, newOnly); err != nil {
				return "", false
			}
			return s.name + "'s sidecar renewed its SVID from generation %d (serial " + short(svid.Certificates[0].SerialNumber.Text(16)) + ", %s after activate)", true
		}
	}
	order := []string{"tether-ca"}
	for _, s := range d.services {
		order = append(order, s.name)
	}
	order = append(order, "tether-discovery")
	deadline := activatedAt.Add(demoSVIDTTL + 10*time.Second)
	for len(done) < want {
		for _, name := range order {
			if done[name] {
				continue
			}
			if msg, ok := check[name](); ok {
				done[name] = true
				d.step(msg, gen, time.Since(activatedAt).Round(100*time.Millisecond))
			}
		}
		if len(done) == want {
			break
		}
		if time.Now().After(deadline) {
			var missing []string
			for _, name := range order {
				if !done[name] {
					missing = append(missing, name)
				}
			}
			return fmt.Errorf("%s still use SVIDs of the old generation at %s; see the logs in %s", strings.Join(missing, ", "), deadline.Format("15:04:05"), d.logDir)
		}
		if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

// caServesRoot checks that tether-ca's TLS certificate chains to root.
func caServesRoot(addr string, root *x509.Certificate) error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, &tls.Config{
		InsecureSkipVerify: true, // verified below, against root alone
		NextProtos:         []string{"h2"},
	})
	if err != nil {
		return err
	}
	certs := c.ConnectionState().PeerCertificates
	c.Close()
	if len(certs) == 0 {
		return fmt.Errorf("tether-ca presented no certificate")
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	for _, ic := range certs[1:] {
		inter.AddCert(ic)
	}
	_, err = certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

// tellPhases prints the calls of each phase and the outcome.
func (d *demo) tellPhases(rotErr error) {
	t := d.traffic
	t.mu.Lock()
	phases := append([]*callStats(nil), t.phases...)
	t.mu.Unlock()
	if len(phases) == 0 {
		return
	}
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PHASE\tATTEMPTED\tSUCCEEDED\tFAILED")
	var att, ok, failed int64
	for _, p := range phases {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\n", p.name, p.attempted.Load(), p.ok.Load(), p.failed.Load())
		att, ok, failed = att+p.attempted.Load(), ok+p.ok.Load(), failed+p.failed.Load()
	}
	fmt.Fprintf(tw, "all phases\t%d\t%d\t%d\n", att, ok, failed)
	tw.Flush()
	d.say("\n  Calls web → api → db during the rotation:")
	d.say("%s", indent(strings.TrimRight(b.String(), "\n"), "    "))
	for _, p := range phases {
		if f := p.failures(); f != "" {
			d.say("    %s:%s", p.name, f)
		}
	}
	switch {
	case rotErr != nil:
		d.say("  The rotation did not complete: %v", rotErr)
	case failed == 0:
		d.say("  Rotation complete under traffic: %d of %d calls succeeded, none failed.", ok, att)
	default:
		d.say("  Rotation complete, but %d of %d calls failed.", failed, att)
	}
}

// rootByFingerprint reads the root with SHA-256 fp from the CA's bundle file.
func (d *demo) rootByFingerprint(ctx context.Context, fp string) (*x509.Certificate, error) {
	path := filepath.Join(d.caDir, "bundle.pem")
	for deadline := time.Now().Add(10 * time.Second); ; {
		if b, err := identity.LoadBundlePEM(path, demoTrustDomain); err == nil {
			for _, c := range b.X509Authorities() {
				if identity.Fingerprint(c.Raw) == fp {
					return c, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the CA's bundle file %s does not hold root %s", path, fp)
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// waitSidecars waits until every sidecar's /debug/identity satisfies ok.
func (d *demo) waitSidecars(ctx context.Context, timeout time.Duration, what string, ok func(sidecarIdentity) bool) error {
	deadline := time.Now().Add(timeout)
	for {
		var pending []string
		for _, s := range d.services {
			if id, err := debugIdentity(s.admin); err != nil || !ok(id) {
				pending = append(pending, s.name)
			}
		}
		if len(pending) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the sidecars of %s did not %s within %s", strings.Join(pending, ", "), what, timeout)
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// fetchSVID gets the SVID a sidecar serves on its Workload API socket.
func fetchSVID(ctx context.Context, socket string) (*x509svid.SVID, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+socket))
}
