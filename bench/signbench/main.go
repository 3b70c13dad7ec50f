// Command signbench measures how fast tether-ca issues X.509-SVIDs, side by
// side with a baseline measured in the same run.
//
// Each round runs these phases for -duration each (after -warmup):
//
//	bare       the baseline, standard library only: parse a pre-made CSR,
//	           check its self-signature, x509.CreateCertificate of an SVID
//	           leaf with a P-256 intermediate key
//	ca.Sign    identity.CA.Sign in process, same CSRs
//	e2e-token  Sign over gRPC+TLS, reusable join token, -concurrency clients
//	           on -conns persistent connections
//	e2e-mtls   renewal over gRPC+mTLS: the clients present an SVID, no credential
//	e2e-dial   like e2e-token, but every request dials a new connection
//	           (full TLS handshake), as an agent renewing every 30 min does
//
// bare and ca.Sign run on GOMAXPROCS goroutines. CSRs are made before the
// run, so client-side key generation is never measured. The load generator
// shares the process (and the CPUs) with the CA, so the e2e phases include
// client-side cost. It prints a table per round, then the medians over rounds
// and the median per-round ratios to bare. `make bench` runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "signbench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "signbench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (Config, error) {
	var c Config
	var phases string
	fs := flag.NewFlagSet("signbench", flag.ContinueOnError)
	fs.DurationVar(&c.Duration, "duration", defaultDuration, "measured time per phase")
	fs.DurationVar(&c.Warmup, "warmup", defaultWarmup, "unmeasured time at the start of each phase")
	fs.IntVar(&c.Rounds, "rounds", defaultRounds, "rounds; medians are taken over them")
	fs.IntVar(&c.Concurrency, "concurrency", defaultConcurrency, "concurrent clients in the e2e phases")
	fs.IntVar(&c.Conns, "conns", 0, "gRPC connections the e2e clients share (0: one per client)")
	fs.IntVar(&c.Workers, "workers", 0, "goroutines of the bare and ca.Sign phases (0: GOMAXPROCS)")
	fs.IntVar(&c.CSRs, "csrs", defaultCSRs, "pre-made CSRs (distinct P-256 keys) the phases cycle through")
	fs.StringVar(&phases, "phases", strings.Join(allPhases, ","), "comma-separated phases to run")
	fs.BoolVar(&c.JSON, "json", false, "print the report as JSON on stdout (tables go to stderr)")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of the run to this file (pick one phase with -phases); load-generator goroutines carry the pprof label side=client")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	c.Phases = strings.Split(phases, ",")
	return c, c.fill()
}
