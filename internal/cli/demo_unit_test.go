package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/pkg/discovery"
)

func TestMetricSum(t *testing.T) {
	text := `# HELP tether_sidecar_authz_denials_total Denials.
# TYPE tether_sidecar_authz_denials_total counter
tether_sidecar_authz_denials_total{destination="default/db:5432",direction="outbound",reason="policy allows no port of default/db",source_id="spiffe://cluster.local/ns/default/sa/web"} 3
tether_sidecar_authz_denials_total{destination="127.0.0.1:1",direction="inbound",reason="a \"quoted\", comma, rule",source_id="x"} 2
tether_sidecar_authz_denials_total_other 7
tether_discovery_svid_expiry_timestamp_seconds 1.7e+09
`
	for _, tc := range []struct {
		name   string
		metric string
		want   map[string]string
		sum    float64
		ok     bool
	}{
		{"all series", "tether_sidecar_authz_denials_total", nil, 5, true},
		{"by label", "tether_sidecar_authz_denials_total", map[string]string{"direction": "outbound"}, 3, true},
		{"escaped label value", "tether_sidecar_authz_denials_total", map[string]string{"reason": `a "quoted", comma, rule`}, 2, true},
		{"no match", "tether_sidecar_authz_denials_total", map[string]string{"direction": "sideways"}, 0, false},
		{"no labels", "tether_discovery_svid_expiry_timestamp_seconds", nil, 1.7e9, true},
		{"prefix of a longer name is not it", "tether_discovery_svid_expiry", nil, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sum, ok := metricSum(text, tc.metric, tc.want)
			if sum != tc.sum || ok != tc.ok {
				t.Errorf("metricSum = %v, %v; want %v, %v", sum, ok, tc.sum, tc.ok)
			}
		})
	}
}

func TestPlanDemoPortsFree(t *testing.T) {
	addrs, err := planDemoPorts(0)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, p := range demoPortLayout {
		a := addrs[p.key]
		if !strings.HasPrefix(a, "127.0.0.1:") || seen[a] {
			t.Errorf("%s: %q (duplicate: %v)", p.key, a, seen[a])
		}
		seen[a] = true
	}
}

// TestPlanDemoPortsBusy: a port of the range that is taken is named, with
// its role and what to do.
func TestPlanDemoPortsBusy(t *testing.T) {
	l, base := holdPortRange(t, 12)
	defer l.Close()
	_, err := planDemoPorts(base)
	if !errors.Is(err, errPortBusy) {
		t.Fatalf("planDemoPorts(%d) = %v, want errPortBusy", base, err)
	}
	for _, want := range []string{l.Addr().String(), "web's sidecar admin port", "--ports 0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

// holdPortRange finds a base port whose range N..N+demoPortSpan is free,
// and holds N+offset. It looks below the kernel's ephemeral ports
// (32768 and up), which busy machines fill with client connections.
func holdPortRange(t *testing.T, offset int) (net.Listener, int) {
	t.Helper()
	for range 100 {
		base := 20000 + rand.IntN(12000-demoPortSpan)
		if _, err := planDemoPorts(base); err != nil {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+offset))
		if err != nil {
			continue
		}
		return l, base
	}
	t.Fatal("no free port range")
	return nil, 0
}

// TestDemoMeshYAML: the generated mesh.yaml is valid and says what the
// demo promises: web → api and api → db allowed, nothing else.
func TestDemoMeshYAML(t *testing.T) {
	addrs, err := planDemoPorts(0)
	if err != nil {
		t.Fatal(err)
	}
	d := &demo{cfg: demoConfig{dir: t.TempDir(), keep: true}, ports: addrs}
	if err := d.plan(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(d.meshFile)
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
			code := (&App{Stdout: &out, Stderr: &errOut}).Main(context.Background(), []string{"policy", "check", "--mesh", d.meshFile, "--from", tc.from, "--to", tc.to})
			if got := code == 0; got != tc.allowed {
				t.Errorf("allowed = %v, want %v: %s%s", got, tc.allowed, out.String(), errOut.String())
			}
		})
	}
}

// fakeBinaries makes a directory with executables of the components'
// names, which must never run.
func fakeBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, b := range demoBinaries {
		if err := os.WriteFile(filepath.Join(dir, b.name), []byte("#!/bin/sh\necho must not run >&2\nexit 3\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestDemoBadInput(t *testing.T) {
	empty := t.TempDir()
	partial := t.TempDir()
	os.WriteFile(filepath.Join(partial, "tether-ca"), []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(partial, "tether-sidecar"), []byte("not executable"), 0o644)
	held, base := holdPortRange(t, 1)
	defer held.Close()
	fakes := fakeBinaries(t)
	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"unknown flag", []string{"demo", "--rotat"}, 2, []string{"flag provided but not defined: -rotat"}},
		{"argument", []string{"demo", "now"}, 2, []string{"takes 0 argument(s)"}},
		{"negative duration", []string{"demo", "--duration", "-1s"}, 2, []string{"--duration -1s: must not be negative"}},
		{"bad duration", []string{"demo", "--duration", "soon"}, 2, []string{`invalid value "soon" for flag -duration`}},
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
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := (&App{Stdout: &out, Stderr: &errOut}).Main(context.Background(), tc.args)
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

// TestDemoApp runs two sample apps in process: api calls db.
func TestDemoApp(t *testing.T) {
	free := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	dead := free()
	dbAddr, apiAddr := free(), free()
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 2)
	for _, args := range [][]string{
		{"--name", "db", "--listen", dbAddr},
		{"--name", "api", "--listen", apiAddr, "--call", "db=" + dbAddr, "--call", "gone=" + dead},
	} {
		go func() { errs <- (&App{Stdout: os.Stderr, Stderr: &bytes.Buffer{}}).demoApp(ctx, args) }()
	}
	defer func() {
		cancel()
		for range 2 {
			if err := <-errs; err != nil {
				t.Errorf("demo app: %v", err)
			}
		}
	}()
	get := func(url string) (int, string) {
		for range 50 {
			resp, err := http.Get(url)
			if err != nil {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			var b bytes.Buffer
			b.ReadFrom(resp.Body)
			resp.Body.Close()
			return resp.StatusCode, strings.TrimSpace(b.String())
		}
		t.Fatalf("GET %s: no answer", url)
		return 0, ""
	}
	for _, tc := range []struct {
		url  string
		code int
		body string
	}{
		{"http://" + dbAddr + "/", 200, "db"},
		{"http://" + apiAddr + "/", 200, "api → db"},
		{"http://" + apiAddr + "/call/db", 200, "api → db"},
		{"http://" + apiAddr + "/call/web", 404, `api does not call "web"`},
		{"http://" + apiAddr + "/call/gone", 502, "api → gone: connect: connection refused"},
	} {
		if code, body := get(tc.url); code != tc.code || body != tc.body {
			t.Errorf("GET %s = %d %q, want %d %q", tc.url, code, body, tc.code, tc.body)
		}
	}
}

func TestDemoAppBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"demo", "app", "--listen", "127.0.0.1:0"},
		{"demo", "app", "--name", "x", "--listen", "127.0.0.1:0", "--call", "db"},
		{"demo", "app", "--name", "x", "--listen", "127.0.0.1:0", "--call", "db=nowhere"},
	} {
		var out, errOut bytes.Buffer
		if code := (&App{Stdout: &out, Stderr: &errOut}).Main(context.Background(), args); code != 2 {
			t.Errorf("%q: exit code %d, want 2: %s", args, code, errOut.String())
		}
	}
}
