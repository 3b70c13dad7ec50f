package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
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

func dialAdmin(socket string) (cav1.AdminClient, func(), error) {
	if _, err := os.Stat(socket); err != nil {
		return nil, nil, fmt.Errorf("CA operator socket %s: %w (is tether-ca running? pass --socket or set TETHER_CA_ADMIN_SOCKET)", socket, err)
	}
	// "unix://" needs an absolute path: a relative one would parse as a host.
	abs, err := filepath.Abs(socket)
	if err != nil {
		return nil, nil, fmt.Errorf("CA operator socket %s: %w", socket, err)
	}
	conn, err := grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return cav1.NewAdminClient(conn), func() { conn.Close() }, nil
}

// rpcError turns a gRPC error into the CA's own message.
func rpcError(what string, err error) error {
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		s := se.GRPCStatus()
		return fmt.Errorf("%s: %s (%s)", what, s.Message(), s.Code())
	}
	return fmt.Errorf("%s: %w", what, err)
}

func (a *App) caTokenCreate(ctx context.Context, args []string) error {
	fs := a.flags("ca token create")
	var socket, id string
	socketFlag(fs, &socket)
	fs.StringVar(&id, "spiffe-id", "", "SPIFFE ID the token proves (required)")
	ttl := fs.Duration("ttl", time.Hour, "how long the token is valid")
	reusable := fs.Bool("reusable", false, "allow the token to be used more than once")
	allowReserved := fs.Bool("allow-reserved", false, "allow an ID under ns/tether-system (a mesh component run outside Kubernetes)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if id == "" {
		return fmt.Errorf("%w: --spiffe-id is required", errUsage)
	}
	api, done, err := dialAdmin(socket)
	if err != nil {
		return err
	}
	defer done()
	resp, err := api.CreateJoinToken(ctx, &cav1.CreateJoinTokenRequest{SpiffeId: id, TtlSeconds: int64(ttl.Seconds()), Reusable: *reusable, AllowReserved: *allowReserved})
	if err != nil {
		return rpcError("create join token", err)
	}
	if *allowReserved {
		fmt.Fprintf(a.Stderr, "warning: %s is an identity of the mesh's own components; whoever holds this token can act as that component\n", id)
	}
	fmt.Fprintln(a.Stdout, resp.GetToken())
	fmt.Fprintf(a.Stderr, "join token for %s, valid until %s%s\n", id,
		time.Unix(resp.GetExpiresAtUnix(), 0).UTC().Format(time.RFC3339), map[bool]string{true: ", reusable", false: ", single use"}[*reusable])
	return nil
}

func (a *App) caStatus(ctx context.Context, args []string) error {
	fs := a.flags("ca status")
	var socket string
	socketFlag(fs, &socket)
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	api, done, err := dialAdmin(socket)
	if err != nil {
		return err
	}
	defer done()
	st, err := api.Status(ctx, &cav1.StatusRequest{})
	if err != nil {
		return rpcError("status", err)
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
		return fmt.Errorf("%w: ca rotate needs a step: prepare, activate or retire", errUsage)
	}
	step := args[0]
	if err := parse(fs, args[1:], 0); err != nil {
		return err
	}
	switch step {
	case "prepare", "activate", "retire":
	default:
		return fmt.Errorf("%w: unknown rotation step %q (want prepare, activate or retire)", errUsage, step)
	}
	api, done, err := dialAdmin(socket)
	if err != nil {
		return err
	}
	defer done()
	st, err := api.Rotate(ctx, &cav1.RotateRequest{Step: step, Force: *force})
	if err != nil {
		return rpcError("rotate "+step, err)
	}
	fmt.Fprintf(a.Stdout, "%s: done\n", step)
	a.printStatus(st)
	return nil
}

func (a *App) printStatus(st *cav1.StatusResponse) {
	fmt.Fprintf(a.Stdout, "trust domain: %s\nbundle sequence: %d\n", st.GetTrustDomain(), st.GetBundleSequence())
	if st.GetNextStep() != "" {
		fmt.Fprintf(a.Stdout, "next scheduled step: %s at %s\n", st.GetNextStep(), unixTime(st.GetNextStepAtUnix()))
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
