package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/caadmin"
)

// defaultSocket is where the CA's operator API listens in a cluster.
const defaultSocket = "/run/tether-ca/admin.sock"

// addSocketFlag registers --socket, the CA's operator socket, on cmd.
func addSocketFlag(cmd *cobra.Command, p *string) {
	def := os.Getenv("TETHER_CA_ADMIN_SOCKET")
	if def == "" {
		def = defaultSocket
	}
	cmd.Flags().StringVar(p, "socket", def, "the CA's operator socket (env TETHER_CA_ADMIN_SOCKET)")
}

// caSocketHelp says where the CA commands find the CA, for their Long.
const caSocketHelp = `It talks to tether-ca over its operator socket (--socket, default
$TETHER_CA_ADMIN_SOCKET, else ` + defaultSocket + `): run it in the
tether-ca pod (kubectl exec -n tether-system deploy/tether-ca --), or on the
machine of a standalone CA.`

// newCACmd is the `tether ca` group.
func (a *App) newCACmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Operate tether-ca: join tokens, revocations, status, root rotations, offline roots",
		Long: `Commands for the operator of tether-ca, Tether's certificate authority.

` + caSocketHelp,
		Example: `  kubectl exec -n tether-system deploy/tether-ca -- tether ca status
  tether ca token create --spiffe-id spiffe://cluster.local/vm/build --ttl 10m
  tether ca rotate prepare`,
	}
	cmd.AddCommand(a.newCATokenCmd(), a.newCARevokeCmd(), a.newCAUnrevokeCmd(), a.newCAStatusCmd(),
		a.newCARotateCmd(), a.newCAOfflineRootCmd())
	return cmd
}

// newCATokenCmd is the `tether ca token` group.
func (a *App) newCATokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create and list join tokens, the credentials of workloads outside Kubernetes",
		Long: `A join token lets a workload outside Kubernetes (a VM, a CI job) attest to
tether-ca once as a SPIFFE ID, with "tether svid fetch" or a sidecar's
--join-token-file. Revoke one with "tether ca revoke --join-token-hash".

` + caSocketHelp,
		Example: `  tether ca token create --spiffe-id spiffe://cluster.local/vm/build --ttl 10m --out token
  tether ca token list`,
	}
	cmd.AddCommand(a.newCATokenCreateCmd(), a.newCATokenListCmd())
	return cmd
}

// caTokenCreateOptions are the flags of `tether ca token create`.
type caTokenCreateOptions struct {
	socket, id, outPath     string
	ttl                     time.Duration
	reusable, allowReserved bool
}

// newCATokenCreateCmd is `tether ca token create`.
func (a *App) newCATokenCreateCmd() *cobra.Command {
	var o caTokenCreateOptions
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a join token for a SPIFFE ID",
		Long: `Creates a join token that proves --spiffe-id to tether-ca, single use unless
--reusable, valid for --ttl. The token is printed on standard output, or
written to a new file (mode 0600) with --out; what it is for goes to stderr.
IDs under ns/tether-system belong to the mesh's own components and need
--allow-reserved.

` + caSocketHelp,
		Example: `  tether ca token create --spiffe-id spiffe://cluster.local/vm/build --ttl 10m
  tether ca token create --spiffe-id spiffe://cluster.local/vm/db --reusable --out db.token`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.caTokenCreate(cmd.Context(), o)
		},
	}
	addSocketFlag(cmd, &o.socket)
	f := cmd.Flags()
	f.StringVar(&o.id, "spiffe-id", "", "SPIFFE ID the token proves")
	f.DurationVar(&o.ttl, "ttl", time.Hour, "how long the token is valid")
	f.BoolVar(&o.reusable, "reusable", false, "allow the token to be used more than once")
	f.StringVar(&o.outPath, "out", "", "write the token to this new file (mode 0600) instead of standard output")
	f.BoolVar(&o.allowReserved, "allow-reserved", false, "allow an ID under ns/tether-system (a mesh component run outside Kubernetes)")
	_ = cmd.MarkFlagRequired("spiffe-id")
	return cmd
}

func (a *App) caTokenCreate(ctx context.Context, o caTokenCreateOptions) error {
	api, done, err := caadmin.Dial(o.socket)
	if err != nil {
		return err
	}
	defer done()
	// The file is made first, so that a token is never created and lost.
	var out *os.File
	if o.outPath != "" {
		if out, err = os.OpenFile(o.outPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
			return fmt.Errorf("--out: %w (the token file must not exist yet)", err)
		}
		defer out.Close()
	}
	resp, err := api.CreateJoinToken(ctx, &cav1.CreateJoinTokenRequest{SpiffeId: o.id, TtlSeconds: int64(o.ttl.Seconds()), Reusable: o.reusable, AllowReserved: o.allowReserved})
	if err != nil {
		if out != nil {
			os.Remove(o.outPath)
		}
		return caadmin.RPCError("create join token", err)
	}
	if o.allowReserved {
		fmt.Fprintf(a.Stderr, "warning: %s is an identity of the mesh's own components; whoever holds this token can act as that component\n", o.id)
	}
	where := ""
	if out != nil {
		if _, err := fmt.Fprintln(out, resp.GetToken()); err != nil {
			return fmt.Errorf("write the token to %s: %w", o.outPath, err)
		}
		if err := out.Close(); err != nil {
			return fmt.Errorf("write the token to %s: %w", o.outPath, err)
		}
		where = ", written to " + o.outPath
	} else {
		fmt.Fprintln(a.Stdout, resp.GetToken())
	}
	fmt.Fprintf(a.Stderr, "join token for %s, valid until %s%s%s\n", o.id,
		time.Unix(resp.GetExpiresAtUnix(), 0).UTC().Format(time.RFC3339), map[bool]string{true: ", reusable", false: ", single use"}[o.reusable], where)
	return nil
}

// caStatusOutput is `tether ca status -o json|yaml`.
type caStatusOutput struct {
	*caStatus
	Revocations []revocationInfo `json:"revocations"`
}

// newCAStatusCmd is `tether ca status`.
func (a *App) newCAStatusCmd() *cobra.Command {
	var (
		socket string
		out    Output
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the CA's generations, rotation schedule and revocations",
		Long: `Shows the trust domain, the bundle sequence, every generation (root and
intermediate, their state and expiry), the next scheduled rotation step
(and whether it is overdue), and the revocations in force.

` + caSocketHelp,
		Example: `  kubectl exec -n tether-system deploy/tether-ca -- tether ca status
  tether ca status --socket /var/lib/tether-ca/admin.sock -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := caadmin.Call(cmd.Context(), socket, "status", func(ctx context.Context, api cav1.AdminClient) (*cav1.StatusResponse, error) {
				return api.Status(ctx, &cav1.StatusRequest{})
			})
			if err != nil {
				return err
			}
			data := caStatusOutput{caStatus: caFromStatus("operator socket "+socket, st), Revocations: describeRevocations(st.GetRevocations())}
			return out.Print(a.Stdout, data, func(w io.Writer) error {
				printCAStatus(w, st)
				return nil
			})
		},
	}
	addSocketFlag(cmd, &socket)
	out.AddFlag(cmd)
	return cmd
}

// rotateSteps are the steps of a root rotation, in order, and what each
// does.
var rotateSteps = []struct{ name, short, long string }{
	{"prepare", "Make a new root and intermediate and add the root to the trust bundle",
		`Makes a new root and intermediate (generation N+1) and adds the root to the
trust bundle, without signing with it yet. Every sidecar must receive the new
bundle before "activate": tether-ca refuses to activate before
--propagation-delay has passed (--force skips the wait).`},
	{"activate", "Start signing SVIDs with the prepared generation",
		`Makes the prepared generation the one that signs new SVIDs; the old root
stays in the bundle so that SVIDs it issued keep verifying until they are
renewed. tether-ca refuses before the propagation delay has passed since
"prepare", until every reporting sidecar trusts the new root (it names
the ones that do not; ` + "`tether ca rotate status`" + ` lists them), and,
when it serves a SPIFFE bundle endpoint, until the endpoint has served the
new root to a federated trust domain for its refresh hint plus a margin.
--force skips these waits, with a warning.`},
	{"retire", "Remove the superseded root from the trust bundle",
		`Removes the superseded root from the trust bundle. tether-ca refuses while
SVIDs it issued may still be valid, and while any reporting sidecar still
presents one (it names them). --force skips both waits, with a warning:
their holders lose trust at once.`},
	{"renew-intermediate", "Replace the signing intermediate under the same root",
		`Makes a new intermediate under the active root and signs with it from now
on. tether-ca does this on schedule; this runs it now (for instance after an
upstream failure).`},
}

// newCARotateCmd is the `tether ca rotate` group, one command per step.
func (a *App) newCARotateCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Rotate the CA's root (prepare, activate, retire) or renew its intermediate",
		Long: `A root rotation is three steps, each safe to run when the previous one has
reached every sidecar: prepare (the new root joins the trust bundle), activate
(the new root signs), retire (the old root leaves the bundle). tether-ca takes
them on schedule unless it runs with --auto-rotate=false; these commands take
one now. Each prints the CA's status afterwards.

` + caSocketHelp,
		Example: `  tether ca rotate prepare
  tether ca status            # wait until the new root has propagated
  tether ca rotate activate
  tether ca rotate retire
  tether ca rotate renew-intermediate`,
	}
	for _, step := range rotateSteps {
		cmd.AddCommand(a.newCARotateStepCmd(step.name, step.short, step.long))
	}
	return cmd
}

// newCARotateStepCmd is `tether ca rotate STEP`.
func (a *App) newCARotateStepCmd(step, short, long string) *cobra.Command {
	var (
		socket string
		force  bool
	)
	cmd := &cobra.Command{
		Use:     step,
		Short:   short,
		Long:    long + "\n\n" + caSocketHelp,
		Example: fmt.Sprintf("  tether ca rotate %s\n  tether ca rotate %s --force   # skip the safety wait", step, step),
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := caadmin.Call(cmd.Context(), socket, "rotate "+step, func(ctx context.Context, api cav1.AdminClient) (*cav1.StatusResponse, error) {
				return api.Rotate(ctx, &cav1.RotateRequest{Step: step, Force: force})
			})
			if err != nil {
				return err
			}
			for _, w := range st.GetWarnings() {
				fmt.Fprintf(a.Stderr, "warning: %s\n", w)
			}
			fmt.Fprintf(a.Stdout, "%s: done\n", step)
			printCAStatus(a.Stdout, st)
			return nil
		},
	}
	addSocketFlag(cmd, &socket)
	cmd.Flags().BoolVar(&force, "force", false, "skip the safety waits (propagation, sidecars not ready, bundle endpoint not fetched, outstanding SVIDs); what was skipped is printed as a warning and logged by tether-ca")
	return cmd
}

// printCAStatus writes the CA status st for people.
func printCAStatus(w io.Writer, st *cav1.StatusResponse) {
	fmt.Fprintf(w, "trust domain: %s\nbundle sequence: %d\n", st.GetTrustDomain(), st.GetBundleSequence())
	if step := st.GetNextStep(); step != "" {
		at := unixTime(st.GetNextStepAtUnix())
		switch {
		case st.GetNextStepOverdue() && st.GetNextStepManual():
			fmt.Fprintf(w, "next step: %s OVERDUE since %s (automatic rotation is off: run `tether ca rotate %s`)\n", step, at, step)
		case st.GetNextStepOverdue():
			fmt.Fprintf(w, "next step: %s OVERDUE since %s (the CA retries every tick; its log says why it fails; `tether ca rotate %s` tries now)\n", step, at, step)
		case st.GetNextStepManual():
			fmt.Fprintf(w, "next step: %s due at %s (automatic rotation is off: run `tether ca rotate %s` then)\n", step, at, step)
		default:
			fmt.Fprintf(w, "next scheduled step: %s at %s\n", step, at)
		}
	}
	if st.GetIntermediateRenewalOverdue() && st.GetNextStep() != "renew-intermediate" {
		fmt.Fprintf(w, "intermediate renewal: OVERDUE since %s (SVIDs are cut short to the intermediate's end; `tether ca rotate renew-intermediate` tries now)\n",
			unixTime(st.GetIntermediateRenewalAtUnix()))
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GENERATION\tSTATE\tROOT SHA-256\tROOT EXPIRES\tINTERMEDIATE EXPIRES\tRETIRE AFTER")
	for _, g := range st.GetGenerations() {
		fp := g.GetRootFingerprint()
		if len(fp) > 16 {
			fp = fp[:16] + "…"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", g.GetId(), g.GetState(), fp,
			unixTime(g.GetRootNotAfterUnix()), unixTime(g.GetIntermediateNotAfterUnix()), unixTime(g.GetRetireAfterUnix()))
	}
	tw.Flush()
	for _, g := range st.GetGenerations() {
		if g.GetAnchorIsIntermediate() {
			fmt.Fprintf(w, "generation %d: the trust bundle holds its intermediate (SHA-256 %s), not the upstream's root\n", g.GetId(), g.GetAnchorFingerprint())
		}
	}
	printRevocations(w, st.GetRevocations())
	for _, g := range st.GetGenerations() {
		if g.GetRootOffline() && g.GetState() == "active" {
			fmt.Fprintf(w, "\nroot key: offline. This CA cannot rotate its root nor renew its intermediate (valid until %s);\n"+
				"sign a new one with `tether ca offline-root sign-intermediate` and restart tether-ca with it.\n", unixTime(g.GetIntermediateNotAfterUnix()))
		}
	}
}

func unixTime(s int64) string {
	if s == 0 {
		return "-"
	}
	return time.Unix(s, 0).UTC().Format(time.RFC3339)
}
