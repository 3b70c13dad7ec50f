package policy

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// Explanation is Engine.Explain's account of one decision: the outcome,
// and every input that led to it.
type Explanation struct {
	// Source is the caller's SPIFFE ID ("" when it has none).
	Source string `json:"source"`
	// Namespace, Service and Port name the destination.
	Namespace string `json:"namespace"`
	Service   string `json:"service"`
	Port      uint16 `json:"port"`
	// Allowed and Rule are the enforced decision: what Decide returns.
	Allowed bool   `json:"allowed"`
	Rule    string `json:"rule"`
	// AuditDenied is set when the enforced decision allows and the
	// would-be one denies: the connection passes, logged as audit-deny
	// with AuditRule (as Decide reports it).
	AuditDenied bool   `json:"audit_denied,omitempty"`
	AuditRule   string `json:"audit_rule,omitempty"`
	// SourceRefused is set when the caller is refused before any policy
	// or default is read: it has no SPIFFE ID, or names no workload.
	// Policies are still listed, each failing for that reason. (A caller
	// of another trust domain is decided by the policies; see Foreign.)
	SourceRefused string `json:"source_refused,omitempty"`
	// Foreign is set when the caller is of another trust domain than the
	// mesh's: only spiffeID and trustDomain sources of enforcing policies
	// can allow it; defaults, namespace and serviceAccount sources never do.
	Foreign bool `json:"foreign,omitempty"`
	// Policies are the AccessPolicies naming the service, in the order
	// the engine tries them (by name): when there is at least one, only
	// they decide.
	Policies []PolicyExplanation `json:"policies"`
	// Default is the default that decides when no AccessPolicy names the
	// service; nil otherwise.
	Default *DefaultExplanation `json:"default,omitempty"`
	// WouldBe explains the would-be decision, with every policy and
	// default in audit mode enforcing; nil when nothing is in audit mode
	// (then it is this one). Policies and defaults above are the enforcing
	// ones: an audit-mode policy is listed only here.
	WouldBe *Explanation `json:"would_be,omitempty"`
}

// Decision returns the explained decision, as Decide returns it.
func (x *Explanation) Decision() Decision {
	return Decision{Allowed: x.Allowed, Rule: x.Rule, AuditDenied: x.AuditDenied, AuditRule: x.AuditRule}
}

// PolicyExplanation says why one AccessPolicy did or did not allow the
// caller.
type PolicyExplanation struct {
	// Name is "<namespace>/<name>"; Rule the policy's rule text.
	Name string `json:"name"`
	Rule string `json:"rule"`
	// Mode is Enforce or Audit (spec.mode).
	Mode Mode `json:"mode"`
	// Ports are the policy's ports; none means every port.
	Ports []int32 `json:"ports,omitempty"`
	// PortCovered is false when the port is not among Ports: the sources
	// are then not compared.
	PortCovered bool `json:"port_covered"`
	// Matched is true when the policy allows the caller.
	Matched bool `json:"matched"`
	// Reason sums up why, in words.
	Reason string `json:"reason"`
	// Sources are the policy's sources, each compared with the caller
	// (empty when PortCovered is false).
	Sources []SourceExplanation `json:"sources,omitempty"`
}

// SourceExplanation compares one source of a policy with the caller.
type SourceExplanation struct {
	// Source is the source as written: "serviceAccount NS/SA",
	// "namespace NS", "spiffeID ID" or "trustDomain TD".
	Source  string `json:"source"`
	Matched bool   `json:"matched"`
	// Reason says why it does or does not match the caller.
	Reason string `json:"reason"`
}

// DefaultExplanation is the default that decides for a service no
// AccessPolicy names.
type DefaultExplanation struct {
	// Default is allow-mesh, same-namespace or deny.
	Default string `json:"default"`
	// From is "namespace annotation" (tether.dev/default-policy on the
	// service's namespace) or "mesh default"; "audit-mode replacement" for
	// the allow-mesh that stands in, in the enforced decision, for a
	// default in audit mode.
	From string `json:"from"`
	// Rule is the default's rule text, which names its mode when audit.
	Rule string `json:"rule"`
	// Reason says why it admits or refuses the caller.
	Reason string `json:"reason"`
}

// The values of DefaultExplanation.From.
const (
	FromNamespaceAnnotation = "namespace annotation"
	FromMeshDefault         = "mesh default"
	FromAuditReplacement    = "audit-mode replacement"
)

// Explain decides src against port of dstService in dstNamespace, as
// Decide does, and says why: every AccessPolicy naming the service with
// its mode and the reason it did or did not match, or the default that
// applied and where it comes from; and, when something is in audit mode,
// the would-be decision explained the same way. Its decision is always
// Decide's (a test checks it): it is worked out from the same engine,
// step by step.
func (e *Engine) Explain(src spiffeid.ID, dstNamespace, dstService string, port uint16) Explanation {
	x := e.explainLayer(src, dstNamespace, dstService, port)
	if e.audit != nil {
		wb := e.audit.explainLayer(src, dstNamespace, dstService, port)
		x.WouldBe = &wb
		if x.Allowed && !wb.Allowed {
			x.AuditDenied, x.AuditRule = true, wb.Rule
		}
	}
	return x
}

// explainLayer is Explain in one layer of e.
func (e *Engine) explainLayer(src spiffeid.ID, dstNamespace, dstService string, port uint16) Explanation {
	x := Explanation{Namespace: dstNamespace, Service: dstService, Port: port, Policies: []PolicyExplanation{}}
	if !src.IsZero() {
		x.Source = src.String()
	}
	x.SourceRefused = e.refusal(src)
	c := e.newCaller(src)
	x.Foreign = c.foreign
	ps, restricted := e.byService[serviceKey{dstNamespace, dstService}]
	for i := range ps {
		pe := explainPolicy(&ps[i], c, port, x.SourceRefused)
		if pe.Matched && !x.Allowed {
			x.Allowed, x.Rule = true, pe.Rule
		}
		x.Policies = append(x.Policies, pe)
	}
	switch {
	case x.SourceRefused != "":
		x.Allowed, x.Rule = false, x.SourceRefused
	case restricted && !x.Allowed:
		x.Rule = fmt.Sprintf("no AccessPolicy allows %s to %s/%s:%d%s", src, dstNamespace, dstService, port, auditNote(ps))
	}
	if !restricted {
		d := e.explainDefault(c, dstNamespace, x.SourceRefused)
		x.Default = &d.DefaultExplanation
		switch {
		case x.SourceRefused != "":
		case c.foreign:
			x.Allowed, x.Rule = false, e.foreignServiceRule(src, dstNamespace, dstService, d.rule)
		default:
			x.Allowed, x.Rule = d.admits, d.rule
		}
	}
	return x
}

// caller is the source of a connection, parsed once.
type caller struct {
	id     spiffeid.ID
	ns, sa string
	k8s    bool // a workload ID of the own trust domain
	// foreign: of another trust domain than the mesh's (own is the mesh's).
	foreign bool
	own     spiffeid.TrustDomain
}

// newCaller parses src: a Kubernetes workload only in the own trust domain.
func (e *Engine) newCaller(src spiffeid.ID) caller {
	c := caller{id: src, own: e.td, foreign: !src.IsZero() && src.TrustDomain() != e.td}
	if !c.foreign {
		c.ns, c.sa, c.k8s = wire.ParseWorkloadID(src)
	}
	return c
}

// refusal is why src is refused before any policy is read, or "".
func (e *Engine) refusal(src spiffeid.ID) string {
	switch {
	case src.IsZero():
		return "source has no SPIFFE ID"
	case src.Path() == "":
		return fmt.Sprintf("source %s has no path: a trust domain ID is not a workload", src)
	}
	return ""
}

// explainPolicy compares one policy with the caller on port. refused,
// when set, fails every source (the caller is refused whatever they say).
func explainPolicy(np *namedPolicy, c caller, port uint16, refused string) PolicyExplanation {
	p := &np.AccessPolicy
	pe := PolicyExplanation{
		Name:  p.Namespace + "/" + p.Name,
		Rule:  np.rule,
		Mode:  Enforce,
		Ports: slices.Clone(p.Spec.Destination.Ports),
	}
	if p.Spec.Mode.Audited() {
		pe.Mode = Audit
	}
	pe.PortCovered = len(pe.Ports) == 0 || slices.Contains(pe.Ports, int32(port))
	if !pe.PortCovered {
		pe.Reason = fmt.Sprintf("port %d is not one of its ports (%s)", port, joinInt32(pe.Ports))
		return pe
	}
	for _, s := range p.Spec.Sources {
		se := explainSource(p, s, c, refused)
		pe.Matched = pe.Matched || se.Matched
		pe.Sources = append(pe.Sources, se)
	}
	switch {
	case pe.Matched:
		for _, se := range pe.Sources {
			if se.Matched {
				pe.Reason = "allows it: " + se.Source + " matches"
				break
			}
		}
	case refused != "":
		pe.Reason = "cannot allow it: " + refused
	default:
		pe.Reason = "none of its sources matches the caller"
	}
	return pe
}

// explainSource compares one source of p with the caller.
func explainSource(p *AccessPolicy, s Source, c caller, refused string) SourceExplanation {
	var se SourceExplanation
	notWorkload := fmt.Sprintf("the caller %s is not a Kubernetes workload ID (spiffe://<trust domain>/ns/<namespace>/sa/<service account>)", c.id)
	if c.foreign {
		notWorkload = fmt.Sprintf("the caller is of trust domain %s: namespace and serviceAccount sources match only workloads of trust domain %s", c.id.TrustDomain().Name(), c.own.Name())
	}
	switch {
	case s.ServiceAccount != nil:
		ns, name := sourceNamespace(p, s.ServiceAccount), s.ServiceAccount.Name
		se.Source = "serviceAccount " + ns + "/" + name
		switch {
		case refused != "":
		case !c.k8s:
			se.Reason = notWorkload
		case c.ns != ns:
			se.Reason = fmt.Sprintf("other namespace: the caller is in %s", c.ns)
		case c.sa != name:
			se.Reason = fmt.Sprintf("other service account: the caller is %s/%s", c.ns, c.sa)
		default:
			se.Matched, se.Reason = true, "the caller is "+ns+"/"+name
		}
	case s.Namespace != "":
		se.Source = "namespace " + s.Namespace
		switch {
		case refused != "":
		case !c.k8s:
			se.Reason = notWorkload
		case c.ns != s.Namespace:
			se.Reason = fmt.Sprintf("other namespace: the caller is in %s", c.ns)
		default:
			se.Matched, se.Reason = true, "the caller is in "+c.ns
		}
	case s.SpiffeID != "":
		se.Source = "spiffeID " + s.SpiffeID
		switch {
		case refused != "":
		case s.SpiffeID != c.id.String():
			se.Reason = fmt.Sprintf("other SPIFFE ID: the caller is %s", c.id)
		default:
			se.Matched, se.Reason = true, "the caller is "+s.SpiffeID
		}
	case s.TrustDomain != "":
		se.Source = "trustDomain " + s.TrustDomain
		switch {
		case refused != "":
		case s.TrustDomain == c.own.Name():
			se.Reason = "names this mesh's own trust domain, which a trustDomain source never matches (it is for callers of another trust domain): use namespace or serviceAccount sources, or the defaults"
		case !c.foreign:
			se.Reason = "other trust domain: the caller is of this mesh's trust domain " + c.own.Name()
		case s.TrustDomain != c.id.TrustDomain().Name():
			se.Reason = "other trust domain: the caller is of " + c.id.TrustDomain().Name()
		default:
			se.Matched, se.Reason = true, "the caller is of trust domain "+s.TrustDomain
		}
	}
	if refused != "" {
		se.Reason = refused
	}
	return se
}

// defaultExplanation is DefaultExplanation with the engine's verdict.
type defaultExplanation struct {
	DefaultExplanation
	admits bool
	rule   string
}

// explainDefault says how the default of namespace decides the caller.
func (e *Engine) explainDefault(c caller, namespace, refused string) defaultExplanation {
	d := defaultExplanation{rule: e.meshRule}
	def := e.meshDefault
	if nd, ok := e.nsDefaults[namespace]; ok {
		def, d.rule = nd, e.nsRules[namespace]
	}
	// The rule says where the default comes from (see newLayer and
	// auditedNamespace): "namespace default ...", "mesh default ...", or
	// the allow-mesh that replaces a default in audit mode.
	switch {
	case strings.HasPrefix(d.rule, "namespace default "):
		d.From = FromNamespaceAnnotation
	case strings.HasPrefix(d.rule, "mesh default "):
		d.From = FromMeshDefault
	default:
		d.From = FromAuditReplacement
	}
	d.Default, d.Rule = def.String(), d.rule
	switch {
	case refused != "":
		d.Reason = refused
	case c.foreign:
		d.Reason = fmt.Sprintf("the caller is of trust domain %s, and a default never admits a caller of another trust domain (only an AccessPolicy source with its spiffeID or trustDomain does)", c.id.TrustDomain().Name())
	case def == AllowMesh:
		d.admits, d.Reason = true, "every workload of trust domain "+e.td.Name()+" may call"
	case def == SameNamespace && !c.k8s:
		d.Reason = "only workloads of namespace " + namespace + " may call, and the caller is not a Kubernetes workload ID"
	case def == SameNamespace && c.ns != namespace:
		d.Reason = "only workloads of namespace " + namespace + " may call; the caller is in " + c.ns
	case def == SameNamespace:
		d.admits, d.Reason = true, "the caller is in "+namespace+", like the service"
	default:
		d.Reason = "nobody may call"
	}
	switch {
	case d.rule == fmt.Sprintf("namespace default %s (annotation %s on %s)", def, DefaultPolicyAnnotation, namespace):
		d.Reason = fmt.Sprintf("no AccessPolicy names the service, and namespace %s sets %s=%s: %s", namespace, DefaultPolicyAnnotation, def, d.Reason)
	case d.rule == "mesh default "+def.String():
		d.Reason = fmt.Sprintf("no AccessPolicy names the service, and namespace %s has no %s annotation: the mesh default %s applies: %s",
			namespace, DefaultPolicyAnnotation, def, d.Reason)
	default:
		d.Reason = fmt.Sprintf("no AccessPolicy names the service: %s applies: %s", d.rule, d.Reason)
	}
	return d
}

func joinInt32(ps []int32) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ", ")
}

// ExplainDefault is Explain for a port of a workload in namespace that no
// Service covers: DecideDefault's decision, with the default that
// applied and why. Its Service is empty and it lists no policies.
func (e *Engine) ExplainDefault(src spiffeid.ID, namespace string) Explanation {
	x := e.explainDefaultLayer(src, namespace)
	if e.audit != nil {
		wb := e.audit.explainDefaultLayer(src, namespace)
		x.WouldBe = &wb
		if x.Allowed && !wb.Allowed {
			x.AuditDenied, x.AuditRule = true, wb.Rule
		}
	}
	return x
}

// explainDefaultLayer is ExplainDefault in one layer of e.
func (e *Engine) explainDefaultLayer(src spiffeid.ID, namespace string) Explanation {
	x := Explanation{Namespace: namespace, Policies: []PolicyExplanation{}}
	if !src.IsZero() {
		x.Source = src.String()
	}
	x.SourceRefused = e.refusal(src)
	c := e.newCaller(src)
	x.Foreign = c.foreign
	d := e.explainDefault(c, namespace, x.SourceRefused)
	x.Default = &d.DefaultExplanation
	x.Allowed, x.Rule = d.admits, d.rule
	switch {
	case x.SourceRefused != "":
		x.Allowed, x.Rule = false, x.SourceRefused
	case c.foreign:
		// DecideDefault names the default that would have applied.
		x.Allowed, x.Rule = false, e.foreignDefaultRule(src, d.rule)
	}
	return x
}
