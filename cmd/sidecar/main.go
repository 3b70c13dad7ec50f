// Command tether-sidecar is the pod's proxy: it holds the pod's SPIFFE
// identity, serves the Workload API, and carries pod-to-pod TCP over
// mutual TLS.
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
	"github.com/tether-mesh/tether/internal/sidecar"
)

func main() {
	if cliflag.PrintVersion(os.Args[1:], os.Stdout) {
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "init" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := sidecar.Init(ctx, os.Args[2:], os.Stdout, os.Stderr, nil)
		stop()
		os.Exit(code)
	}
	if len(os.Args) > 1 && os.Args[1] == "validate-redirect" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := sidecar.ValidateRedirect(ctx, os.Args[2:], os.Stdout, os.Stderr, os.Getenv)
		stop()
		os.Exit(code)
	}
	cfg, err := sidecar.ParseFlags(os.Args[1:], os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(os.Stderr, cliflag.VersionUsage)
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tether-sidecar:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	s, err := sidecar.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tether-sidecar:", err)
		os.Exit(1)
	}
	if err := s.Run(ctx); err != nil {
		cfg.Logger.Error("tether-sidecar stopped", "error", err)
		os.Exit(1)
	}
}
