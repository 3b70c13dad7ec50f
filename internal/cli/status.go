package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/tether-mesh/tether/internal/humanize"

	"github.com/spf13/cobra"
)

const statusHelp = `Summarises a running mesh: the CA's generations and the expiry of their
roots and intermediates, the sidecars connected to discovery with the expiry
of their SVIDs (those expiring within --soon are flagged), and the recent
denials each sidecar keeps (GET /debug/denials on its admin port, at the
address it reported to discovery).

Standalone (no Kubernetes): --ca-socket is tether-ca's operator socket (the
Status RPC, as "tether ca status"), --discovery-admin is tether-discovery's
admin URL (GET /debug/sidecars; repeat it for several replicas). Give either
or both.

Cluster: with --kubeconfig or --context (or, when neither standalone flag is
given, $KUBECONFIG, ~/.kube/config or the cluster the command runs in), every
part is reached through the API server's pod proxy: tether-ca's /metrics and
tether-discovery's /debug/sidecars on the admin port of their pods in
--namespace, and each sidecar's /debug/denials on its pod. This needs list on
pods in --namespace and in the sidecars' namespaces, and get on pods/proxy.

A part that cannot be reached is reported as such and the others are still
shown. Exit status: 0 when every part answered, 1 when any did not (see
"Problems"), 2 usage error.`

// Defaults of tether status.
const (
	defaultStatusTimeout  = 5 * time.Second
	defaultSidecarTimeout = 2 * time.Second
	defaultSoon           = 10 * time.Minute
	defaultShownDenials   = 20
	// sidecarFanout bounds the sidecars asked at once.
	sidecarFanout = 16
)

// statusOptions are tether status's flags.
type statusOptions struct {
	caSocket       string
	discoveryURLs  []string
	kubeconfig     string
	kubeContext    string
	namespace      string
	soon           time.Duration
	timeout        time.Duration
	sidecarTimeout time.Duration
	denials        int
	out            Output
}

// statusTargets reaches the parts of a mesh: directly (standalone) or
// through the API server's pod proxy (cluster). Every method bounds its
// own wait and reports failures in what it returns, so that one part that
// does not answer never hides the others. Methods may be called
// concurrently.
type statusTargets interface {
	// describe says how the parts are reached, for the header.
	describe() (mode, where string)
	// ca returns the CA's state, or nil when no CA is to be checked.
	ca(ctx context.Context) *caStatus
	// discovery asks every discovery replica for its sidecars.
	discovery(ctx context.Context) []discoveryStatus
	// denials asks one sidecar for its recent denials; it may set
	// sc.Pod.
	denials(ctx context.Context, sc *sidecarStatus) (*denialsBody, error)
}

// statusReport is what tether status prints (--json as is).
type statusReport struct {
	Mode  string    `json:"mode"` // standalone or kubernetes
	Where string    `json:"where,omitempty"`
	Time  time.Time `json:"time"`
	// SoonSeconds is --soon: SVIDs expiring within it are flagged.
	SoonSeconds int64             `json:"soon_seconds"`
	CA          *caStatus         `json:"ca,omitempty"`
	Discovery   []discoveryStatus `json:"discovery"`
	Sidecars    []sidecarStatus   `json:"sidecars"`
	// ExpiringSoon counts the sidecars whose SVID expires within --soon
	// (or has expired).
	ExpiringSoon int `json:"expiring_soon"`
	// Denials are the most recent denials of all sidecars, newest first,
	// at most --denials of them.
	Denials []denialStatus `json:"recent_denials"`
	// Problems names every part that could not be checked.
	Problems []string `json:"problems"`
}

type caStatus struct {
	// Source says where the state was read.
	Source         string             `json:"source"`
	Error          string             `json:"error,omitempty"`
	TrustDomain    string             `json:"trust_domain,omitempty"`
	BundleSequence uint64             `json:"bundle_sequence"`
	NextStep       string             `json:"next_step,omitempty"`
	NextStepAt     time.Time          `json:"next_step_at,omitzero"`
	Generations    []generationStatus `json:"generations"`
	// Note qualifies what the source can tell (a cluster's /metrics).
	Note string `json:"note,omitempty"`

	// NextStepOverdue: NextStepAt is past and the step not taken;
	// NextStepManual: the CA will not take it itself (--auto-rotate=false).
	NextStepOverdue bool `json:"next_step_overdue,omitempty"`
	NextStepManual  bool `json:"next_step_manual,omitempty"`
	// IntermediateRenewalOverdue: the signing intermediate is past its
	// renewal time and not renewed (the upstream fails).
	IntermediateRenewalOverdue bool `json:"intermediate_renewal_overdue,omitempty"`
}

type generationStatus struct {
	ID                  uint64    `json:"id"`
	State               string    `json:"state"`
	RootSHA256          string    `json:"root_sha256,omitempty"`
	RootExpires         time.Time `json:"root_expires,omitzero"`
	IntermediateExpires time.Time `json:"intermediate_expires,omitzero"`
	RetireAfter         time.Time `json:"retire_after,omitzero"`
	Upstream            string    `json:"upstream,omitempty"`
}

type discoveryStatus struct {
	Source   string `json:"source"`
	Error    string `json:"error,omitempty"`
	Sidecars int    `json:"sidecars"`
	nodes    []nodeBody
}

type sidecarStatus struct {
	SpiffeID string `json:"spiffe_id"`
	// Discovery is the replica the sidecar is connected to.
	Discovery      string    `json:"discovery"`
	Peer           string    `json:"peer"`
	AdminAddr      string    `json:"admin_addr,omitempty"`
	Pod            string    `json:"pod,omitempty"`
	Version        string    `json:"version,omitempty"`
	ConnectedSince time.Time `json:"connected_since"`
	// SVIDExpiry is what the sidecar last reported, else the expiry of
	// the SVID it connected with.
	SVIDExpiry    time.Time `json:"svid_expiry,omitzero"`
	ExpiresInSecs int64     `json:"expires_in_seconds"`
	ExpiringSoon  bool      `json:"expiring_soon"`
	MetadataError string    `json:"metadata_error,omitempty"`
	// DenialsTotal is how many denials the sidecar has seen since it
	// started; DenialsError why they could not be read.
	DenialsTotal uint64 `json:"denials_total"`
	DenialsError string `json:"denials_error,omitempty"`
}

type denialStatus struct {
	Time time.Time `json:"time"`
	// Sidecar is the SPIFFE ID of the sidecar that refused.
	Sidecar     string `json:"sidecar"`
	Direction   string `json:"direction"`
	Source      string `json:"source"`
	Destination string `json:"destination"`
	Rule        string `json:"rule"`
	Reason      string `json:"reason,omitempty"`
}

// errStatusProblems makes tether status exit 1 after printing.
var errStatusProblems = errors.New("part of the mesh could not be checked")

// newStatusCmd is `tether status`.
func (a *App) newStatusCmd() *cobra.Command {
	o := statusOptions{}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Summarise a running mesh: CA, discovery, sidecars, SVID expiry, recent denials",
		Long:  statusHelp,
		Example: `  # The cluster of the current kubectl context
  tether status

  # Another context, as JSON
  tether status --context prod -o json

  # A standalone mesh
  tether status --ca-socket /var/lib/tether-ca/admin.sock --discovery-admin 127.0.0.1:15014`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.status(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.caSocket, "ca-socket", os.Getenv("TETHER_CA_ADMIN_SOCKET"), "standalone: tether-ca's operator socket (env TETHER_CA_ADMIN_SOCKET)")
	f.Var(&adminURLs{&o.discoveryURLs}, "discovery-admin", "standalone: tether-discovery's admin URL, e.g. http://127.0.0.1:15014 (repeatable)")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "cluster: kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster)")
	f.StringVar(&o.kubeContext, "context", "", "cluster: kubeconfig context (default: the kubeconfig's current context)")
	f.StringVarP(&o.namespace, "namespace", "n", "tether-system", "cluster: the control plane's namespace")
	f.DurationVar(&o.soon, "soon", defaultSoon, "flag SVIDs that expire within this long")
	f.DurationVar(&o.timeout, "timeout", defaultStatusTimeout, "how long to wait for the CA, each discovery replica and the API server")
	f.DurationVar(&o.sidecarTimeout, "sidecar-timeout", defaultSidecarTimeout, "how long to wait for each sidecar")
	f.IntVar(&o.denials, "denials", defaultShownDenials, "how many recent denials to show")
	_ = cmd.MarkFlagFilename("kubeconfig")
	o.out.AddFlag(cmd)
	o.out.AddJSONAlias(cmd)
	return cmd
}

// adminURLs is the repeatable --discovery-admin.
type adminURLs struct{ urls *[]string }

func (v *adminURLs) String() string { return strings.Join(*v.urls, ",") }
func (v *adminURLs) Type() string   { return "url" }

func (v *adminURLs) Set(s string) error {
	u, err := adminURL(s)
	if err != nil {
		return err
	}
	*v.urls = append(*v.urls, u)
	return nil
}

func (a *App) status(ctx context.Context, o statusOptions) error {
	switch {
	case o.soon < 0:
		return usagef("--soon must not be negative")
	case o.timeout <= 0 || o.sidecarTimeout <= 0:
		return usagef("--timeout and --sidecar-timeout must be positive")
	case o.denials < 0:
		return usagef("--denials must not be negative")
	}
	targets, err := o.targets(a.Stderr)
	if err != nil {
		return err
	}
	rep := gatherStatus(ctx, targets, o, time.Now())
	err = o.out.Print(a.Stdout, rep, func(w io.Writer) error {
		printStatus(w, rep)
		return nil
	})
	if err != nil {
		return err
	}
	if n := len(rep.Problems); n > 0 {
		return fmt.Errorf("%w: %d problem(s), listed under \"problems\"", errStatusProblems, n)
	}
	return nil
}

// targets picks standalone or cluster mode from the flags.
func (o *statusOptions) targets(stderr io.Writer) (statusTargets, error) {
	standalone := o.caSocket != "" || len(o.discoveryURLs) > 0
	kube := o.kubeconfig != "" || o.kubeContext != ""
	switch {
	case standalone && kube:
		return nil, usagef("--ca-socket and --discovery-admin check a standalone mesh; --kubeconfig and --context a cluster: give one or the other")
	case standalone:
		return &directTargets{opts: *o}, nil
	}
	t, err := newKubeTargets(*o, stderr)
	if err != nil && !kube && isUsage(err) {
		return nil, usagef("nothing to check: give --ca-socket and/or --discovery-admin URL for a standalone mesh, or --kubeconfig for a cluster")
	}
	return t, err
}

// adminURL normalizes an admin address given as a URL or host:port.
func adminURL(v string) (string, error) {
	if !strings.Contains(v, "://") {
		v = "http://" + v
	}
	u, err := url.Parse(v)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return "", fmt.Errorf("want an http URL such as http://127.0.0.1:15014, got %q", v)
	}
	return strings.TrimSuffix(u.String(), "/"), nil
}

// gatherStatus asks every part at once and assembles the report.
func gatherStatus(ctx context.Context, t statusTargets, o statusOptions, now time.Time) *statusReport {
	rep := &statusReport{Time: now.UTC(), SoonSeconds: int64(o.soon.Seconds()), Discovery: []discoveryStatus{},
		Sidecars: []sidecarStatus{}, Denials: []denialStatus{}, Problems: []string{}}
	rep.Mode, rep.Where = t.describe()
	var wg sync.WaitGroup
	wg.Go(func() { rep.CA = t.ca(ctx) })
	rep.Discovery = t.discovery(ctx)
	wg.Wait()
	if rep.CA != nil && rep.CA.Error != "" {
		rep.Problems = append(rep.Problems, "CA ("+rep.CA.Source+"): "+rep.CA.Error)
	}
	for _, d := range rep.Discovery {
		if d.Error != "" {
			rep.Problems = append(rep.Problems, "discovery ("+d.Source+"): "+d.Error)
		}
		for _, n := range d.nodes {
			rep.Sidecars = append(rep.Sidecars, sidecarOf(n, d.Source, now, o.soon))
		}
	}
	rep.Sidecars = dedupeSidecars(rep.Sidecars)
	for _, sc := range rep.Sidecars {
		if sc.ExpiringSoon {
			rep.ExpiringSoon++
		}
	}

	// Each sidecar's denials, a few at a time.
	denials := make([][]denialStatus, len(rep.Sidecars))
	sem := make(chan struct{}, sidecarFanout)
	for i := range rep.Sidecars {
		sc := &rep.Sidecars[i]
		if sc.AdminAddr == "" {
			sc.DenialsError = "no admin address reported"
			if sc.MetadataError != "" {
				sc.DenialsError += " (discovery refused its metadata: " + sc.MetadataError + ")"
			}
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			denials[i] = sidecarDenials(ctx, t, sc, o.sidecarTimeout)
		})
	}
	wg.Wait()
	for i, sc := range rep.Sidecars {
		if sc.DenialsError != "" {
			rep.Problems = append(rep.Problems, fmt.Sprintf("sidecar %s (%s): %s", sc.SpiffeID, cmp.Or(sc.Pod, sc.AdminAddr, sc.Peer), sc.DenialsError))
		}
		rep.Denials = append(rep.Denials, denials[i]...)
	}
	slices.SortStableFunc(rep.Denials, func(a, b denialStatus) int { return b.Time.Compare(a.Time) })
	rep.Denials = rep.Denials[:min(len(rep.Denials), o.denials)]
	return rep
}

// sidecarOf is a discovery node as a sidecar of the report.
func sidecarOf(n nodeBody, discovery string, now time.Time, soon time.Duration) sidecarStatus {
	sc := sidecarStatus{
		SpiffeID: n.ID, Discovery: discovery, Peer: n.Peer, AdminAddr: n.Metadata.AdminAddr, Version: n.Metadata.Version,
		ConnectedSince: n.ConnectedSince, SVIDExpiry: n.Metadata.SVIDExpiry, MetadataError: n.MetadataError,
	}
	if sc.SVIDExpiry.IsZero() {
		sc.SVIDExpiry = n.ConnectionSVIDExpiry
	}
	if !sc.SVIDExpiry.IsZero() {
		left := sc.SVIDExpiry.Sub(now)
		sc.ExpiresInSecs = int64(left.Seconds())
		sc.ExpiringSoon = left <= soon
	}
	return sc
}

// dedupeSidecars keeps one entry per sidecar (SPIFFE ID and host): a
// sidecar that is reconnecting has two streams for a moment.
func dedupeSidecars(in []sidecarStatus) []sidecarStatus {
	slices.SortFunc(in, func(a, b sidecarStatus) int {
		return cmp.Or(strings.Compare(a.SpiffeID, b.SpiffeID), strings.Compare(a.AdminAddr, b.AdminAddr),
			strings.Compare(hostOf(a.Peer), hostOf(b.Peer)), b.ConnectedSince.Compare(a.ConnectedSince))
	})
	return slices.CompactFunc(in, func(a, b sidecarStatus) bool {
		return a.SpiffeID == b.SpiffeID && a.AdminAddr == b.AdminAddr && hostOf(a.Peer) == hostOf(b.Peer)
	})
}

func hostOf(addr string) string {
	if i := strings.LastIndexByte(addr, ':'); i >= 0 {
		return addr[:i]
	}
	return addr
}

// sidecarDenials reads one sidecar's denials and checks that the sidecar
// that answered is the one discovery knows at that address.
func sidecarDenials(ctx context.Context, t statusTargets, sc *sidecarStatus, timeout time.Duration) []denialStatus {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	body, err := t.denials(ctx, sc)
	switch {
	case err != nil:
		sc.DenialsError = err.Error()
		return nil
	case body.SpiffeID != "" && body.SpiffeID != sc.SpiffeID:
		sc.DenialsError = fmt.Sprintf("the sidecar at %s is %s, not %s; its denials are left out", sc.AdminAddr, clean(body.SpiffeID), sc.SpiffeID)
		return nil
	}
	sc.DenialsTotal = body.Total
	out := make([]denialStatus, 0, len(body.Denials))
	for _, d := range body.Denials {
		out = append(out, denialStatus{Time: d.Time.UTC(), Sidecar: sc.SpiffeID, Direction: d.Direction, Source: d.Source,
			Destination: d.Destination, Rule: d.Rule, Reason: d.Reason})
	}
	return out
}

// printStatus writes the report for people.
func printStatus(w io.Writer, r *statusReport) {
	fmt.Fprintf(w, "Tether status (%s", r.Mode)
	if r.Where != "" {
		fmt.Fprintf(w, ", %s", r.Where)
	}
	fmt.Fprintf(w, ") at %s\n\n", r.Time.Format(time.RFC3339))

	switch c := r.CA; {
	case c == nil:
		fmt.Fprintln(w, "CA: not checked (give --ca-socket)")
	case c.Error != "":
		fmt.Fprintf(w, "CA (%s): UNAVAILABLE: %s\n", c.Source, c.Error)
	default:
		fmt.Fprintf(w, "CA (%s)\n", c.Source)
		if c.TrustDomain != "" {
			fmt.Fprintf(w, "  trust domain %s, ", c.TrustDomain)
		} else {
			fmt.Fprint(w, "  ")
		}
		fmt.Fprintf(w, "bundle sequence %d", c.BundleSequence)
		if c.NextStep != "" {
			if c.NextStepOverdue {
				fmt.Fprintf(w, ", next step %s OVERDUE since %s", c.NextStep, when(c.NextStepAt, r.Time))
			} else {
				fmt.Fprintf(w, ", next step %s at %s", c.NextStep, when(c.NextStepAt, r.Time))
			}
			if c.NextStepManual {
				fmt.Fprintf(w, " (manual: run `tether ca rotate %s`)", c.NextStep)
			}
		}
		if c.IntermediateRenewalOverdue && c.NextStep != "renew-intermediate" {
			fmt.Fprint(w, ", intermediate renewal OVERDUE")
		}
		fmt.Fprintln(w)
		if c.Note != "" {
			fmt.Fprintf(w, "  (%s)\n", c.Note)
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  GENERATION\tSTATE\tROOT SHA-256\tROOT EXPIRES\tINTERMEDIATE EXPIRES\tRETIRE AFTER")
		for _, g := range c.Generations {
			fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%s\n", g.ID, g.State, cmp.Or(shorten(g.RootSHA256, 16), "-"),
				when(g.RootExpires, r.Time), when(g.IntermediateExpires, r.Time), when(g.RetireAfter, r.Time))
		}
		tw.Flush()
	}
	fmt.Fprintln(w)

	if len(r.Discovery) == 0 {
		fmt.Fprintln(w, "Discovery: not checked (give --discovery-admin)")
	}
	for _, d := range r.Discovery {
		if d.Error != "" {
			fmt.Fprintf(w, "Discovery (%s): UNAVAILABLE: %s\n", d.Source, d.Error)
		} else {
			fmt.Fprintf(w, "Discovery (%s): %d sidecar stream(s)\n", d.Source, d.Sidecars)
		}
	}
	fmt.Fprintln(w)

	soon := (time.Duration(r.SoonSeconds) * time.Second).String()
	if strings.HasSuffix(soon, "m0s") {
		soon = strings.TrimSuffix(soon, "0s")
	}
	if strings.HasSuffix(soon, "h0m") {
		soon = strings.TrimSuffix(soon, "0m")
	}
	fmt.Fprintf(w, "Sidecars: %d, %d with an SVID expiring within %s\n", len(r.Sidecars), r.ExpiringSoon, soon)
	if len(r.Sidecars) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  SPIFFE ID\tWHERE\tVERSION\tCONNECTED\tSVID EXPIRES\t\tDENIALS")
		for _, sc := range r.Sidecars {
			flag, den := "", fmt.Sprint(sc.DenialsTotal)
			switch {
			case !sc.SVIDExpiry.IsZero() && !sc.SVIDExpiry.After(r.Time):
				flag = "EXPIRED"
			case sc.ExpiringSoon:
				flag = "SOON"
			}
			if sc.DenialsError != "" {
				den = "unreachable"
				if sc.AdminAddr == "" {
					den = "unknown"
				}
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\n", sc.SpiffeID, cmp.Or(sc.Pod, sc.AdminAddr, sc.Peer), cmp.Or(clean(sc.Version), "-"),
				ago(sc.ConnectedSince, r.Time), when(sc.SVIDExpiry, r.Time), flag, den)
		}
		tw.Flush()
	}
	fmt.Fprintln(w)

	fmt.Fprintf(w, "Recent denials: %d shown, newest first\n", len(r.Denials))
	if len(r.Denials) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  TIME\tSIDECAR\tDIRECTION\tSOURCE\tDESTINATION\tRULE")
		for _, d := range r.Denials {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", d.Time.Format(time.RFC3339), idPath(d.Sidecar), clean(d.Direction),
				idPath(clean(d.Source)), clean(d.Destination), clean(d.Rule))
		}
		tw.Flush()
	}

	if len(r.Problems) > 0 {
		fmt.Fprintf(w, "\nProblems: %d\n", len(r.Problems))
		for _, p := range r.Problems {
			fmt.Fprintf(w, "  %s\n", clean(p))
		}
	}
}

// when is an absolute time with how far it is from now.
func when(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := t.Sub(now)
	rel := "in " + humanize.Duration(d)
	if d < 0 {
		rel = humanize.Duration(-d) + " ago"
	}
	return t.UTC().Format(time.RFC3339) + " (" + rel + ")"
}

// ago is how long before now t was.
func ago(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return humanize.Duration(now.Sub(t)) + " ago"
}

// idPath drops spiffe:// and the trust domain from an ID, for tables.
func idPath(id string) string {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return id
	}
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		return rest[i+1:]
	}
	return rest
}

func shorten(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// clean makes text that came from a sidecar safe for a terminal: control
// characters (escape sequences) are replaced.
func clean(s string) string {
	if !strings.ContainsFunc(s, isControl) {
		return s
	}
	return strings.Map(func(r rune) rune {
		if isControl(r) {
			return '?'
		}
		return r
	}, s)
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) }
