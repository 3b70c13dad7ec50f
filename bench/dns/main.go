//go:build linux

// Command dnsbench measures the sidecar's DNS server (pkg/proxy/dns) with
// dnsperf, side by side with a minimal miekg/dns server that answers every
// query with one fixed A record, in one run.
//
//	dnsbench serve -mode tether|minimal [-listen addr]
//	    serve DNS until SIGTERM; print the address on stdout once listening.
//	    tether: dns.Server with a StaticTable of -services mesh services in
//	    -namespaces namespaces (a tenth of them unreachable: NXDOMAIN), the
//	    search rules of a pod in namespace team-000 (ndots 5).
//	    minimal: a miekg/dns server whose handler answers every question
//	    with the same A record.
//	dnsbench queries [-n N]
//	    print a dnsperf query file of mesh names (see writeQueries).
//	dnsbench run [flags]
//	    start both servers (each pinned to CPU -server-cpu with taskset when
//	    there is one), run dnsperf (pinned to -client-cpu) against each in
//	    turn for -rounds rounds of -duration, alternating which goes first,
//	    and print per-round figures, medians and the ratio tether ÷ minimal.
//
// bench/dns/run.sh installs dnsperf (Debian) when run as root, builds this
// program and runs it.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dnsbench serve|queries|run [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "serve":
		err = serveMain(ctx, os.Args[2:])
	case "queries":
		err = queriesMain(os.Args[2:])
	case "run":
		err = runMain(ctx, os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q: use serve, queries or run", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dnsbench:", err)
		os.Exit(1)
	}
}
