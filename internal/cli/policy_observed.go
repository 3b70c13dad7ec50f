package cli

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/internal/humanize"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/flows"
)

// policyGraphObservedHelp is the part of `policy graph`'s help about
// --observed.
const policyGraphObservedHelp = `With --observed, prints instead what the mesh saw: every source, destination
and port with the decision the sidecars made (allow, deny, audit-deny), how
many connections and when last seen, overlaid on what the policies in force
allow: a pair policy allows but no call used is shown too, as "unused", a
candidate to remove. A call straight to a pod's port that no Service covers
is shown with the pod's identity. --since keeps the edges last seen within
that window (their counts are those of their whole life in discovery's
table). In DOT, allowed edges are green, denied red and bold, audit-denied
orange and dashed, unused grey and dotted.

` + observedHelp

// Decision of an allowed pair that was never observed.
const decisionUnused = "unused"

// observedEdge is one row of `tether policy graph --observed`.
type observedEdge struct {
	// Source is the caller's SPIFFE ID; Destination "namespace/service",
	// or the called workload's SPIFFE ID for a pod port no Service covers.
	Source      string `json:"source"`
	Destination string `json:"destination"`
	PodPort     bool   `json:"podPort,omitempty"`
	Port        uint16 `json:"port"`
	// Decision is allow, deny or audit-deny as observed, or unused: the
	// policies in force allow it and it was not observed.
	Decision    string    `json:"decision"`
	Connections uint64    `json:"connections"`
	FirstSeen   time.Time `json:"firstSeen,omitzero"`
	LastSeen    time.Time `json:"lastSeen,omitzero"`
	// Rules are the rules the sidecars logged (for unused, the rule that
	// allows it); Sides the ends that saw it.
	Rules []string `json:"rules"`
	Sides []string `json:"sides,omitempty"`
	// PolicyAllows and PolicyRule are what the policies in force decide
	// now for this source, destination and port.
	PolicyAllows bool   `json:"policyAllows"`
	PolicyRule   string `json:"policyRule"`
	// PolicyAuditRule is the rule of an audit-mode policy or default that
	// would deny it, when the enforcing ones allow it (audit-deny).
	PolicyAuditRule string `json:"policyAuditRule,omitempty"`
}

// observedGraph is `tether policy graph --observed -o json|yaml`.
type observedGraph struct {
	// Time is the table's time; Since the start of --since, if given.
	Time     time.Time `json:"time"`
	Since    time.Time `json:"since,omitzero"`
	Replicas []string  `json:"replicas"`
	// Dropped counts the edges discovery dropped: when not 0, the graph
	// is incomplete.
	Dropped uint64         `json:"dropped"`
	Edges   []observedEdge `json:"edges"`
}

// policyGraphObserved is `tether policy graph --observed`.
func (a *App) policyGraphObserved(ctx context.Context, src *policySource, fsrc *flowSource, namespace string, since time.Duration, out *Output) error {
	if err := src.check(); err != nil {
		return err
	}
	table, err := fsrc.read(ctx, src, namespace, since, a.Stderr)
	if err != nil {
		return err
	}
	view, err := src.load(ctx, a.Stderr)
	if err != nil {
		return err
	}
	if namespace != "" && !view.namespaces()[namespace] {
		return fmt.Errorf("namespace %s does not exist in %s", namespace, view.where)
	}
	g := graphObserved(table, view.snap, namespace, sinceTime(table, since))
	td := view.snap.TrustDomain()
	return out.Print(a.Stdout, g, func(w io.Writer) error {
		if out.Format() == formatDOT {
			return writeObservedDOT(w, g, td)
		}
		return writeObservedText(w, g, td)
	})
}

// graphObserved overlays the calls of table last seen at or after since
// on what snap's policies allow. With namespace, only the edges whose
// destination or whose source workload is in it.
func graphObserved(table *observedTable, snap *discovery.Snapshot, namespace string, since time.Time) *observedGraph {
	td := snap.TrustDomain()
	g := &observedGraph{Time: table.Time, Since: since, Replicas: table.replicas, Dropped: table.Dropped, Edges: []observedEdge{}}
	in := func(dstNS string, src spiffeid.ID) bool {
		return namespace == "" || dstNS == namespace || workloadNamespace(src, td) == namespace
	}
	type used struct {
		src  string
		svc  discovery.ServiceKey
		port uint16
	}
	passed := make(map[used]bool)
	var observed []spiffeid.ID
	for _, c := range calls(table.Edges, since) {
		observed = append(observed, c.Source)
		if c.Decision != flows.Deny && c.Service != "" {
			passed[used{c.Source.String(), discovery.ServiceKey{Namespace: c.Namespace, Name: c.Service}, c.Port}] = true
		}
		if !in(c.Namespace, c.Source) {
			continue
		}
		e := observedEdge{Source: c.Source.String(), Destination: c.Namespace + "/" + c.Service, Port: c.Port,
			Decision: string(c.Decision), Connections: c.Connections, FirstSeen: c.FirstSeen, LastSeen: c.LastSeen, Rules: c.Rules}
		for _, s := range c.Sides {
			e.Sides = append(e.Sides, string(s))
		}
		if c.Service == "" {
			e.Destination, e.PodPort = c.Workload, true
			d := snap.Engine().DecideDefault(c.Source, c.Namespace)
			e.PolicyAllows, e.PolicyRule, e.PolicyAuditRule = d.Allowed, d.Rule, d.AuditRule
		} else {
			d := snap.Engine().Decide(c.Source, c.Namespace, c.Service, c.Port)
			e.PolicyAllows, e.PolicyRule, e.PolicyAuditRule = d.Allowed, d.Rule, d.AuditRule
		}
		g.Edges = append(g.Edges, e)
	}
	for _, p := range allowedPairs(snap, observed) {
		if !in(p.Service.Namespace, p.Source) {
			continue
		}
		for _, port := range p.Ports {
			if passed[used{p.Source.String(), p.Service, port}] {
				continue
			}
			g.Edges = append(g.Edges, observedEdge{Source: p.Source.String(), Destination: p.Service.String(), Port: port,
				Decision: decisionUnused, Rules: []string{p.Rule}, PolicyAllows: true, PolicyRule: p.Rule})
		}
	}
	slices.SortStableFunc(g.Edges, func(a, b observedEdge) int {
		if c := strings.Compare(a.Source, b.Source); c != 0 {
			return c
		}
		if c := strings.Compare(a.Destination, b.Destination); c != 0 {
			return c
		}
		return int(a.Port) - int(b.Port)
	})
	return g
}

// idName is shortID of a SPIFFE ID string (as is if it does not parse).
func idName(s string, td spiffeid.TrustDomain) string {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return s
	}
	return shortID(id, td)
}

// edgeNote is the rule column of a row: the rules that decided, and what
// the policies in force decide now when it differs from what was seen.
func edgeNote(e *observedEdge) string {
	if e.Decision == decisionUnused {
		return e.PolicyRule + " (allowed, never observed: a candidate to remove)"
	}
	note := strings.Join(e.Rules, "; ")
	passed := e.Decision != string(flows.Deny)
	switch {
	case passed && !e.PolicyAllows:
		note += " (now denied: " + e.PolicyRule + ")"
	case !passed && e.PolicyAllows:
		note += " (now allowed: " + e.PolicyRule + ")"
	case e.Decision == string(flows.Allow) && e.PolicyAuditRule != "":
		note += " (now audit-denied: " + e.PolicyAuditRule + ")"
	}
	return note
}

// writeObservedText writes the graph as a table.
func writeObservedText(w io.Writer, g *observedGraph, td spiffeid.TrustDomain) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tDESTINATION\tPORT\tDECISION\tCONNECTIONS\tLAST SEEN\tRULE")
	for i := range g.Edges {
		e := &g.Edges[i]
		dst := e.Destination
		if e.PodPort {
			dst = idName(dst, td) + " (pod)"
		}
		count, last := "-", "-"
		if e.Decision != decisionUnused {
			count = strconv.FormatUint(e.Connections, 10)
			last = humanize.Duration(g.Time.Sub(e.LastSeen)) + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", commentSafe(idName(e.Source, td)), commentSafe(dst), e.Port, e.Decision, count, last, commentSafe(edgeNote(e)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(g.Edges) == 0 {
		_, err := fmt.Fprintln(w, "(no observed call and no allowed pair)")
		return err
	}
	return nil
}

// dotStyle is the look of each decision in DOT.
var dotStyle = map[string]string{
	string(flows.Allow):     `color="darkgreen", style=solid`,
	string(flows.Deny):      `color="red", style=bold`,
	string(flows.AuditDeny): `color="orange", style=dashed`,
	decisionUnused:          `color="grey", style=dotted`,
}

// writeObservedDOT writes the graph as a Graphviz digraph: sources are
// ellipses, services boxes, pods (a port no Service covers) octagons; each
// edge is labelled with its port and count and styled by decision.
func writeObservedDOT(w io.Writer, g *observedGraph, td spiffeid.TrustDomain) error {
	var b strings.Builder
	b.WriteString("digraph observed {\n\trankdir=LR;\n")
	seen := make(map[string]bool)
	node := func(name, shape string) {
		if !seen[name] {
			seen[name] = true
			fmt.Fprintf(&b, "\t%s [shape=%s];\n", strconv.Quote(name), shape)
		}
	}
	dst := func(e *observedEdge) string {
		if e.PodPort {
			return idName(e.Destination, td) + " (pod)"
		}
		return e.Destination
	}
	for i := range g.Edges {
		if e := &g.Edges[i]; e.PodPort {
			node(dst(e), "octagon")
		} else {
			node(dst(e), "box")
		}
	}
	for i := range g.Edges {
		node(idName(g.Edges[i].Source, td), "ellipse")
	}
	for i := range g.Edges {
		e := &g.Edges[i]
		label := fmt.Sprintf("%d %s", e.Port, e.Decision)
		if e.Decision != decisionUnused {
			label += fmt.Sprintf(" ×%d", e.Connections)
		}
		fmt.Fprintf(&b, "\t%s -> %s [label=%s, tooltip=%s, %s];\n", strconv.Quote(idName(e.Source, td)), strconv.Quote(dst(e)),
			strconv.Quote(label), strconv.Quote(edgeNote(e)), dotStyle[e.Decision])
	}
	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// allowedPairs is snap.AllowedPairs (the pairs of the identities the mesh
// knows: its endpoints' and those policies name) and, decided by the same
// engine, the pairs of the observed callers it does not know (a workload
// without a Service that a namespace source lets in, say).
func allowedPairs(snap *discovery.Snapshot, observed []spiffeid.ID) []discovery.Pair {
	pairs := snap.AllowedPairs()
	known := make(map[spiffeid.ID]bool)
	for _, id := range snap.Sources() {
		known[id] = true
	}
	for _, src := range observed {
		if known[src] {
			continue
		}
		known[src] = true
		for _, svc := range snap.Services() {
			byRule := make(map[string]int)
			for _, p := range svc.Ports {
				d := snap.Engine().Decide(src, svc.Key.Namespace, svc.Key.Name, p.Port)
				if !d.Allowed {
					continue
				}
				if i, ok := byRule[d.Rule]; ok {
					pairs[i].Ports = append(pairs[i].Ports, p.Port)
					continue
				}
				byRule[d.Rule] = len(pairs)
				pairs = append(pairs, discovery.Pair{Source: src, Service: svc.Key, Ports: []uint16{p.Port}, Rule: d.Rule})
			}
		}
	}
	return pairs
}
