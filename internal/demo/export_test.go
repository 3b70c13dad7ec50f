package demo

import (
	"testing"
)

// For the tests of package demo_test, which run tether demo through the CLI.
var (
	HoldPortRange = holdPortRange
	FakeBinaries  = fakeBinaries
)

// WriteMeshFile writes the mesh.yaml of a demo on free ports into a
// temporary directory and returns its path.
func WriteMeshFile(t *testing.T) string {
	t.Helper()
	addrs, err := planDemoPorts(0)
	if err != nil {
		t.Fatal(err)
	}
	d := &demo{cfg: demoConfig{dir: t.TempDir(), keep: true}, ports: addrs}
	if err := d.plan(); err != nil {
		t.Fatal(err)
	}
	return d.meshFile
}
