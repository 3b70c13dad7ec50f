// Command discoveryscale measures Tether's discovery at mesh scale: a
// registry of -services services (-endpoints-per endpoints each) in
// -namespaces namespaces with -policies AccessPolicies, served by an
// xds.Server to -clients ADS clients, each connected over its own mTLS
// connection with its own SVID and SPIFFE ID.
//
// The server runs in a child process (`discoveryscale serve`), so that its
// memory is the discovery server's alone; the clients are simulated in this
// process (real gRPC streams over loopback, go-control-plane's generated
// discoveryv3 ADS client, state of the world, ACKing every response). Both
// processes generate the same registry from the same flags.
//
// It reports, for the full scale and, side by side in the same run, the
// same mesh at 1/-baseline-div of it (the same number of clients):
//
//   - Registry.Update of the whole State (the snapshot build), and
//     xds.BuildResources for one client, before any client connects;
//   - the server's Go heap and RSS after GC, with the registry alone and
//     then with every client connected and served;
//   - for -rounds rounds of three changes (see mesh.apply): endpoint-add,
//     policy-add and policy-edit, the time from the moment Registry.Update
//     is called until each client whose view the change alters receives
//     the changed resource: p50, p99 and max over clients, and the last
//     client per change; the server's CPU time per change, and what was
//     pushed.
//
// bench/discovery/run.sh runs it with the numbers.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "serve" {
		os.Exit(serveMain(os.Args[2:]))
	}
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "discoveryscale:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "discoveryscale:", err)
		os.Exit(1)
	}
}

// Config is one benchmark run.
type Config struct {
	Scale       Scale
	BaselineDiv int // the baseline mesh is Scale divided by this; 0: no baseline
	Rounds      int // rounds of changes, each one change of every kind
	Kinds       []string
	Timeout     time.Duration // per change, for every client to receive it
	Handshakes  int           // concurrent client connects
	Delta       bool          // clients speak delta ADS
	// ServerMemLimit is the server process's GOMEMLIMIT ("": the
	// environment's).
	ServerMemLimit string
	BuildRounds    int
	BuildNodes     int
	CPUProfile     string // the full-scale server's profile over the changes
	MemProfile     string // the full-scale server's heap with every client served
}

func parseFlags(args []string) (Config, error) {
	c := Config{Scale: fullScaleDefault}
	var kinds string
	fs := flag.NewFlagSet("discoveryscale", flag.ContinueOnError)
	fs.IntVar(&c.Scale.Services, "services", c.Scale.Services, "services")
	fs.IntVar(&c.Scale.Namespaces, "namespaces", c.Scale.Namespaces, "namespaces")
	fs.IntVar(&c.Scale.EndpointsPer, "endpoints-per", c.Scale.EndpointsPer, "endpoints per service")
	fs.IntVar(&c.Scale.Policies, "policies", c.Scale.Policies, "AccessPolicies")
	fs.IntVar(&c.Scale.Clients, "clients", c.Scale.Clients, "ADS clients (distinct SPIFFE IDs, one connection each)")
	fs.IntVar(&c.BaselineDiv, "baseline-div", 10, "also measure the mesh divided by this (same clients), side by side; 0: skip")
	fs.IntVar(&c.Rounds, "rounds", 3, "rounds of changes; each round makes one change of every kind")
	fs.StringVar(&kinds, "changes", strings.Join(changeKinds, ","), "change kinds to make")
	fs.DurationVar(&c.Timeout, "timeout", 2*time.Minute, "how long a change may take to reach every client")
	fs.IntVar(&c.Handshakes, "handshakes", 16, "clients connecting at once")
	fs.BoolVar(&c.Delta, "delta", false, "clients speak incremental (delta) ADS instead of state of the world")
	fs.StringVar(&c.ServerMemLimit, "server-gomemlimit", "", "GOMEMLIMIT of the server process only (e.g. 900MiB), as a deployment would set it")
	fs.IntVar(&c.BuildRounds, "build-rounds", 5, "timed Registry.Update calls before serving")
	fs.IntVar(&c.BuildNodes, "build-nodes", 20, "clients whose BuildResources is timed before serving")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write the full-scale server's CPU profile over the changes to this file")
	fs.StringVar(&c.MemProfile, "memprofile", "", "write the full-scale server's heap profile, every client served, to this file")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	c.Kinds = strings.Split(kinds, ",")
	for _, k := range c.Kinds {
		if !contains(changeKinds, k) {
			return c, fmt.Errorf("unknown change kind %q (known: %s)", k, strings.Join(changeKinds, ", "))
		}
	}
	sc := c.Scale
	if sc.Services < 1 || sc.Namespaces < 1 || sc.EndpointsPer < 1 || sc.Policies < 0 || sc.Clients < 1 || c.Rounds < 0 || c.Handshakes < 1 {
		return c, errors.New("-services, -namespaces, -endpoints-per, -clients and -handshakes must be at least 1")
	}
	if sc.Clients > sc.Services || (c.BaselineDiv > 0 && sc.Clients > sc.scaled(c.BaselineDiv).Services) {
		return c, fmt.Errorf("-clients %d is more than the services (at baseline scale too): each client runs as its own service's account", sc.Clients)
	}
	return c, nil
}

var fullScaleDefault = Scale{Services: 10000, Namespaces: 100, EndpointsPer: 5, Policies: 2000, Clients: 1000}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
