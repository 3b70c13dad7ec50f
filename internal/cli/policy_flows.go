package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/kubernetes"

	"github.com/tether-mesh/tether/internal/meshkube"
	"github.com/tether-mesh/tether/pkg/discovery/flows"
)

// maxFlowsBody bounds one replica's GET /debug/flows.
const maxFlowsBody = 64 << 20

// flowsNeeds is what reading the observed traffic needs of RBAC.
const flowsNeeds = "reading the observed traffic needs list on pods and create on pods/portforward in the control plane's namespace"

// observedHelp says where the observed-traffic commands read it from.
const observedHelp = `The observed traffic is the edge table every tether-discovery replica keeps
of what the sidecars reported (GET /debug/flows on its admin port, which it
answers on its pod's loopback only; docs/policy.md, "Observed traffic"). In
a cluster it is read from every running replica in --control-plane-namespace
through a port-forward (as kubectl port-forward does: list on pods and
create on pods/portforward there); for a standalone mesh give each replica's
admin URL with --discovery-admin (repeatable). The replicas' tables are
merged. A replica that cannot be read is an error: the answer would be
partial. When a table was full and dropped edges, a warning says the answer
may be incomplete.
`

// flowSource holds the flags that say where the observed traffic is read.
type flowSource struct {
	discoveryURLs []string
	controlPlane  string
}

// addFlowSourceFlags registers --discovery-admin and
// --control-plane-namespace on cmd.
func addFlowSourceFlags(cmd *cobra.Command) *flowSource {
	f := &flowSource{}
	cmd.Flags().Var(&adminURLs{&f.discoveryURLs}, "discovery-admin", "read the observed traffic from this tether-discovery admin URL, e.g. http://127.0.0.1:15014, instead of the cluster's replicas (repeatable)")
	cmd.Flags().StringVar(&f.controlPlane, "control-plane-namespace", meshkube.DefaultNamespace, "the control plane's namespace, whose tether-discovery replicas are read")
	return f
}

// observedTable is the merged table and where it came from.
type observedTable struct {
	flows.Table
	// replicas name the replicas read (pods, or admin URLs).
	replicas []string
}

// read reads every replica's table of the edges that involve namespace
// (all if "") last seen within since (all if 0), and merges them. A
// replica that cannot be read is an error naming it; a table that is
// incomplete is a warning on stderr.
func (f *flowSource) read(ctx context.Context, src *policySource, namespace string, since time.Duration, stderr io.Writer) (*observedTable, error) {
	// Discovery filters too (flows.Filter), which keeps the answers
	// small; the commands filter again, by the same rules.
	q := url.Values{}
	if namespace != "" {
		q.Set("namespace", namespace)
	}
	if since > 0 {
		q.Set("since", since.String())
	}
	path := "/debug/flows"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var tables []flows.Table
	var names []string
	var err error
	switch {
	case len(f.discoveryURLs) > 0:
		tables, names, err = f.readURLs(ctx, path, src.timeout)
	case src.mesh != "":
		return nil, usagef("--mesh reads policies from a mesh.yaml; give the observed traffic's source too: --discovery-admin URL of each tether-discovery replica")
	default:
		tables, names, err = f.readKube(ctx, src, path, stderr)
	}
	if err != nil {
		return nil, err
	}
	for i := range tables {
		if err := checkTable(&tables[i]); err != nil {
			return nil, fmt.Errorf("tether-discovery replica %s: GET /debug/flows: %w", names[i], err)
		}
	}
	t := &observedTable{Table: flows.Merge(tables...), replicas: names}
	var lost []string
	for i, tb := range tables {
		if tb.Dropped > 0 {
			lost = append(lost, fmt.Sprintf("%s: its edge table was full and dropped %d edge(s) (bound %d)", names[i], tb.Dropped, tb.MaxEdges))
		}
		if tb.Unsummed > 0 {
			lost = append(lost, fmt.Sprintf("%s: sidecars could not summarise %d connection(s) (their summary between two reports was full)", names[i], tb.Unsummed))
		}
	}
	if len(lost) > 0 {
		fmt.Fprintf(stderr, "tether: warning: the observed traffic is incomplete (%s); calls may be missing from this answer (docs/policy.md, \"Observed traffic\")\n",
			strings.Join(lost, "; "))
	}
	return t, nil
}

// readURLs reads GET /debug/flows of each --discovery-admin URL.
func (f *flowSource) readURLs(ctx context.Context, path string, timeout time.Duration) ([]flows.Table, []string, error) {
	tables := make([]flows.Table, len(f.discoveryURLs))
	for i, u := range f.discoveryURLs {
		if err := httpGet(ctx, u+path, timeout, maxFlowsBody, &tables[i]); err != nil {
			return nil, nil, fmt.Errorf("tether-discovery replica %s: %w; every replica must be read: each holds the reports of the sidecars connected to it", u, err)
		}
	}
	return tables, f.discoveryURLs, nil
}

// readKube reads GET /debug/flows of every running tether-discovery pod
// through a port-forward.
func (f *flowSource) readKube(ctx context.Context, src *policySource, path string, stderr io.Writer) ([]flows.Table, []string, error) {
	cfg, where, err := src.restConfig(&lockedWriter{w: stderr})
	if err != nil {
		return nil, nil, err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", where, err)
	}
	pods, err := meshkube.ControlPods(ctx, client, f.controlPlane, meshkube.DiscoveryApp, src.timeout, flowsNeeds)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", where, err)
	}
	tables := make([]flows.Table, len(pods))
	names := make([]string, len(pods))
	for i := range pods {
		p := &pods[i]
		names[i] = "pod " + p.Namespace + "/" + p.Name
		port, err := strconv.Atoi(meshkube.AdminPort(p))
		if err != nil {
			return nil, nil, fmt.Errorf("tether-discovery replica %s: admin port: %w", names[i], err)
		}
		cctx, cancel := context.WithTimeout(ctx, src.timeout)
		body, err := meshkube.ForwardGet(cctx, cfg, client, p, port, path, maxFlowsBody)
		cancel()
		if err != nil {
			return nil, nil, fmt.Errorf("tether-discovery replica %s: %w; every replica must be read (each holds the reports of the sidecars connected to it): %s", names[i], err, flowsNeeds)
		}
		if err := json.Unmarshal(body, &tables[i]); err != nil {
			return nil, nil, fmt.Errorf("tether-discovery replica %s: GET /debug/flows: not the expected JSON (is it a tether-discovery of this version?): %w", names[i], err)
		}
	}
	return tables, names, nil
}

// checkTable refuses a table whose edges are not well formed
// (flows.Key.Validate: a SPIFFE ID as source, a known decision and side,
// a printable rule...): discovery keeps only such edges, so another is
// not the table of a tether-discovery this CLI can trust to read.
func checkTable(t *flows.Table) error {
	var errs []error
	for i, e := range t.Edges {
		if err := e.Key.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("edge %d: %w", i, err))
		}
		if len(errs) >= 5 {
			errs = append(errs, errors.New("..."))
			break
		}
	}
	return errors.Join(errs...)
}

// call is what was observed of one source reaching one destination port
// with one decision, whichever end saw it: the edges of both ends and of
// every rule, merged.
type call struct {
	Source    spiffeid.ID
	Namespace string
	// Service is the destination Service; empty for a workload port no
	// Service covers, named by Workload.
	Service  string
	Workload string
	Port     uint16
	Decision flows.Decision
	// Connections is the larger of the counts of the two ends (each end
	// counts the connections it saw; both see an allowed one).
	Connections         uint64
	FirstSeen, LastSeen time.Time
	// Rules are the rules that decided, sorted; Sides the ends that saw
	// it.
	Rules []string
	Sides []flows.Side
}

// destination names the call's destination: "ns/service", or "pod of"
// the workload's identity (shortID in td).
func (c *call) destination(td spiffeid.TrustDomain) string {
	if c.Service == "" {
		return "pod of " + idName(c.Workload, td)
	}
	return c.Namespace + "/" + c.Service
}

// sawSide reports whether the end side saw the call.
func (c *call) sawSide(s flows.Side) bool { return slices.Contains(c.Sides, s) }

// calls merges the table's edges last seen at or after since (all if
// since is zero) into calls, sorted by source, destination, port and
// decision. Edges whose source is not a SPIFFE ID are left out (checkTable
// refuses such tables).
func calls(edges []flows.Edge, since time.Time) []call {
	type key struct {
		source, ns, svc, workload string
		port                      uint16
		decision                  flows.Decision
	}
	type acc struct {
		c      call
		bySide map[flows.Side]uint64
	}
	byKey := make(map[key]*acc)
	var order []key
	for _, e := range edges {
		if !since.IsZero() && e.LastSeen.Before(since) {
			continue
		}
		id, err := spiffeid.FromString(e.Source)
		if err != nil {
			continue
		}
		k := key{e.Source, e.Namespace, e.Service, e.Workload, e.Port, e.Decision}
		a, ok := byKey[k]
		if !ok {
			a = &acc{c: call{Source: id, Namespace: e.Namespace, Service: e.Service, Workload: e.Workload, Port: e.Port, Decision: e.Decision,
				FirstSeen: e.FirstSeen, LastSeen: e.LastSeen}, bySide: map[flows.Side]uint64{}}
			byKey[k] = a
			order = append(order, k)
		}
		a.bySide[e.Side] += e.Connections
		if !e.FirstSeen.IsZero() && (a.c.FirstSeen.IsZero() || e.FirstSeen.Before(a.c.FirstSeen)) {
			a.c.FirstSeen = e.FirstSeen
		}
		if e.LastSeen.After(a.c.LastSeen) {
			a.c.LastSeen = e.LastSeen
		}
		if e.Rule != "" && !slices.Contains(a.c.Rules, e.Rule) {
			a.c.Rules = append(a.c.Rules, e.Rule)
		}
	}
	out := make([]call, 0, len(order))
	for _, k := range order {
		a := byKey[k]
		for side, n := range a.bySide {
			a.c.Connections = max(a.c.Connections, n)
			a.c.Sides = append(a.c.Sides, side)
		}
		slices.Sort(a.c.Rules)
		slices.Sort(a.c.Sides)
		out = append(out, a.c)
	}
	slices.SortFunc(out, func(a, b call) int {
		return cmp.Or(strings.Compare(a.Source.String(), b.Source.String()), strings.Compare(a.Namespace, b.Namespace),
			strings.Compare(a.Service, b.Service), strings.Compare(a.Workload, b.Workload), cmp.Compare(a.Port, b.Port),
			strings.Compare(string(a.Decision), string(b.Decision)))
	})
	return out
}

// sinceTime is the start of the --since window: since before the table's
// time (discovery's clock, not this machine's), or zero for no window.
func sinceTime(t *observedTable, since time.Duration) time.Time {
	if since <= 0 {
		return time.Time{}
	}
	return cmp.Or(t.Time, time.Now()).Add(-since)
}

// commentSafe makes s safe inside a one-line comment of the YAML or DOT
// output: the table's strings come from the mesh, and a line break in one
// would let it write lines of its own into what is applied.
func commentSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if isControl(r) || r == '\u2028' || r == '\u2029' {
			return '?'
		}
		return r
	}, s)
}
