// Command tether-discovery tells every sidecar which mesh services it may
// reach, who serves them, and who may reach the services it backs: it
// watches the registry (a mesh.yaml file or the Kubernetes API) and serves
// it over xDS (ADS, gRPC with mutual TLS), scoped to each caller's SPIFFE ID.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/tether-mesh/tether/internal/cliflag"
	"github.com/tether-mesh/tether/internal/discoveryserver"
)

func main() {
	if cliflag.PrintVersion(os.Args[1:], os.Stdout) {
		return
	}
	cfg, err := discoveryserver.ParseFlags(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(os.Stderr, cliflag.VersionUsage)
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tether-discovery:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv, err := discoveryserver.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tether-discovery:", err)
		os.Exit(1)
	}
	if err := srv.Run(ctx); err != nil {
		cfg.Logger.Error("tether-discovery stopped", "error", err)
		os.Exit(1)
	}
}
