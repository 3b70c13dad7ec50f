package cli_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
	"github.com/tether-mesh/tether/pkg/identity/agent"
	"github.com/tether-mesh/tether/pkg/identity/workload"
)

const webID = "spiffe://cluster.local/ns/default/sa/web"

// startSidecar runs a test CA on loopback, an agent for webID and a
// Workload API server for it; with ready false the agent never runs, so
// the sidecar never gets an identity. It returns the socket path.
func startSidecar(t *testing.T, ready bool) (string, *agent.Agent, *identity.CA) {
	t.Helper()
	ca := testutil.NewCA(t, identity.RealClock, nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := identity.NewServer(ca, map[string]identity.Attestor{identity.KindJoinToken: ca.JoinTokens()}, nil).GRPCServer()
	go g.Serve(l)
	t.Cleanup(g.Stop)
	tok, _, err := ca.CreateJoinToken(context.Background(), testutil.ID("/ns/default/sa/web"), time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{CAAddr: l.Addr().String(), Bundle: ca.Bundle().Bundle,
		Credential: func() (*cav1.Credential, error) {
			return &cav1.Credential{Kind: identity.KindJoinToken, Token: tok}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var running []chan struct{}
	if ready {
		done := make(chan struct{})
		go func() { a.Run(ctx); close(done) }()
		running = append(running, done)
	}
	socket := filepath.Join(t.TempDir(), "workload.sock")
	wl, err := workload.Listen(socket, workload.Access{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { workload.New(a, nil).Serve(ctx, wl); close(done) }()
	running = append(running, done)
	t.Cleanup(func() {
		cancel()
		for _, d := range running {
			<-d
		}
	})
	if ready {
		for a.Ready() != nil {
			time.Sleep(10 * time.Millisecond)
		}
	}
	return socket, a, ca
}

func TestIdentity(t *testing.T) {
	socket, a, ca := startSidecar(t, true)
	svid, _ := a.GetX509SVID()
	serial := svid.Certificates[0].SerialNumber.Text(16)
	root := ca.Bundle().Bundle.X509Authorities()[0]
	sum := sha256.Sum256(root.Raw)
	fingerprint := strings.ToUpper(fmt.Sprintf("%x", sum[:2]))

	t.Run("text", func(t *testing.T) {
		out, errOut, code := run(t, "identity", "--socket", "unix://"+socket)
		if code != 0 {
			t.Fatalf("code %d: %s", code, errOut)
		}
		t.Logf("output:\n%s", out)
		for _, want := range []string{webID, "Serial:", serial, "left)", "Chain:", "[1]", "Trust bundle for cluster.local (1 root)", "SHA-256 " + fingerprint[:2] + ":" + fingerprint[2:]} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("json, socket from the environment", func(t *testing.T) {
		t.Setenv("SPIFFE_ENDPOINT_SOCKET", "unix://"+socket)
		out, errOut, code := run(t, "identity", "--json")
		if code != 0 {
			t.Fatalf("code %d: %s", code, errOut)
		}
		var got struct {
			SPIFFEID         string    `json:"spiffe_id"`
			Serial           string    `json:"serial"`
			NotAfter         time.Time `json:"not_after"`
			ExpiresInSeconds int64     `json:"expires_in_seconds"`
			Chain            []struct{ Subject, Issuer string }
			Bundles          []struct {
				TrustDomain string `json:"trust_domain"`
				Roots       []struct{ SHA256 string }
			}
		}
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, out)
		}
		if got.SPIFFEID != webID || got.Serial != serial || len(got.Chain) != 2 || got.ExpiresInSeconds <= 0 ||
			!got.NotAfter.Equal(svid.Certificates[0].NotAfter) || got.Chain[0].Issuer != got.Chain[1].Subject {
			t.Errorf("JSON %+v", got)
		}
		if len(got.Bundles) != 1 || got.Bundles[0].TrustDomain != "cluster.local" || len(got.Bundles[0].Roots) != 1 ||
			strings.ReplaceAll(got.Bundles[0].Roots[0].SHA256, ":", "") != strings.ToUpper(fmt.Sprintf("%x", sum)) {
			t.Errorf("bundles %+v", got.Bundles)
		}
	})

	t.Run("write", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "out")
		out, errOut, code := run(t, "identity", "--socket", socket, "--write", dir)
		if code != 0 {
			t.Fatalf("code %d: %s", code, errOut)
		}
		if !strings.Contains(out, filepath.Join(dir, "svid.key")) {
			t.Errorf("output does not say what it wrote:\n%s", out)
		}
		written, err := x509svid.Load(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid.key"))
		if err != nil {
			t.Fatalf("go-spiffe cannot load the written SVID: %v", err)
		}
		bundle, err := identity.LoadBundlePEM(filepath.Join(dir, "bundle.pem"), "")
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := x509svid.Verify(written.Certificates, bundle); err != nil {
			t.Fatalf("written SVID does not verify against the written bundle: %v", err)
		}
		if written.Certificates[0].SerialNumber.Text(16) != serial {
			t.Error("wrote another SVID than the sidecar holds")
		}
		if fi, _ := os.Stat(filepath.Join(dir, "svid.key")); fi.Mode().Perm() != 0o600 {
			t.Errorf("svid.key mode %v, want 0600", fi.Mode().Perm())
		}
	})
}

func TestIdentityErrors(t *testing.T) {
	notReady, _, _ := startSidecar(t, false)
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()

	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no socket", []string{"--socket", filepath.Join(dir, "none.sock")}, 1, "no Workload API socket at " + filepath.Join(dir, "none.sock") + ": is the sidecar running? set SPIFFE_ENDPOINT_SOCKET or --socket"},
		{"sidecar not ready", []string{"--socket", notReady, "--timeout", "300ms"}, 1, "the sidecar has no identity yet"},
		{"nobody listening", []string{"--socket", stale, "--timeout", "2s"}, 1, "is the sidecar running?"},
		{"bad address", []string{"--socket", "http://x"}, 2, "--socket"},
		{"positional argument", []string{"extra"}, 2, `tether identity takes no arguments, got ["extra"]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("SPIFFE_ENDPOINT_SOCKET", "")
			_, errOut, code := run(t, append([]string{"identity"}, tt.args...)...)
			if code != tt.code || !strings.Contains(errOut, tt.want) {
				t.Fatalf("code %d (want %d), stderr %q (want it to contain %q)", code, tt.code, errOut, tt.want)
			}
		})
	}
}
