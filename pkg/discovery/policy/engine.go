package policy

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// DefaultPolicyAnnotation is the namespace annotation that overrides the
// mesh-wide default for the services of that namespace.
const DefaultPolicyAnnotation = "tether.dev/default-policy"

// Default is what applies to a service that no AccessPolicy names.
type Default = wire.Default

// The defaults.
const (
	AllowMesh     = wire.AllowMesh
	SameNamespace = wire.SameNamespace
	Deny          = wire.Deny
)

// DefaultModeAnnotation is the namespace annotation that sets the mode of
// that namespace's default (its own tether.dev/default-policy, or the mesh
// default it inherits): "enforce" or "audit".
const DefaultModeAnnotation = "tether.dev/default-policy-mode"

// ErrUnknownMode is returned by ParseDefaultMode for a value it does not know.
var ErrUnknownMode = errors.New("unknown policy mode")

// ParseDefaultMode parses the mode of a default as the namespace
// annotation, tether-discovery's --default-policy-mode and mesh.yaml spell
// it: "enforce" or "audit".
func ParseDefaultMode(s string) (Mode, error) {
	switch s {
	case "enforce":
		return Enforce, nil
	case "audit":
		return Audit, nil
	}
	return "", fmt.Errorf("%w %q: use enforce or audit", ErrUnknownMode, s)
}

// DefaultModeString is the spelling ParseDefaultMode reads: "enforce" or
// "audit" (an empty mode is "enforce").
func DefaultModeString(m Mode) string {
	if m.Audited() {
		return "audit"
	}
	return "enforce"
}

func validMode(m Mode) bool { return m == "" || m == Enforce || m == Audit }

// Config is what an Engine decides from.
type Config struct {
	// TrustDomain is the mesh's trust domain. A source outside it (of a
	// federated trust domain) is allowed only by an enforcing AccessPolicy
	// source naming it: its spiffeID exactly, or its trustDomain.
	TrustDomain spiffeid.TrustDomain
	// MeshDefault applies to services no AccessPolicy names, unless their
	// namespace overrides it.
	MeshDefault Default
	// MeshDefaultMode is the mode of the mesh default; empty means Enforce.
	MeshDefaultMode Mode
	// NamespaceDefaults maps a namespace to its default (the value of its
	// tether.dev/default-policy annotation).
	NamespaceDefaults map[string]Default
	// NamespaceDefaultModes maps a namespace to the mode of its default
	// (its tether.dev/default-policy-mode annotation): of its own entry in
	// NamespaceDefaults, or else of the mesh default it inherits. Absent
	// or empty means Enforce.
	NamespaceDefaultModes map[string]Mode
	// Policies are the AccessPolicy objects; each must pass Validate. An
	// empty namespace means "default".
	Policies []AccessPolicy
}

// audits reports whether anything in cfg is in audit mode.
func (cfg *Config) audits() bool {
	if cfg.MeshDefaultMode.Audited() {
		return true
	}
	for _, m := range cfg.NamespaceDefaultModes {
		if m.Audited() {
			return true
		}
	}
	for i := range cfg.Policies {
		if cfg.Policies[i].Spec.Mode.Audited() {
			return true
		}
	}
	return false
}

// Decision is the outcome of Engine.Decide and the rule that produced it,
// worded for logs.
type Decision = wire.Decision

// Engine decides whether an identity may reach a service. It is immutable:
// build a new one when the policies or defaults change. An Engine is safe
// for concurrent use.
//
// It decides in two layers. The enforced decision (Allowed, Admitted,
// Restricted, DefaultFor) is made over the enforcing policies and defaults
// only: policies in audit mode are invisible, an audited namespace
// default is replaced by the mesh default (if that is enforcing, else by
// allow-mesh), and an audited mesh default by allow-mesh. The would-be
// decision is made with everything enforcing. Decide reports the enforced
// decision and, when it allows while the would-be decision denies, an
// audit denial with the would-be rule. Adding an audit-mode policy or
// default therefore never opens or closes anything.
type Engine struct {
	// The fields below are the enforced layer.
	td          spiffeid.TrustDomain
	meshDefault Default
	meshRule    string
	nsDefaults  map[string]Default
	nsRules     map[string]string // the rule text of each namespace default
	// byService holds, per service, the policies naming it, sorted by
	// name, each with its rule text.
	byService map[serviceKey][]namedPolicy

	// audit is the would-be layer, with everything enforcing; nil when
	// nothing is in audit mode (then it is the same as this one).
	audit *Engine
}

type serviceKey struct{ namespace, name string }

type namedPolicy struct {
	AccessPolicy
	rule string // "AccessPolicy <namespace>/<name>"
}

// NewEngine checks cfg and builds an Engine from a copy of it. It fails if
// the trust domain or a default is missing or unknown, if a mode is
// unknown, or if a policy is invalid: dropping a policy would open its
// service to the default.
func NewEngine(cfg Config) (*Engine, error) {
	var errs []error
	if cfg.TrustDomain.IsZero() {
		errs = append(errs, errors.New("policy engine: trust domain is required"))
	}
	if !cfg.MeshDefault.Valid() {
		errs = append(errs, fmt.Errorf("policy engine: mesh default: %w %v", wire.ErrUnknownDefault, cfg.MeshDefault))
	}
	if !validMode(cfg.MeshDefaultMode) {
		errs = append(errs, fmt.Errorf("policy engine: mesh default mode: %w %q", ErrUnknownMode, cfg.MeshDefaultMode))
	}
	for ns, d := range cfg.NamespaceDefaults {
		if !d.Valid() {
			errs = append(errs, fmt.Errorf("policy engine: namespace %s default: %w %v", ns, wire.ErrUnknownDefault, d))
		}
	}
	for ns, m := range cfg.NamespaceDefaultModes {
		if !validMode(m) {
			errs = append(errs, fmt.Errorf("policy engine: namespace %s default mode: %w %q", ns, ErrUnknownMode, m))
		}
	}
	policies := make([]AccessPolicy, 0, len(cfg.Policies))
	for i := range cfg.Policies {
		p := cfg.Policies[i].DeepCopy()
		if err := p.Validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		if p.Namespace == "" {
			p.Namespace = "default"
		}
		policies = append(policies, *p)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	cfg.Policies = policies
	if !cfg.audits() {
		return newLayer(&cfg, false), nil
	}
	e := newLayer(&cfg, false)
	e.audit = newLayer(&cfg, true)
	return e, nil
}

// newLayer builds the enforced layer of cfg, or its would-be layer. cfg
// is valid, its policies validated copies with their namespace set.
func newLayer(cfg *Config, wouldBe bool) *Engine {
	e := &Engine{
		td:          cfg.TrustDomain,
		meshDefault: cfg.MeshDefault,
		meshRule:    "mesh default " + cfg.MeshDefault.String(),
		nsDefaults:  make(map[string]Default, len(cfg.NamespaceDefaults)),
		nsRules:     make(map[string]string, len(cfg.NamespaceDefaults)),
		byService:   make(map[serviceKey][]namedPolicy),
	}
	meshAudited := cfg.MeshDefaultMode.Audited()
	switch {
	case meshAudited && wouldBe:
		e.meshRule += " (audit mode)"
	case meshAudited:
		e.meshDefault = AllowMesh
		e.meshRule = fmt.Sprintf("allow-mesh (the mesh default %s is in audit mode)", cfg.MeshDefault)
	}
	for ns, d := range cfg.NamespaceDefaults {
		if !cfg.NamespaceDefaultModes[ns].Audited() {
			e.nsDefaults[ns] = d
			e.nsRules[ns] = fmt.Sprintf("namespace default %s (annotation %s on %s)", d, DefaultPolicyAnnotation, ns)
		}
	}
	for ns, m := range cfg.NamespaceDefaultModes {
		if m.Audited() {
			e.auditedNamespace(cfg, ns, wouldBe)
		}
	}
	for i := range cfg.Policies {
		p := &cfg.Policies[i]
		rule := "AccessPolicy " + p.Namespace + "/" + p.Name
		if p.Spec.Mode.Audited() {
			if !wouldBe {
				continue
			}
			rule += " (audit mode)"
		}
		key := serviceKey{p.Namespace, p.Spec.Destination.Service}
		e.byService[key] = append(e.byService[key], namedPolicy{AccessPolicy: *p, rule: rule})
	}
	for _, ps := range e.byService {
		slices.SortFunc(ps, func(a, b namedPolicy) int { return strings.Compare(a.Name, b.Name) })
	}
	return e
}

// auditedNamespace sets the default of namespace ns, whose default is in
// audit mode, in layer e: its own default or the mesh default it inherits
// in the would-be layer; in the enforced layer, the mesh default if ns
// has its own default and the mesh default is enforcing, else allow-mesh.
func (e *Engine) auditedNamespace(cfg *Config, ns string, wouldBe bool) {
	d, own := cfg.NamespaceDefaults[ns]
	switch {
	case wouldBe && own:
		e.nsDefaults[ns] = d
		e.nsRules[ns] = fmt.Sprintf("namespace default %s (annotation %s on %s, audit mode)", d, DefaultPolicyAnnotation, ns)
	case wouldBe:
		e.nsDefaults[ns] = cfg.MeshDefault
		e.nsRules[ns] = fmt.Sprintf("mesh default %s (audit mode in namespace %s)", cfg.MeshDefault, ns)
	case own && !cfg.MeshDefaultMode.Audited():
		e.nsDefaults[ns] = cfg.MeshDefault
		e.nsRules[ns] = fmt.Sprintf("mesh default %s (namespace default %s of %s is in audit mode)", cfg.MeshDefault, d, ns)
	default:
		if !own {
			d = cfg.MeshDefault
		}
		e.nsDefaults[ns] = AllowMesh
		e.nsRules[ns] = fmt.Sprintf("allow-mesh (the default %s of namespace %s is in audit mode)", d, ns)
	}
}

// Audits reports whether any policy or default is in audit mode: only
// then can the would-be decision differ from the enforced one.
func (e *Engine) Audits() bool { return e.audit != nil }

// Decide says whether src may reach port of the Service dstService in
// dstNamespace, and which rule decided. A source without a path (not a
// workload) is always denied. If any enforcing AccessPolicy names the
// service, only those policies decide; otherwise the namespace's default,
// or else the mesh default, does (see Engine for audit mode). A source
// outside the trust domain (a caller of a federated trust domain) is
// allowed only by a source of an enforcing policy that names it: a
// spiffeID equal to it, or its trustDomain; never by a default, a
// namespace or a serviceAccount source (those are of the own trust
// domain). When the enforced decision allows and the would-be one
// denies, the Decision is AuditDenied, with the would-be rule.
func (e *Engine) Decide(src spiffeid.ID, dstNamespace, dstService string, port uint16) Decision {
	allowed, rule := e.decide(src, dstNamespace, dstService, port, true)
	d := Decision{Allowed: allowed, Rule: rule}
	if allowed && e.audit != nil {
		if ok, wrule := e.audit.decide(src, dstNamespace, dstService, port, true); !ok {
			d.AuditDenied, d.AuditRule = true, wrule
		}
	}
	return d
}

// WouldAllow is the would-be decision without the rule: whether src would
// reach the port were every policy and default in audit mode enforcing.
// It allocates nothing.
func (e *Engine) WouldAllow(src spiffeid.ID, dstNamespace, dstService string, port uint16) bool {
	if e.audit != nil {
		e = e.audit
	}
	allowed, _ := e.decide(src, dstNamespace, dstService, port, false)
	return allowed
}

// Allowed is the enforced decision of Decide without the rule: it
// allocates nothing, for callers that ask about every pair of a large
// mesh.
func (e *Engine) Allowed(src spiffeid.ID, dstNamespace, dstService string, port uint16) bool {
	allowed, _ := e.decide(src, dstNamespace, dstService, port, false)
	return allowed
}

// decide is Decide in one layer; the rules of denials are spelled out only if explain.
func (e *Engine) decide(src spiffeid.ID, dstNamespace, dstService string, port uint16, explain bool) (bool, string) {
	if src.IsZero() {
		return false, "source has no SPIFFE ID"
	}
	if src.Path() == "" {
		// Not a workload: and the RBAC prefix spiffe://<td>/ of an
		// allow-mesh or trustDomain rule would not admit it either.
		return false, fmt.Sprintf("source %s has no path: a trust domain ID is not a workload", src)
	}
	if src.TrustDomain() != e.td {
		return e.decideForeign(src, dstNamespace, dstService, port, explain)
	}
	srcNS, srcSA, isK8s := wire.ParseWorkloadID(src)
	if ps, ok := e.byService[serviceKey{dstNamespace, dstService}]; ok {
		for i := range ps {
			if allows(&ps[i].AccessPolicy, src, srcNS, srcSA, isK8s, port) {
				return true, ps[i].rule
			}
		}
		if !explain {
			return false, ""
		}
		return false, fmt.Sprintf("no AccessPolicy allows %s to %s/%s:%d%s", src, dstNamespace, dstService, port, auditNote(ps))
	}

	d, rule := e.meshDefault, e.meshRule
	if nd, ok := e.nsDefaults[dstNamespace]; ok {
		d, rule = nd, e.nsRules[dstNamespace]
	}
	switch d {
	case AllowMesh:
		return true, rule
	case SameNamespace:
		return isK8s && srcNS == dstNamespace, rule
	default:
		return false, rule
	}
}

// decideForeign is decide for src of another trust domain than e's: only
// the enforcing policies naming the service decide, by their spiffeID and
// trustDomain sources.
func (e *Engine) decideForeign(src spiffeid.ID, dstNamespace, dstService string, port uint16, explain bool) (bool, string) {
	ps, ok := e.byService[serviceKey{dstNamespace, dstService}]
	if !ok {
		if !explain {
			return false, ""
		}
		rule := e.meshRule
		if _, ok := e.nsDefaults[dstNamespace]; ok {
			rule = e.nsRules[dstNamespace]
		}
		return false, e.foreignServiceRule(src, dstNamespace, dstService, rule)
	}
	for i := range ps {
		if allowsForeign(&ps[i].AccessPolicy, src, port) {
			return true, ps[i].rule
		}
	}
	if !explain {
		return false, ""
	}
	return false, fmt.Sprintf("no AccessPolicy allows %s to %s/%s:%d%s", src, dstNamespace, dstService, port, auditNote(ps))
}

// foreignServiceRule is the rule denying src, of another trust domain, a
// service no enforcing AccessPolicy names, whose default has rule.
func (e *Engine) foreignServiceRule(src spiffeid.ID, dstNamespace, dstService, rule string) string {
	return fmt.Sprintf("source %s is outside trust domain %s, and no AccessPolicy names %s/%s: its default (%s) never admits a caller of another trust domain; an AccessPolicy source with its spiffeID or trustDomain does",
		src, e.td.Name(), dstNamespace, dstService, rule)
}

// foreignDefaultRule is the rule denying src, of another trust domain, a
// port no Service covers, whose default has rule.
func (e *Engine) foreignDefaultRule(src spiffeid.ID, rule string) string {
	return fmt.Sprintf("source %s is outside trust domain %s (%s; a default never admits a caller of another trust domain)", src, e.td.Name(), rule)
}

// allowsForeign reports whether p covers port and one of its spiffeID or
// trustDomain sources names src, of another trust domain than the mesh's.
func allowsForeign(p *AccessPolicy, src spiffeid.ID, port uint16) bool {
	if !coversPort(p, port) {
		return false
	}
	for _, s := range p.Spec.Sources {
		switch {
		case s.SpiffeID != "":
			if s.SpiffeID == src.String() {
				return true
			}
		case s.TrustDomain != "":
			if s.TrustDomain == src.TrustDomain().Name() {
				return true
			}
		}
	}
	return false
}

// auditNote names the policies of ps in audit mode, for a denial's rule:
// "" if none is.
func auditNote(ps []namedPolicy) string {
	var names []string
	for i := range ps {
		if ps[i].Spec.Mode.Audited() {
			names = append(names, ps[i].Namespace+"/"+ps[i].Name)
		}
	}
	if len(names) == 0 {
		return ""
	}
	return " (in audit mode: AccessPolicy " + strings.Join(names, ", ") + ")"
}

// coversPort reports whether p's destination ports, when it names any,
// include port.
func coversPort(p *AccessPolicy, port uint16) bool {
	return len(p.Spec.Destination.Ports) == 0 || slices.Contains(p.Spec.Destination.Ports, int32(port))
}

// sourceNamespace is the namespace of a ServiceAccount source of p: its
// own, else p's.
func sourceNamespace(p *AccessPolicy, sa *ServiceAccountSource) string {
	if sa.Namespace != "" {
		return sa.Namespace
	}
	return p.Namespace
}

// allows reports whether p covers port and one of its sources matches src.
func allows(p *AccessPolicy, src spiffeid.ID, srcNS, srcSA string, isK8s bool, port uint16) bool {
	if !coversPort(p, port) {
		return false
	}
	for _, s := range p.Spec.Sources {
		switch {
		case s.ServiceAccount != nil:
			ns := sourceNamespace(p, s.ServiceAccount)
			if isK8s && srcNS == ns && srcSA == s.ServiceAccount.Name {
				return true
			}
		case s.Namespace != "":
			if isK8s && srcNS == s.Namespace {
				return true
			}
		case s.SpiffeID != "":
			if s.SpiffeID == src.String() {
				return true
			}
		}
	}
	return false
}

// DefaultFor returns the enforced default that applies in namespace: its
// annotation, or else the mesh default (see Engine for audit mode).
func (e *Engine) DefaultFor(namespace string) Default {
	if d, ok := e.nsDefaults[namespace]; ok {
		return d
	}
	return e.meshDefault
}

// Restricted reports whether an enforcing AccessPolicy names the Service
// dstService in dstNamespace: then only policies decide who reaches it.
func (e *Engine) Restricted(dstNamespace, dstService string) bool {
	_, ok := e.byService[serviceKey{dstNamespace, dstService}]
	return ok
}

// DecideDefault decides src against the default of namespace (its
// annotation, else the mesh default), as for a port no Service covers of a
// workload in namespace, in both layers (see Decide). An empty namespace (a workload whose ID is not
// /ns/<ns>/sa/<sa>) has the mesh default, and same-namespace admits nobody
// there.
func (e *Engine) DecideDefault(src spiffeid.ID, namespace string) Decision {
	d := e.decideDefault(src, namespace)
	if d.Allowed && e.audit != nil {
		if w := e.audit.decideDefault(src, namespace); !w.Allowed {
			d.AuditDenied, d.AuditRule = true, w.Rule
		}
	}
	return d
}

// decideDefault is DecideDefault in one layer.
func (e *Engine) decideDefault(src spiffeid.ID, namespace string) Decision {
	d := e.DefaultFor(namespace)
	rule := e.meshRule
	if _, ok := e.nsDefaults[namespace]; ok {
		rule = e.nsRules[namespace]
	}
	if src.IsZero() {
		return Decision{Rule: "source has no SPIFFE ID"}
	}
	if src.Path() == "" {
		return Decision{Rule: fmt.Sprintf("source %s has no path: a trust domain ID is not a workload", src)}
	}
	if src.TrustDomain() != e.td {
		return Decision{Rule: e.foreignDefaultRule(src, rule)}
	}
	switch d {
	case AllowMesh:
		return Decision{Allowed: true, Rule: rule}
	case SameNamespace:
		ns, _, ok := wire.ParseWorkloadID(src)
		return Decision{Allowed: ok && namespace != "" && ns == namespace, Rule: rule}
	default:
		return Decision{Rule: rule}
	}
}

// Admission is, in closed form, the set of SPIFFE IDs that Decide allows
// to one port of one Service: an ID with a non-empty path is admitted if
// and only if Mesh is set and it is in the trust domain, or it is a
// workload ID spiffe://<td>/ns/<ns>/sa/<sa> (exactly four path segments,
// the own trust domain) with <ns> in Namespaces, or its trust domain is one
// of TrustDomains (foreign), or it is one of IDs. Discovery turns it into
// RBAC principals; TestAdmissionIsDecide checks it against Decide for
// every ID shape, foreign ones included.
type Admission struct {
	TrustDomain spiffeid.TrustDomain
	// Mesh admits every ID of the trust domain.
	Mesh bool
	// Namespaces admits every workload ID of these namespaces (of the own
	// trust domain). Sorted, without repeats.
	Namespaces []string
	// TrustDomains admits every ID of these foreign trust domains (never
	// TrustDomain). Sorted by name, without repeats.
	TrustDomains []spiffeid.TrustDomain
	// IDs admits exactly these IDs, of the trust domain or foreign, each
	// with a path, none already admitted by Namespaces or TrustDomains.
	// Sorted by their string, without repeats.
	IDs []spiffeid.ID
}

// Admits reports whether a admits id.
func (a Admission) Admits(id spiffeid.ID) bool {
	if id.IsZero() || id.Path() == "" {
		return false
	}
	if id.TrustDomain() != a.TrustDomain {
		_, found := slices.BinarySearchFunc(a.TrustDomains, id.TrustDomain(), compareTrustDomains)
		return found || slices.Contains(a.IDs, id)
	}
	if a.Mesh {
		return true
	}
	if ns, _, ok := wire.ParseWorkloadID(id); ok {
		if _, found := slices.BinarySearch(a.Namespaces, ns); found {
			return true
		}
	}
	return slices.Contains(a.IDs, id)
}

// WouldBeAdmitted is Admitted for the would-be decision: who would reach
// the port were every policy and default in audit mode enforcing.
func (e *Engine) WouldBeAdmitted(dstNamespace, dstService string, port uint16) Admission {
	if e.audit != nil {
		return e.audit.Admitted(dstNamespace, dstService, port)
	}
	return e.Admitted(dstNamespace, dstService, port)
}

// WouldBeDenial is the rule of the would-be decision for the callers it
// denies on port of dstService in dstNamespace, worded without the
// caller: discovery names the inbound RBAC shadow policy with it.
func (e *Engine) WouldBeDenial(dstNamespace, dstService string, port uint16) string {
	if e.audit != nil {
		e = e.audit
	}
	if ps, ok := e.byService[serviceKey{dstNamespace, dstService}]; ok {
		return fmt.Sprintf("no AccessPolicy allows the caller to %s/%s:%d%s", dstNamespace, dstService, port, auditNote(ps))
	}
	if _, ok := e.nsDefaults[dstNamespace]; ok {
		return e.nsRules[dstNamespace]
	}
	return e.meshRule
}

// Equal reports whether a and b admit the same IDs (they are in the
// canonical form Admitted returns).
func (a Admission) Equal(b Admission) bool {
	return a.TrustDomain == b.TrustDomain && a.Mesh == b.Mesh && slices.Equal(a.Namespaces, b.Namespaces) &&
		slices.Equal(a.TrustDomains, b.TrustDomains) && slices.Equal(a.IDs, b.IDs)
}

func compareTrustDomains(x, y spiffeid.TrustDomain) int { return strings.Compare(x.Name(), y.Name()) }

// Admitted returns who Decide allows (the enforced decision) to port of
// dstService in dstNamespace, as an Admission.
func (e *Engine) Admitted(dstNamespace, dstService string, port uint16) Admission {
	a := Admission{TrustDomain: e.td}
	ps, ok := e.byService[serviceKey{dstNamespace, dstService}]
	if !ok {
		switch e.DefaultFor(dstNamespace) {
		case AllowMesh:
			a.Mesh = true
		case SameNamespace:
			a.Namespaces = []string{dstNamespace}
		}
		return a
	}
	var ids []spiffeid.ID
	for i := range ps {
		p := &ps[i].AccessPolicy
		if !coversPort(p, port) {
			continue
		}
		for _, s := range p.Spec.Sources {
			switch {
			case s.ServiceAccount != nil:
				ns := sourceNamespace(p, s.ServiceAccount)
				if id, err := spiffeid.FromSegments(e.td, "ns", ns, "sa", s.ServiceAccount.Name); err == nil {
					ids = append(ids, id)
				}
			case s.Namespace != "":
				a.Namespaces = append(a.Namespaces, s.Namespace)
			case s.SpiffeID != "":
				// Decide compares the source's string with the policy's,
				// after refusing sources without a path.
				if id, err := spiffeid.FromString(s.SpiffeID); err == nil && id.Path() != "" && id.String() == s.SpiffeID {
					ids = append(ids, id)
				}
			case s.TrustDomain != "":
				// A foreign domain; the own one matches nothing (Decide).
				if td, err := spiffeid.TrustDomainFromString(s.TrustDomain); err == nil && td != e.td && td.Name() == s.TrustDomain {
					a.TrustDomains = append(a.TrustDomains, td)
				}
			}
		}
	}
	slices.Sort(a.Namespaces)
	a.Namespaces = slices.Compact(a.Namespaces)
	slices.SortFunc(a.TrustDomains, compareTrustDomains)
	a.TrustDomains = slices.Compact(a.TrustDomains)
	ids = slices.DeleteFunc(ids, func(id spiffeid.ID) bool {
		if id.TrustDomain() != e.td {
			_, covered := slices.BinarySearchFunc(a.TrustDomains, id.TrustDomain(), compareTrustDomains)
			return covered
		}
		ns, _, ok := wire.ParseWorkloadID(id)
		_, covered := slices.BinarySearch(a.Namespaces, ns)
		return ok && covered
	})
	slices.SortFunc(ids, func(x, y spiffeid.ID) int { return strings.Compare(x.String(), y.String()) })
	a.IDs = slices.Compact(ids)
	return a
}
