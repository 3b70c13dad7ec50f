package cli

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/flows"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

func init() { register("policy", (*App).newPolicySuggestCmd) }

const policySuggestHelp = `Prints AccessPolicies, as multi-document YAML ready for kubectl apply -f -,
that allow exactly the calls the mesh observed into the Services of
--namespace and nothing else: one policy per destination Service (or, when
its callers used different ports of it, one per set of ports, so that no
caller gets a port it did not use), its sources the callers' service
accounts (an exact SPIFFE ID for an identity that is not a Kubernetes
workload's) and its ports those observed. A policy is named
tether-suggested-<service> and labelled tether.dev/suggested=true, so that
running the command again and applying updates the same objects.

Only calls that passed become sources: those allowed, and those an audit
policy would deny (decision audit-deny). A call that was denied while
enforced is not suggested, nor a caller outside the trust domain, nor a call
straight to a pod's port no Service covers (an AccessPolicy names a Service:
such calls are decided by the namespace's default); the output says so in
comments. A Service of the namespace that no call reached gets no policy (an
AccessPolicy needs a source): the output names it.

The policies are enforcing (spec.mode: Enforce) unless --mode audit: then
they decide nothing, and the calls they would deny pass and are logged as
audit-deny, which lets you watch them before enforcing (docs/policy.md).

With --since, only edges last seen within that window count (their counts
are those of their whole life in discovery's table). With --diff, prints
instead, per Service, what the policies in force allow and the suggestions
do not ("-": never observed, candidates to remove) and what the suggestions
allow and the policies in force do not ("+"); applying the suggestions adds
policies, it does not delete those in force.

` + observedHelp + `
` + policySourceHelp + `
Exit status: 0 suggestions printed, 1 nothing observed to suggest from (or
the traffic or the mesh could not be read), 2 usage error.`

// suggestedLabel marks the policies tether policy suggest makes.
const suggestedLabel = "tether.dev/suggested"

// suggestedPrefix begins their names.
const suggestedPrefix = "tether-suggested-"

// newPolicySuggestCmd is `tether policy suggest`.
func (a *App) newPolicySuggestCmd() *cobra.Command {
	var (
		namespace string
		since     time.Duration
		diff      bool
		mode      string
		src       *policySource
		fsrc      *flowSource
	)
	cmd := &cobra.Command{
		Use:   "suggest",
		Short: "Suggest AccessPolicies that allow exactly the calls the mesh observed into a namespace",
		Long:  policySuggestHelp,
		Example: `  # Suggest, review, apply
  tether policy suggest -n shop --since 24h > shop-policies.yaml
  kubectl apply -f shop-policies.yaml

  # What would change against the policies in force
  tether policy suggest -n shop --diff

  # Audit them first: nothing is refused, what they would deny is logged
  tether policy suggest -n shop --mode audit | kubectl apply -f -

  # A standalone mesh
  tether policy suggest -n default --mesh mesh.yaml --discovery-admin http://127.0.0.1:15014`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if namespace == "" {
				return usagef("--namespace is required: the namespace whose Services the policies protect")
			}
			if since < 0 {
				return usagef("--since must not be negative")
			}
			m, err := policy.ParseDefaultMode(mode)
			if err != nil {
				return usagef("--mode: %v", err)
			}
			return a.policySuggest(cmd.Context(), src, fsrc, suggestOptions{namespace: namespace, since: since, diff: diff, mode: m})
		},
	}
	src = addPolicySourceFlags(cmd)
	fsrc = addFlowSourceFlags(cmd)
	f := cmd.Flags()
	f.StringVarP(&namespace, "namespace", "n", "", "the namespace whose Services the suggested policies protect")
	f.DurationVar(&since, "since", 0, "only calls last seen within this long (default: everything in discovery's table)")
	f.BoolVar(&diff, "diff", false, "print what the suggestions change against the policies in force instead of the policies")
	f.StringVar(&mode, "mode", "enforce", "spec.mode of the suggested policies: enforce, or audit (they decide nothing; what they would deny is logged as audit-deny)")
	_ = cmd.MarkFlagRequired("namespace")
	return cmd
}

// suggestOptions are tether policy suggest's flags beyond the sources.
type suggestOptions struct {
	namespace string
	since     time.Duration
	diff      bool
	mode      policy.Mode
}

func (a *App) policySuggest(ctx context.Context, src *policySource, fsrc *flowSource, o suggestOptions) error {
	if err := src.check(); err != nil {
		return err
	}
	table, err := fsrc.read(ctx, src, o.namespace, o.since, a.Stderr)
	if err != nil {
		return err
	}
	view, err := src.load(ctx, a.Stderr)
	if err != nil {
		return err
	}
	if view.kube && !view.namespaces()[o.namespace] {
		return fmt.Errorf("namespace %s does not exist in %s", o.namespace, view.where)
	}
	res, err := suggest(table, view.snap, o.namespace, sinceTime(table, o.since), o.mode)
	if err != nil {
		return err
	}
	if o.diff {
		_, err := io.WriteString(a.Stdout, suggestDiff(res, view.snap))
		return err
	}
	out, err := res.yaml()
	if err != nil {
		return err
	}
	_, err = io.WriteString(a.Stdout, out)
	return err
}

// suggestedPolicy is one suggested AccessPolicy and the calls it allows.
type suggestedPolicy struct {
	Policy policy.AccessPolicy
	// Calls say, one line each, the observed calls it allows.
	Calls []string
}

// suggestion is what tether policy suggest found.
type suggestion struct {
	Namespace string
	// Since is the start of the window (zero: everything); Until the
	// table's time; Replicas the replicas read.
	Since, Until time.Time
	Replicas     []string
	Policies     []suggestedPolicy
	// Skipped says, one line each, the observed calls into the namespace
	// that are not suggested, and why.
	Skipped []string
	// Unreached names the Services of the namespace no suggested call
	// reaches, with what decides for them now.
	Unreached []string
}

// errNothingObserved is suggest's error when no call into the namespace
// can be suggested.
var errNothingObserved = errors.New("nothing to suggest")

// target is one destination port of a suggested source.
type target struct {
	svc  string
	port uint16
}

// suggest makes the policies that allow exactly the calls of table into
// the Services of namespace last seen at or after since. Every policy
// passes the CRD's validation (Validate); an error says there is nothing
// to suggest, and why.
func suggest(table *observedTable, snap *discovery.Snapshot, namespace string, since time.Time, mode policy.Mode) (*suggestion, error) {
	td := snap.TrustDomain()
	res := &suggestion{Namespace: namespace, Since: since, Until: table.Time, Replicas: table.replicas}
	passed, seen := res.passedCalls(calls(table.Edges, since), td)
	byService, err := res.byService(snap, passed)
	if err != nil {
		return nil, err
	}
	if len(byService) == 0 {
		return nil, nothingObserved(table, namespace, since, seen, res.Skipped)
	}
	for _, svc := range sortedKeys(byService) {
		ps, err := policiesFor(namespace, svc, byService[svc], td, mode)
		if err != nil {
			return nil, err
		}
		res.Policies = append(res.Policies, ps...)
	}
	for _, s := range snap.Services() {
		if s.Key.Namespace == namespace && byService[s.Key.Name] == nil {
			res.Unreached = append(res.Unreached, fmt.Sprintf("%s (decided now by %s)", s.Key, decidedBy(snap, s.Key)))
		}
	}
	return res, nil
}

// passedCalls sorts the calls into res.Namespace: those that passed, by
// source and destination port, are returned; the others go to
// res.Skipped with the reason. seen counts the calls into the namespace.
func (res *suggestion) passedCalls(all []call, td spiffeid.TrustDomain) (passed map[string]map[target][]*call, seen int) {
	passed = make(map[string]map[target][]*call)
	refusedAt := make(map[string]map[target]bool) // the destination's end denied
	passedAt := make(map[string]map[target]bool)  // the destination's end let it in
	for i := range all {
		c := &all[i]
		if c.Namespace != res.Namespace {
			continue
		}
		seen++
		src, t := c.Source.String(), target{c.Service, c.Port}
		if why := unsuggestable(c, td); why != "" {
			res.Skipped = append(res.Skipped, why)
			if c.Decision == flows.Deny && c.sawSide(flows.Destination) {
				mark(refusedAt, src, t)
			}
			continue
		}
		if c.sawSide(flows.Destination) {
			mark(passedAt, src, t)
		}
		if passed[src] == nil {
			passed[src] = make(map[target][]*call)
		}
		passed[src][t] = append(passed[src][t], c)
	}
	// A call the caller's end let out but the destination's end refused,
	// and never admitted, was denied.
	for src, ts := range passed {
		for t := range ts {
			if refusedAt[src][t] && !passedAt[src][t] {
				delete(ts, t)
			}
		}
	}
	return passed, seen
}

// unsuggestable says why c cannot become a source, or "" if it can.
func unsuggestable(c *call, td spiffeid.TrustDomain) string {
	what := fmt.Sprintf("%s -> %s:%d", shortID(c.Source, td), c.destination(td), c.Port)
	stats := fmt.Sprintf("%s, %d connection(s), last seen %s", c.Decision, c.Connections, c.LastSeen.UTC().Format(time.RFC3339))
	switch {
	case c.Service == "":
		return what + ": a call straight to a pod's port that no Service covers (" + stats +
			"): an AccessPolicy names a Service, so it cannot allow this; the namespace's default decides it"
	case c.Source.TrustDomain() != td:
		return what + ": the caller is outside trust domain " + td.Name() + " (" + stats + "): never suggested"
	case c.Source.Path() == "":
		return what + ": the caller is a trust domain, not a workload (" + stats + "): never suggested"
	case c.Decision == flows.Deny:
		return what + ": denied while enforced (" + stats + ", rule " + strings.Join(c.Rules, "; ") +
			"): not suggested; if the call is wanted, add its source by hand"
	}
	return ""
}

func mark(m map[string]map[target]bool, src string, t target) {
	if m[src] == nil {
		m[src] = make(map[target]bool)
	}
	m[src][t] = true
}

// byService groups the passed calls by destination Service, then by
// source, keeping only the Services and ports the mesh still has.
func (res *suggestion) byService(snap *discovery.Snapshot, passed map[string]map[target][]*call) (map[string]map[string][]*call, error) {
	out := make(map[string]map[string][]*call)
	for src, ts := range passed {
		for t, cs := range ts {
			svc, ok := snap.Service(discovery.ServiceKey{Namespace: res.Namespace, Name: t.svc})
			what := fmt.Sprintf("%s -> %s/%s:%d", shortID(cs[0].Source, snap.TrustDomain()), res.Namespace, t.svc, t.port)
			switch {
			case !ok:
				res.Skipped = append(res.Skipped, what+": the Service is no longer in the mesh")
				continue
			case !slices.ContainsFunc(svc.Ports, func(p discovery.Port) bool { return p.Port == t.port }):
				res.Skipped = append(res.Skipped, what+": the Service no longer has this port (ports: "+portList(svc)+")")
				continue
			}
			if out[t.svc] == nil {
				out[t.svc] = make(map[string][]*call)
			}
			out[t.svc][src] = append(out[t.svc][src], cs...)
		}
	}
	slices.Sort(res.Skipped)
	return out, nil
}

// nothingObserved is the error when no call can be suggested.
func nothingObserved(table *observedTable, namespace string, since time.Time, seen int, skipped []string) error {
	window := "in discovery's table"
	if !since.IsZero() {
		window = "since " + since.UTC().Format(time.RFC3339)
	}
	msg := fmt.Sprintf("%s: no call into namespace %s that can be allowed was observed %s (%d edge(s) read from %s)",
		errNothingObserved, namespace, window, len(table.Edges), strings.Join(table.replicas, ", "))
	if seen == 0 {
		msg += "; is the namespace labelled for the mesh and has traffic run since the sidecars started reporting? a longer --since may help"
	} else {
		msg += "; the calls seen:\n  " + strings.Join(skipped, "\n  ")
	}
	return errors.New(msg)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// policiesFor makes the policies of one Service: its sources grouped by
// the set of ports they used, so that no source gets a port it did not
// use, each group split further if it exceeds the CRD's bounds.
func policiesFor(namespace, svc string, bySource map[string][]*call, td spiffeid.TrustDomain, mode policy.Mode) ([]suggestedPolicy, error) {
	type group struct {
		ports   []int32
		sources []string
	}
	groups := make(map[string]*group)
	for _, src := range sortedKeys(bySource) {
		var ports []int32
		for _, c := range bySource[src] {
			ports = append(ports, int32(c.Port))
		}
		slices.Sort(ports)
		ports = slices.Compact(ports)
		k := fmt.Sprint(ports)
		if groups[k] == nil {
			groups[k] = &group{ports: ports}
		}
		groups[k].sources = append(groups[k].sources, src)
	}
	keys := sortedKeys(groups)
	slices.SortFunc(keys, func(a, b string) int { return slices.Compare(groups[a].ports, groups[b].ports) })
	var out []suggestedPolicy
	for _, k := range keys {
		g := groups[k]
		for pi, ports := range chunks(g.ports, policy.MaxPorts) {
			for si, sources := range chunks(g.sources, policy.MaxSources) {
				name := suggestedPrefix + svc
				if len(keys) > 1 {
					name += "-" + joinInts(g.ports, "-")
				}
				if len(g.ports) > policy.MaxPorts || len(g.sources) > policy.MaxSources {
					name += fmt.Sprintf("-%d-%d", pi+1, si+1)
				}
				sp, err := makePolicy(namespace, svc, dnsName(name), ports, sources, bySource, td, mode)
				if err != nil {
					return nil, err
				}
				out = append(out, sp)
			}
		}
	}
	return out, nil
}

// makePolicy builds and validates one suggested policy.
func makePolicy(namespace, svc, name string, ports []int32, sources []string, bySource map[string][]*call, td spiffeid.TrustDomain, mode policy.Mode) (suggestedPolicy, error) {
	p := policy.AccessPolicy{
		TypeMeta: metav1.TypeMeta{APIVersion: policy.SchemeGroupVersion.String(), Kind: policy.Kind},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace,
			Labels: map[string]string{suggestedLabel: "true"}},
		Spec: policy.AccessPolicySpec{Destination: policy.Destination{Service: svc, Ports: ports}, Mode: mode},
	}
	sp := suggestedPolicy{}
	for _, src := range sources {
		id := bySource[src][0].Source
		p.Spec.Sources = append(p.Spec.Sources, sourceFor(id, td))
		cs := slices.Clone(bySource[src])
		slices.SortFunc(cs, func(a, b *call) int {
			return cmp.Or(cmp.Compare(a.Port, b.Port), strings.Compare(string(a.Decision), string(b.Decision)))
		})
		for _, c := range cs {
			if !slices.Contains(ports, int32(c.Port)) {
				continue
			}
			sp.Calls = append(sp.Calls, fmt.Sprintf("%s -> %s:%d: %s, %d connection(s), last seen %s", shortID(id, td), svc, c.Port,
				c.Decision, c.Connections, c.LastSeen.UTC().Format(time.RFC3339)))
		}
	}
	if err := p.Validate(); err != nil {
		return suggestedPolicy{}, fmt.Errorf("the suggested policy for %s/%s fails the CRD's validation (a bug of tether policy suggest; please report it): %w", namespace, svc, err)
	}
	sp.Policy = p
	return sp, nil
}

// saNameRE is a service account name (DNS-1123 subdomain), which the
// CRD's serviceAccount source requires.
var (
	saNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	nsNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

// sourceFor is the policy source that matches exactly id: its service
// account for a Kubernetes workload ID of td, else the exact SPIFFE ID.
func sourceFor(id spiffeid.ID, td spiffeid.TrustDomain) policy.Source {
	if ns, sa, ok := wire.ParseWorkloadID(id); ok && id.TrustDomain() == td &&
		len(sa) <= 253 && saNameRE.MatchString(sa) && len(ns) <= 63 && nsNameRE.MatchString(ns) {
		return policy.Source{ServiceAccount: &policy.ServiceAccountSource{Name: sa, Namespace: ns}}
	}
	return policy.Source{SpiffeID: id.String()}
}

// dnsName keeps a name within 63 characters, a DNS label as Service names
// are: a longer one is cut and ends with a hash of the whole, so that
// names stay distinct and the same on every run.
func dnsName(name string) string {
	if len(name) <= 63 {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return strings.TrimRight(name[:63-9], "-") + "-" + hex.EncodeToString(sum[:])[:8]
}

func chunks[T any](s []T, n int) [][]T {
	var out [][]T
	for len(s) > n {
		out = append(out, s[:n])
		s = s[n:]
	}
	return append(out, s)
}

func joinInts(ports []int32, sep string) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, sep)
}

// yaml prints the suggestion as multi-document YAML: a header comment
// with what is not suggested, then each policy with the calls it allows.
func (res *suggestion) yaml() (string, error) {
	var b strings.Builder
	comment := func(format string, args ...any) {
		b.WriteString("# " + commentSafe(fmt.Sprintf(format, args...)) + "\n")
	}
	window := "everything in discovery's table"
	if !res.Since.IsZero() {
		window = "since " + res.Since.UTC().Format(time.RFC3339)
	}
	comment("tether policy suggest: AccessPolicies that allow exactly the calls observed into namespace %s", res.Namespace)
	comment("(%s, until %s; replicas read: %s).", window, res.Until.UTC().Format(time.RFC3339), strings.Join(res.Replicas, ", "))
	comment("Review, then: kubectl apply -f FILE. They add to the policies in force (tether policy suggest --diff).")
	if len(res.Skipped) > 0 {
		comment("Observed but not suggested:")
		for _, s := range res.Skipped {
			comment("  %s", s)
		}
	}
	if len(res.Unreached) > 0 {
		comment("No call observed into these Services, so no policy (an AccessPolicy needs a source); once every other Service")
		comment("of the namespace has its policy, the namespace default (annotation %s=deny) closes them:", policy.DefaultPolicyAnnotation)
		for _, s := range res.Unreached {
			comment("  %s", s)
		}
	}
	for _, sp := range res.Policies {
		b.WriteString("---\n")
		comment("%s/%s allows %d observed call(s):", res.Namespace, sp.Policy.Spec.Destination.Service, len(sp.Calls))
		for _, c := range sp.Calls {
			comment("  %s", c)
		}
		out, err := yaml.Marshal(policyDoc(&sp.Policy))
		if err != nil {
			return "", fmt.Errorf("encoding policy %s: %w", sp.Policy.Name, err)
		}
		b.Write(out)
	}
	return b.String(), nil
}

// policyDoc is the object as kubectl apply wants it, without the empty
// fields (creationTimestamp: null) of metav1.ObjectMeta.
func policyDoc(p *policy.AccessPolicy) any {
	type meta struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels,omitempty"`
	}
	return struct {
		APIVersion string                  `json:"apiVersion"`
		Kind       string                  `json:"kind"`
		Metadata   meta                    `json:"metadata"`
		Spec       policy.AccessPolicySpec `json:"spec"`
	}{p.APIVersion, p.Kind, meta{p.Name, p.Namespace, p.Labels}, p.Spec}
}

// decidedBy says what decides now who reaches the Service key: its
// AccessPolicies, or the default of its namespace (the rule's text).
func decidedBy(snap *discovery.Snapshot, key discovery.ServiceKey) string {
	e := snap.Engine()
	if e.Restricted(key.Namespace, key.Name) {
		return "its AccessPolicies"
	}
	// The rule of a default does not depend on the source.
	id, err := wire.WorkloadID(snap.TrustDomain(), key.Namespace, "default")
	if err != nil {
		return "the namespace's default"
	}
	return e.DecideDefault(id, key.Namespace).Rule
}

// grant is one source allowed one port ("all ports" when the policy names
// none) of a Service, as --diff prints it.
type grant struct {
	line   string // "serviceAccount story/web port 8080"
	policy string // the policy that grants it
}

// grants lists what p allows, each with p's name.
func grants(p *policy.AccessPolicy) []grant {
	ns := cmp.Or(p.Namespace, "default")
	var ports []string
	for _, port := range p.Spec.Destination.Ports {
		ports = append(ports, "port "+strconv.Itoa(int(port)))
	}
	if len(ports) == 0 {
		ports = []string{"all ports"}
	}
	var out []grant
	for _, s := range p.Spec.Sources {
		var src string
		switch {
		case s.ServiceAccount != nil:
			src = "serviceAccount " + cmp.Or(s.ServiceAccount.Namespace, ns) + "/" + s.ServiceAccount.Name
		case s.Namespace != "":
			src = "namespace " + s.Namespace
		default:
			src = "spiffeID " + s.SpiffeID
		}
		for _, port := range ports {
			out = append(out, grant{line: src + " " + port, policy: "AccessPolicy " + ns + "/" + p.Name + modeNote(p.Spec.Mode)})
		}
	}
	return out
}

// suggestDiff says, per Service of the namespace, what the policies in
// force allow that the suggestions do not ("-") and what the suggestions
// allow that the policies in force do not ("+"), unified-diff-like.
func suggestDiff(res *suggestion, snap *discovery.Snapshot) string {
	inForce := make(map[string][]grant)
	for _, p := range snap.Policies() {
		if cmp.Or(p.Namespace, "default") == res.Namespace {
			inForce[p.Spec.Destination.Service] = append(inForce[p.Spec.Destination.Service], grants(&p)...)
		}
	}
	suggested := make(map[string][]grant)
	for _, sp := range res.Policies {
		suggested[sp.Policy.Spec.Destination.Service] = append(suggested[sp.Policy.Spec.Destination.Service], grants(&sp.Policy)...)
	}
	services := sortedKeys(inForce)
	for _, s := range sortedKeys(suggested) {
		if inForce[s] == nil {
			services = append(services, s)
		}
	}
	slices.Sort(services)
	var b strings.Builder
	fmt.Fprintf(&b, "--- in force: the AccessPolicies of namespace %s\n", res.Namespace)
	window := "everything in discovery's table"
	if !res.Since.IsZero() {
		window = "since " + res.Since.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(&b, "+++ suggested: the calls observed (%s, until %s)\n", window, res.Until.UTC().Format(time.RFC3339))
	added, removed := 0, 0
	for _, svc := range services {
		key := discovery.ServiceKey{Namespace: res.Namespace, Name: svc}
		now := inForce[svc]
		header := key.String()
		switch {
		case len(now) == 0:
			header += ": no AccessPolicy; decided now by " + decidedBy(snap, key)
		case len(suggested[svc]) == 0:
			header += ": no call observed; nothing suggested"
		}
		fmt.Fprintf(&b, "@@ %s @@\n", commentSafe(header))
		want := make(map[string]bool)
		for _, g := range suggested[svc] {
			want[g.line] = true
		}
		have := make(map[string]bool)
		var lines []string
		for _, g := range now {
			if have[g.line] {
				continue
			}
			have[g.line] = true
			if want[g.line] {
				lines = append(lines, "  "+g.line)
			} else {
				lines = append(lines, "- "+g.line+"  ("+g.policy+")")
				removed++
			}
		}
		for _, g := range suggested[svc] {
			if !have[g.line] {
				have[g.line] = true
				lines = append(lines, "+ "+g.line+"  ("+g.policy+")")
				added++
			}
		}
		slices.SortStableFunc(lines, func(a, b string) int { return strings.Compare(a[2:], b[2:]) })
		for _, l := range lines {
			b.WriteString(commentSafe(l) + "\n")
		}
	}
	fmt.Fprintf(&b, "%d added, %d removed, in %d Service(s)", added, removed, len(services))
	if len(res.Skipped) > 0 {
		fmt.Fprintf(&b, "; %d observed call(s) not suggested (tether policy suggest without --diff says why)", len(res.Skipped))
	}
	b.WriteString("\n")
	return b.String()
}

// modeNote marks an audit policy in --diff: it allows nothing yet.
func modeNote(m policy.Mode) string {
	if m.Audited() {
		return ", mode Audit: enforces nothing yet"
	}
	return ""
}
