package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The flow-reporting setups (issue 15): the tether pair with discovery,
// its policy from a mesh.yaml, A's outbound resolved by service name; with
// the flow summary and a report every second (tether-flows), or with
// --flow-report-interval 0, no summary at all (tether-noflows). The
// report gives tether-flows ÷ tether-noflows per round. Discovery is
// shared by the run and not counted: CPU and memory are the sidecars'.
const flowsService = "proxybench-b"

// discoveryID is the identity tether-discovery presents.
const discoveryID = "spiffe://cluster.local/ns/tether-system/sa/tether-discovery"

// tetherDiscovery is the run's tether-discovery.
type tetherDiscovery struct {
	addr, meshFile string
}

// startDiscovery starts tether-discovery on a mesh file the flow setups
// rewrite for each pair.
func (e *env) startDiscovery(ctx context.Context) error {
	if e.discovery != nil {
		return nil
	}
	if e.ca == nil {
		return errors.New("tether-discovery: no tether-ca")
	}
	tok, err := output(ctx, filepath.Join(e.bins, "tether"), "ca", "token", "create", "--socket", e.ca.sock,
		"--spiffe-id", discoveryID, "--ttl", "12h", "--reusable", "--allow-reserved")
	if err != nil {
		return err
	}
	addrs, err := freeAddrs(2)
	if err != nil {
		return err
	}
	d := &tetherDiscovery{addr: addrs[0], meshFile: filepath.Join(e.dir, "mesh.yaml")}
	if err := os.WriteFile(d.meshFile, []byte("defaultPolicy: deny\n"), 0o600); err != nil {
		return err
	}
	c, err := startChild(e.dir, "tether-discovery", filepath.Join(e.bins, "tether-discovery"),
		"--mesh-file", d.meshFile, "--mesh-file-interval", "100ms", "--listen", addrs[0], "--admin-listen", addrs[1],
		"--ca", e.ca.addr, "--bundle", e.ca.bundle, "--join-token", tok, "--log-level", "warn")
	if err != nil {
		return err
	}
	e.children = append(e.children, c)
	e.discovery = d
	return nil
}

// flowsMesh is the mesh file of one pair: B serves proxybench-b:80 (the
// echo server's port behind B's inbound listener), A may call it.
func flowsMesh(inbound, echo string) (string, error) {
	_, ip, err := net.SplitHostPort(inbound)
	if err != nil {
		return "", err
	}
	_, ep, err := net.SplitHostPort(echo)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf(`defaultPolicy: deny
services:
  - name: %[1]s
    ports: [{port: 80, targetPort: %[2]s}]
    endpoints: [{address: 127.0.0.1, port: %[3]s, serviceAccount: proxybench-b}]
policies:
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: a-to-b, namespace: default}
    spec:
      destination: {service: %[1]s}
      sources: [{serviceAccount: {name: proxybench-a}}]
`, flowsService, ep, ip), nil
}

// startTetherFlows returns the start of tether-flows (interval "1s") or
// tether-noflows ("0").
func startTetherFlows(interval string) func(ctx context.Context, e *env, dir string) (*pair, error) {
	return func(ctx context.Context, e *env, dir string) (*pair, error) {
		if err := e.startDiscovery(ctx); err != nil {
			return nil, fmt.Errorf("tether-discovery: %w", err)
		}
		a, err := freeAddrs(4)
		if err != nil {
			return nil, err
		}
		mesh, err := flowsMesh(a[1], e.echo)
		if err != nil {
			return nil, err
		}
		tmp := e.discovery.meshFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(mesh), 0o600); err != nil {
			return nil, err
		}
		if err := os.Rename(tmp, e.discovery.meshFile); err != nil {
			return nil, err
		}
		sidecar := filepath.Join(e.bins, "tether-sidecar")
		ca, err := e.sidecarArgs(ctx, sidecar, dir, "sidecar-a", e.ca.tokenA, a[2])
		if err != nil {
			return nil, err
		}
		cb, err := e.sidecarArgs(ctx, sidecar, dir, "sidecar-b", e.ca.tokenB, a[3])
		if err != nil {
			return nil, err
		}
		common := []string{"--discovery", e.discovery.addr, "--flow-report-interval", interval}
		p, err := startPair(ctx, dir, a[0],
			slices.Concat([]string{"sidecar-a", sidecar, "--outbound", a[0] + "=default/" + flowsService + ":80"}, common, ca),
			slices.Concat([]string{"sidecar-b", sidecar, "--inbound", a[1] + "=" + e.echo}, common, cb))
		if err != nil {
			return nil, err
		}
		p.note = func() string { return tetherNote(ctx, "http://"+a[2]+"/metrics") + "; " + flowsNote(ctx, a[2], a[3]) }
		p.target, p.admins = a[1], []string{a[2], a[3]}
		return p, nil
	}
}

// flowsNote reads the sidecars' flow report counters.
func flowsNote(ctx context.Context, admins ...string) string {
	var parts []string
	for i, admin := range admins {
		ok := metricValue(ctx, "http://"+admin+"/metrics", `tether_sidecar_flow_reports_total{result="ok"}`)
		dropped := metricValue(ctx, "http://"+admin+"/metrics", `tether_sidecar_flows_dropped_total{reason="full"}`)
		if math.IsNaN(ok) {
			ok = 0
		}
		parts = append(parts, fmt.Sprintf("sidecar %c: %.0f flow reports, %.0f connections dropped", 'A'+i, ok, dropped))
	}
	return strings.Join(parts, "; ")
}

// metricValue reads one sample of url, NaN if absent.
func metricValue(ctx context.Context, url, series string) float64 {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	body, err := fetch(ctx, url)
	if err != nil {
		return math.NaN()
	}
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return math.NaN()
}

func fetch(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
