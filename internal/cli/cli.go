// Package cli is the `tether` command line: identities for developers,
// CA operations for operators.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/tether-mesh/tether/internal/cliflag"
	"github.com/tether-mesh/tether/internal/demo"
)

// usage is the top-level help.
const usage = `tether: the Tether service mesh command line

Usage:
  tether identity [--socket unix:///run/tether/workload.sock] [--json] [--write DIR]
  tether svid fetch --ca ADDR --bundle FILE (--join-token-file FILE|- | --token TOKEN | --k8s-token-file FILE) --out DIR
  tether ca token create --spiffe-id ID [--ttl 1h] [--reusable] [--allow-reserved] [--out FILE] [--socket PATH]
  tether ca token list [--socket PATH]
  tether ca revoke (--spiffe-id ID [--allow-reattest | --block-for D] | --serial HEX | --join-token-file FILE|- | --join-token-hash HASH) [--keep-svids] [--reason TEXT] [--socket PATH]
  tether ca unrevoke --spiffe-id ID [--socket PATH]
  tether ca status [--socket PATH]
  tether ca rotate prepare|activate|retire|renew-intermediate [--force] [--socket PATH]
  tether ca offline-root init --dir DIR [--trust-domain TD] [--ttl 43800h]
  tether ca offline-root sign-intermediate --dir DIR --out DIR [--ttl 720h]
  tether policy check [--mesh FILE | --kubeconfig PATH [--context NAME]] --from NS/SA|SPIFFE_ID --to NS/SERVICE[:PORT] [--json]
  tether policy graph [--mesh FILE | --kubeconfig PATH [--context NAME]] [--namespace NS] [--dot]
  tether demo [--rotate] [--duration D] [--dir DIR] [--ports N] [--bin DIR] [--rate N]
  tether status [--ca-socket PATH] [--discovery-admin URL] | [--kubeconfig PATH [--context NAME]] [--soon 10m] [--json]

Run a command with -h for its flags.
`

// App is the CLI with its outputs.
type App struct {
	// Stdin is read by the flags that take "-" (nil: os.Stdin).
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// errUsage marks errors that should print usage.
var errUsage = cliflag.ErrUsage

// Main runs the CLI and returns the process exit code.
func (a *App) Main(ctx context.Context, args []string) int {
	err := a.run(ctx, args)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(a.Stderr, "tether: %v\n\n%s", err, usage)
		return 2
	default:
		fmt.Fprintf(a.Stderr, "tether: %v\n", err)
		return 1
	}
}

func (a *App) run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: no command", errUsage)
	}
	path := args[0]
	if len(args) > 1 && !strings.HasPrefix(args[1], "-") {
		path += " " + args[1]
	}
	switch {
	case args[0] == "identity":
		return a.identity(ctx, args[1:])
	case path == "svid fetch":
		return a.svidFetch(ctx, args[2:])
	case path == "ca status":
		return a.caStatus(ctx, args[2:])
	case path == "ca offline-root":
		return a.caOfflineRoot(ctx, args[2:])
	case path == "ca rotate":
		return a.caRotate(ctx, args[2:])
	case path == "policy check":
		return a.policyCheck(ctx, args[2:])
	case path == "policy graph":
		return a.policyGraph(ctx, args[2:])
	case args[0] == "status":
		return a.status(ctx, args[1:])
	case path == "ca token" && len(args) > 2 && args[2] == "create":
		return a.caTokenCreate(ctx, args[3:])
	case path == "ca token" && len(args) > 2 && args[2] == "list":
		return a.caTokenList(ctx, args[3:])
	case path == "ca revoke":
		return a.caRevoke(ctx, args[2:])
	case path == "ca unrevoke":
		return a.caUnrevoke(ctx, args[2:])
	case args[0] == "demo":
		return (&demo.Command{Stdout: a.Stdout, Stderr: a.Stderr, Tether: a.sub}).Run(ctx, args[1:])
	case args[0] == "help" || args[0] == "-h" || args[0] == "--help":
		fmt.Fprint(a.Stdout, usage)
		return nil
	default:
		return fmt.Errorf("%w: unknown command %q", errUsage, strings.Join(args[:min(len(args), 3)], " "))
	}
}

// sub runs another command with its own outputs (tether demo shows what
// some commands say).
func (a *App) sub(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return (&App{Stdin: a.Stdin, Stdout: stdout, Stderr: stderr}).run(ctx, args)
}

// flags returns a flag set that reports errors instead of exiting.
func (a *App) flags(name string) *flag.FlagSet {
	return cliflag.New(name, a.Stderr)
}

// parse parses args and checks that exactly positional arguments remain.
func parse(fs *flag.FlagSet, args []string, positional int) error {
	return cliflag.Parse(fs, args, positional)
}
