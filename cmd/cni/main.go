// Command tether-cni is Tether's chained CNI plugin: the container runtime
// runs it when it creates a pod's network, and it installs the meshed
// pod's capture rules from outside the pod (docs/cni.md).
package main

import (
	"os"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/tether-mesh/tether/internal/cliflag"
	"github.com/tether-mesh/tether/internal/cni"
)

func main() {
	if os.Getenv("CNI_COMMAND") == "" && cliflag.PrintVersion(os.Args[1:], os.Stdout) {
		return
	}
	skel.PluginMainFuncs(cni.Plugin{Log: os.Stderr}.Funcs(), cni.Supported, "tether-cni: Tether's chained CNI plugin (docs/cni.md)")
}
