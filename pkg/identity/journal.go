package identity

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// ErrRotation is returned for a rotation step that cannot be taken now; the
// message says why and what to do.
var ErrRotation = errors.New("rotation step refused")

// keepRetired is how many retired generations the journal remembers.
const keepRetired = 5

// Step is one move of the rotation journal.
type Step string

// Rotation steps.
const (
	StepPrepare  Step = "prepare"
	StepActivate Step = "activate"
	StepRetire   Step = "retire"
	// StepRenewIntermediate renews a generation's signing intermediate.
	StepRenewIntermediate Step = "renew-intermediate"
)

// newGeneration makes a generation: a fresh root (or an upstream-signed
// intermediate) in the given state.
func (c *CA) newGeneration(ctx context.Context, st *State, state GenerationState, now time.Time) (Generation, error) {
	st.NextGeneration++
	g := Generation{ID: st.NextGeneration, State: state, CreatedAt: now}
	if c.cfg.Upstream == nil {
		rootKey, err := NewKey()
		if err != nil {
			return g, err
		}
		tmpl, err := caTemplate(c.cfg.TrustDomain, fmt.Sprintf("Tether root %d", g.ID), now.Add(-c.cfg.Backdate), now.Add(c.cfg.RootTTL), 1)
		if err != nil {
			return g, err
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, rootKey.Public(), rootKey)
		if err != nil {
			return g, fmt.Errorf("create root: %w", err)
		}
		pk, err := x509.MarshalPKCS8PrivateKey(rootKey)
		if err != nil {
			return g, err
		}
		g.Roots, g.RootKey = [][]byte{der}, pk
	}
	if err := c.renewIntermediate(ctx, &g, now); err != nil {
		return g, err
	}
	err := g.newJWTKey()
	return g, err
}

// newJWTKey gives g a new JWT-SVID signing key and key ID.
func (g *Generation) newJWTKey() error {
	jwtKey, err := NewKey()
	if err != nil {
		return err
	}
	if g.JWTKey, err = x509.MarshalPKCS8PrivateKey(jwtKey); err != nil {
		return err
	}
	g.JWTKeyID, err = newKeyID()
	return err
}

// renewIntermediate gives g a new signing intermediate, signed by its own
// root or by the upstream issuer.
func (c *CA) renewIntermediate(ctx context.Context, g *Generation, now time.Time) error {
	if g.OfflineRoot {
		return fmt.Errorf("%w: generation %d's intermediate can be renewed only with the root key: %s", ErrOfflineRoot, g.ID, offlineAdvice)
	}
	if c.cfg.Upstream != nil {
		// Normally signed before the state lock was taken (presign);
		// otherwise (first start) now, with a deadline.
		signed := c.presigned.Swap(nil)
		if signed == nil {
			sctx, cancel := context.WithTimeout(ctx, UpstreamTimeout)
			defer cancel()
			var err error
			if signed, err = c.signUpstream(sctx); err != nil {
				return err
			}
		}
		g.Chain, g.ChainKey, g.Roots, g.Upstream = signed.res.Chain, signed.key, signed.res.Roots, c.cfg.Upstream.Name()
		return nil
	}
	key, err := NewKey()
	if err != nil {
		return err
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	rootKey, err := x509.ParsePKCS8PrivateKey(g.RootKey)
	if err != nil {
		return fmt.Errorf("generation %d root key: %w", g.ID, err)
	}
	root, err := x509.ParseCertificate(g.Roots[0])
	if err != nil {
		return fmt.Errorf("generation %d root: %w", g.ID, err)
	}
	notAfter := minTime(now.Add(c.cfg.IntermediateTTL), root.NotAfter)
	tmpl, err := caTemplate(c.cfg.TrustDomain, fmt.Sprintf("Tether intermediate %d", g.ID), now.Add(-c.cfg.Backdate), notAfter, 0)
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, key.Public(), rootKey)
	if err != nil {
		return fmt.Errorf("create intermediate: %w", err)
	}
	g.Chain, g.ChainKey = [][]byte{der}, pk
	return nil
}

// prepare adds a new generation whose root is trusted but does not sign.
func (c *CA) prepare(ctx context.Context, st *State, now time.Time) error {
	if p := st.find(Prepared); p != nil {
		return fmt.Errorf("%w: generation %d is already prepared; activate it first", ErrRotation, p.ID)
	}
	if a := st.active(); a != nil && a.OfflineRoot {
		return fmt.Errorf("%w: this CA cannot make a new root; rotating an offline root is not supported yet", ErrOfflineRoot)
	}
	g, err := c.newGeneration(ctx, st, Prepared, now)
	if err != nil {
		return err
	}
	st.Generations = append(st.Generations, g)
	return nil
}

// activate makes the prepared generation sign; the active one is
// superseded and stays trusted until what it signed has expired.
// Besides time it waits for the sidecars' reports (gv; nil: no report
// gate): every reporting sidecar must trust the prepared root.
func (c *CA) activate(st *State, now time.Time, force bool, gv *gateView) error {
	p := st.find(Prepared)
	if p == nil {
		return fmt.Errorf("%w: no prepared generation; run `tether ca rotate prepare` first", ErrRotation)
	}
	if ready := p.CreatedAt.Add(c.cfg.PropagationDelay); now.Before(ready) {
		err := fmt.Errorf("%w: generation %d was prepared at %s; its root needs until %s to reach every sidecar (use --force to skip the wait)",
			ErrRotation, p.ID, p.CreatedAt.UTC().Format(time.RFC3339), ready.UTC().Format(time.RFC3339))
		if !force {
			return err
		}
		c.forced(gv, StepActivate, err)
	}
	if s := st.find(Superseded); s != nil {
		err := fmt.Errorf("%w: generation %d is still superseded; retire it first (after %s)", ErrRotation, s.ID, s.RetireAfter.UTC().Format(time.RFC3339))
		if !force {
			return err
		}
		c.forced(gv, StepActivate, err)
	}
	if err := c.endpointGate(st, now).Blocked; err != nil {
		if !force {
			return err
		}
		c.forced(gv, StepActivate, err)
	}
	if err := c.checkGate(gv, st, StepActivate, force); err != nil {
		return err
	}
	if a := st.active(); a != nil {
		a.State = Superseded
		a.RetireAfter = now.Add(c.cfg.SVIDTTL + c.cfg.Backdate)
	}
	p.State = Active
	p.ActivatedAt = now
	return nil
}

// retire drops superseded generations from the bundle and erases their keys.
// Besides time it waits for the sidecars' reports (gv; nil: no report
// gate): no reporting sidecar may still hold an SVID from them.
func (c *CA) retire(st *State, now time.Time, force bool, gv *gateView) error {
	if st.find(Superseded) != nil {
		if err := c.checkGate(gv, st, StepRetire, force); err != nil {
			return err
		}
	}
	n := 0
	for i := range st.Generations {
		g := &st.Generations[i]
		if g.State != Superseded {
			continue
		}
		if now.Before(g.RetireAfter) {
			err := fmt.Errorf("%w: generation %d signed SVIDs that are valid until %s; retiring it now would break them (use --force if they are gone)",
				ErrRotation, g.ID, g.RetireAfter.UTC().Format(time.RFC3339))
			if !force {
				return err
			}
			c.forced(gv, StepRetire, err)
		}
		g.State, g.RetiredAt = Retired, now
		g.RootKey, g.ChainKey, g.JWTKey = nil, nil, nil
		n++
	}
	if n == 0 {
		return fmt.Errorf("%w: no superseded generation to retire", ErrRotation)
	}
	pruneRetired(st)
	return nil
}

func pruneRetired(st *State) {
	retired := 0
	for i := len(st.Generations) - 1; i >= 0; i-- {
		if st.Generations[i].State == Retired {
			retired++
			if retired > keepRetired {
				st.Generations = append(st.Generations[:i], st.Generations[i+1:]...)
			}
		}
	}
}

// due returns the next automatic step and when it is due. Self-managed roots:
// prepare when the active root has 1/2 of its life left, activate at 1/6,
// retire once nothing the superseded generation signed is still valid.
// Intermediates are renewed when 1/3 of their life is left. Only the steps
// allow accepts are considered (nil: all).
func (c *CA) due(st *State, allow func(Step) bool) (Step, time.Time) {
	var (
		step Step
		at   time.Time
	)
	consider := func(s Step, t time.Time) {
		if allow != nil && !allow(s) {
			return
		}
		if step == "" || t.Before(at) {
			step, at = s, t
		}
	}
	for i := range st.Generations {
		g := &st.Generations[i]
		if g.State != Active && g.State != Prepared {
			continue
		}
		a, err := g.authority()
		if err != nil {
			continue
		}
		inter := a.chain[0]
		if c.cfg.Upstream != nil && g.State == Active && st.find(Prepared) != nil {
			continue
		}
		if g.OfflineRoot {
			continue // only the operator can renew it (warnOffline)
		}
		// Renewing cannot help when the intermediate already lives as long as its root.
		if c.cfg.Upstream != nil || inter.NotAfter.Before(a.roots[0].NotAfter) {
			consider(StepRenewIntermediate, fraction(inter.NotBefore, inter.NotAfter, 1, 3))
		}
	}
	if s := st.find(Superseded); s != nil {
		consider(StepRetire, s.RetireAfter)
	}
	if p := st.find(Prepared); c.cfg.Upstream != nil && p != nil && st.find(Superseded) == nil {
		consider(StepActivate, p.CreatedAt.Add(c.cfg.PropagationDelay))
	}
	if c.cfg.Upstream == nil {
		if act := st.active(); act != nil && !act.OfflineRoot {
			if a, err := act.authority(); err == nil {
				root := a.roots[0]
				if p := st.find(Prepared); p == nil {
					if st.find(Superseded) == nil {
						consider(StepPrepare, fraction(root.NotBefore, root.NotAfter, 1, 2))
					}
				} else {
					consider(StepActivate, maxTime(fraction(root.NotBefore, root.NotAfter, 1, 6), p.CreatedAt.Add(c.cfg.PropagationDelay)))
				}
			}
		}
	}
	return step, at
}

// fraction is the time at which num/den of [from, to] is left.
func fraction(from, to time.Time, num, den int64) time.Time {
	life := to.Sub(from)
	return to.Add(-time.Duration(int64(life) / den * num))
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// autoStep takes every automatic step that is due at now. It returns the
// steps taken. Activate and retire wait for the sidecars' reports (gv)
// like the manual steps; a step that waits is logged, not an error.
func (c *CA) autoStep(ctx context.Context, st *State, now time.Time, gv *gateView) ([]Step, error) {
	var taken []Step
	for range 8 { // each step changes what is due; 8 bounds a pathological loop
		step, at := c.due(st, c.automatic)
		if step == "" || now.Before(at) {
			return taken, nil
		}
		var err error
		switch step {
		case StepPrepare:
			err = c.prepare(ctx, st, now)
		case StepActivate, StepRetire:
			if gv == nil {
				return taken, nil // due only now: the reports are read on the next tick
			}
			if step == StepActivate {
				if werr := c.endpointGate(st, now).Blocked; werr != nil {
					c.logWait(step, "federated trust domains", werr, now)
					return taken, nil
				}
			}
			if werr := c.checkGate(gv, st, step, false); werr != nil {
				c.logWait(step, "the sidecars", werr, now)
				return taken, nil
			}
			if step == StepActivate {
				err = c.activate(st, now, false, gv)
			} else {
				err = c.retire(st, now, false, gv)
			}
		case StepRenewIntermediate:
			err = c.renewDueIntermediates(ctx, st, now, false)
		}
		if err != nil {
			return taken, fmt.Errorf("automatic %s: %w", step, err)
		}
		taken = append(taken, step)
	}
	return taken, nil
}

// logWait logs why a scheduled step waits: when the reason changes, and
// once a minute while it does not. Called with c.mu held.
func (c *CA) logWait(step Step, forWhom string, why error, now time.Time) {
	msg := why.Error()
	if msg == c.waitLogged && now.Before(c.waitLoggedAt.Add(time.Minute)) {
		return
	}
	c.waitLogged, c.waitLoggedAt = msg, now
	c.log.Info("scheduled rotation step waits for "+forWhom, slog.String("step", string(step)), slog.String("reason", msg))
}

// renewIntermediateNow is the manual step renew-intermediate: it renews
// the intermediates of the active and prepared generations whether due or
// not. It refuses when renewing cannot extend the active intermediate.
func (c *CA) renewIntermediateNow(ctx context.Context, st *State, now time.Time) error {
	act, a, err := st.activeAuthority()
	if err != nil {
		return err
	}
	if root := a.roots[0]; c.cfg.Upstream == nil && !now.Before(root.NotAfter) {
		return fmt.Errorf("%w: the root of generation %d ended at %s: no intermediate it signs can be valid, and every SVID it signed has expired; start from a new CA state (and give every sidecar the new bundle)",
			ErrRotation, act.ID, root.NotAfter.UTC().Format(time.RFC3339))
	}
	if inter, root := a.chain[0], a.roots[0]; c.cfg.Upstream == nil && !inter.NotAfter.Before(root.NotAfter) {
		return fmt.Errorf("%w: the intermediate of generation %d already ends with its root, at %s; renewing it cannot extend it: rotate the root (`tether ca rotate prepare`, then `activate`)",
			ErrRotation, act.ID, root.NotAfter.UTC().Format(time.RFC3339))
	}
	return c.renewDueIntermediates(ctx, st, now, true)
}

// renewDueIntermediates renews the intermediates of the active and prepared
// generations that are due (all of them with force).
func (c *CA) renewDueIntermediates(ctx context.Context, st *State, now time.Time, force bool) error {
	for i := range st.Generations {
		g := &st.Generations[i]
		if g.State != Active && g.State != Prepared {
			continue
		}
		a, err := g.authority()
		if err != nil {
			return err
		}
		inter := a.chain[0]
		if now.Before(fraction(inter.NotBefore, inter.NotAfter, 1, 3)) && !force {
			continue
		}
		if c.cfg.Upstream != nil && g.State == Active && st.find(Prepared) != nil {
			continue // the prepared generation takes over soon
		}
		renewed := *g
		if err := c.renewIntermediate(ctx, &renewed, now); err != nil {
			return err
		}
		if g.State == Prepared && c.cfg.Upstream != nil {
			// A new anchor: it spreads again before it signs, and the
			// bundle endpoint has not served it yet.
			renewed.CreatedAt, renewed.EndpointServed = now, EndpointServed{}
		}
		if g.State == Active && (c.cfg.Upstream != nil || !sameDERs(renewed.Roots, g.Roots)) {
			// A new trust anchor (in upstream mode the intermediate is
			// one): trust it first (prepared), sign with it only after it
			// has spread.
			renewed.ID, st.NextGeneration = st.NextGeneration+1, st.NextGeneration+1
			renewed.State, renewed.CreatedAt, renewed.ActivatedAt, renewed.EndpointServed = Prepared, now, time.Time{}, EndpointServed{}
			st.Generations = append(st.Generations, renewed)
			return nil // g may have moved with the append
		}
		*g = renewed
	}
	return nil
}

func sameDERs(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}
