package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestPluginLinksNoKubernetesClient: tether-cni is copied to every node and
// runs once per pod; it reads one object with net/http, so it must not
// link a Kubernetes client, the API types or Tether's server side.
func TestPluginLinksNoKubernetesClient(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH to list the plugin's packages")
	}
	out, err := exec.Command(goBin, "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	forbidden := []string{"k8s.io/", "sigs.k8s.io/controller-runtime", "google.golang.org/grpc",
		"github.com/prometheus/", "github.com/tether-mesh/tether/pkg/inject", "github.com/tether-mesh/tether/pkg/discovery"}
	var bad []string
	for _, p := range strings.Fields(string(out)) {
		if slices.ContainsFunc(forbidden, func(f string) bool { return strings.HasPrefix(p, f) }) {
			bad = append(bad, p)
		}
	}
	if len(bad) > 0 {
		t.Errorf("tether-cni links %d packages it must not:\n%s", len(bad), strings.Join(bad, "\n"))
	}
}
