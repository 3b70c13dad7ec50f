// Command helm is Helm v4 (helm.sh/helm/v4, the version go.mod pins), built
// from the Go module proxy into $TETHER_KUBE_BIN_DIR/helm by
// hack/kube/build.sh helm, so that internal/install's tests can check that
// `helm template` renders charts/tether to the same objects as `tether
// install`. Its own module (like hack/coredns) keeps Helm's command-line
// dependencies out of Tether's go.mod.
package main

import (
	"errors"
	"log/slog"
	"os"

	helmcmd "helm.sh/helm/v4/pkg/cmd"
)

func main() {
	cmd, err := helmcmd.NewRootCmd(os.Stdout, os.Args[1:], helmcmd.SetupLogging)
	if err != nil {
		slog.Warn("command failed", slog.Any("error", err))
		os.Exit(1)
	}
	if err := cmd.Execute(); err != nil {
		var cerr helmcmd.CommandError
		if errors.As(err, &cerr) {
			os.Exit(cerr.ExitCode)
		}
		os.Exit(1)
	}
}
