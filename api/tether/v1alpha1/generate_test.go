package v1alpha1

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// repoRoot is the repository, from this package's directory.
var repoRoot = filepath.Join("..", "..", "..")

// TestGeneratedFilesAreCurrent runs controller-gen (go tool controller-gen,
// pinned in go.mod) through hack/generate.sh into a temporary directory and
// fails when a committed generated file differs from its output: the deep
// copies of this package, the CRDs in charts/tether/crds/ and their copies in
// manifests/crds/. The first run compiles controller-gen (minutes when the
// build cache is cold).
func TestGeneratedFilesAreCurrent(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("this test runs `go tool controller-gen` and needs the go command in PATH: %v", err)
	}
	out := t.TempDir()
	cmd := exec.Command("bash", filepath.Join("hack", "generate.sh"), "-o", out)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "GO="+goBin)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hack/generate.sh -o %s: %v\n%s", out, err, msg)
	}

	// The deep copies: one API package, so one file.
	compare(t, filepath.Join(out, "object", "zz_generated.deepcopy.go"), "zz_generated.deepcopy.go")

	// The CRDs: exactly the generated set, in the chart and in manifests/crds.
	fresh, err := filepath.Glob(filepath.Join(out, "crd", "*.yaml"))
	if err != nil || len(fresh) == 0 {
		t.Fatalf("controller-gen wrote no CRD into %s (%v)", filepath.Join(out, "crd"), err)
	}
	committed, err := filepath.Glob(filepath.Join(repoRoot, "charts", "tether", "crds", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var names, committedNames []string
	for _, f := range fresh {
		names = append(names, filepath.Base(f))
	}
	for _, f := range committed {
		committedNames = append(committedNames, filepath.Base(f))
	}
	if !slices.Equal(names, committedNames) {
		t.Errorf("charts/tether/crds holds %v; controller-gen generates %v: run `make generate` and commit the result",
			committedNames, names)
	}
	for _, f := range fresh {
		base := strings.TrimSuffix(filepath.Base(f), ".yaml") // GROUP_PLURAL
		group, plural, _ := strings.Cut(base, "_")
		compare(t, f, filepath.Join(repoRoot, "charts", "tether", "crds", base+".yaml"))
		compare(t, f, filepath.Join(repoRoot, "manifests", "crds", plural+"."+group+".yaml"))
	}
}

// compare fails the test when the committed file differs from the fresh
// one, naming the first differing line and the fix.
func compare(t *testing.T, fresh, committed string) {
	t.Helper()
	want, err := os.ReadFile(fresh)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(committed)
	if err != nil {
		t.Errorf("%s: %v; run `make generate` and commit the result", committed, err)
		return
	}
	if bytes.Equal(got, want) {
		return
	}
	gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	i := 0
	for i < len(gl) && i < len(wl) && gl[i] == wl[i] {
		i++
	}
	line := func(l []string) string {
		if i < len(l) {
			return l[i]
		}
		return "(end of file)"
	}
	name, err := filepath.Rel(repoRoot, committed)
	if err != nil {
		name = committed
	}
	t.Errorf("%s is not what controller-gen generates from api/tether/v1alpha1 (line %d is %q, want %q): "+
		"run `make generate` and commit the result", name, i+1, line(gl), line(wl))
}
