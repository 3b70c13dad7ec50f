// Command tether is Tether's command line for developers and operators.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/tether-mesh/tether/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := (&cli.App{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}).Main(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
