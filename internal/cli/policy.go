package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"

	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// policySourceHelp says where the policy commands read the mesh from.
const policySourceHelp = `Services and policies come from a mesh.yaml with --mesh FILE, or else from
Kubernetes: the cluster of --kubeconfig PATH, else $KUBECONFIG, else
~/.kube/config, else the cluster the command runs in (as a pod). The command
reads the cluster once, as tether-discovery does (Services, EndpointSlices,
Pods, Namespaces with their tether.dev/default-policy annotation, and
AccessPolicies), so it needs list and watch on those in every namespace, and
the AccessPolicy CRD installed. The mesh-wide default is not stored in the
cluster: without --default-policy the command assumes tether-discovery's
default, allow-mesh, and says so when an answer depends on it.
`

const policyCheckHelp = `Answers whether the workload running as service account SA in namespace NS
(or an exact SPIFFE ID, --from spiffe://...) may reach SERVICE, and which
rule decided. PORT is a service port number or name; without it every port
of the service is checked, one line per port. A SERVICE that does not exist
is an error. A port is allowed only if the policy engine allows it and the
sidecar of every pod behind the service admits the caller on its target
port: a pod that another Service selects on the same target port admits
only callers every AccessPolicy on those Services allows (see
docs/sidecar.md, "Services that share pods, accounts or ports").

With --to POD-IP:PORT ([IPv6]:PORT), answers what the sidecar of the pod
at that address decides for a connection straight to its target port PORT
(the route around a Service: the pod IP, a headless name).

` + policySourceHelp + `
Exit status: 0 allowed (on every port checked), 1 denied (on any port) or
the check could not be made (see stderr), 2 usage error.`

const policyGraphHelp = `Prints who may reach what: for every identity the mesh knows (the
endpoints' identities and the service accounts and SPIFFE IDs policies name),
the services and ports it is allowed to reach and the rule that allows it.
As a text table, as a Graphviz digraph with -o dot (or --dot), or as JSON
or YAML with -o json|yaml. With --namespace, only the pairs whose service or
whose source workload is in that namespace.

` + policyGraphObservedHelp + `
` + policySourceHelp

// errDenied makes `policy check` exit 1 after printing its answer.
var errDenied = errors.New("denied")

// Defaults of the policy commands where neither a flag nor the mesh.yaml
// says otherwise.
const (
	defaultTrustDomain   = "cluster.local"
	defaultPolicyDefault = policy.AllowMesh
	defaultKubeTimeout   = 30 * time.Second
)

// policySource holds the flags shared by the policy commands: where the
// mesh is read from and how it is interpreted.
type policySource struct {
	mesh, kubeconfig, kubeContext string
	trustDomain, defaultPolicy    string
	defaultPolicyMode             string
	timeout                       time.Duration
}

// addPolicySourceFlags registers the flags that say where the mesh is
// read from on cmd.
func addPolicySourceFlags(cmd *cobra.Command) *policySource {
	p := &policySource{}
	f := cmd.Flags()
	f.StringVar(&p.mesh, "mesh", "", "read services and policies from this mesh.yaml instead of Kubernetes")
	f.StringVar(&p.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster)")
	f.StringVar(&p.kubeContext, "context", "", "kubeconfig context (default: the kubeconfig's current context)")
	f.StringVar(&p.trustDomain, "trust-domain", "", "trust domain (default: the mesh.yaml's trustDomain, else "+defaultTrustDomain+")")
	f.StringVar(&p.defaultPolicy, "default-policy", "", "mesh-wide default: allow-mesh, same-namespace or deny; namespaces override it with the tether.dev/default-policy annotation (default: the mesh.yaml's defaultPolicy, else "+defaultPolicyDefault.String()+")")
	f.StringVar(&p.defaultPolicyMode, "default-policy-mode", "", "mode of the mesh default: enforce, or audit (what it would deny passes, reported as audit-deny); namespaces set their own with the tether.dev/default-policy-mode annotation (default: the mesh.yaml's defaultPolicyMode, else enforce)")
	f.DurationVar(&p.timeout, "timeout", defaultKubeTimeout, "how long to wait for the Kubernetes API server")
	_ = cmd.MarkFlagFilename("mesh", "yaml", "yml")
	_ = cmd.MarkFlagFilename("kubeconfig")
	return p
}

// meshView is the snapshot a policy command answers from.
type meshView struct {
	snap *discovery.Snapshot
	// where names the source in messages: the mesh.yaml path, or the
	// Kubernetes context and server.
	where string
	// kube is true when the snapshot comes from Kubernetes, where every
	// namespace is known.
	kube bool
	// assumedDefault is the rule of the mesh default when it is assumed
	// rather than given (Kubernetes without --default-policy), else "".
	assumedDefault string
	// listPods lists the Pods named name in every namespace (Kubernetes
	// only: a mesh.yaml knows pods only as endpoints).
	listPods func(ctx context.Context, name string) ([]corev1.Pod, error)
}

// noteAssumedDefault tells, on w, that a decision by the mesh default
// assumes tether-discovery's default, if one of rules is that decision.
func (v *meshView) noteAssumedDefault(w io.Writer, rules []string) {
	if v.assumedDefault == "" || !slices.Contains(rules, v.assumedDefault) {
		return
	}
	def := strings.TrimPrefix(v.assumedDefault, "mesh default ")
	fmt.Fprintf(w, "tether: note: %q assumes tether-discovery runs with --default-policy=%s (its default); "+
		"if it runs with another, give the same --default-policy here\n", v.assumedDefault, def)
}

// check validates the flags that need no I/O.
func (p *policySource) check() error {
	switch {
	case p.mesh != "" && (p.kubeconfig != "" || p.kubeContext != ""):
		return usagef("--mesh reads a mesh.yaml; --kubeconfig and --context read Kubernetes: give one or the other")
	case p.timeout <= 0:
		return usagef("--timeout must be positive")
	}
	if p.trustDomain != "" {
		if _, err := spiffeid.TrustDomainFromString(p.trustDomain); err != nil {
			return usagef("--trust-domain: %v", err)
		}
	}
	if p.defaultPolicy != "" {
		if _, err := wire.ParseDefault(p.defaultPolicy); err != nil {
			return usagef("--default-policy: %v", err)
		}
	}
	if p.defaultPolicyMode != "" {
		if _, err := policy.ParseDefaultMode(p.defaultPolicyMode); err != nil {
			return usagef("--default-policy-mode: %v", err)
		}
	}
	return nil
}

// modeOption returns the registry option of the mesh default's mode: the
// flag's, else the file's (empty when there is no file), else enforce.
func (p *policySource) modeOption(fileMode policy.Mode) discovery.RegistryOption {
	mode := policy.Enforce
	switch {
	case p.defaultPolicyMode != "":
		mode, _ = policy.ParseDefaultMode(p.defaultPolicyMode) // checked by check
	case fileMode != "":
		mode = fileMode
	}
	return discovery.WithMeshDefaultMode(mode)
}

// settings returns the trust domain and mesh default: the flags', else
// the file's (zero values when there is no file), else the defaults.
func (p *policySource) settings(fileTD spiffeid.TrustDomain, fileDefault policy.Default) (spiffeid.TrustDomain, policy.Default) {
	td := spiffeid.RequireTrustDomainFromString(defaultTrustDomain)
	switch {
	case p.trustDomain != "":
		td = spiffeid.RequireTrustDomainFromString(p.trustDomain) // checked by check
	case !fileTD.IsZero():
		td = fileTD
	}
	def := defaultPolicyDefault
	switch {
	case p.defaultPolicy != "":
		def, _ = wire.ParseDefault(p.defaultPolicy) // checked by check
	case fileDefault != 0:
		def = fileDefault
	}
	return td, def
}

// load reads the mesh from the mesh.yaml or Kubernetes. Warnings about
// objects left out go to stderr.
func (p *policySource) load(ctx context.Context, stderr io.Writer) (*meshView, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	if p.mesh == "" {
		return p.loadKube(ctx, stderr)
	}
	mf, err := discovery.LoadMeshFile(p.mesh)
	if err != nil {
		return nil, err
	}
	td, def := p.settings(mf.TrustDomain, mf.DefaultPolicy)
	reg, err := discovery.NewRegistry(td, def, p.modeOption(mf.DefaultPolicyMode))
	if err != nil {
		return nil, err
	}
	if err := reg.Update(mf.State); err != nil {
		return nil, fmt.Errorf("%s: %w", p.mesh, err)
	}
	return &meshView{snap: reg.Snapshot(), where: p.mesh}, nil
}

// namespaces returns every namespace the view knows: those listed, and
// those of its services and policies.
func (v *meshView) namespaces() map[string]bool {
	known := make(map[string]bool)
	for _, ns := range v.snap.Namespaces() {
		known[ns.Name] = true
	}
	for _, s := range v.snap.Services() {
		known[s.Key.Namespace] = true
	}
	for _, p := range v.snap.Policies() {
		known[cmp.Or(p.Namespace, "default")] = true
	}
	return known
}

// missingService is the error for a --to service the view does not hold,
// with the services of its namespace as a hint.
func (v *meshView) missingService(key discovery.ServiceKey) error {
	var names []string
	for _, s := range v.snap.Services() {
		if s.Key.Namespace == key.Namespace {
			names = append(names, s.Key.Name)
		}
	}
	var hint string
	switch {
	case len(names) > 10:
		hint = fmt.Sprintf("services in namespace %s: %s, ... (%d in all)", key.Namespace, strings.Join(names[:10], ", "), len(names))
	case len(names) > 0:
		hint = fmt.Sprintf("services in namespace %s: %s", key.Namespace, strings.Join(names, ", "))
	case !v.namespaces()[key.Namespace]:
		hint = fmt.Sprintf("there is no namespace %s", key.Namespace)
	default:
		hint = fmt.Sprintf("namespace %s has no services", key.Namespace)
	}
	if v.kube {
		// A Service no injected Pod serves is not a mesh service: its
		// traffic passes through the sidecars, no policy applies to it.
		hint += "; only Services with at least one Pod running tether-sidecar are mesh services"
	}
	return fmt.Errorf("service %s does not exist in %s; %s", key, v.where, hint)
}

// portDecision is one port's answer, as --json prints it.
type portDecision struct {
	Port     uint16 `json:"port"`
	PortName string `json:"port_name,omitempty"`
	Allowed  bool   `json:"allowed"`
	Rule     string `json:"rule"`
}

// checkResult is `policy check --json`.
type checkResult struct {
	// Source is the caller's SPIFFE ID.
	Source string `json:"source"`
	// Destination is "namespace/service".
	Destination string `json:"destination"`
	// Allowed is true when every port checked is allowed.
	Allowed bool           `json:"allowed"`
	Ports   []portDecision `json:"ports"`
}

// newPolicyCmd is the `tether policy` group.
func (a *App) newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Ask what the mesh's policies allow: one connection, or the whole graph",
		Long: `Answers from the same policy engine and the same inputs as tether-discovery,
without a running mesh: whether one workload may reach a service (check), and
who may reach what (graph). From the traffic the mesh observed: what was
called, over what policy allows (graph --observed), and the AccessPolicies
that allow exactly that (suggest).

` + policySourceHelp,
		Example: `  tether policy check --from web/frontend --to shop/api:80
  tether policy graph --namespace shop
  tether policy graph --mesh mesh.yaml -o dot | dot -Tsvg > mesh.svg
  tether policy graph --observed --since 1h -n shop
  tether policy suggest -n shop | kubectl apply -f -`,
	}
	cmd.AddCommand(a.newPolicyCheckCmd(), a.newPolicyGraphCmd())
	return cmd
}

// newPolicyCheckCmd is `tether policy check`.
func (a *App) newPolicyCheckCmd() *cobra.Command {
	var (
		from, to string
		out      Output
		src      *policySource
	)
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Say whether a workload may reach a service or pod, and which rule decides",
		Long:  policyCheckHelp,
		Example: `  # Every port of shop/api, from the pods running as web/frontend
  tether policy check --from web/frontend --to shop/api

  # One port, by number or name, answering from a mesh.yaml
  tether policy check --mesh mesh.yaml --from default/web --to default/api:http

  # An exact SPIFFE ID, as JSON
  tether policy check --from spiffe://cluster.local/vm/build --to shop/db:5432 -o json

  # Straight to a pod's port
  tether policy check --from web/frontend --to 10.244.0.12:8080`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.policyCheck(cmd.Context(), src, from, to, &out)
		},
	}
	src = addPolicySourceFlags(cmd)
	cmd.Flags().StringVar(&from, "from", "", "source: NS/SA (namespace/service account) or a SPIFFE ID")
	cmd.Flags().StringVar(&to, "to", "", "destination: NS/SERVICE[:PORT], PORT a number or a port name, or POD-IP:PORT")
	_ = cmd.MarkFlagRequired("from")
	_ = cmd.MarkFlagRequired("to")
	out.AddFlag(cmd)
	out.AddJSONAlias(cmd)
	return cmd
}

func (a *App) policyCheck(ctx context.Context, src *policySource, from, to string, out *Output) error {
	dst, err := parseDestination(to)
	if err != nil {
		return err
	}
	portArg := dst.port
	srcArg, err := parseSource(from)
	if err != nil {
		return err
	}
	view, err := src.load(ctx, a.Stderr)
	if err != nil {
		return err
	}
	snap := view.snap
	td := snap.TrustDomain()
	srcID, err := srcArg.identity(td)
	if err != nil {
		return err
	}
	if view.kube && srcArg.namespace != "" && !view.namespaces()[srcArg.namespace] {
		fmt.Fprintf(a.Stderr, "tether: note: namespace %s does not exist in %s; deciding for %s anyway\n", srcArg.namespace, view.where, srcID)
	}

	if dst.pod.IsValid() {
		return a.policyCheckPod(view, srcID, dst.pod, dst.port, out)
	}
	svc, ok := snap.Service(dst.key)
	if !ok {
		return view.missingService(dst.key)
	}
	var ports []discovery.Port
	if portArg == "" {
		ports = svc.Ports
		if len(ports) == 0 {
			return fmt.Errorf("service %s has no TCP ports in %s", dst.key, view.where)
		}
	} else {
		p, ok := findPort(svc, portArg)
		if !ok {
			return fmt.Errorf("service %s has no port %q in %s (ports: %s)", dst.key, portArg, view.where, portList(svc))
		}
		ports = []discovery.Port{p}
	}

	res := checkResult{Source: srcID.String(), Destination: dst.key.String(), Allowed: true}
	denied := 0
	for _, p := range ports {
		d := snap.Engine().Decide(srcID, dst.key.Namespace, dst.key.Name, p.Port)
		if d.Allowed {
			d = podsAdmit(snap, svc, srcID, p, td)
		}
		if !d.Allowed {
			denied++
			res.Allowed = false
		}
		res.Ports = append(res.Ports, portDecision{Port: p.Port, PortName: p.Name, Allowed: d.Allowed, Rule: d.Rule})
	}
	var rules []string
	for _, d := range res.Ports {
		rules = append(rules, d.Rule)
	}
	view.noteAssumedDefault(a.Stderr, rules)
	err = out.Print(a.Stdout, res, func(w io.Writer) error {
		for _, d := range res.Ports {
			fmt.Fprintf(w, "%s %s -> %s:%d: %s\n", verdict(d.Allowed), shortID(srcID, td), dst.key, d.Port, d.Rule)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if denied > 0 {
		return fmt.Errorf("%w: %s may not reach %s on %d of %d port(s)", errDenied, shortID(srcID, td), dst.key, denied, len(ports))
	}
	return nil
}

// podsAdmit is the decision of the sidecars of svc's pods for a caller
// the policy engine lets reach port p of svc: the first pod (by address)
// whose sidecar refuses it on p's target port denies, with that pod's
// rule (discovery.Snapshot.Inbound, what the sidecar decides); if every
// pod admits it, the engine's rule stands.
func podsAdmit(snap *discovery.Snapshot, svc *discovery.Service, src spiffeid.ID, p discovery.Port, td spiffeid.TrustDomain) policy.Decision {
	allowed := snap.Engine().Decide(src, svc.Key.Namespace, svc.Key.Name, p.Port)
	for _, pd := range servicePods(svc, td) {
		if d := snap.Inbound(src, pd.id, []netip.Addr{pd.addr}, p.TargetPort); !d.Allowed {
			return policy.Decision{Rule: fmt.Sprintf("%s allows it, but the sidecar of pod %s (%s) refuses it on port %d: %s",
				allowed.Rule, pd.addr, shortID(pd.id, td), p.TargetPort, d.Rule)}
		}
	}
	return allowed
}

// endpointPod is one pod behind a Service: its address and identity.
type endpointPod struct {
	addr netip.Addr
	id   spiffeid.ID
}

// servicePods are the pods of svc that have an identity, sorted by
// address then identity, without repeats.
func servicePods(svc *discovery.Service, td spiffeid.TrustDomain) []endpointPod {
	var pods []endpointPod
	for _, e := range svc.Endpoints {
		if id, err := e.Identity(td, svc.Key.Namespace); err == nil {
			pods = append(pods, endpointPod{e.Addr.Unmap(), id})
		}
	}
	slices.SortFunc(pods, func(a, b endpointPod) int {
		return cmp.Or(a.addr.Compare(b.addr), strings.Compare(a.id.String(), b.id.String()))
	})
	return slices.Compact(pods)
}

// policyCheckPod answers --to POD-IP:PORT: what the sidecar of every
// workload the mesh lists at addr decides for src on port.
func (a *App) policyCheckPod(view *meshView, src spiffeid.ID, addr netip.Addr, portArg string, out *Output) error {
	snap := view.snap
	td := snap.TrustDomain()
	n, err := strconv.ParseUint(portArg, 10, 16)
	if err != nil || n == 0 {
		return usagef("--to %s:%s: a pod's port must be a number in 1-65535", addr, portArg)
	}
	port := uint16(n)
	var ids []spiffeid.ID
	var services []string
	for _, svc := range snap.Services() {
		for _, e := range svc.Endpoints {
			if e.Addr.Unmap() != addr {
				continue
			}
			if id, err := e.Identity(td, svc.Key.Namespace); err == nil {
				ids = append(ids, id)
				services = append(services, svc.Key.String())
			}
		}
	}
	if len(ids) == 0 {
		return fmt.Errorf("no mesh endpoint has address %s in %s: its sidecar, if any, holds it to the rules of every pod of its identity; "+
			"check a Service with --to NAMESPACE/SERVICE", addr, view.where)
	}
	slices.SortFunc(ids, func(a, b spiffeid.ID) int { return strings.Compare(a.String(), b.String()) })
	ids = slices.Compact(ids)
	slices.Sort(services)
	services = slices.Compact(services)
	res := checkResult{Source: src.String(), Destination: netip.AddrPortFrom(addr, port).String(), Allowed: true}
	var rules []string
	for _, id := range ids {
		d := snap.Inbound(src, id, []netip.Addr{addr}, port)
		if len(ids) > 1 {
			d.Rule = "pod of " + shortID(id, td) + ": " + d.Rule
		}
		res.Allowed = res.Allowed && d.Allowed
		res.Ports = append(res.Ports, portDecision{Port: port, Allowed: d.Allowed, Rule: d.Rule})
		rules = append(rules, d.Rule)
	}
	view.noteAssumedDefault(a.Stderr, rules)
	err = out.Print(a.Stdout, res, func(w io.Writer) error {
		for _, d := range res.Ports {
			fmt.Fprintf(w, "%s %s -> pod %s (%s): %s\n", verdict(d.Allowed), shortID(src, td), res.Destination, strings.Join(services, ", "), d.Rule)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if !res.Allowed {
		return fmt.Errorf("%w: %s may not reach pod %s", errDenied, shortID(src, td), res.Destination)
	}
	return nil
}

// newPolicyGraphCmd is `tether policy graph`.
func (a *App) newPolicyGraphCmd() *cobra.Command {
	var (
		namespace string
		dot       bool
		observed  bool
		since     time.Duration
		out       Output
		src       *policySource
		fsrc      *flowSource
	)
	cmd := &cobra.Command{
		Use:   "graph",
		Short: "Print who may reach what, as a table, a Graphviz digraph, JSON or YAML",
		Long:  policyGraphHelp,
		Example: `  tether policy graph
  tether policy graph -n shop
  tether policy graph --mesh mesh.yaml -o dot | dot -Tsvg > mesh.svg
  tether policy graph -o json

  # What the mesh saw in the last hour, over what policy allows
  tether policy graph --observed --since 1h -n shop
  tether policy graph --observed -o dot | dot -Tsvg > observed.svg`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dot {
				if out.Format() != FormatText && out.Format() != formatDOT {
					return usagef("--dot and -o %s: give one (--dot is -o dot)", out.Format())
				}
				_ = (*outputValue)(&out).Set(formatDOT)
			}
			if observed {
				if since < 0 {
					return usagef("--since must not be negative")
				}
				return a.policyGraphObserved(cmd.Context(), src, fsrc, namespace, since, &out)
			}
			for _, name := range []string{"since", "discovery-admin", "control-plane-namespace"} {
				if cmd.Flags().Changed(name) {
					return usagef("--%s is about the observed traffic: give --observed too", name)
				}
			}
			return a.policyGraph(cmd.Context(), src, namespace, &out)
		},
	}
	src = addPolicySourceFlags(cmd)
	cmd.Flags().BoolVar(&dot, "dot", false, "print a Graphviz digraph instead of a table (same as -o dot)")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "", "only pairs whose service or whose source workload is in this namespace")
	cmd.Flags().BoolVar(&observed, "observed", false, "print the calls the mesh observed, overlaid on what policy allows")
	cmd.Flags().DurationVar(&since, "since", 0, "with --observed: only calls last seen within this long (default: everything in discovery's table)")
	fsrc = addFlowSourceFlags(cmd)
	out.AddFlag(cmd, formatDOT)
	return cmd
}

// formatDOT is the Graphviz output of `tether policy graph -o dot`.
const formatDOT = "dot"

// graphEdge is one pair of `tether policy graph -o json|yaml`.
type graphEdge struct {
	// Source is the caller's SPIFFE ID; Destination "namespace/service".
	Source      string   `json:"source"`
	Destination string   `json:"destination"`
	Ports       []uint16 `json:"ports"`
	Rule        string   `json:"rule"`
}

func (a *App) policyGraph(ctx context.Context, src *policySource, namespace string, out *Output) error {
	view, err := src.load(ctx, a.Stderr)
	if err != nil {
		return err
	}
	td := view.snap.TrustDomain()
	pairs := view.snap.AllowedPairs()
	if namespace != "" {
		if !view.namespaces()[namespace] {
			return fmt.Errorf("namespace %s does not exist in %s", namespace, view.where)
		}
		pairs = slices.DeleteFunc(pairs, func(p discovery.Pair) bool {
			return p.Service.Namespace != namespace && workloadNamespace(p.Source, td) != namespace
		})
	}
	var rules []string
	for _, p := range pairs {
		rules = append(rules, p.Rule)
	}
	view.noteAssumedDefault(a.Stderr, rules)
	edges := []graphEdge{}
	for _, p := range pairs {
		edges = append(edges, graphEdge{Source: p.Source.String(), Destination: p.Service.String(), Ports: p.Ports, Rule: p.Rule})
	}
	return out.Print(a.Stdout, edges, func(w io.Writer) error {
		if out.Format() == formatDOT {
			return writeDOT(w, pairs, td)
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SOURCE\tDESTINATION\tPORTS\tRULE")
		for _, p := range pairs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", shortID(p.Source, td), p.Service, joinPorts(p.Ports), p.Rule)
		}
		return tw.Flush()
	})
}

// writeDOT writes pairs as a Graphviz digraph: sources are ellipses named
// "ns/sa" (or their SPIFFE ID), services are boxes named "ns/service", and
// each edge is labelled with its ports.
func writeDOT(w io.Writer, pairs []discovery.Pair, td spiffeid.TrustDomain) error {
	var b strings.Builder
	b.WriteString("digraph mesh {\n\trankdir=LR;\n")
	seen := make(map[string]bool)
	node := func(name, shape string) {
		if !seen[name] {
			seen[name] = true
			fmt.Fprintf(&b, "\t%s [shape=%s];\n", strconv.Quote(name), shape)
		}
	}
	for _, p := range pairs {
		node(p.Service.String(), "box")
	}
	for _, p := range pairs {
		node(shortID(p.Source, td), "ellipse")
	}
	for _, p := range pairs {
		fmt.Fprintf(&b, "\t%s -> %s [label=%s, tooltip=%s];\n", strconv.Quote(shortID(p.Source, td)), strconv.Quote(p.Service.String()),
			strconv.Quote(joinPorts(p.Ports)), strconv.Quote(p.Rule))
	}
	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// destination is a parsed --to: a service and an optional port, or a pod
// address and a port.
type destination struct {
	key  discovery.ServiceKey
	pod  netip.Addr
	port string
}

// parseDestination parses NS/SERVICE[:PORT] or POD-IP:PORT.
func parseDestination(s string) (destination, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if ap.Addr().Zone() != "" {
			return destination{}, usagef("--to %q: a pod address has no zone", s)
		}
		return destination{pod: ap.Addr().Unmap(), port: strconv.Itoa(int(ap.Port()))}, nil
	}
	if host, _, err := net.SplitHostPort(s); err == nil {
		if _, err := netip.ParseAddr(host); err == nil {
			return destination{}, usagef("--to %q: want POD-IP:PORT with a port in 1-65535", s)
		}
	}
	name, port, _ := strings.Cut(s, ":")
	ns, svc, ok := strings.Cut(name, "/")
	if !ok || ns == "" || svc == "" || strings.Contains(svc, "/") {
		return destination{}, usagef("--to %q: want NAMESPACE/SERVICE[:PORT] or POD-IP:PORT", s)
	}
	if strings.HasSuffix(s, ":") {
		return destination{}, usagef("--to %q: empty port", s)
	}
	return destination{key: discovery.ServiceKey{Namespace: ns, Name: svc}, port: port}, nil
}

// sourceArg is a parsed --from: an exact SPIFFE ID, or a namespace and a
// service account whose identity depends on the trust domain.
type sourceArg struct {
	id                        spiffeid.ID
	namespace, serviceAccount string
}

// parseSource parses NS/SA or a SPIFFE ID.
func parseSource(s string) (sourceArg, error) {
	if strings.HasPrefix(s, "spiffe://") {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return sourceArg{}, usagef("--from %q: %v", s, err)
		}
		return sourceArg{id: id}, nil
	}
	ns, sa, ok := strings.Cut(s, "/")
	if !ok || ns == "" || sa == "" || strings.Contains(sa, "/") {
		return sourceArg{}, usagef("--from %q: want NAMESPACE/SERVICEACCOUNT or spiffe://...", s)
	}
	// The segments' syntax does not depend on the trust domain.
	if _, err := wire.WorkloadID(spiffeid.RequireTrustDomainFromString(defaultTrustDomain), ns, sa); err != nil {
		return sourceArg{}, usagef("--from: %v", err)
	}
	return sourceArg{namespace: ns, serviceAccount: sa}, nil
}

// identity returns the source's SPIFFE ID in trust domain td.
func (s sourceArg) identity(td spiffeid.TrustDomain) (spiffeid.ID, error) {
	if !s.id.IsZero() {
		return s.id, nil
	}
	id, err := wire.WorkloadID(td, s.namespace, s.serviceAccount)
	if err != nil {
		return spiffeid.ID{}, usagef("--from: %v", err)
	}
	return id, nil
}

// findPort finds a service port by number or name.
func findPort(svc *discovery.Service, arg string) (discovery.Port, bool) {
	for _, p := range svc.Ports {
		if p.Name == arg || strconv.Itoa(int(p.Port)) == arg {
			return p, true
		}
	}
	return discovery.Port{}, false
}

func portList(svc *discovery.Service) string {
	var s []string
	for _, p := range svc.Ports {
		if p.Name != "" {
			s = append(s, fmt.Sprintf("%d (%s)", p.Port, p.Name))
		} else {
			s = append(s, strconv.Itoa(int(p.Port)))
		}
	}
	return strings.Join(s, ", ")
}

func joinPorts(ports []uint16) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ",")
}

// workloadSegments returns the namespace and service account of a workload
// ID (spiffe://<td>/ns/<ns>/sa/<sa>) of trust domain td.
func workloadSegments(id spiffeid.ID, td spiffeid.TrustDomain) (ns, sa string, ok bool) {
	if id.TrustDomain() != td {
		return "", "", false
	}
	seg := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(seg) == 4 && seg[0] == "ns" && seg[2] == "sa" {
		return seg[1], seg[3], true
	}
	return "", "", false
}

// workloadNamespace is the namespace of a workload ID, or "".
func workloadNamespace(id spiffeid.ID, td spiffeid.TrustDomain) string {
	ns, _, _ := workloadSegments(id, td)
	return ns
}

// shortID is "ns/sa" for a workload ID of trust domain td, else the whole
// SPIFFE ID.
func shortID(id spiffeid.ID, td spiffeid.TrustDomain) string {
	if ns, sa, ok := workloadSegments(id, td); ok {
		return ns + "/" + sa
	}
	return id.String()
}

// verdict names a decision as policy check prints it.
func verdict(allowed bool) string {
	if allowed {
		return "allowed"
	}
	return "denied"
}
