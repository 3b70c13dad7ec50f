package demo

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
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
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
		go func() { errs <- runApp(ctx, args) }()
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

// runApp runs `tether demo app ARGS` until ctx ends.
func runApp(ctx context.Context, args []string) error {
	app := &App{Stderr: &bytes.Buffer{}}
	fs := pflag.NewFlagSet("demo app", pflag.ContinueOnError)
	app.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	return app.Run(ctx)
}

// TestFedPortLayout: the ports of --federation are distinct and within
// the range --ports documents.
func TestFedPortLayout(t *testing.T) {
	offsets, keys := map[int]string{}, map[string]bool{}
	for _, p := range fedPortLayout {
		if p.offset < 0 || p.offset > demoPortSpan || offsets[p.offset] != "" || keys[p.key] {
			t.Errorf("%s at offset %d: out of 0..%d or taken (by %q)", p.key, p.offset, demoPortSpan, offsets[p.offset])
		}
		offsets[p.offset], keys[p.key] = p.key, true
	}
	addrs, err := planPorts(0, fedPortLayout)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != len(fedPortLayout) {
		t.Errorf("%d addresses for %d ports", len(addrs), len(fedPortLayout))
	}
}
