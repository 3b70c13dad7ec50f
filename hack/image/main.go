// Command image builds Tether's container images without Docker, and serves
// them from an in-process registry.
//
//	go run ./hack/image build [flags] tether|tether-sample|pause
//	go run ./hack/image serve [--addr 127.0.0.1:5000] [--ready-file F] IMAGE.tar...
//
// Images are reproducible: the same sources, Go toolchain and Debian
// packages give the same digest (see docs/install.md, "The image").
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage:
  image build [--out FILE] [--oci-layout DIR] [--tag TAG] [--push REF [--insecure]] [--src DIR] [--deb-cache DIR] NAME
      NAME: tether, tether-sample or pause
  image serve [--addr 127.0.0.1:5000] [--ready-file FILE] IMAGE.tar...
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

// run runs one subcommand.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("no command\n%s", usage)
	}
	switch args[0] {
	case "build":
		return runBuild(ctx, args[1:], stdout)
	case "serve":
		return runServe(ctx, args[1:], stdout)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return fmt.Errorf("unknown command %q\n%s", args[0], usage)
}
