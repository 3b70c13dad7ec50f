//go:build linux

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/netns"
	"github.com/tether-mesh/tether/internal/testutil"
)

// buildBinaries builds the named binaries (tether-ca, tether-sidecar,
// tether, ...) into a directory other users can read (the sidecars run as
// UID 1337), removed when the test ends.
func buildBinaries(t *testing.T, bins ...string) string {
	t.Helper()
	dir := binDir(t)
	if err := goBuild(dir, bins...); err != nil {
		t.Fatal(err)
	}
	return dir
}

// binDir makes a directory every user can read and search, removed when
// the test ends.
func binDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tether-e2e-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// goBuild builds the named binaries into dir with one `go build` (which
// links them in parallel), honouring GOFLAGS. tether-X is ./cmd/X; tether
// is ./cmd/tether.
func goBuild(dir string, bins ...string) error {
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	for _, bin := range bins {
		args = append(args, "./cmd/"+cmdOf(bin))
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = "../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", strings.Join(bins, " "), err, out)
	}
	for _, bin := range bins {
		if err := os.Rename(filepath.Join(dir, cmdOf(bin)), filepath.Join(dir, bin)); err != nil {
			return err
		}
	}
	return nil
}

func cmdOf(bin string) string {
	if bin == "tether" {
		return bin
	}
	return strings.TrimPrefix(bin, "tether-")
}

// serveHTTP serves a tiny app inside ns on port, on all addresses of both
// families.
func serveHTTP(t *testing.T, ns *netns.NS, port int, name string) {
	t.Helper()
	l, err := ns.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s, you came from %s\n", name, r.RemoteAddr)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

// needCurl returns curl's path; without curl the test is skipped, or
// fails on CI.
func needCurl(t *testing.T) string {
	t.Helper()
	curl, err := exec.LookPath("curl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("curl not installed (make deps installs it)")
		}
		t.Skip("needs curl")
	}
	return curl
}

// startCA runs tether-ca in ns, listening on listen, and returns the trust
// bundle's path, a function that makes a join token for a ServiceAccount of
// namespace default, and the process.
func startCA(t *testing.T, bin string, ns *netns.NS, listen string) (bundle string, token func(sa string) string, ca *netns.Proc) {
	t.Helper()
	state, err := os.MkdirTemp("", "tether-e2e-state-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	os.Chmod(state, 0o755)
	caDir := filepath.Join(state, "ca")
	ca = ns.Start(t, 0, filepath.Join(bin, "tether-ca"), "--store-dir", caDir, "--listen", listen, "--admin-listen", "127.0.0.1:15914")
	waitFor(t, "tether-ca", 15*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(caDir, "admin.sock"))
		return err == nil
	})
	bundle = filepath.Join(state, "bundle.pem")
	data, err := os.ReadFile(filepath.Join(caDir, "bundle.pem"))
	if err != nil {
		t.Fatalf("%v\n%s", err, ca.Output())
	}
	os.WriteFile(bundle, data, 0o644)
	token = func(sa string) string {
		out, err := exec.Command(filepath.Join(bin, "tether"), "ca", "token", "create", "--socket", filepath.Join(caDir, "admin.sock"),
			"--spiffe-id", "spiffe://cluster.local/ns/default/sa/"+sa, "--ttl", "10m").Output()
		if err != nil {
			t.Fatalf("token: %v", err)
		}
		return strings.TrimSpace(string(out))
	}
	return bundle, token, ca
}

// startSidecar runs tether-sidecar --transparent in ns as UID 1337 with a
// join token, without discovery, logging at debug level.
func startSidecar(t *testing.T, bin string, ns *netns.NS, caAddr, bundle, token string, extra ...string) *netns.Proc {
	t.Helper()
	args := append([]string{filepath.Join(bin, "tether-sidecar"), "--transparent", "--ca", caAddr, "--bundle", bundle,
		"--join-token", token, "--workload-socket", "", "--log-level", "debug"}, extra...)
	return ns.Start(t, 1337, args...)
}

// sidecarReady reports whether the sidecar in ns answers ready on its
// admin port.
func sidecarReady(ns *netns.NS, curl string) func() bool {
	return func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		out, err := ns.Output(ctx, 0, curl, "-sf", "http://127.0.0.1:15020/healthz/ready")
		return err == nil && strings.Contains(out, "ready")
	}
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, what, timeout, cond)
}

// twoPods makes pods A and B, named name-a and name-b, joined by a veth:
// A at 10.n.0.1/24, B at 10.n.0.2/24.
func twoPods(t *testing.T, name string, n int) (a, b *netns.NS) {
	t.Helper()
	a, b = netns.New(t, name+"-a"), netns.New(t, name+"-b")
	netns.Link(t, a, b, netip.MustParsePrefix(fmt.Sprintf("10.%d.0.1/24", n)), netip.MustParsePrefix(fmt.Sprintf("10.%d.0.2/24", n)))
	return a, b
}

// namedProc is a process and what a failed test's log calls it.
type namedProc struct {
	name string
	proc *netns.Proc
}

// logOnFailure logs what each process wrote, under its name, when the
// test ends failed.
func logOnFailure(t *testing.T, procs ...namedProc) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		outputs := make([]string, len(procs))
		for i, p := range procs {
			outputs[i] = p.name + ":\n" + p.proc.Output()
		}
		t.Log(strings.Join(outputs, "\n"))
	})
}

// TestTransparentCapture: two pods joined by veth, each with the capture
// rules of `tether-sidecar init` and a sidecar running as UID 1337. A plain
// curl from pod A to pod B's IP reaches B's app over mTLS; a port B's
// policy does not allow is refused.
func TestTransparentCapture(t *testing.T) {
	netns.RequireRoot(t)
	curl := needCurl(t)
	bin := buildBinaries(t, "tether-ca", "tether-sidecar", "tether")
	a, b := twoPods(t, "pod", 211)

	// tether-ca runs in pod B on 8443, which B's capture excludes.
	bundle, token, ca := startCA(t, bin, b, "10.211.0.2:8443")

	serveHTTP(t, b, 8080, "b")
	serveHTTP(t, b, 9090, "b-admin-app")
	a.Run(t, filepath.Join(bin, "tether-sidecar"), "init")
	b.Run(t, filepath.Join(bin, "tether-sidecar"), "init", "--exclude-inbound-ports", "8443")
	// Idempotent: a second run changes nothing and succeeds.
	a.Run(t, filepath.Join(bin, "tether-sidecar"), "init")

	sidecar := func(ns *netns.NS, sa string, extra ...string) *netns.Proc {
		return startSidecar(t, bin, ns, "10.211.0.2:8443", bundle, token(sa), extra...)
	}
	sa := sidecar(a, "a", "--mesh-endpoint", "10.211.0.2:8080=spiffe://cluster.local/ns/default/sa/b",
		"--mesh-endpoint", "10.211.0.2:9090=spiffe://cluster.local/ns/default/sa/b")
	sb := sidecar(b, "b", "--allow", "spiffe://cluster.local/ns/default/sa/a=8080")
	waitFor(t, "sidecar A ready", 20*time.Second, sidecarReady(a, curl))
	waitFor(t, "sidecar B ready", 20*time.Second, sidecarReady(b, curl))
	logOnFailure(t, namedProc{"sidecar A", sa}, namedProc{"sidecar B", sb}, namedProc{"CA", ca})

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := a.Output(ctx, 0, curl, "-sS", "--max-time", "10", "http://10.211.0.2:8080/")
	if err != nil {
		t.Fatalf("curl from pod A to pod B: %v", err)
	}
	// The app (on all addresses) sees the connection come from B's sidecar,
	// which delivers it at the pod IP from 127.0.0.6.
	if !strings.HasPrefix(out, "hello from b, you came from 127.0.0.6:") {
		t.Fatalf("curl got %q", out)
	}
	// The hop was mTLS between the two identities: B's sidecar logged it.
	waitFor(t, "B's access log entry", 5*time.Second, func() bool {
		return strings.Contains(sb.Output(), `"source_id":"spiffe://cluster.local/ns/default/sa/a"`) &&
			strings.Contains(sb.Output(), `"decision":"allow"`)
	})
	metrics, err := b.Output(ctx, 0, curl, "-sf", "http://127.0.0.1:15020/metrics")
	if err != nil || !strings.Contains(metrics, `tether_sidecar_connections_total{direction="inbound",result="ok"}`) {
		t.Fatalf("B's metrics show no inbound mTLS connection: %v\n%s", err, metrics)
	}

	// Port 9090 is a mesh destination, but B's policy does not allow A there.
	if out, err := a.Output(ctx, 0, curl, "-sS", "--max-time", "10", "http://10.211.0.2:9090/"); err == nil {
		t.Fatalf("curl to a port B's policy denies succeeded: %q", out)
	}
	waitFor(t, "B's denial", 5*time.Second, func() bool {
		return strings.Contains(sb.Output(), "may not reach port 9090")
	})

	// Cleanup removes the rules; A's traffic then goes straight to B's
	// sidecar inbound capture in plaintext, which strict mode refuses.
	a.Run(t, filepath.Join(bin, "tether-sidecar"), "init", "--cleanup")
	if rules := a.Run(t, "iptables-save", "-t", "nat"); strings.Contains(rules, "TETHER_") {
		t.Fatalf("rules left after --cleanup:\n%s", rules)
	}
	if out, err := a.Output(ctx, 0, curl, "-sS", "--max-time", "5", "http://10.211.0.2:8080/"); err == nil {
		t.Fatalf("plaintext reached B's app through a strict sidecar: %q", out)
	}

	// SIGTERM: the sidecar drains and exits 0.
	syscall.Kill(sb.Pid(), syscall.SIGTERM)
	select {
	case <-sb.Done():
		if err := sb.Err(); err != nil {
			t.Fatalf("sidecar exit after SIGTERM: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("sidecar did not exit within 10s of SIGTERM")
	}
}
