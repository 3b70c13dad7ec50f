package cli

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/inject"
	"github.com/tether-mesh/tether/pkg/proxy"
)

func init() { register("policy", (*App).newPolicyWhyCmd) }

const policyWhyHelp = `Explains one call: the decision and the rule, every AccessPolicy that names
the service and why it did or did not match (port not covered; each source
compared with the caller: other service account, other namespace, other
SPIFFE ID, other trust domain), or the default that applied (the
namespace's tether.dev/default-policy annotation, or the mesh default) and
why. A caller of another (federated) trust domain is allowed only by
spiffeID and trustDomain sources of enforcing policies, never by a default. For a denied call it says which component refuses it and what the
calling app sees: the caller's DNS (NXDOMAIN, when the caller may reach no
port of the service), the caller's sidecar (the connection is accepted, then
reset), or the destination's sidecar (its inbound RBAC: a pod behind several
Services, a call straight to a pod, a caller without a sidecar); and where
to look: the access log line and its rule, the metric. The answer comes from
the same policy engine tether-discovery builds the sidecars' configuration
from.

--from is NS/SA (a service account), a SPIFFE ID, or a pod: its name, or
NS/pod/NAME when several namespaces have a pod of that name. A pod stands
for its service account.

--to is NS/SERVICE[:PORT] (PORT a port number or name; without it every port
of the service), a pod (NAME[:PORT] or NS/pod/NAME[:PORT], PORT the pod's
port: a call straight to the pod's address), POD-IP:PORT, or a SPIFFE ID
(spiffe://...[:PORT]: every Service whose pods run as that identity).

` + policySourceHelp + `
Exit status: 0 allowed (every call explained), 1 denied (any of them) or the
explanation could not be made (see stderr), 2 usage error.`

// newPolicyWhyCmd is `tether policy why`.
func (a *App) newPolicyWhyCmd() *cobra.Command {
	var (
		from, to string
		out      Output
		src      *policySource
	)
	cmd := &cobra.Command{
		Use:   "why",
		Short: "Explain why a call is allowed or denied, and who refuses it",
		Long:  policyWhyHelp,
		Example: `  # Why may web/frontend not call shop/api on its grpc port?
  tether policy why --from web/frontend --to shop/api:grpc

  # From a pod, to a pod's port, from a mesh.yaml
  tether policy why --mesh mesh.yaml --from front-1 --to api-1:8080

  # As JSON, for a script
  tether policy why --from spiffe://cluster.local/vm/build --to shop/db -o json

  # A caller of a federated trust domain
  tether policy why --from spiffe://b.example/ns/default/sa/client --to shop/pay`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.policyWhy(cmd.Context(), src, from, to, &out)
		},
	}
	src = addPolicySourceFlags(cmd)
	cmd.Flags().StringVar(&from, "from", "", "caller: NS/SA, a SPIFFE ID, or a pod (NAME or NS/pod/NAME)")
	cmd.Flags().StringVar(&to, "to", "", "callee: NS/SERVICE[:PORT], a pod (NAME[:PORT] or NS/pod/NAME[:PORT]), POD-IP:PORT, or a SPIFFE ID[:PORT]")
	_ = cmd.MarkFlagRequired("from")
	_ = cmd.MarkFlagRequired("to")
	out.AddFlag(cmd)
	return cmd
}

// whyResult is `policy why -o json|yaml`.
type whyResult struct {
	// Source is the caller's SPIFFE ID.
	Source string `json:"source"`
	// SourcePod is the pod --from named, if it named one.
	SourcePod *whyPod `json:"source_pod,omitempty"`
	// Destination is --to as resolved: "NS/SERVICE", "pod NS/NAME",
	// "POD-IP:PORT" or a SPIFFE ID.
	Destination string `json:"destination"`
	// DestinationPod is the pod --to named, if it named one.
	DestinationPod *whyPod `json:"destination_pod,omitempty"`
	// Allowed is true when every call is.
	Allowed bool      `json:"allowed"`
	Calls   []whyCall `json:"calls"`
}

// whyPod is a pod --from or --to named.
type whyPod struct {
	Namespace      string   `json:"namespace"`
	Name           string   `json:"name"`
	ServiceAccount string   `json:"service_account"`
	Addresses      []string `json:"addresses,omitempty"`
	// Sidecar is false for a pod without tether-sidecar: its calls carry
	// no identity.
	Sidecar bool `json:"sidecar"`
}

// whyCall explains one call: to one port of one Service, or to one port
// of a pod.
type whyCall struct {
	// Service and Port name a Service port; for a call straight to a pod,
	// PodAddress is set and Service is empty.
	Service    string `json:"service,omitempty"`
	Port       uint16 `json:"port,omitempty"`
	PortName   string `json:"port_name,omitempty"`
	PodAddress string `json:"pod_address,omitempty"`
	// TargetPort is the port of the pods the call reaches.
	TargetPort uint16 `json:"target_port"`
	// Allowed and Rule are the enforced decision: the call passes or not.
	Allowed bool   `json:"allowed"`
	Rule    string `json:"rule"`
	// AuditDenied is set when the call passes but would be denied were
	// the policies and defaults in audit mode enforcing: the sidecars log
	// it as audit-deny, with AuditRule.
	AuditDenied bool   `json:"audit_denied,omitempty"`
	AuditRule   string `json:"audit_rule,omitempty"`
	// AuditLog says where an audit-deny is recorded.
	AuditLog string `json:"audit_log,omitempty"`
	// Explanations are the policy engine's, one per Service port that
	// decides the call (several when a pod's port is several Services').
	Explanations []policy.Explanation `json:"explanations"`
	// RefusedBy says who refuses a denied call.
	RefusedBy *whyRefusal `json:"refused_by,omitempty"`
}

// whyRefusal is the component that refuses a denied call, what the
// calling app sees, and where the refusal is recorded.
type whyRefusal struct {
	// Component is caller-dns, caller-sidecar or destination-sidecar.
	Component string `json:"component"`
	// AppSees is what the calling app observes.
	AppSees string `json:"app_sees"`
	// AccessLog names the sidecar whose access log records the refusal,
	// and the line's fields.
	AccessLog string `json:"access_log"`
	// Metric is the counter that counts it.
	Metric string `json:"metric"`
	// Otherwise is what happens on the other paths a caller can take.
	Otherwise []string `json:"otherwise,omitempty"`
}

// The components of whyRefusal.
const (
	byCallerDNS      = "caller-dns"
	byCallerSidecar  = "caller-sidecar"
	byDestSidecar    = "destination-sidecar"
	ruleNoPortOfSvc  = "unknown service, or policy allows none of its ports" // internal/sidecar's ruleUnknownService
	appSeesReset     = "the sidecar accepts the connection, then resets it (RST) before any byte: the app's first socket call after the RST (usually its read; its write, or connect() itself, when the RST comes first) fails with ECONNRESET, \"connection reset by peer\"; TCP carries no reason"
	appSeesNXDOMAIN  = "the name does not resolve: the sidecar's DNS answers NXDOMAIN for it (the caller may reach no port of the service, so discovery never tells its sidecar the name)"
	plaintextRefusal = "the destination's sidecar sees no client certificate: in strict inbound mode the mTLS handshake fails and it resets the connection (RST); in permissive mode it admits the call only on ports no AccessPolicy restricts"
)

// whyTarget is a parsed --to.
type whyTarget struct {
	dest destination // a Service (key, port) or a pod address (pod, port)
	// podNS and podName name a pod (podNS empty: any namespace).
	podNS, podName string
	// id is a SPIFFE ID destination.
	id spiffeid.ID
}

// parseWhyTarget parses --to.
func parseWhyTarget(s string) (whyTarget, error) {
	if strings.HasPrefix(s, "spiffe://") {
		idPart, port := s, ""
		// Neither a trust domain nor a SPIFFE ID path has a colon.
		if i := strings.LastIndex(s, ":"); i > len("spiffe:") {
			idPart, port = s[:i], s[i+1:]
			if port == "" {
				return whyTarget{}, usagef("--to %q: empty port", s)
			}
		}
		id, err := spiffeid.FromString(idPart)
		if err != nil {
			return whyTarget{}, usagef("--to %q: %v", s, err)
		}
		return whyTarget{id: id, dest: destination{port: port}}, nil
	}
	if _, err := netip.ParseAddrPort(s); err == nil {
		d, err := parseDestination(s)
		return whyTarget{dest: d}, err
	}
	name, port, hasPort := strings.Cut(s, ":")
	if hasPort && port == "" {
		return whyTarget{}, usagef("--to %q: empty port", s)
	}
	if ns, pod, ok := parsePodRef(name); ok {
		if pod == "" {
			return whyTarget{}, usagef("--to %q: want NAMESPACE/pod/NAME[:PORT]", s)
		}
		return whyTarget{podNS: ns, podName: pod, dest: destination{port: port}}, nil
	}
	d, err := parseDestination(s)
	return whyTarget{dest: d}, err
}

// parsePodRef parses a pod reference: NAME (no slash) or NS/pod/NAME. ok
// is false for anything else (NS/SA, NS/SERVICE); pod is empty for a
// malformed NS/pod/NAME.
func parsePodRef(s string) (ns, pod string, ok bool) {
	if s == "" {
		return "", "", false
	}
	if !strings.Contains(s, "/") {
		return "", s, true
	}
	seg := strings.Split(s, "/")
	if len(seg) >= 2 && seg[1] == "pod" && (len(seg) == 3 || len(seg) > 3) {
		if len(seg) != 3 || seg[0] == "" || seg[2] == "" {
			return "", "", true
		}
		return seg[0], seg[2], true
	}
	return "", "", false
}

// whyCaller is a resolved --from.
type whyCaller struct {
	id  spiffeid.ID // zero for a pod without a sidecar
	pod *whyPod
}

func (a *App) policyWhy(ctx context.Context, src *policySource, from, to string, out *Output) error {
	target, err := parseWhyTarget(to)
	if err != nil {
		return err
	}
	var srcArg sourceArg
	fromNS, fromPod, fromIsPod := parsePodRef(from)
	switch {
	case strings.HasPrefix(from, "spiffe://"):
		fromIsPod = false
	case fromIsPod && fromPod == "":
		return usagef("--from %q: want NAMESPACE/pod/NAME for a pod", from)
	}
	if !fromIsPod || strings.HasPrefix(from, "spiffe://") {
		if srcArg, err = parseSource(from); err != nil {
			return err
		}
	}
	view, err := src.load(ctx, a.Stderr)
	if err != nil {
		return err
	}
	td := view.snap.TrustDomain()
	var c whyCaller
	if fromIsPod && !strings.HasPrefix(from, "spiffe://") {
		pod, id, err := view.findPod(ctx, "--from", fromNS, fromPod)
		if err != nil {
			return err
		}
		c = whyCaller{id: id, pod: pod}
	} else {
		if c.id, err = srcArg.identity(td); err != nil {
			return err
		}
		if view.kube && srcArg.namespace != "" && !view.namespaces()[srcArg.namespace] {
			fmt.Fprintf(a.Stderr, "tether: note: namespace %s does not exist in %s; explaining for %s anyway\n", srcArg.namespace, view.where, c.id)
		}
	}
	res, err := a.explainTarget(ctx, view, c, target)
	if err != nil {
		return err
	}
	var rules []string
	for _, call := range res.Calls {
		rules = append(rules, call.Rule)
	}
	view.noteAssumedDefault(a.Stderr, rules)
	if err := out.Print(a.Stdout, res, func(w io.Writer) error { return writeWhy(w, res, c, td) }); err != nil {
		return err
	}
	if !res.Allowed {
		denied := 0
		for _, call := range res.Calls {
			if !call.Allowed {
				denied++
			}
		}
		return fmt.Errorf("%w: %s may not reach %s on %d of %d port(s)", errDenied, callerName(c, td), res.Destination, denied, len(res.Calls))
	}
	return nil
}

// explainTarget explains every call --to names.
func (a *App) explainTarget(ctx context.Context, view *meshView, c whyCaller, target whyTarget) (whyResult, error) {
	snap := view.snap
	res := whyResult{Source: idString(c.id), SourcePod: c.pod, Allowed: true}
	switch {
	case !target.id.IsZero():
		res.Destination = target.id.String()
		calls, err := explainIdentity(view, c, target.id, target.dest.port)
		if err != nil {
			return res, err
		}
		res.Calls = calls
	case target.podName != "":
		pod, id, err := view.findPod(ctx, "--to", target.podNS, target.podName)
		if err != nil {
			return res, err
		}
		res.Destination, res.DestinationPod = "pod "+pod.Namespace+"/"+pod.Name, pod
		if !pod.Sidecar {
			return res, fmt.Errorf("pod %s/%s has no tether-sidecar: no sidecar decides calls to it, the mesh's policies do not apply", pod.Namespace, pod.Name)
		}
		var addrs []netip.Addr
		for _, s := range pod.Addresses {
			if a, err := netip.ParseAddr(s); err == nil {
				addrs = append(addrs, a.Unmap())
			}
		}
		if len(addrs) == 0 {
			return res, fmt.Errorf("pod %s/%s has no address yet in %s (not running, or no Service lists it): nothing can call it straight", pod.Namespace, pod.Name, view.where)
		}
		calls, err := explainPodPorts(view, c, id, addrs, target.dest.port)
		if err != nil {
			return res, err
		}
		res.Calls = calls
	case target.dest.pod.IsValid():
		addr := target.dest.pod
		res.Destination = netip.AddrPortFrom(addr, 0).Addr().String() + ":" + target.dest.port
		id, err := podIdentityAt(view, addr)
		if err != nil {
			return res, err
		}
		calls, err := explainPodPorts(view, c, id, []netip.Addr{addr}, target.dest.port)
		if err != nil {
			return res, err
		}
		res.Destination = calls[0].PodAddress
		res.Calls = calls
	default:
		svc, ok := snap.Service(target.dest.key)
		if !ok {
			return res, view.missingService(target.dest.key)
		}
		res.Destination = svc.Key.String()
		ports, err := servicePorts(view, svc, target.dest.port)
		if err != nil {
			return res, err
		}
		for _, p := range ports {
			res.Calls = append(res.Calls, explainServicePort(snap, c, svc, p))
		}
	}
	for _, call := range res.Calls {
		res.Allowed = res.Allowed && call.Allowed
	}
	return res, nil
}

// servicePorts returns the ports of svc arg names: the one named or
// numbered arg, or every port when arg is empty.
func servicePorts(view *meshView, svc *discovery.Service, arg string) ([]discovery.Port, error) {
	if arg == "" {
		if len(svc.Ports) == 0 {
			return nil, fmt.Errorf("service %s has no TCP ports in %s", svc.Key, view.where)
		}
		return svc.Ports, nil
	}
	p, ok := findPort(svc, arg)
	if !ok {
		return nil, fmt.Errorf("service %s has no port %q in %s (ports: %s)", svc.Key, arg, view.where, portList(svc))
	}
	return []discovery.Port{p}, nil
}

// explainIdentity explains calls to every Service whose pods run as id,
// on port (a number or name; empty: every port).
func explainIdentity(view *meshView, c whyCaller, id spiffeid.ID, port string) ([]whyCall, error) {
	snap := view.snap
	var calls []whyCall
	found := false
	for _, svc := range snap.Services() {
		if !slices.Contains(svc.Identities(snap.TrustDomain()), id) {
			continue
		}
		found = true
		svc := svc
		var ports []discovery.Port
		if port == "" {
			ports = svc.Ports
		} else if p, ok := findPort(&svc, port); ok {
			ports = []discovery.Port{p}
		}
		for _, p := range ports {
			calls = append(calls, explainServicePort(snap, c, &svc, p))
		}
	}
	switch {
	case !found:
		return nil, fmt.Errorf("no mesh endpoint runs as %s in %s: --to a SPIFFE ID means the Services whose pods have that identity", id, view.where)
	case len(calls) == 0:
		return nil, fmt.Errorf("no Service whose pods run as %s has a port %q in %s", id, port, view.where)
	}
	return calls, nil
}

// explainServicePort explains a call from c to port p of svc: the policy
// engine decides; if it allows, so must the sidecar of every pod behind
// svc on p's target port (see podsAdmit).
func explainServicePort(snap *discovery.Snapshot, c whyCaller, svc *discovery.Service, p discovery.Port) whyCall {
	eng, td := snap.Engine(), snap.TrustDomain()
	x := eng.Explain(c.id, svc.Key.Namespace, svc.Key.Name, p.Port)
	call := whyCall{Service: svc.Key.String(), Port: p.Port, PortName: p.Name, TargetPort: p.TargetPort,
		Allowed: x.Allowed, Rule: x.Rule, AuditDenied: x.AuditDenied, AuditRule: x.AuditRule, Explanations: []policy.Explanation{x}}
	target := svc.Key.String() + ":" + strconv.Itoa(int(p.Port))
	if !x.Allowed {
		reachable := slices.ContainsFunc(svc.Ports, func(q discovery.Port) bool {
			return eng.Allowed(c.id, svc.Key.Namespace, svc.Key.Name, q.Port)
		})
		call.RefusedBy = callerRefusal(c, td, svc.Key, target, x.Rule, reachable)
		return call
	}
	d := podsAdmit(snap, svc, c.id, p, td)
	if d.Allowed {
		if !call.AuditDenied && d.AuditDenied {
			call.AuditDenied, call.AuditRule = true, d.AuditRule
		}
		call.AuditLog = auditLog(c, call.AuditDenied, call.AuditRule)
		if call.AuditDenied && x.AuditDenied {
			call.AuditLog = serviceAuditLog(snap, c, svc, p, x.AuditRule)
		}
	} else {
		call.Allowed, call.Rule, call.AuditDenied, call.AuditRule = false, d.Rule, false, ""
		pod, podID, chain, decider := refusingPod(snap, svc, c.id, p)
		if decider != nil {
			call.Explanations = append(call.Explanations, eng.Explain(c.id, decider.Service.Namespace, decider.Service.Name, decider.Port))
		}
		call.RefusedBy = destinationRefusal(c, td, pod, podID, p.TargetPort, chain, decider)
	}
	return call
}

// refusingPod finds what podsAdmit found: the first pod (by address) of
// svc whose sidecar refuses src on p's target port, its identity, the
// chain and the Service port (decider) that refuses.
func refusingPod(snap *discovery.Snapshot, svc *discovery.Service, src spiffeid.ID, p discovery.Port) (netip.Addr, spiffeid.ID, *discovery.InboundChain, *discovery.ServicePort) {
	td := snap.TrustDomain()
	for _, pd := range servicePods(svc, td) {
		if snap.Inbound(src, pd.id, []netip.Addr{pd.addr}, p.TargetPort).Allowed {
			continue
		}
		chain, decider := refusingDecider(snap, src, pd.id, []netip.Addr{pd.addr}, p.TargetPort)
		return pd.addr, pd.id, chain, decider
	}
	return netip.Addr{}, spiffeid.ID{}, nil, nil
}

// refusingDecider is the chain and Service port that make the sidecar of
// the pod of id at addrs refuse src on targetPort, as Snapshot.Inbound
// finds them; nil when no chain covers the port (the default refuses).
func refusingDecider(snap *discovery.Snapshot, src, id spiffeid.ID, addrs []netip.Addr, targetPort uint16) (*discovery.InboundChain, *discovery.ServicePort) {
	for _, ch := range discovery.PodChains(snap.InboundChains(id), addrs) {
		if ch.TargetPort != targetPort {
			continue
		}
		for _, d := range ch.Deciders {
			if !snap.Engine().Allowed(src, d.Service.Namespace, d.Service.Name, d.Port) {
				return &ch, &d
			}
		}
	}
	return nil, nil
}

// explainPodPorts explains calls from c straight to the pod of identity
// id at addrs, on port (a number; empty: every target port a Service
// covers), as the pod's sidecar decides them (Snapshot.Inbound).
func explainPodPorts(view *meshView, c whyCaller, id spiffeid.ID, addrs []netip.Addr, port string) ([]whyCall, error) {
	snap := view.snap
	chains := discovery.PodChains(snap.InboundChains(id), addrs)
	var ports []uint16
	if port == "" {
		for _, ch := range chains {
			ports = append(ports, ch.TargetPort)
		}
		slices.Sort(ports)
		ports = slices.Compact(ports)
		if len(ports) == 0 {
			return nil, usagef("--to: no Service covers a port of the pod at %s: give the port, POD:PORT", addrs[0])
		}
	} else {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return nil, usagef("--to: a pod's port must be a number in 1-65535, got %q", port)
		}
		ports = []uint16{uint16(n)}
	}
	var calls []whyCall
	for _, tp := range ports {
		calls = append(calls, explainPodPort(snap, c, id, addrs, tp, chains))
	}
	return calls, nil
}

// explainPodPort explains one call straight to a pod's port tp.
func explainPodPort(snap *discovery.Snapshot, c whyCaller, id spiffeid.ID, addrs []netip.Addr, tp uint16, chains []discovery.InboundChain) whyCall {
	eng, td := snap.Engine(), snap.TrustDomain()
	d := snap.Inbound(c.id, id, addrs, tp)
	call := whyCall{PodAddress: netip.AddrPortFrom(addrs[0], tp).String(), TargetPort: tp, Allowed: d.Allowed, Rule: d.Rule,
		AuditDenied: d.AuditDenied, AuditRule: d.AuditRule}
	call.AuditLog = auditLog(c, d.AuditDenied, d.AuditRule)
	for _, ch := range chains {
		if ch.TargetPort != tp {
			continue
		}
		for _, dc := range ch.Deciders {
			call.Explanations = append(call.Explanations, eng.Explain(c.id, dc.Service.Namespace, dc.Service.Name, dc.Port))
		}
	}
	if len(call.Explanations) == 0 {
		ns, _ := wire.WorkloadNamespace(id)
		call.Explanations = append(call.Explanations, eng.ExplainDefault(c.id, ns))
	}
	if !d.Allowed {
		chain, decider := refusingDecider(snap, c.id, id, addrs, tp)
		call.RefusedBy = destinationRefusal(c, td, addrs[0], id, tp, chain, decider)
		known, lines := callerMapsPod(snap, c, addrs, tp)
		if !known && (c.pod == nil || c.pod.Sidecar) {
			// The caller's sidecar does not know the address: the call
			// leaves in plaintext (passthrough) and arrives without identity.
			rbac := call.RefusedBy
			call.RefusedBy = noIdentityRefusal(fmt.Sprintf("pod %s (%s)", addrs[0], shortID(id, td)),
				"the caller's sidecar does not know the address as an endpoint of a Service it may reach, so the call leaves without mTLS "+
					"(passthrough mode; in registry-only mode the caller's sidecar resets it itself, rule \"registry-only\")")
			call.RefusedBy.Otherwise = append(call.RefusedBy.Otherwise, "a call that arrives over mTLS anyway (the caller's sidecar sends it to a fixed --outbound PEER@ID) is refused by the RBAC of "+
				rbac.AccessLog+"; metric "+rbac.Metric)
		}
		call.RefusedBy.Otherwise = append(call.RefusedBy.Otherwise, lines...)
	}
	return call
}

// callerMapsPod says what the caller's sidecar does with a call to a
// pod's address: it knows the address as an endpoint of the Services the
// caller may reach on some port, and decides the call as theirs; the
// endpoints of a Service it may reach on no port are unknown to it
// (unless the Service is headless: then they are its hidden addresses).
func callerMapsPod(snap *discovery.Snapshot, c whyCaller, addrs []netip.Addr, tp uint16) (known bool, lines []string) {
	eng := snap.Engine()
	var out []string
	for _, svc := range snap.Services() {
		reachable := slices.ContainsFunc(svc.Ports, func(q discovery.Port) bool {
			return eng.Allowed(c.id, svc.Key.Namespace, svc.Key.Name, q.Port)
		})
		for _, e := range svc.Endpoints {
			if !slices.Contains(addrs, e.Addr.Unmap()) {
				continue
			}
			ap := netip.AddrPortFrom(e.Addr.Unmap(), tp)
			switch {
			case !reachable && len(svc.ClusterIPs) == 0:
				out = append(out, fmt.Sprintf("the caller may reach no port of the headless %s: its sidecar resets a call to %s itself (rule %q)", svc.Key, ap, ruleNoPortOfSvc))
				continue
			case !reachable:
				continue // its endpoints are unknown to the caller's sidecar
			}
			for _, p := range svc.Ports {
				if cmp.Or(e.Port, p.TargetPort) != tp {
					continue
				}
				known = true
				d := eng.Decide(c.id, svc.Key.Namespace, svc.Key.Name, p.Port)
				then := "opens the stream and the destination's sidecar decides"
				if !d.Allowed {
					then = "resets it itself (outbound, rule \"" + d.Rule + "\")"
				}
				out = append(out, fmt.Sprintf("the caller's sidecar knows %s as an endpoint of %s:%d, which policy %s: when it maps the call there, it %s",
					ap, svc.Key, p.Port, map[bool]string{true: "allows", false: "denies"}[d.Allowed], then))
			}
		}
	}
	slices.Sort(out)
	return known, slices.Compact(out)
}

// callerRefusal is who refuses a call the policy engine denies: the
// caller's DNS when the caller may reach no port of the service (its
// sidecar never learns the name), else the caller's sidecar.
func callerRefusal(c whyCaller, td spiffeid.TrustDomain, key discovery.ServiceKey, target, rule string, reachable bool) *whyRefusal {
	src := idString(c.id)
	var r whyRefusal
	switch {
	case !c.id.IsZero() && c.id.TrustDomain() != td:
		// A caller of another trust domain comes from its own mesh's
		// sidecar, straight to the destination's.
		return &whyRefusal{Component: byDestSidecar, AppSees: appSeesReset + " (the caller's own sidecar, of its mesh, resets it when this mesh's sidecar refuses)",
			AccessLog: fmt.Sprintf("the destination pod's sidecar: direction=\"inbound\" decision=\"deny\" source_id=%q rule=%q when no policy of the pod names the caller "+
				"(at the mTLS handshake), else the rule of the port's inbound RBAC; result handshake_error, without source_id, when tether-ca does not federate with %s", src, proxy.RuleForeignNotAdmitted, c.id.TrustDomain().Name()),
			Metric: fmt.Sprintf("tether_sidecar_foreign_peer_refusals_total{direction=\"inbound\",reason=\"not_admitted\"} (reason=\"untrusted_domain\" when not federated) "+
				"and tether_sidecar_authz_denials_total{direction=\"inbound\",source_id=%q} on the destination pod's sidecar", src),
			Otherwise: []string{fmt.Sprintf("the caller is of trust domain %s, not %s: only an enforcing AccessPolicy source with its spiffeID or trustDomain admits it "+
				"(never a default, a namespace or a serviceAccount source), and only while tether-ca federates with %s", c.id.TrustDomain().Name(), td.Name(), c.id.TrustDomain().Name())}}
	case c.pod != nil && !c.pod.Sidecar:
		return noIdentityRefusal("the destination pod", "the caller "+callerName(c, td)+" has no sidecar")
	case !reachable:
		r = whyRefusal{Component: byCallerDNS, AppSees: appSeesNXDOMAIN + "; a call to the Service's address anyway is reset by the caller's sidecar",
			AccessLog: fmt.Sprintf("none for the DNS query; for a call to its address: the caller's sidecar, direction=\"outbound\" decision=\"deny\" rule=%q", ruleNoPortOfSvc),
			Metric: fmt.Sprintf("tether_sidecar_dns_queries_total{result=\"unreachable\"} (when the upstream DNS answers with the service's address) and "+
				"tether_sidecar_authz_denials_total{direction=\"outbound\",source_id=%q,reason=%q} on the caller's sidecar", src, ruleNoPortOfSvc)}
		r.Otherwise = append(r.Otherwise, fmt.Sprintf("%s is hidden from the caller: the policy engine denies it every port of the service (%s)", wire.FQDN(key, wire.DefaultClusterDomain), rule))
	default:
		r = whyRefusal{Component: byCallerSidecar, AppSees: appSeesReset,
			AccessLog: fmt.Sprintf("the caller's sidecar: direction=\"outbound\" decision=\"deny\" destination=%q rule=%q", target, rule),
			Metric:    fmt.Sprintf("tether_sidecar_authz_denials_total{direction=\"outbound\",source_id=%q,destination=%q,reason=%q} on the caller's sidecar", src, target, rule)}
	}
	r.Otherwise = append(r.Otherwise, "if the call bypasses the caller's sidecar (traffic not captured): "+plaintextRefusal)
	return &r
}

// destinationRefusal is the refusal by the sidecar of the pod of id at
// addr on targetPort: its inbound RBAC, decider's filter in chain.
func destinationRefusal(c whyCaller, td spiffeid.TrustDomain, addr netip.Addr, id spiffeid.ID, targetPort uint16, chain *discovery.InboundChain, decider *discovery.ServicePort) *whyRefusal {
	src := idString(c.id)
	rule := fmt.Sprintf("inbound default ... (no Service covers port %d)", targetPort)
	if chain != nil && decider != nil {
		rule = fmt.Sprintf("no principal of %s chain %s (%s) admits %s", wire.InboundListenerName, chain.Name(),
			fmt.Sprintf("inbound_%s_%s_%d", decider.Service.Namespace, decider.Service.Name, decider.Port), src)
	}
	pod := fmt.Sprintf("pod %s (%s)", addr, shortID(id, td))
	if c.pod != nil && !c.pod.Sidecar {
		return noIdentityRefusal(pod, "the caller "+callerName(c, td)+" has no sidecar")
	}
	return &whyRefusal{Component: byDestSidecar,
		AppSees:   appSeesReset + " (the caller's sidecar resets it when the destination's sidecar refuses the stream)",
		AccessLog: fmt.Sprintf("the sidecar of %s: direction=\"inbound\" decision=\"deny\" source_id=%q rule=%q; the caller's sidecar: direction=\"outbound\" decision=\"deny\" reason=\"refused by %s: ...\"", pod, src, rule, id),
		Metric:    fmt.Sprintf("tether_sidecar_authz_denials_total{direction=\"inbound\",source_id=%q,reason=%q} on the sidecar of %s", src, rule, pod),
		Otherwise: []string{"if the call bypasses the caller's sidecar (traffic not captured): " + plaintextRefusal},
	}
}

// auditLog says where an audit-denied call is recorded ("" if it is not
// audit-denied).
func auditLog(c whyCaller, auditDenied bool, rule string) string {
	if !auditDenied {
		return ""
	}
	return fmt.Sprintf("the call passes; the sidecars log it with decision=\"audit-deny\" and rule=%q (source_id=%q), "+
		"and count it in tether_sidecar_authz_audit_denials_total", rule, idString(c.id))
}

// serviceAuditLog says where an audit-denied call to port p of svc is
// recorded: the caller's sidecar logs the would-be rule; the sidecar of
// each pod behind svc logs its RBAC shadow rule, named by the chain, the
// Service port and the would-be rule worded without the caller.
func serviceAuditLog(snap *discovery.Snapshot, c whyCaller, svc *discovery.Service, p discovery.Port, rule string) string {
	td := snap.TrustDomain()
	out := fmt.Sprintf("the call passes; the caller's sidecar logs direction=\"outbound\" decision=\"audit-deny\" rule=%q", rule)
	for _, e := range svc.Endpoints {
		id, err := e.Identity(td, svc.Key.Namespace)
		if err != nil {
			continue
		}
		addr := e.Addr.Unmap()
		for _, ch := range discovery.PodChains(snap.InboundChains(id), []netip.Addr{addr}) {
			if ch.TargetPort != p.TargetPort || !slices.Contains(ch.Deciders, discovery.ServicePort{Service: svc.Key, Port: p.Port}) {
				continue
			}
			in := fmt.Sprintf("%s (inbound_%s_%s_%d): %s", ch.Name(), svc.Key.Namespace, svc.Key.Name, p.Port,
				snap.Engine().WouldBeDenial(svc.Key.Namespace, svc.Key.Name, p.Port))
			out += fmt.Sprintf("; the sidecar of pod %s (%s) logs direction=\"inbound\" decision=\"audit-deny\" source_id=%q rule=%q", addr, shortID(id, td), idString(c.id), in)
			return out + "; both count it in tether_sidecar_authz_audit_denials_total{direction,destination,rule}"
		}
	}
	return out + "; counted in tether_sidecar_authz_audit_denials_total{direction,destination,rule}"
}

// noIdentityRefusal is the refusal of a call that reaches the sidecar of
// pod (a description) without a client certificate.
func noIdentityRefusal(pod, why string) *whyRefusal {
	return &whyRefusal{Component: byDestSidecar, AppSees: appSeesReset,
		AccessLog: "the sidecar of " + pod + `: strict inbound mode: direction="inbound" decision="deny" reason="mTLS handshake: ..."; ` +
			`permissive mode: decision="deny" reason="permissive: ... refused: ..." and the rule`,
		Metric: "on the sidecar of " + pod + `: strict: tether_sidecar_connections_total{direction="inbound",result="handshake_error"}; ` +
			`permissive: tether_sidecar_authz_denials_total{direction="inbound",source_id="unauthenticated"}`,
		Otherwise: []string{why + ": " + plaintextRefusal}}
}

// podIdentityAt is the identity of the mesh endpoint at addr.
func podIdentityAt(view *meshView, addr netip.Addr) (spiffeid.ID, error) {
	td := view.snap.TrustDomain()
	var ids []spiffeid.ID
	for _, svc := range view.snap.Services() {
		for _, e := range svc.Endpoints {
			if e.Addr.Unmap() != addr {
				continue
			}
			if id, err := e.Identity(td, svc.Key.Namespace); err == nil {
				ids = append(ids, id)
			}
		}
	}
	slices.SortFunc(ids, func(a, b spiffeid.ID) int { return strings.Compare(a.String(), b.String()) })
	ids = slices.Compact(ids)
	switch len(ids) {
	case 0:
		return spiffeid.ID{}, fmt.Errorf("no mesh endpoint has address %s in %s; check a Service with --to NAMESPACE/SERVICE", addr, view.where)
	case 1:
		return ids[0], nil
	}
	names := make([]string, len(ids))
	for i, id := range ids {
		names[i] = id.String()
	}
	return spiffeid.ID{}, fmt.Errorf("address %s is the endpoint of several identities in %s (%s): give the pod by name or a Service", addr, view.where, strings.Join(names, ", "))
}

// idString is id's string, "" for the zero ID.
func idString(id spiffeid.ID) string {
	if id.IsZero() {
		return ""
	}
	return id.String()
}

// callerName names the caller in messages.
func callerName(c whyCaller, td spiffeid.TrustDomain) string {
	if c.pod != nil {
		return "pod " + c.pod.Namespace + "/" + c.pod.Name
	}
	return shortID(c.id, td)
}

// writeWhy writes res as text.
func writeWhy(w io.Writer, res whyResult, c whyCaller, td spiffeid.TrustDomain) error {
	var b strings.Builder
	if p := res.SourcePod; p != nil {
		side := "its sidecar presents " + res.Source
		if !p.Sidecar {
			side = "it has no tether-sidecar: its calls carry no identity"
		}
		fmt.Fprintf(&b, "caller: pod %s/%s, service account %s; %s\n", p.Namespace, p.Name, p.ServiceAccount, side)
	}
	if p := res.DestinationPod; p != nil {
		fmt.Fprintf(&b, "callee: pod %s/%s (%s), service account %s\n", p.Namespace, p.Name, strings.Join(p.Addresses, ", "), p.ServiceAccount)
	}
	for i, call := range res.Calls {
		if i > 0 || b.Len() > 0 {
			b.WriteString("\n")
		}
		dst := call.PodAddress
		if call.Service != "" {
			dst = fmt.Sprintf("%s:%d", call.Service, call.Port)
			if call.PortName != "" {
				dst += " (" + call.PortName + ")"
			}
		}
		v := verdict(call.Allowed)
		if call.AuditDenied {
			v = "allowed (audit-deny)"
		}
		fmt.Fprintf(&b, "%s %s -> %s\n  rule: %s\n", v, callerName(c, td), dst, call.Rule)
		if call.Allowed && !c.id.IsZero() && c.id.TrustDomain() != td {
			fmt.Fprintf(&b, "  caller of another trust domain: it also needs tether-ca to federate with %s (a TrustDomainFederation, or --federation-file); "+
				"without it the destination's sidecar refuses the handshake (tether_sidecar_foreign_peer_refusals_total{reason=\"untrusted_domain\"})\n", c.id.TrustDomain().Name())
		}
		if call.AuditDenied {
			fmt.Fprintf(&b, "  would be denied by: %s\n  audit: %s\n", call.AuditRule, call.AuditLog)
		}
		for _, x := range call.Explanations {
			writeExplanation(&b, x, "  ")
			if w := x.WouldBe; w != nil && (w.Allowed != x.Allowed || w.Rule != x.Rule) {
				fmt.Fprintf(&b, "  would be, with the policies and defaults in audit mode enforcing: %s (%s)\n", verdict(w.Allowed), w.Rule)
				writeExplanation(&b, *w, "    ")
			}
		}
		if r := call.RefusedBy; r != nil {
			fmt.Fprintf(&b, "  who refuses: %s\n    the app sees: %s\n    access log: %s\n    metric: %s\n", componentName(r.Component), r.AppSees, r.AccessLog, r.Metric)
			for _, o := range r.Otherwise {
				fmt.Fprintf(&b, "    also: %s\n", o)
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeExplanation writes one engine explanation, indented by indent.
func writeExplanation(b *strings.Builder, x policy.Explanation, indent string) {
	where := x.Namespace + "/" + x.Service
	if x.Service == "" {
		where = "a pod port no Service covers, namespace " + x.Namespace
	} else if x.Port != 0 {
		where += ":" + strconv.Itoa(int(x.Port))
	}
	if x.Default != nil {
		fmt.Fprintf(b, "%s%s: default %s (%s): %s\n", indent, where, x.Default.Default, x.Default.From, x.Default.Reason)
		return
	}
	fmt.Fprintf(b, "%s%s: %d AccessPolicy(s) name the service; only they decide:\n", indent, where, len(x.Policies))
	for _, p := range x.Policies {
		fmt.Fprintf(b, "%s  %s: %s\n", indent, p.Rule, p.Reason)
		if p.Matched {
			continue
		}
		for _, s := range p.Sources {
			fmt.Fprintf(b, "%s    %s: %s\n", indent, s.Source, s.Reason)
		}
	}
}

func componentName(c string) string {
	switch c {
	case byCallerDNS:
		return "the caller's DNS (its sidecar's DNS server)"
	case byCallerSidecar:
		return "the caller's sidecar (outbound)"
	default:
		return "the destination's sidecar (inbound)"
	}
}

// findPod resolves a pod named name (in namespace ns, or any when ns is
// empty) to its namespace, service account, addresses and identity: from
// the API server when the view is Kubernetes' (a pod that backs no
// Service is a caller too), else from the mesh.yaml's endpoints. flag
// names the flag in errors.
func (v *meshView) findPod(ctx context.Context, flag, ns, name string) (*whyPod, spiffeid.ID, error) {
	var pods []whyPod
	var ids []spiffeid.ID
	var err error
	if v.listPods != nil {
		pods, ids, err = v.kubePods(ctx, name)
	} else {
		pods, ids = v.endpointPods(name)
	}
	if err != nil {
		return nil, spiffeid.ID{}, err
	}
	var keep []int
	for i, p := range pods {
		if ns == "" || p.Namespace == ns {
			keep = append(keep, i)
		}
	}
	ref := name
	if ns != "" {
		ref = ns + "/pod/" + name
	}
	switch len(keep) {
	case 0:
		hint := "give NAME or NAMESPACE/pod/NAME of a pod"
		if v.listPods == nil {
			hint = "a mesh.yaml knows a pod by the pod: field of a Service's endpoints"
		}
		return nil, spiffeid.ID{}, fmt.Errorf("%s %s: no pod %s in %s; %s", flag, ref, name, v.where, hint)
	case 1:
		return &pods[keep[0]], ids[keep[0]], nil
	}
	var where, namespaces []string
	for _, i := range keep {
		where = append(where, fmt.Sprintf("%s/pod/%s (%s)", pods[i].Namespace, pods[i].Name, idString(ids[i])))
		namespaces = append(namespaces, pods[i].Namespace)
	}
	if namespaces = slices.Compact(namespaces); len(namespaces) == 1 {
		// One pod, several identities: only a mesh.yaml can say so.
		return nil, spiffeid.ID{}, fmt.Errorf("%s %s: the endpoints of %s give pod %s/%s several identities: %s; one pod has one service account: fix the file",
			flag, ref, v.where, namespaces[0], name, strings.Join(where, ", "))
	}
	return nil, spiffeid.ID{}, usagef("%s %s is ambiguous in %s: it names %s; give one of them", flag, ref, v.where, strings.Join(where, ", "))
}

// kubePods lists the Pods named name through the API server.
func (v *meshView) kubePods(ctx context.Context, name string) ([]whyPod, []spiffeid.ID, error) {
	items, err := v.listPods(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	td := v.snap.TrustDomain()
	var pods []whyPod
	var ids []spiffeid.ID
	for _, p := range items {
		wp := whyPod{Namespace: p.Namespace, Name: p.Name, ServiceAccount: cmp.Or(p.Spec.ServiceAccountName, "default"), Sidecar: inject.Injected(&p)}
		for _, ip := range p.Status.PodIPs {
			wp.Addresses = append(wp.Addresses, ip.IP)
		}
		if len(wp.Addresses) == 0 {
			// Not running yet, or kubelet has not reported: the endpoints
			// discovery knows are the only addresses.
			wp.Addresses = v.endpointAddrs(p.Namespace, p.Name)
		}
		var id spiffeid.ID
		if wp.Sidecar {
			if id, err = wire.WorkloadID(td, wp.Namespace, wp.ServiceAccount); err != nil {
				return nil, nil, fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
			}
		}
		pods, ids = append(pods, wp), append(ids, id)
	}
	return pods, ids, nil
}

// endpointPods finds the pods named name among the endpoints of the
// view's Services, one per namespace and identity.
func (v *meshView) endpointPods(name string) ([]whyPod, []spiffeid.ID) {
	td := v.snap.TrustDomain()
	type key struct {
		ns string
		id spiffeid.ID
	}
	byKey := map[key]*whyPod{}
	var order []key
	for _, svc := range v.snap.Services() {
		for _, e := range svc.Endpoints {
			if e.Pod != name {
				continue
			}
			id, err := e.Identity(td, svc.Key.Namespace)
			if err != nil {
				continue
			}
			ns, sa, ok := wire.ParseWorkloadID(id)
			if !ok {
				ns, sa = svc.Key.Namespace, ""
			}
			k := key{ns, id}
			p, seen := byKey[k]
			if !seen {
				p = &whyPod{Namespace: ns, Name: name, ServiceAccount: sa, Sidecar: true}
				byKey[k] = p
				order = append(order, k)
			}
			if a := e.Addr.Unmap().String(); !slices.Contains(p.Addresses, a) {
				p.Addresses = append(p.Addresses, a)
			}
		}
	}
	slices.SortFunc(order, func(a, b key) int {
		return cmp.Or(strings.Compare(a.ns, b.ns), strings.Compare(a.id.String(), b.id.String()))
	})
	pods := make([]whyPod, len(order))
	ids := make([]spiffeid.ID, len(order))
	for i, k := range order {
		pods[i], ids[i] = *byKey[k], k.id
		slices.Sort(pods[i].Addresses)
	}
	return pods, ids
}

// endpointAddrs are the addresses the view's endpoints give pod ns/name.
func (v *meshView) endpointAddrs(ns, name string) []string {
	pods, _ := v.endpointPods(name)
	for _, p := range pods {
		if p.Namespace == ns {
			return p.Addresses
		}
	}
	return nil
}
