// Command injectbench measures tether-injector's admission latency and
// throughput, side by side with a baseline measured in the same run.
//
// Two HTTPS servers run in a child process limited to one core
// (GOMAXPROCS=1, and pinned to one CPU with sched_setaffinity on Linux):
//
//	baseline  reads the AdmissionReview and answers a fixed, empty-patch
//	          AdmissionReview (TLS, HTTP/2 and body handling only)
//	injector  pkg/inject's webhook, as tether-injector serves it
//
// For each server, in alternation over -rounds:
//
//	paced    open loop at -rate admissions/s for -duration: latency
//	         p50, p99, max (measured from the scheduled send time, so a
//	         stalled server is not hidden by the client waiting)
//	max      closed loop with -concurrency clients for -duration:
//	         admissions/s, and the server's CPU time per admission (from
//	         /proc), whose inverse is admissions/s per core even when other
//	         processes compete for the CPUs
//
// The request is a typical pod: two containers, HTTP, TCP and gRPC probes,
// a volume, labels and annotations (1.3 KB of AdmissionReview).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "serve" {
		if err := serve(os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "injectbench serve:", err)
			os.Exit(1)
		}
		return
	}
	var c config
	fs := flag.NewFlagSet("injectbench", flag.ExitOnError)
	fs.IntVar(&c.rate, "rate", 200, "admissions/s of the paced phase")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "measured time per phase")
	fs.DurationVar(&c.warmup, "warmup", 2*time.Second, "unmeasured time before each phase")
	fs.IntVar(&c.concurrency, "concurrency", 16, "clients of the max phase")
	fs.IntVar(&c.rounds, "rounds", 3, "rounds; medians are taken over them")
	fs.Parse(os.Args[1:])
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "injectbench:", err)
		os.Exit(1)
	}
}
