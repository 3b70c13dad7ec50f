// Command proxybench measures Tether's sidecar data path side by side with
// a direct connection, a plain TCP relay pair, stunnel and HAProxy, in one
// run on loopback, with the same client and the same echo server.
//
// Every setup but direct is a pair of proxy processes:
//
//	client → A (plaintext in, mTLS out) → B (mTLS in, plaintext out) → echo
//
//	direct   no proxy
//	relay    two io.Copy relays without TLS (this binary's relay
//	         subcommand): the floor
//	tether   two tether-sidecar processes, SVIDs from a tether-ca
//	stunnel  two stunnel processes, mutual TLS, chain verified both ways
//	haproxy  two haproxy processes in TCP mode, mutual TLS, verify required
//	tether-base  the tether pair with an older tether-sidecar
//	         (-baseline-bin DIR; bench/proxy/build-base.sh REV DIR builds
//	         one): the report adds tether ÷ tether-base per round and the
//	         spread of those ratios
//
// stunnel and haproxy use the SVIDs tether-ca issued to the two sidecars'
// identities (ECDSA P-256), fetched as files with `tether svid fetch`.
//
// For each round and setup the pair is started afresh, its idle RSS read,
// then four workloads run for -duration each (after -warmup): keep-alive
// 1 KiB echo on -c connections; one 1 KiB echo per new connection with -c
// clients, closed with a FIN, then again closed with an RST; a bulk
// download on one connection. Every echoed byte is checked. The proxies'
// CPU time (/proc/PID/stat) is read around each measured window, and so is
// the CPU time of every other process on the machine: a window in which
// they used more than -max-others CPUs is measured again once the machine
// is quiet. The proxies' peak RSS (VmHWM) is read at the end. Rounds
// interleave the setups in a rotating order; the report gives medians over
// rounds and the median per-round ratios to relay and direct. With -json
// FILE it also writes every round's figures and latency percentiles (p50,
// p90, p99, p99.9) as JSON, which bench/plot draws.
// bench/proxy/run.sh builds everything and runs it.
//
// The subcommands echo and relay are the child processes a run starts. The
// subcommand mem measures memory per extra sidecar instead (see mem.go).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "mem":
			os.Exit(memMain(os.Args[2:]))
		case "echo":
			os.Exit(childMain("echo", os.Args[2:]))
		case "relay":
			os.Exit(childMain("relay", os.Args[2:]))
		case "flood":
			os.Exit(floodMain(os.Args[2:]))
		case "attack":
			os.Exit(attackMain(os.Args[2:]))
		}
	}
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "proxybench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "proxybench:", err)
		os.Exit(1)
	}
}

// Config is one benchmark run.
type Config struct {
	Setups   []string
	Rounds   int
	Duration time.Duration
	Warmup   time.Duration
	// Conns is the number of keep-alive connections and of concurrent
	// new-connection clients.
	Conns int
	// Size is the request (and response) size in bytes.
	Size int
	// Settle is how long a started pair sits idle before its RSS is read.
	Settle time.Duration
	// MaxOthers is how many CPUs other processes may use during a
	// measured window before it is measured again, up to Retries times.
	MaxOthers float64
	Retries   int
	// Syscalls counts the proxies' system calls in the keep-alive window
	// with perf (Linux perf_event tracepoints).
	Syscalls bool
	// BinDir holds tether-ca, tether and tether-sidecar.
	BinDir string
	// BaseBinDir, if set, holds the tether-sidecar of the tether-base
	// setup: an older build to compare with (bench/proxy/build-base.sh).
	BaseBinDir string
	// WorkDir is for configs, certificates and logs (default: a temporary
	// directory, removed at the end).
	WorkDir string
	// JSON, if set, is a file to write the results to as JSON (JSONReport),
	// besides the markdown on standard output.
	JSON string
}

// parseSetupFlags parses args with fs, which takes no positional
// arguments, and returns the setups the comma-separated list names, each
// one of known and, when unique, named once.
func parseSetupFlags(fs *flag.FlagSet, args []string, list *string, known []string, unique bool) ([]string, error) {
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var setups []string
	for _, s := range strings.Split(*list, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		if !slices.Contains(known, s) {
			return nil, fmt.Errorf("-setups: unknown setup %q (want %s)", s, strings.Join(known, ", "))
		}
		if unique && slices.Contains(setups, s) {
			return nil, fmt.Errorf("-setups: %q named twice", s)
		}
		setups = append(setups, s)
	}
	return setups, nil
}

func parseFlags(args []string) (Config, error) {
	c := Config{}
	var setups string
	fs := flag.NewFlagSet("proxybench", flag.ContinueOnError)
	fs.StringVar(&setups, "setups", strings.Join(allSetups, ","), "comma-separated setups to run: "+strings.Join(append(allSetups, extraSetups...), ", "))
	fs.IntVar(&c.Rounds, "rounds", 3, "rounds; medians are taken over them")
	fs.DurationVar(&c.Duration, "duration", 5*time.Second, "measured time per workload")
	fs.DurationVar(&c.Warmup, "warmup", time.Second, "unmeasured time at the start of each workload")
	fs.IntVar(&c.Conns, "c", 16, "keep-alive connections, and concurrent clients of the new-connection workload")
	fs.IntVar(&c.Size, "size", 1024, "request and response size in bytes")
	fs.DurationVar(&c.Settle, "settle", time.Second, "idle time after a pair starts, before its idle RSS is read")
	fs.Float64Var(&c.MaxOthers, "max-others", 0.25, "measure a workload again, once the machine is quiet (up to 2 minutes), when processes outside the benchmark used more than this many CPUs during it")
	fs.IntVar(&c.Retries, "retries", 3, "how many times a workload is measured again (see -max-others)")
	fs.BoolVar(&c.Syscalls, "syscalls", false, "count the proxies' system calls per keep-alive request with `perf stat` (needs perf and tracepoint access)")
	fs.StringVar(&c.BinDir, "bin", "bin", "directory holding tether-ca, tether and tether-sidecar")
	fs.StringVar(&c.BaseBinDir, "baseline-bin", "", "directory holding the tether-sidecar of setup tether-base, an older build run side by side with tether (bench/proxy/build-base.sh REV DIR builds one); adds tether-base to -setups")
	fs.StringVar(&c.WorkDir, "workdir", "", "keep configs, certificates and logs here (default: a temporary directory, removed at exit)")
	fs.StringVar(&c.JSON, "json", "", "also write the results, with latency percentiles p50/p90/p99/p99.9 per setup and round, as JSON to this `file` (bench/plot draws them)")
	var err error
	if c.Setups, err = parseSetupFlags(fs, args, &setups, append(allSetups, extraSetups...), false); err != nil {
		return c, err
	}
	if err := baselineSetups(&c); err != nil {
		return c, err
	}
	switch {
	case len(c.Setups) == 0:
		return c, errors.New("-setups: none given")
	case c.Rounds < 1:
		return c, errors.New("-rounds: want at least 1")
	case c.Duration <= 0:
		return c, errors.New("-duration: want a positive duration")
	case c.Warmup < 0:
		return c, errors.New("-warmup: want zero or more")
	case c.Conns < 1:
		return c, errors.New("-c: want at least 1")
	case c.MaxOthers <= 0 || c.Retries < 0:
		return c, errors.New("-max-others: want more than 0; -retries: want 0 or more")
	case c.Size < 16 || c.Size > 1<<20:
		return c, errors.New("-size: want 16 bytes to 1 MiB")
	}
	return c, nil
}

// childMain runs the echo or relay subcommand until SIGTERM. A relay may
// serve several routes: -listen A,B -to X,Y relays A to X and B to Y (the
// relay ring of the mem subcommand, an outbound and an inbound per process).
func childMain(name string, args []string) int {
	fs := flag.NewFlagSet("proxybench "+name, flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on (relay: comma-separated, one per -to address)")
	to := fs.String("to", "", "upstream address (relay; comma-separated, one per -listen address)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	listens, tos := strings.Split(*listen, ","), strings.Split(*to, ",")
	switch {
	case name == "relay" && *to == "":
		fmt.Fprintln(os.Stderr, "proxybench relay: -to is required")
		return 2
	case name == "relay" && len(tos) != len(listens):
		fmt.Fprintf(os.Stderr, "proxybench relay: %d -listen addresses but %d -to addresses; want one upstream per listener\n", len(listens), len(tos))
		return 2
	case name == "echo" && len(listens) != 1:
		fmt.Fprintln(os.Stderr, "proxybench echo: want one -listen address")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errs := make(chan error, len(listens))
	for i, addr := range listens {
		l, err := listenTCP(addr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "proxybench %s: %v\n", name, err)
			return 1
		}
		context.AfterFunc(ctx, func() { l.Close() })
		go func() {
			if name == "echo" {
				errs <- serveEcho(l)
			} else {
				errs <- serveRelay(l, tos[i])
			}
		}()
	}
	for range listens {
		if err := <-errs; err != nil && ctx.Err() == nil {
			fmt.Fprintf(os.Stderr, "proxybench %s: %v\n", name, err)
			return 1
		}
	}
	return 0
}
