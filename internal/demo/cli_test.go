package demo_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/tether-mesh/tether/internal/cli"
	"github.com/tether-mesh/tether/internal/demo"
	"github.com/tether-mesh/tether/pkg/discovery"
)

// The tests below run tether demo through the CLI, as cmd/tether does:
// exit codes and what the user reads on stderr.

// TestDemoMeshYAML: the generated mesh.yaml is valid and says what the
// demo promises: web → api and api → db allowed, nothing else.
func TestDemoMeshYAML(t *testing.T) {
	meshFile := demo.WriteMeshFile(t)
	b, err := os.ReadFile(meshFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := discovery.ParseMeshFile(b); err != nil {
		t.Fatalf("mesh.yaml does not parse: %v\n%s", err, b)
	}
	for _, tc := range []struct {
		from, to string
		allowed  bool
	}{
		{"default/web", "default/api:80", true},
		{"default/api", "default/db:5432", true},
		{"default/web", "default/db:5432", false},
		{"default/db", "default/api:80", false},
		{"default/api", "default/web:80", false},
		{"default/db", "default/db:5432", false},
	} {
		t.Run(tc.from+"->"+tc.to, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := (&cli.App{Stdout: &out, Stderr: &errOut}).Main(context.Background(), []string{"policy", "check", "--mesh", meshFile, "--from", tc.from, "--to", tc.to})
			if got := code == 0; got != tc.allowed {
				t.Errorf("allowed = %v, want %v: %s%s", got, tc.allowed, out.String(), errOut.String())
			}
		})
	}
}

func TestDemoBadInput(t *testing.T) {
	empty := t.TempDir()
	partial := t.TempDir()
	os.WriteFile(filepath.Join(partial, "tether-ca"), []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(partial, "tether-sidecar"), []byte("not executable"), 0o644)
	held, base := demo.HoldPortRange(t, 1)
	defer held.Close()
	fakes := demo.FakeBinaries(t)
	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"unknown flag", []string{"demo", "--rotat"}, 2, []string{"tether: unknown flag: --rotat\nRun 'tether demo --help' for usage.\n"}},
		{"argument", []string{"demo", "now"}, 2, []string{`tether demo takes no arguments, got ["now"]`}},
		{"negative duration", []string{"demo", "--duration", "-1s"}, 2, []string{"--duration -1s: must not be negative"}},
		{"bad duration", []string{"demo", "--duration", "soon"}, 2, []string{`invalid argument "soon" for "--duration" flag`}},
		{"zero rate", []string{"demo", "--rate", "0"}, 2, []string{"--rate 0: want a number of calls per second"}},
		{"privileged ports", []string{"demo", "--ports", "80"}, 2, []string{"--ports 80: want 0 (any free ports) or a first port from 1024"}},
		{"ports past the end", []string{"demo", "--ports", "65530"}, 2, []string{"--ports 65530"}},
		{"no binaries", []string{"demo", "--bin", empty}, 1, []string{
			"tether-ca, tether-discovery, tether-sidecar are not there", "make build",
			"go build -o " + filepath.Join(empty, "tether-ca") + " ./cmd/ca",
			"go build -o " + filepath.Join(empty, "tether-discovery") + " ./cmd/discovery",
			"go build -o " + filepath.Join(empty, "tether-sidecar") + " ./cmd/sidecar",
		}},
		{"some binaries", []string{"demo", "--bin", partial}, 1, []string{"tether-discovery, tether-sidecar are not there (or not executable)"}},
		{"busy port", []string{"demo", "--bin", fakes, "--ports", strconv.Itoa(base)}, 1, []string{
			"port in use: " + held.Addr().String() + " (for tether-ca's metrics) cannot be bound", "--ports 0"}},
		{"busy port, federation", []string{"demo", "--federation", "--bin", fakes, "--ports", strconv.Itoa(base)}, 1, []string{
			"port in use: " + held.Addr().String() + " (for a.example's tether-ca metrics) cannot be bound", "--ports 0"}},
		{"rotate with federation", []string{"demo", "--rotate", "--federation"}, 2, []string{"--rotate and --federation do not run together"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := (&cli.App{Stdout: &out, Stderr: &errOut}).Main(context.Background(), tc.args)
			if code != tc.code {
				t.Errorf("exit code %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, out.String(), errOut.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut.String(), w) {
					t.Errorf("stderr does not say %q:\n%s", w, errOut.String())
				}
			}
			if out.Len() != 0 {
				t.Errorf("nothing should start, but stdout says:\n%s", out.String())
			}
		})
	}
}

func TestDemoAppBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"demo", "app", "--listen", "127.0.0.1:0"},
		{"demo", "app", "--name", "x", "--listen", "127.0.0.1:0", "--call", "db"},
		{"demo", "app", "--name", "x", "--listen", "127.0.0.1:0", "--call", "db=nowhere"},
	} {
		var out, errOut bytes.Buffer
		if code := (&cli.App{Stdout: &out, Stderr: &errOut}).Main(context.Background(), args); code != 2 {
			t.Errorf("%q: exit code %d, want 2: %s", args, code, errOut.String())
		}
	}
}
