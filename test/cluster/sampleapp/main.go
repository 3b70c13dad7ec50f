// Command tether-sample is the sample app of the real-node test
// (test/cluster): one static binary, built into the image
// tether-sample:latest, that plays every part of the user story.
//
//	tether-sample serve --name web --listen :8080 [--next http://api:8080/]
//	tether-sample svid                 # the pod's X.509-SVID over the Workload API
//	tether-sample get URL              # print the body; exit 0 on a 2xx answer
//	tether-sample load URL --duration 2m   # requests in a loop, counting failures
//	tether-sample dial HOST:PORT       # exit 0 if the peer keeps the connection open
//	tether-sample lookup NAME          # addresses, or NXDOMAIN (exit 3)
//	tether-sample sleep [DURATION]     # for Jobs that exit
//
// Exit codes: 0 success, 1 failure, 2 bad usage, 3 NXDOMAIN (lookup only).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit codes shared by every subcommand.
const (
	exitOK       = 0
	exitFailed   = 1
	exitUsage    = 2
	exitNXDomain = 3
)

// errUsage marks an error in the command line (exit code 2).
var errUsage = errors.New("usage")

// exitError carries a specific exit code out of a subcommand.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

const usage = `usage: tether-sample COMMAND [flags] [args]

commands:
  serve   --name NAME [--listen :8080] [--next URL] [--marker M]   HTTP server (GET /, /healthz)
  svid    [--timeout 10s]          print the pod's X.509-SVID read over the SPIFFE Workload API
  get     [--timeout 10s] URL      print the body; exit 0 on 2xx, 1 otherwise
  load    [--duration 1m] [--interval 200ms] URL   GET in a loop; exit 1 if any failed
  dial    [--timeout 5s] [--hold 1s] HOST:PORT   exit 0 if the peer accepts and keeps the connection
  lookup  [--timeout 5s] NAME      print the addresses; "NXDOMAIN" and exit 3 if the name does not exist
  sleep   [DURATION]               sleep (default 1s), then exit 0
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs one subcommand and returns the process's exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmds := map[string]func(context.Context, []string, io.Writer, io.Writer) error{
		"serve":  serve,
		"svid":   svid,
		"get":    get,
		"load":   load,
		"dial":   dial,
		"lookup": lookup,
		"sleep":  sleep,
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "tether-sample: unknown command %q\n%s", args[0], usage)
		return exitUsage
	}
	err := cmd(ctx, args[1:], stdout, stderr)
	var ee *exitError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "tether-sample %s: %v\n", args[0], err)
		return exitUsage
	case errors.As(err, &ee):
		fmt.Fprintf(stderr, "tether-sample %s: %v\n", args[0], err)
		return ee.code
	default:
		fmt.Fprintf(stderr, "tether-sample %s: %v\n", args[0], err)
		return exitFailed
	}
}
