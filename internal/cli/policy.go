package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
)

const policyCheckHelp = `Usage: tether policy check --mesh FILE --from NS/SA --to NS/SERVICE[:PORT] [flags]

Answers whether the workload running as service account SA in namespace NS
(or an exact SPIFFE ID, --from spiffe://...) may reach SERVICE, and which
rule decided, against the services and policies of a mesh.yaml. PORT is a
service port number or name; without it every port of the service is checked,
one line per port.

Exit status: 0 allowed (on every port checked), 1 denied (on any port) or
the check could not be made (see stderr), 2 usage error.

Flags:
`

const policyGraphHelp = `Usage: tether policy graph --mesh FILE [--dot] [flags]

Prints who may reach what: for every identity known to mesh.yaml (the
endpoints' identities and the service accounts and SPIFFE IDs policies name),
the services and ports it is allowed to reach and the rule that allows it.
As a text table, or as a Graphviz digraph with --dot.

Flags:
`

// errDenied makes `policy check` exit 1 after printing its answer.
var errDenied = errors.New("denied")

// policySource holds the flags shared by the policy commands.
type policySource struct {
	mesh, kubeconfig, trustDomain, defaultPolicy *string
}

func (a *App) policyFlags(name, help string) (*flag.FlagSet, *policySource) {
	fs := a.flags(name)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), help)
		fs.PrintDefaults()
	}
	return fs, &policySource{
		mesh:          fs.String("mesh", "", "mesh.yaml to read services and policies from (required)"),
		kubeconfig:    fs.String("kubeconfig", "", "read from Kubernetes instead (not supported yet)"),
		trustDomain:   fs.String("trust-domain", "", "trust domain (default: the file's trustDomain, else cluster.local)"),
		defaultPolicy: fs.String("default-policy", "", "mesh default: allow-mesh, same-namespace or deny (default: the file's defaultPolicy, else allow-mesh)"),
	}
}

// load reads the mesh file into a registry snapshot.
func (p *policySource) load() (*discovery.Snapshot, error) {
	switch {
	case *p.kubeconfig != "":
		return nil, fmt.Errorf("%w: --kubeconfig: reading services and policies from Kubernetes is not supported yet; use --mesh FILE", errUsage)
	case *p.mesh == "":
		return nil, fmt.Errorf("%w: --mesh is required", errUsage)
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	def := policy.AllowMesh
	var err error
	if *p.trustDomain != "" {
		if td, err = spiffeid.TrustDomainFromString(*p.trustDomain); err != nil {
			return nil, fmt.Errorf("%w: --trust-domain: %v", errUsage, err)
		}
	}
	if *p.defaultPolicy != "" {
		if def, err = policy.ParseDefault(*p.defaultPolicy); err != nil {
			return nil, fmt.Errorf("%w: --default-policy: %v", errUsage, err)
		}
	}
	mf, err := discovery.LoadMeshFile(*p.mesh)
	if err != nil {
		return nil, err
	}
	if *p.trustDomain == "" && !mf.TrustDomain.IsZero() {
		td = mf.TrustDomain
	}
	if *p.defaultPolicy == "" && mf.DefaultPolicy != 0 {
		def = mf.DefaultPolicy
	}
	reg, err := discovery.NewRegistry(td, def)
	if err != nil {
		return nil, err
	}
	if err := reg.Update(mf.State); err != nil {
		return nil, fmt.Errorf("%s: %w", *p.mesh, err)
	}
	return reg.Snapshot(), nil
}

func (a *App) policyCheck(_ context.Context, args []string) error {
	fs, src := a.policyFlags("policy check", policyCheckHelp)
	from := fs.String("from", "", "source: NS/SA (namespace/service account) or a SPIFFE ID (required)")
	to := fs.String("to", "", "destination: NS/SERVICE[:PORT] (required)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *from == "" || *to == "" {
		return fmt.Errorf("%w: --from and --to are required", errUsage)
	}
	dst, portArg, err := parseDestination(*to)
	if err != nil {
		return err
	}
	snap, err := src.load()
	if err != nil {
		return err
	}
	srcID, err := parseSource(*from, snap.TrustDomain())
	if err != nil {
		return err
	}

	var ports []uint16
	svc, known := snap.Service(dst)
	switch {
	case known && portArg == "":
		for _, p := range svc.Ports {
			ports = append(ports, p.Port)
		}
		if len(ports) == 0 {
			return fmt.Errorf("service %s has no ports in %s", dst, *src.mesh)
		}
	case known:
		p, ok := findPort(svc, portArg)
		if !ok {
			return fmt.Errorf("service %s has no port %q in %s (ports: %s)", dst, portArg, *src.mesh, portList(svc))
		}
		ports = []uint16{p}
	case portArg == "":
		return fmt.Errorf("service %s is not in %s; give a port (--to %s:PORT) to check the policies anyway", dst, *src.mesh, dst)
	default:
		n, err := strconv.ParseUint(portArg, 10, 16)
		if err != nil || n == 0 {
			return fmt.Errorf("service %s is not in %s, so its port must be a number 1-65535, not %q", dst, *src.mesh, portArg)
		}
		fmt.Fprintf(a.Stderr, "tether: note: service %s is not in %s; deciding from the policies and defaults alone\n", dst, *src.mesh)
		ports = []uint16{uint16(n)}
	}

	denied := 0
	for _, p := range ports {
		d := snap.Engine().Decide(srcID, dst.Namespace, dst.Name, p)
		verdict := "allowed"
		if !d.Allowed {
			verdict = "denied"
			denied++
		}
		fmt.Fprintf(a.Stdout, "%s %s -> %s:%d: %s\n", verdict, shortID(srcID, snap.TrustDomain()), dst, p, d.Rule)
	}
	if denied > 0 {
		return fmt.Errorf("%w: %s may not reach %s on %d of %d port(s)", errDenied, shortID(srcID, snap.TrustDomain()), dst, denied, len(ports))
	}
	return nil
}

func (a *App) policyGraph(_ context.Context, args []string) error {
	fs, src := a.policyFlags("policy graph", policyGraphHelp)
	dot := fs.Bool("dot", false, "print a Graphviz digraph instead of a table")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	snap, err := src.load()
	if err != nil {
		return err
	}
	pairs := snap.AllowedPairs()
	if *dot {
		return writeDOT(a.Stdout, pairs, snap.TrustDomain())
	}
	td := snap.TrustDomain()
	tw := tabwriter.NewWriter(a.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tDESTINATION\tPORTS\tRULE")
	for _, p := range pairs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", shortID(p.Source, td), p.Service, joinPorts(p.Ports), p.Rule)
	}
	return tw.Flush()
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

// parseDestination parses NS/SERVICE[:PORT].
func parseDestination(s string) (discovery.ServiceKey, string, error) {
	name, port, _ := strings.Cut(s, ":")
	ns, svc, ok := strings.Cut(name, "/")
	if !ok || ns == "" || svc == "" || strings.Contains(svc, "/") {
		return discovery.ServiceKey{}, "", fmt.Errorf("%w: --to %q: want NAMESPACE/SERVICE[:PORT]", errUsage, s)
	}
	if strings.HasSuffix(s, ":") {
		return discovery.ServiceKey{}, "", fmt.Errorf("%w: --to %q: empty port", errUsage, s)
	}
	return discovery.ServiceKey{Namespace: ns, Name: svc}, port, nil
}

// parseSource parses NS/SA or a SPIFFE ID.
func parseSource(s string, td spiffeid.TrustDomain) (spiffeid.ID, error) {
	if strings.HasPrefix(s, "spiffe://") {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return spiffeid.ID{}, fmt.Errorf("%w: --from %q: %v", errUsage, s, err)
		}
		return id, nil
	}
	ns, sa, ok := strings.Cut(s, "/")
	if !ok || ns == "" || sa == "" || strings.Contains(sa, "/") {
		return spiffeid.ID{}, fmt.Errorf("%w: --from %q: want NAMESPACE/SERVICEACCOUNT or spiffe://...", errUsage, s)
	}
	id, err := discovery.WorkloadID(td, ns, sa)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: --from: %v", errUsage, err)
	}
	return id, nil
}

// findPort finds a service port by number or name.
func findPort(svc *discovery.Service, arg string) (uint16, bool) {
	for _, p := range svc.Ports {
		if p.Name == arg || strconv.Itoa(int(p.Port)) == arg {
			return p.Port, true
		}
	}
	return 0, false
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

// shortID is "ns/sa" for a workload ID of trust domain td, else the whole
// SPIFFE ID.
func shortID(id spiffeid.ID, td spiffeid.TrustDomain) string {
	if id.TrustDomain() != td {
		return id.String()
	}
	seg := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(seg) == 4 && seg[0] == "ns" && seg[2] == "sa" {
		return seg[1] + "/" + seg[3]
	}
	return id.String()
}
