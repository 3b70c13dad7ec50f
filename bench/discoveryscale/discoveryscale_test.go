package main

import (
	"bytes"
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/xds"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
)

// TestMain lets the test binary be the server child, as the benchmark
// binary is.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "serve" {
		os.Exit(serveMain(os.Args[2:]))
	}
	os.Exit(m.Run())
}

func newRegistry(tb testing.TB, m *mesh) *discovery.Registry {
	tb.Helper()
	reg, err := discovery.NewRegistry(trustDomain, policy.AllowMesh)
	if err != nil {
		tb.Fatal(err)
	}
	if err := reg.Update(m.state); err != nil {
		tb.Fatal(err)
	}
	return reg
}

// Every change of every kind is accepted and changes the expected
// clients' views, and only theirs.
func TestChangesChangeTheExpectedViews(t *testing.T) {
	m := generate(Scale{Services: 300, Namespaces: 10, EndpointsPer: 2, Policies: 60, Clients: 30})
	reg := newRegistry(t, m)
	for n := range 3 {
		for _, kind := range changeKinds {
			before := reg.Snapshot()
			ch, err := m.apply(kind, n)
			if err != nil {
				t.Fatal(err)
			}
			if err := reg.Update(m.state); err != nil {
				t.Fatalf("%s %d: %v", kind, n, err)
			}
			for j := range m.clients {
				id := m.clientID(j)
				a, err := xds.BuildResources(before, id, "")
				if err != nil {
					t.Fatal(err)
				}
				b, err := xds.BuildResources(reg.Snapshot(), id, "")
				if err != nil {
					t.Fatal(err)
				}
				changed := len(a[ch.Type]) != len(b[ch.Type])
				for k := 0; !changed && k < len(a[ch.Type]); k++ {
					changed = !protoEqual(a[ch.Type][k], b[ch.Type][k])
				}
				if want := slices.Contains(ch.Expect, j); changed != want {
					t.Errorf("%s %d: client %d's %s changed %v, want %v", kind, n, j, shortType(ch.Type), changed, want)
				}
			}
		}
	}
}

// A whole run at a small scale, state of the world and delta: every
// change reaches its clients.
func TestSmallRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server process and 20 clients")
	}
	for _, tc := range []struct {
		name  string
		extra []string
	}{{"sotw", nil}, {"delta", []string{"-delta"}}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parseFlags(append([]string{"-services", "200", "-namespaces", "10", "-policies", "40", "-clients", "20",
				"-baseline-div", "2", "-rounds", "1", "-build-rounds", "1", "-build-nodes", "2", "-timeout", "30s"}, tc.extra...))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var out, log bytes.Buffer
			if err := run(ctx, cfg, &out, &log); err != nil {
				t.Fatalf("run: %v\n%s", err, log.String())
			}
			if strings.Contains(log.String(), "missed") {
				t.Errorf("some client missed a change:\n%s", log.String())
			}
			if !strings.Contains(out.String(), "| policy-edit | full | 1/1 |") {
				t.Errorf("report lacks the policy-edit row:\n%s", out.String())
			}
		})
	}
}

func BenchmarkUpdate(b *testing.B) {
	m := generate(fullScaleDefault)
	reg := newRegistry(b, m)
	for b.Loop() {
		if err := reg.Update(m.state); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBuildResources(b *testing.B) {
	m := generate(fullScaleDefault)
	snap := newRegistry(b, m).Snapshot()
	j := 0
	for b.Loop() {
		if _, err := xds.BuildResources(snap, m.clientID(j%len(m.clients)), ""); err != nil {
			b.Fatal(err)
		}
		j += 97
	}
}

// BenchmarkSidecarView is what a sidecar does with one client's whole
// configuration at full scale: build its View (parse and check every
// cluster, endpoint list, listener and name-table entry). The sidecar's
// xDS client does this on its first update; after that it parses only the
// resources an update changes (BenchmarkSessionUpdate in
// pkg/discovery/xdsclient).
func BenchmarkSidecarView(b *testing.B) {
	m := generate(fullScaleDefault)
	snap := newRegistry(b, m).Snapshot()
	id := m.clientID(0)
	res, err := xds.BuildResources(snap, id, "")
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := xdsclient.NewViewFor(id, res); err != nil {
			b.Fatal(err)
		}
	}
}
