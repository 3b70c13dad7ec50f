package cli_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/caserver"
	"github.com/tether-mesh/tether/internal/discoveryserver"
	"github.com/tether-mesh/tether/internal/sidecar"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
	"github.com/tether-mesh/tether/pkg/identity"
	"github.com/tether-mesh/tether/pkg/identity/agent"
)

// statusMesh is a small real mesh for tether status: tether-ca,
// tether-discovery serving a mesh.yaml, db and web behind sidecars (db
// admits only api, so both of web's calls to db are denied: by web's view
// and, through a fixed peer, by db), and ghost, an xDS client whose admin
// address does not answer.
type statusMesh struct {
	caSocket, caAdmin   string
	discAdmin, discGRPC string
	web, db             *sidecar.Sidecar
	dbApp               string
}

const statusMeshFile = `services:
  - name: db
    clusterIPs: [10.96.0.12]
    ports: [{name: tcp, port: 5432, targetPort: %s}]
%s
policies:
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: db-clients, namespace: default}
    spec:
      destination: {service: db}
      sources:
        - serviceAccount: {name: api}
`

func testLog() *slog.Logger {
	if os.Getenv("TETHER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}

// runUntilCleanup runs fn until the test ends and checks it returns nil.
func runUntilCleanup(t *testing.T, what string, fn func(ctx context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: %v", what, err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("%s did not stop", what)
		}
	})
}

// startStatusMesh starts the mesh; the admin ports and discovery's gRPC
// port listen on host, so that sidecars connect to discovery from host.
func startStatusMesh(t *testing.T, host string) *statusMesh {
	t.Helper()
	m := &statusMesh{}
	dir := t.TempDir()
	ca, err := caserver.New(context.Background(), caserver.Config{
		TrustDomain: "cluster.local", ListenAddr: "127.0.0.1:0", AdminAddr: net.JoinHostPort(host, "0"),
		Store: "dir", StoreDir: dir, SVIDTTL: time.Hour, IntermediateTTL: 720 * time.Hour, RootTTL: 8760 * time.Hour,
		PropagationDelay: time.Minute, TickInterval: time.Second, Logger: testLog(),
	})
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, "tether-ca", ca.Run)
	bundle := filepath.Join(dir, "bundle.pem")
	testutil.Eventually(t, "tether-ca", 15*time.Second, func() bool {
		_, err := os.Stat(bundle)
		return err == nil && ca.Addr("grpc") != nil && ca.Addr("admin") != nil
	})
	m.caSocket, m.caAdmin = filepath.Join(dir, "admin.sock"), ca.Addr("admin").String()
	caAddr := ca.Addr("grpc").String()
	token := func(id string) string {
		t.Helper()
		args := []string{"ca", "token", "create", "--socket", m.caSocket, "--spiffe-id", id}
		if strings.Contains(id, "/ns/tether-system/") {
			args = append(args, "--allow-reserved")
		}
		out, errOut, code := run(t, args...)
		if code != 0 {
			t.Fatalf("token for %s: %s", id, errOut)
		}
		return strings.TrimSpace(out)
	}

	m.dbApp = testutil.EchoServer(t, "")
	_, appPort, _ := net.SplitHostPort(m.dbApp)
	meshFile := filepath.Join(dir, "mesh.yaml")
	writeMesh := func(endpoints string) {
		t.Helper()
		if err := os.WriteFile(meshFile+".tmp", fmt.Appendf(nil, statusMeshFile, appPort, endpoints), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(meshFile+".tmp", meshFile); err != nil {
			t.Fatal(err)
		}
	}
	writeMesh("")
	disc, err := discoveryserver.New(discoveryserver.Config{
		TrustDomain: "cluster.local", MeshFile: meshFile, MeshFileInterval: 50 * time.Millisecond,
		ListenAddr: net.JoinHostPort(host, "0"), AdminAddr: net.JoinHostPort(host, "0"),
		CAAddr: caAddr, BundleFile: bundle, JoinToken: token("spiffe://cluster.local/ns/tether-system/sa/tether-discovery"),
		Logger: testLog(),
	})
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, "tether-discovery", disc.Run)
	testutil.Eventually(t, "tether-discovery ready", 15*time.Second, func() bool { return disc.Ready() == nil && disc.Addr("grpc") != nil })
	m.discAdmin, m.discGRPC = disc.Addr("admin").String(), disc.Addr("grpc").String()

	startSidecar := func(name string, in []sidecar.InboundListener, out ...string) *sidecar.Sidecar {
		t.Helper()
		cfg := sidecar.Config{
			TrustDomain: "cluster.local", CAAddr: caAddr, BundleFile: bundle, JoinToken: token("spiffe://cluster.local/ns/default/sa/" + name),
			AdminAddr: net.JoinHostPort(host, "0"), Inbound: in, InboundMode: "strict", AccessLog: "off",
			DiscoveryAddr: m.discGRPC, DrainTimeout: time.Second, Logger: testLog(),
		}
		for _, spec := range out {
			o, err := sidecar.ParseOutbound(spec)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Outbound = append(cfg.Outbound, o)
		}
		s, err := sidecar.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		runUntilCleanup(t, name+"'s sidecar", s.Run)
		testutil.Eventually(t, name+"'s sidecar ready", 15*time.Second, func() bool {
			a := s.Addr("admin")
			if a == nil {
				return false
			}
			resp, err := http.Get("http://" + a.String() + "/healthz/ready") // an SVID and a view from discovery
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
		return s
	}
	m.db = startSidecar("db", []sidecar.InboundListener{{Listen: "127.0.0.1:0", App: m.dbApp}})
	_, dbPort, _ := net.SplitHostPort(m.db.Addr("inbound/0").String())
	writeMesh("    endpoints: [{address: 127.0.0.1, port: " + dbPort + ", serviceAccount: db}]")
	dbID := "spiffe://cluster.local/ns/default/sa/db"
	m.web = startSidecar("web", nil, "127.0.0.1:0=default/db:5432", "127.0.0.1:0="+m.db.Addr("inbound/0").String()+"@"+dbID)

	// ghost: a workload whose admin address nobody answers.
	ghostID := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/ghost")
	b, err := identity.LoadBundlePEM(bundle, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	ghostToken := token(ghostID.String())
	ag, err := agent.New(agent.Config{CAAddr: caAddr, Bundle: b, Logger: testLog(), Credential: func() (*cav1.Credential, error) {
		return &cav1.Credential{Kind: identity.KindJoinToken, Token: ghostToken}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, "ghost's agent", ag.Run)
	testutil.Eventually(t, "ghost's SVID", 15*time.Second, func() bool { return ag.Ready() == nil })
	ghost, err := xdsclient.New(xdsclient.Config{Addr: m.discGRPC, ID: ghostID, SVIDs: ag, Bundles: ag, Logger: testLog(),
		AdminAddr: net.JoinHostPort(host, "1"), Version: "ghost-1"})
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, "ghost's xDS client", ghost.Run)
	return m
}

// deny makes web's two calls to db, which are both refused.
func (m *statusMesh) deny(t *testing.T) {
	t.Helper()
	for _, listener := range []string{"outbound/0", "outbound/1"} {
		addr := m.web.Addr(listener).String()
		testutil.Eventually(t, "a denial through web's "+listener, 15*time.Second, func() bool {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				return false
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Second))
			c.Write([]byte("hello"))
			_, err = c.Read(make([]byte, 5))
			return err != nil && strings.Contains(err.Error(), "reset")
		})
	}
}

// statusJSON is the part of tether status --json the tests read.
type statusJSON struct {
	Mode string `json:"mode"`
	CA   *struct {
		Source         string `json:"source"`
		Error          string `json:"error"`
		TrustDomain    string `json:"trust_domain"`
		BundleSequence uint64 `json:"bundle_sequence"`
		Generations    []struct {
			ID                  uint64    `json:"id"`
			State               string    `json:"state"`
			RootExpires         time.Time `json:"root_expires"`
			IntermediateExpires time.Time `json:"intermediate_expires"`
		} `json:"generations"`
	} `json:"ca"`
	Discovery []struct {
		Source   string `json:"source"`
		Error    string `json:"error"`
		Sidecars int    `json:"sidecars"`
	} `json:"discovery"`
	Sidecars []struct {
		SpiffeID     string    `json:"spiffe_id"`
		AdminAddr    string    `json:"admin_addr"`
		Pod          string    `json:"pod"`
		Version      string    `json:"version"`
		SVIDExpiry   time.Time `json:"svid_expiry"`
		ExpiringSoon bool      `json:"expiring_soon"`
		DenialsTotal uint64    `json:"denials_total"`
		DenialsError string    `json:"denials_error"`
	} `json:"sidecars"`
	ExpiringSoon int `json:"expiring_soon"`
	Denials      []struct {
		Sidecar     string `json:"sidecar"`
		Direction   string `json:"direction"`
		Source      string `json:"source"`
		Destination string `json:"destination"`
		Rule        string `json:"rule"`
	} `json:"recent_denials"`
	Problems []string `json:"problems"`
}

func statusOf(t *testing.T, args ...string) (statusJSON, string, int) {
	t.Helper()
	out, errOut, code := run(t, append([]string{"status", "--json"}, args...)...)
	var s statusJSON
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("status --json: %v\nstdout: %s\nstderr: %s", err, out, errOut)
	}
	return s, errOut, code
}

// TestStatusStandalone runs tether status against a real loopback mesh.
func TestStatusStandalone(t *testing.T) {
	m := startStatusMesh(t, "127.0.0.1")
	m.deny(t)
	web, db, ghost := "spiffe://cluster.local/ns/default/sa/web", "spiffe://cluster.local/ns/default/sa/db", "spiffe://cluster.local/ns/default/sa/ghost"
	args := []string{"--ca-socket", m.caSocket, "--discovery-admin", "http://" + m.discAdmin}

	var s statusJSON
	var errOut string
	var code int
	eventuallyNoFatal(t, "all three sidecars and both denials", 15*time.Second, func() bool {
		s, errOut, code = statusOf(t, append(args, "--soon", "2h")...)
		return len(s.Sidecars) == 3 && hasDenial(s, web, "outbound", "unknown service, or policy allows none of its ports") && hasDenial(s, db, "inbound", "admits "+web)
	})
	if t.Failed() {
		b, _ := json.MarshalIndent(s, "", "  ")
		t.Fatalf("last status: %s\n%s", b, errOut)
	}
	if code != 1 || !strings.Contains(errOut, "1 problem(s)") {
		t.Errorf("exit %d, stderr %q; want 1 for the unreachable ghost", code, errOut)
	}
	if s.Mode != "standalone" || s.CA == nil || s.CA.Error != "" || s.CA.TrustDomain != "cluster.local" || len(s.CA.Generations) != 1 ||
		s.CA.Generations[0].State != "active" || time.Until(s.CA.Generations[0].RootExpires) < 360*24*time.Hour ||
		time.Until(s.CA.Generations[0].IntermediateExpires) < 29*24*time.Hour {
		t.Errorf("CA: %+v", s.CA)
	}
	if len(s.Discovery) != 1 || s.Discovery[0].Error != "" || s.Discovery[0].Sidecars != 3 {
		t.Errorf("discovery: %+v", s.Discovery)
	}
	// Sorted by SPIFFE ID: db, ghost, web. Every SVID lives 1h: all
	// expire within --soon 2h.
	if s.ExpiringSoon != 3 {
		t.Errorf("expiring soon: %d, want 3", s.ExpiringSoon)
	}
	for i, want := range []struct {
		id, admin string
		total     uint64
		err       string
	}{{db, m.db.Addr("admin").String(), 1, ""}, {ghost, "127.0.0.1:1", 0, "connection refused"}, {web, m.web.Addr("admin").String(), 1, ""}} {
		sc := s.Sidecars[i]
		if sc.SpiffeID != want.id || sc.AdminAddr != want.admin || sc.DenialsTotal < want.total || !sc.ExpiringSoon ||
			time.Until(sc.SVIDExpiry) > time.Hour || time.Until(sc.SVIDExpiry) < 50*time.Minute ||
			(want.err == "") != (sc.DenialsError == "") || !strings.Contains(sc.DenialsError, want.err) {
			t.Errorf("sidecar %d: %+v, want %+v", i, sc, want)
		}
	}
	if len(s.Problems) != 1 || !strings.Contains(s.Problems[0], ghost) || !strings.Contains(s.Problems[0], "unreachable") {
		t.Errorf("problems: %q", s.Problems)
	}
	for _, d := range s.Denials {
		if d.Source != web || d.Rule == "" || d.Destination == "" {
			t.Errorf("denial %+v", d)
		}
	}

	// With the default --soon (10m), no SVID of 1h is flagged.
	if s, _, _ := statusOf(t, args...); s.ExpiringSoon != 0 {
		t.Errorf("expiring within 10m: %d, want 0", s.ExpiringSoon)
	}
	if s, _, _ := statusOf(t, append(args, "--denials", "1")...); len(s.Denials) != 1 {
		t.Errorf("--denials 1 shows %d", len(s.Denials))
	}

	// The text form names every part.
	out, _, code := run(t, append([]string{"status"}, args...)...)
	for _, want := range []string{"Tether status (standalone)", "CA (operator socket " + m.caSocket + ")", "trust domain cluster.local",
		"GENERATION", "active", "Discovery (http://" + m.discAdmin + "): 3 sidecar stream(s)", "Sidecars: 3, 0 with an SVID expiring within 10m",
		web, "unreachable", "Recent denials: ", "ns/default/sa/web", "default/db:5432", "Problems: 1"} {
		if !strings.Contains(out, want) {
			t.Errorf("text output lacks %q:\n%s", want, out)
		}
	}
	if code != 1 {
		t.Errorf("text: exit %d", code)
	}
	t.Logf("tether status:\n%s", out)

	// One part down: the others are still shown.
	s, errOut, code = statusOf(t, "--ca-socket", filepath.Join(t.TempDir(), "nope.sock"), "--discovery-admin", m.discAdmin)
	if code != 1 || s.CA == nil || !strings.Contains(s.CA.Error, "is tether-ca running?") || len(s.Sidecars) != 3 || len(s.Problems) != 2 {
		t.Errorf("CA down: exit %d, CA %+v, %d sidecars, problems %q, stderr %q", code, s.CA, len(s.Sidecars), s.Problems, errOut)
	}
	closed := testutil.EchoServer(t, "") // a port that is not discovery's admin
	s, _, code = statusOf(t, "--ca-socket", m.caSocket, "--discovery-admin", "http://"+m.discAdmin, "--discovery-admin", "http://"+closed, "--timeout", "1s")
	if code != 1 || len(s.Discovery) != 2 || s.Discovery[1].Error == "" || len(s.Sidecars) != 3 || s.CA.Error != "" {
		t.Errorf("one discovery replica broken: exit %d, %+v", code, s.Discovery)
	}
}

func TestStatusUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--ca-socket", "x", "--kubeconfig", "y"}, "give one or the other"},
		{[]string{"--discovery-admin", "ftp://x"}, "want an http URL"},
		{[]string{"--ca-socket", "x", "--timeout", "0s"}, "must be positive"},
		{[]string{"--ca-socket", "x", "--soon", "-1m"}, "must not be negative"},
		{[]string{"extra"}, `tether status takes no arguments, got ["extra"]`},
	} {
		_, errOut, code := run(t, append([]string{"status"}, tc.args...)...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("status %q: exit %d, stderr %q; want 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
}

// eventuallyNoFatal is testutil.Eventually that marks the test failed but
// lets it report what it saw.
func eventuallyNoFatal(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Errorf("timed out after %s waiting for %s", timeout, what)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// hasDenial reports whether s lists a denial by sidecar in direction whose
// rule contains rule.
func hasDenial(s statusJSON, sidecar, direction, rule string) bool {
	for _, d := range s.Denials {
		if d.Sidecar == sidecar && d.Direction == direction && strings.Contains(d.Rule, rule) {
			return true
		}
	}
	return false
}
