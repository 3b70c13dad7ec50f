package cli

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/caadmin"
)

func init() { register("ca rotate", (*App).newCARotateStatusCmd) }

// rotationStatusOutput is `tether ca rotate status -o json|yaml`.
type rotationStatusOutput struct {
	Reporting             int64              `json:"reporting"`
	ReportIntervalSeconds int64              `json:"report_interval_seconds"`
	ReportTTLSeconds      int64              `json:"report_ttl_seconds"`
	Replicas              []string           `json:"replicas"`
	StaleReplicas         []string           `json:"stale_replicas,omitempty"`
	Incomplete            bool               `json:"incomplete,omitempty"`
	Generations           []generationCounts `json:"generations"`
	Activate              gateOutput         `json:"activate"`
	// BundleEndpoint is activate's bundle endpoint gate (absent when the
	// CA serves no bundle endpoint or nothing is prepared).
	BundleEndpoint *endpointGateOutput  `json:"bundle_endpoint_gate,omitempty"`
	Retire         gateOutput           `json:"retire"`
	NotReporting   []notReportingOutput `json:"not_reporting"`
}

type generationCounts struct {
	Generation   uint64 `json:"generation"`
	State        string `json:"state"`
	AnchorSHA256 string `json:"anchor_sha256"`
	Trusting     int64  `json:"trusting"`
	Holding      int64  `json:"holding"`
}

// gateOutput is one step's gate: why it refuses ("" when it passes) and
// the sidecars it waits for.
type gateOutput struct {
	Blocked  string          `json:"blocked,omitempty"`
	Laggards []laggardOutput `json:"laggards"`
}

// endpointGateOutput is the bundle endpoint gate: when the endpoint first
// served the prepared root to a federated domain, and when activate may
// follow.
type endpointGateOutput struct {
	Generation         uint64 `json:"generation"`
	FirstServed        string `json:"first_served,omitempty"`
	ServedSequence     uint64 `json:"served_sequence,omitempty"`
	RefreshHintSeconds int64  `json:"refresh_hint_seconds"`
	MarginSeconds      int64  `json:"margin_seconds"`
	Passes             string `json:"passes,omitempty"`
	Blocked            string `json:"blocked,omitempty"`
}

type laggardOutput struct {
	SpiffeID      string   `json:"spiffe_id"`
	Instance      string   `json:"instance"`
	Version       string   `json:"version"`
	LastReport    string   `json:"last_report"`
	Silent        bool     `json:"silent"`
	Trusts        []uint64 `json:"trusts"`
	Holds         uint64   `json:"holds"`
	ClaimMismatch bool     `json:"claim_mismatch,omitempty"`
	Replica       string   `json:"replica"`
	PeerIP        string   `json:"peer_ip"`
}

type notReportingOutput struct {
	SpiffeID string `json:"spiffe_id"`
	Peer     string `json:"peer"`
	Replica  string `json:"replica"`
	Since    string `json:"since"`
}

// newCARotateStatusCmd is `tether ca rotate status`.
func (a *App) newCARotateStatusCmd() *cobra.Command {
	var (
		socket string
		out    Output
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show how many sidecars trust and hold each generation, and who lags",
		Long: `Shows, per generation, how many sidecars trust its root (their trust bundle
holds it) and how many hold an SVID chaining to it, counted from the reports
every sidecar sends tether-ca, mesh-wide (every replica's). It names the
laggards that make "activate" wait (sidecars that do not trust the prepared
root) and "retire" wait (sidecars that still present an SVID of the
superseded root), with their SPIFFE ID, instance (pod), version and last
report. A sidecar that stopped reporting is "silent": it counts with what it
last reported until its SVID expires. Connections that watch the bundle but
send no report (sidecars older than the reports) are listed apart: the gates
cannot account for them.

Exit status 0 when it could read the counts, whether or not a gate waits.

` + caSocketHelp,
		Example: `  kubectl exec -n tether-system deploy/tether-ca -- tether ca rotate status
  tether ca rotate status -o json | jq '.activate.laggards[].spiffe_id'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := caadmin.Call(cmd.Context(), socket, "rotation status", func(ctx context.Context, api cav1.AdminClient) (*cav1.RotationStatusResponse, error) {
				return api.RotationStatus(ctx, &cav1.RotationStatusRequest{})
			})
			if err != nil {
				return err
			}
			data := rotationStatusFrom(st)
			return out.Print(a.Stdout, data, func(w io.Writer) error {
				printRotationStatus(w, data)
				return nil
			})
		},
	}
	addSocketFlag(cmd, &socket)
	out.AddFlag(cmd)
	return cmd
}

func rotationStatusFrom(st *cav1.RotationStatusResponse) rotationStatusOutput {
	o := rotationStatusOutput{Reporting: st.GetReporting(), ReportIntervalSeconds: st.GetReportIntervalSeconds(), ReportTTLSeconds: st.GetReportTtlSeconds(),
		Replicas: st.GetReplicas(), StaleReplicas: st.GetStaleReplicas(), Incomplete: st.GetIncomplete(),
		Generations: []generationCounts{}, NotReporting: []notReportingOutput{},
		Activate: gateOutput{Blocked: st.GetActivateBlocked(), Laggards: laggards(st.GetActivateLaggards())},
		Retire:   gateOutput{Blocked: st.GetRetireBlocked(), Laggards: laggards(st.GetRetireLaggards())}}
	if g := st.GetBundleEndpointGate(); g != nil {
		o.BundleEndpoint = &endpointGateOutput{Generation: g.GetGeneration(), ServedSequence: g.GetServedSequence(),
			RefreshHintSeconds: g.GetRefreshHintSeconds(), MarginSeconds: g.GetMarginSeconds(), Blocked: g.GetBlocked()}
		if g.GetFirstServedUnix() != 0 {
			o.BundleEndpoint.FirstServed, o.BundleEndpoint.Passes = unixTime(g.GetFirstServedUnix()), unixTime(g.GetPassesUnix())
		}
	}
	for _, g := range st.GetGenerations() {
		o.Generations = append(o.Generations, generationCounts{Generation: g.GetGeneration(), State: g.GetState(), AnchorSHA256: g.GetAnchorFingerprint(),
			Trusting: g.GetTrusting(), Holding: g.GetHolding()})
	}
	for _, n := range st.GetNotReporting() {
		o.NotReporting = append(o.NotReporting, notReportingOutput{SpiffeID: n.GetSpiffeId(), Peer: n.GetPeer(), Replica: n.GetReplica(), Since: unixTime(n.GetSinceUnix())})
	}
	return o
}

func laggards(rs []*cav1.SidecarReport) []laggardOutput {
	out := []laggardOutput{}
	for _, r := range rs {
		out = append(out, laggardOutput{SpiffeID: r.GetSpiffeId(), Instance: r.GetInstance(), Version: r.GetVersion(), LastReport: unixTime(r.GetLastReportUnix()),
			Silent: r.GetSilent(), Trusts: append([]uint64{}, r.GetTrusts()...), Holds: r.GetHolds(), ClaimMismatch: r.GetClaimMismatch(),
			Replica: r.GetReplica(), PeerIP: r.GetPeerIp()})
	}
	return out
}

// printRotationStatus writes the rotation status for people.
func printRotationStatus(w io.Writer, o rotationStatusOutput) {
	replicas := ""
	if r := strings.Join(slices.DeleteFunc(slices.Clone(o.Replicas), func(s string) bool { return s == "" }), ", "); r != "" {
		replicas = "replicas " + r + "; "
	}
	fmt.Fprintf(w, "reporting sidecars: %d (%sa sidecar reports every %ds, is silent after %ds)\n",
		o.Reporting, replicas, o.ReportIntervalSeconds, o.ReportTTLSeconds)
	if len(o.StaleReplicas) > 0 {
		fmt.Fprintf(w, "left out: replicas %s have not published their reports for a TTL (gone?)\n", strings.Join(o.StaleReplicas, ", "))
	}
	if o.Incomplete {
		fmt.Fprintln(w, "INCOMPLETE: a replica refused reports over its bound (--max-reports); the gates refuse until the reports fit")
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GENERATION\tSTATE\tANCHOR SHA-256\tTRUSTING\tHOLDING")
	for _, g := range o.Generations {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\n", g.Generation, g.State, short(g.AnchorSHA256), g.Trusting, g.Holding)
	}
	tw.Flush()
	printGate(w, "activate", o.Activate)
	printEndpointGate(w, o.BundleEndpoint)
	printGate(w, "retire", o.Retire)
	if len(o.NotReporting) > 0 {
		fmt.Fprintf(w, "\nnot reporting (%d; watch the trust bundle without reports, e.g. older sidecars: the gates cannot account for them):\n", len(o.NotReporting))
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SPIFFE ID\tCONNECTION\tREPLICA\tSINCE")
		for _, n := range o.NotReporting {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n.SpiffeID, n.Peer, n.Replica, n.Since)
		}
		tw.Flush()
	}
}

func printGate(w io.Writer, step string, g gateOutput) {
	if g.Blocked == "" {
		return
	}
	fmt.Fprintf(w, "\n%s waits: %s\n", step, strings.TrimPrefix(g.Blocked, "rotation step refused: "))
	if len(g.Laggards) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SPIFFE ID\tINSTANCE\tVERSION\tLAST REPORT\tTRUSTS\tHOLDS")
	for _, l := range g.Laggards {
		last := l.LastReport
		if l.Silent {
			last += " (silent)"
		}
		holds := fmt.Sprint(l.Holds)
		if l.Holds == 0 {
			holds = "-"
		}
		if l.ClaimMismatch {
			holds += " (claims another)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", l.SpiffeID, dash(l.Instance), dash(l.Version), last, joinGens(l.Trusts), holds)
	}
	tw.Flush()
}

// printEndpointGate writes the bundle endpoint gate of activate.
func printEndpointGate(w io.Writer, g *endpointGateOutput) {
	if g == nil {
		return
	}
	fmt.Fprintf(w, "\nbundle endpoint gate (federated trust domains, generation %d): ", g.Generation)
	switch {
	case g.FirstServed == "":
		fmt.Fprintf(w, "no federated trust domain has fetched its root yet; activate may follow %ds after the first fetch (refresh hint %ds + margin %ds)\n",
			g.RefreshHintSeconds+g.MarginSeconds, g.RefreshHintSeconds, g.MarginSeconds)
	case g.Blocked != "":
		fmt.Fprintf(w, "first served at %s (bundle sequence %d); activate waits until %s (refresh hint %ds + margin %ds)\n",
			g.FirstServed, g.ServedSequence, g.Passes, g.RefreshHintSeconds, g.MarginSeconds)
	default:
		fmt.Fprintf(w, "first served at %s (bundle sequence %d); passed at %s\n", g.FirstServed, g.ServedSequence, g.Passes)
	}
}

func short(fp string) string {
	if len(fp) > 16 {
		return fp[:16] + "…"
	}
	return fp
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func joinGens(ids []uint64) string {
	if len(ids) == 0 {
		return "-"
	}
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = fmt.Sprint(id)
	}
	return strings.Join(s, ",")
}
