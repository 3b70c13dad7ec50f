package cli

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/caadmin"
)

// defaultSocket is where the CA's operator API listens in a cluster.
const defaultSocket = "/run/tether-ca/admin.sock"

func socketFlag(fs interface {
	StringVar(*string, string, string, string)
}, p *string) {
	def := os.Getenv("TETHER_CA_ADMIN_SOCKET")
	if def == "" {
		def = defaultSocket
	}
	fs.StringVar(p, "socket", def, "the CA's operator socket (env TETHER_CA_ADMIN_SOCKET)")
}

func (a *App) caTokenCreate(ctx context.Context, args []string) error {
	fs := a.flags("ca token create")
	var socket, id string
	socketFlag(fs, &socket)
	fs.StringVar(&id, "spiffe-id", "", "SPIFFE ID the token proves (required)")
	ttl := fs.Duration("ttl", time.Hour, "how long the token is valid")
	reusable := fs.Bool("reusable", false, "allow the token to be used more than once")
	outPath := fs.String("out", "", "write the token to this new file (mode 0600) instead of standard output")
	allowReserved := fs.Bool("allow-reserved", false, "allow an ID under ns/tether-system (a mesh component run outside Kubernetes)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if id == "" {
		return fmt.Errorf("%w: --spiffe-id is required", errUsage)
	}
	api, done, err := caadmin.Dial(socket)
	if err != nil {
		return err
	}
	defer done()
	// The file is made first, so that a token is never created and lost.
	var out *os.File
	if *outPath != "" {
		if out, err = os.OpenFile(*outPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
			return fmt.Errorf("--out: %w (the token file must not exist yet)", err)
		}
		defer out.Close()
	}
	resp, err := api.CreateJoinToken(ctx, &cav1.CreateJoinTokenRequest{SpiffeId: id, TtlSeconds: int64(ttl.Seconds()), Reusable: *reusable, AllowReserved: *allowReserved})
	if err != nil {
		if out != nil {
			os.Remove(*outPath)
		}
		return caadmin.RPCError("create join token", err)
	}
	if *allowReserved {
		fmt.Fprintf(a.Stderr, "warning: %s is an identity of the mesh's own components; whoever holds this token can act as that component\n", id)
	}
	where := ""
	if out != nil {
		if _, err := fmt.Fprintln(out, resp.GetToken()); err != nil {
			return fmt.Errorf("write the token to %s: %w", *outPath, err)
		}
		if err := out.Close(); err != nil {
			return fmt.Errorf("write the token to %s: %w", *outPath, err)
		}
		where = ", written to " + *outPath
	} else {
		fmt.Fprintln(a.Stdout, resp.GetToken())
	}
	fmt.Fprintf(a.Stderr, "join token for %s, valid until %s%s%s\n", id,
		time.Unix(resp.GetExpiresAtUnix(), 0).UTC().Format(time.RFC3339), map[bool]string{true: ", reusable", false: ", single use"}[*reusable], where)
	return nil
}

// dialAdminCmd parses the arguments of a CA command whose only flag is
// --socket and dials the CA operator socket it names.
func (a *App) dialAdminCmd(name string, args []string) (cav1.AdminClient, func(), error) {
	fs := a.flags(name)
	var socket string
	socketFlag(fs, &socket)
	if err := parse(fs, args, 0); err != nil {
		return nil, nil, err
	}
	return caadmin.Dial(socket)
}

func (a *App) caStatus(ctx context.Context, args []string) error {
	api, done, err := a.dialAdminCmd("ca status", args)
	if err != nil {
		return err
	}
	defer done()
	st, err := api.Status(ctx, &cav1.StatusRequest{})
	if err != nil {
		return caadmin.RPCError("status", err)
	}
	a.printStatus(st)
	return nil
}

func (a *App) caRotate(ctx context.Context, args []string) error {
	fs := a.flags("ca rotate")
	var socket string
	socketFlag(fs, &socket)
	force := fs.Bool("force", false, "skip the safety waits (propagation, outstanding SVIDs)")
	// The step comes first: `tether ca rotate prepare --force`.
	if len(args) == 0 || args[0] == "" || args[0][0] == '-' {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return parse(fs, args, 1)
		}
		return fmt.Errorf("%w: ca rotate needs a step: prepare, activate, retire or renew-intermediate", errUsage)
	}
	step := args[0]
	if err := parse(fs, args[1:], 0); err != nil {
		return err
	}
	switch step {
	case "prepare", "activate", "retire", "renew-intermediate":
	default:
		return fmt.Errorf("%w: unknown rotation step %q (want prepare, activate, retire or renew-intermediate)", errUsage, step)
	}
	api, done, err := caadmin.Dial(socket)
	if err != nil {
		return err
	}
	defer done()
	st, err := api.Rotate(ctx, &cav1.RotateRequest{Step: step, Force: *force})
	if err != nil {
		return caadmin.RPCError("rotate "+step, err)
	}
	fmt.Fprintf(a.Stdout, "%s: done\n", step)
	a.printStatus(st)
	return nil
}

func (a *App) printStatus(st *cav1.StatusResponse) {
	fmt.Fprintf(a.Stdout, "trust domain: %s\nbundle sequence: %d\n", st.GetTrustDomain(), st.GetBundleSequence())
	if step := st.GetNextStep(); step != "" {
		at := unixTime(st.GetNextStepAtUnix())
		switch {
		case st.GetNextStepOverdue() && st.GetNextStepManual():
			fmt.Fprintf(a.Stdout, "next step: %s OVERDUE since %s (automatic rotation is off: run `tether ca rotate %s`)\n", step, at, step)
		case st.GetNextStepOverdue():
			fmt.Fprintf(a.Stdout, "next step: %s OVERDUE since %s (the CA retries every tick; its log says why it fails; `tether ca rotate %s` tries now)\n", step, at, step)
		case st.GetNextStepManual():
			fmt.Fprintf(a.Stdout, "next step: %s due at %s (automatic rotation is off: run `tether ca rotate %s` then)\n", step, at, step)
		default:
			fmt.Fprintf(a.Stdout, "next scheduled step: %s at %s\n", step, at)
		}
	}
	if st.GetIntermediateRenewalOverdue() && st.GetNextStep() != "renew-intermediate" {
		fmt.Fprintf(a.Stdout, "intermediate renewal: OVERDUE since %s (SVIDs are cut short to the intermediate's end; `tether ca rotate renew-intermediate` tries now)\n",
			unixTime(st.GetIntermediateRenewalAtUnix()))
	}
	fmt.Fprintln(a.Stdout)
	tw := tabwriter.NewWriter(a.Stdout, 0, 4, 2, ' ', 0)
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
			fmt.Fprintf(a.Stdout, "generation %d: the trust bundle holds its intermediate (SHA-256 %s), not the upstream's root\n", g.GetId(), g.GetAnchorFingerprint())
		}
	}
	a.printRevocations(st.GetRevocations())
	for _, g := range st.GetGenerations() {
		if g.GetRootOffline() && g.GetState() == "active" {
			fmt.Fprintf(a.Stdout, "\nroot key: offline. This CA cannot rotate its root nor renew its intermediate (valid until %s);\n"+
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
