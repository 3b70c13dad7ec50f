package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestSidecarLinksNoServerSide: each sidecar pays for every package it
// links (their init work and the heap it keeps are private to each pod;
// see docs/BENCHMARKS.md, "Memory per extra sidecar"). A sidecar only reads
// what discovery sends, through pkg/discovery/wire, so it must not link
// Kubernetes, the discovery model and policy engine, or an xDS server.
func TestSidecarLinksNoServerSide(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH to list the sidecar's packages")
	}
	out, err := exec.Command(goBin, "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	forbiddenPrefixes := []string{
		"k8s.io/",
		"sigs.k8s.io/",
		"github.com/envoyproxy/go-control-plane/pkg/server/",
	}
	forbidden := map[string]bool{
		"github.com/tether-mesh/tether/pkg/discovery":        true,
		"github.com/tether-mesh/tether/pkg/discovery/xds":    true,
		"github.com/tether-mesh/tether/pkg/discovery/policy": true,
	}
	var bad []string
	for _, p := range strings.Fields(string(out)) {
		if forbidden[p] || slices.ContainsFunc(forbiddenPrefixes, func(f string) bool { return strings.HasPrefix(p, f) }) {
			bad = append(bad, p)
		}
	}
	if len(bad) > 0 {
		t.Errorf("tether-sidecar links %d packages it must not (move what it needs to pkg/discovery/wire):\n%s", len(bad), strings.Join(bad, "\n"))
	}
}
