// Command manifests regenerates the kustomize folders of manifests/ from
// the Helm chart charts/tether (internal/install.Generate). Run it from the
// repository's root: `make manifests` (go run ./hack/manifests).
package main

import (
	"fmt"
	"os"

	"github.com/tether-mesh/tether/internal/install"
)

func main() {
	if _, err := os.Stat("charts/tether/Chart.yaml"); err != nil {
		fmt.Fprintln(os.Stderr, "hack/manifests: run from the repository's root (no charts/tether/Chart.yaml here)")
		os.Exit(2)
	}
	if err := install.WriteGenerated("."); err != nil {
		fmt.Fprintf(os.Stderr, "hack/manifests: %v\n", err)
		os.Exit(1)
	}
	fmt.Println("manifests: wrote manifests/base, manifests/overlays/cert-manager and manifests/overlays/cni from charts/tether")
}
