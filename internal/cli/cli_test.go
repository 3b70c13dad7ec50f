package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/tether-mesh/tether/internal/caserver"
	"github.com/tether-mesh/tether/internal/cli"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// caConfig is the configuration of a test tether-ca on loopback with a
// disk store in dir.
func caConfig(dir string) caserver.Config {
	return caserver.Config{
		TrustDomain: "cluster.local", ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		Store: "dir", StoreDir: dir, SVIDTTL: time.Hour, IntermediateTTL: 720 * time.Hour, RootTTL: 8760 * time.Hour,
		PropagationDelay: time.Minute, TickInterval: time.Second,
	}
}

// runCA runs a tether-ca service from c until the test ends.
func runCA(t *testing.T, c caserver.Config) *caserver.Service {
	t.Helper()
	return testutil.Start(t, "CA run", func(ctx context.Context) (*caserver.Service, error) { return caserver.New(ctx, c) }, (*caserver.Service).Run)
}

// startCA runs a real tether-ca service on loopback with a disk store.
func startCA(t *testing.T) (grpcAddr, socket, dir string) {
	t.Helper()
	dir = t.TempDir()
	svc := runCA(t, caConfig(dir))
	for range 100 {
		if a := svc.Addr("grpc"); a != nil {
			if _, err := os.Stat(filepath.Join(dir, "bundle.pem")); err == nil {
				return a.String(), filepath.Join(dir, "admin.sock"), dir
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("CA did not start")
	return
}

func run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = (&cli.App{Stdout: &o, Stderr: &e}).Main(context.Background(), args)
	return o.String(), e.String(), code
}

func TestTokenFetchAndVerify(t *testing.T) {
	addr, sock, dir := startCA(t)
	out, errOut, code := run(t, "ca", "token", "create", "--socket", sock, "--spiffe-id", "spiffe://cluster.local/ns/default/sa/web", "--ttl", "5m")
	if code != 0 {
		t.Fatalf("token create: code %d, %s", code, errOut)
	}
	token := strings.TrimSpace(out)
	outDir := filepath.Join(t.TempDir(), "svid")
	out, errOut, code = run(t, "svid", "fetch", "--ca", addr, "--bundle", filepath.Join(dir, "bundle.pem"), "--token", token, "--out", outDir)
	if code != 0 {
		t.Fatalf("svid fetch: code %d, %s", code, errOut)
	}
	if !strings.HasPrefix(out, "spiffe://cluster.local/ns/default/sa/web\n") {
		t.Errorf("fetch printed %q", out)
	}
	svid, err := x509svid.Load(filepath.Join(outDir, "svid.pem"), filepath.Join(outDir, "svid.key"))
	if err != nil {
		t.Fatalf("go-spiffe cannot load the written SVID: %v", err)
	}
	bundle, err := identity.LoadBundlePEM(filepath.Join(outDir, "bundle.pem"), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
		t.Fatalf("written SVID does not verify against the written bundle: %v", err)
	}
	if fi, _ := os.Stat(filepath.Join(outDir, "svid.key")); fi.Mode().Perm() != 0o600 {
		t.Errorf("svid.key mode %v, want 0600", fi.Mode().Perm())
	}
	if openssl, err := exec.LookPath("openssl"); err == nil {
		cmd := exec.Command(openssl, "verify", "-CAfile", filepath.Join(outDir, "bundle.pem"), "-untrusted", filepath.Join(outDir, "svid.pem"), filepath.Join(outDir, "svid.pem"))
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl verify: %v\n%s", err, b)
		}
	} else {
		t.Log("openssl not installed; skipped openssl verify (make deps installs it)")
	}
	// The token was single-use.
	_, errOut, code = run(t, "svid", "fetch", "--ca", addr, "--bundle", filepath.Join(dir, "bundle.pem"), "--token", token, "--out", outDir)
	if code != 1 || !strings.Contains(errOut, "already used") {
		t.Fatalf("replayed token: code %d, stderr %q", code, errOut)
	}
}

func TestRotationCommands(t *testing.T) {
	_, sock, _ := startCA(t)
	out, errOut, code := run(t, "ca", "status", "--socket", sock)
	if code != 0 || !strings.Contains(out, "active") {
		t.Fatalf("status: code %d out %q err %q", code, out, errOut)
	}
	if out, _, code = run(t, "ca", "rotate", "prepare", "--socket", sock); code != 0 || !strings.Contains(out, "prepared") {
		t.Fatalf("prepare: code %d out %q", code, out)
	}
	if _, errOut, code = run(t, "ca", "rotate", "activate", "--socket", sock); code != 1 || !strings.Contains(errOut, "--force") {
		t.Fatalf("early activate: code %d, stderr %q; want a refusal that mentions --force", code, errOut)
	}
	if out, _, code = run(t, "ca", "rotate", "activate", "--force", "--socket", sock); code != 0 || !strings.Contains(out, "superseded") {
		t.Fatalf("forced activate: code %d out %q", code, out)
	}
	if out, _, code = run(t, "ca", "rotate", "retire", "--force", "--socket", sock); code != 0 || !strings.Contains(out, "retired") {
		t.Fatalf("forced retire: code %d out %q", code, out)
	}
}

func TestBadInvocations(t *testing.T) {
	_, sock, dir := startCA(t)
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no command", nil, 2, "tether needs a command: ca, "},
		{"unknown command", []string{"frobnicate"}, 2, "unknown command"},
		{"rotate without step", []string{"ca", "rotate"}, 2, "tether ca rotate needs a command: activate, prepare, renew-intermediate, retire"},
		{"rotate bad step", []string{"ca", "rotate", "sideways", "--socket", sock}, 2, `unknown command "sideways" for "tether ca rotate"`},
		{"token without id", []string{"ca", "token", "create", "--socket", sock}, 2, `required flag(s) "spiffe-id" not set`},
		{"token bad id", []string{"ca", "token", "create", "--socket", sock, "--spiffe-id", "not-a-spiffe-id"}, 1, "SPIFFE ID"},
		{"token bad ttl", []string{"ca", "token", "create", "--socket", sock, "--spiffe-id", "spiffe://cluster.local/x", "--ttl", "-1h"}, 1, "lifetime"},
		{"token bare trust domain", []string{"ca", "token", "create", "--socket", sock, "--spiffe-id", "spiffe://cluster.local"}, 1, "has no path"},
		{"token reserved", []string{"ca", "token", "create", "--socket", sock, "--spiffe-id", "spiffe://cluster.local/ns/tether-system/sa/tether-discovery"}, 1, "--allow-reserved"},
		{"token for the CA", []string{"ca", "token", "create", "--socket", sock, "--spiffe-id", "spiffe://cluster.local/ns/tether-system/sa/tether-ca", "--allow-reserved"}, 1, "reserved for the CA itself"},
		{"no socket", []string{"ca", "status", "--socket", filepath.Join(dir, "nope.sock")}, 1, "is tether-ca running"},
		{"fetch without flags", []string{"svid", "fetch"}, 2, "required"},
		{"fetch both tokens", []string{"svid", "fetch", "--ca", "x:1", "--bundle", "b", "--out", "o", "--token", "t", "--k8s-token-file", "f"}, 2, "exactly one"},
		{"fetch missing bundle", []string{"svid", "fetch", "--ca", "x:1", "--bundle", filepath.Join(dir, "none.pem"), "--out", dir, "--token", "t"}, 1, "read bundle"},
		{"fetch garbage bundle", []string{"svid", "fetch", "--ca", "x:1", "--bundle", filepath.Join(dir, "ca-state.json"), "--out", dir, "--token", "t"}, 1, "no PEM certificate"},
		{"unknown flag", []string{"ca", "status", "--bogus"}, 2, "bogus"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, errOut, code := run(t, tt.args...)
			if code != tt.code || !strings.Contains(errOut, tt.want) {
				t.Fatalf("code %d (want %d), stderr %q (want it to contain %q)", code, tt.code, errOut, tt.want)
			}
		})
	}
}

// TestReservedTokenNeedsAllowReserved: a mesh component run outside
// Kubernetes gets a token for its reserved ID only with --allow-reserved,
// with a warning, and the token works.
func TestReservedTokenNeedsAllowReserved(t *testing.T) {
	addr, sock, dir := startCA(t)
	disc := "spiffe://cluster.local/ns/tether-system/sa/tether-discovery"
	out, errOut, code := run(t, "ca", "token", "create", "--socket", sock, "--spiffe-id", disc, "--allow-reserved")
	if code != 0 || !strings.Contains(errOut, "warning: "+disc+" is an identity of the mesh's own components") {
		t.Fatalf("code %d, stderr %q", code, errOut)
	}
	outDir := t.TempDir()
	if _, errOut, code := run(t, "svid", "fetch", "--ca", addr, "--bundle", filepath.Join(dir, "bundle.pem"), "--token", strings.TrimSpace(out), "--out", outDir); code != 0 {
		t.Fatalf("fetch with the reserved token: %s", errOut)
	}
	svid, err := x509svid.Load(filepath.Join(outDir, "svid.pem"), filepath.Join(outDir, "svid.key"))
	if err != nil || svid.ID.String() != disc {
		t.Fatalf("SVID %v, %v; want %s", svid, err, disc)
	}
}

// A relative socket path (as docs/ca.md shows with .tether/ca/admin.sock)
// is resolved against the working directory.
func TestRelativeAdminSocket(t *testing.T) {
	_, sock, _ := startCA(t)
	t.Chdir(filepath.Dir(sock))
	out, errOut, code := run(t, "ca", "status", "--socket", filepath.Base(sock))
	if code != 0 || !strings.Contains(out, "active") {
		t.Fatalf("status with a relative socket: code %d out %q err %q", code, out, errOut)
	}
}

// TestRevokeCommands: the operator revokes by SPIFFE ID, by serial and by
// join token (read from a file or stdin, never argv), sees the entries in
// `tether ca status`, lists live tokens without their secret, and the CA
// refuses the revoked SVID's renewal.
func TestRevokeCommands(t *testing.T) {
	addr, sock, dir := startCA(t)
	bundle := filepath.Join(dir, "bundle.pem")
	web := "spiffe://cluster.local/ns/default/sa/web"

	// token create --out writes the token to a new 0600 file, not stdout.
	tokFile := filepath.Join(t.TempDir(), "web.token")
	out, errOut, code := run(t, "ca", "token", "create", "--socket", sock, "--spiffe-id", web, "--reusable", "--out", tokFile)
	if code != 0 || out != "" || !strings.Contains(errOut, tokFile) {
		t.Fatalf("token create --out: code %d, stdout %q, stderr %q", code, out, errOut)
	}
	fi, err := os.Stat(tokFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	tokBytes, _ := os.ReadFile(tokFile)
	token := strings.TrimSpace(string(tokBytes))
	if _, _, code := run(t, "ca", "token", "create", "--socket", sock, "--spiffe-id", web, "--out", tokFile); code != 1 {
		t.Fatalf("token create --out over an existing file: code %d, want 1", code)
	}

	// The SVID is fetched with the token from the file.
	svidDir := filepath.Join(t.TempDir(), "svid")
	if _, errOut, code := run(t, "svid", "fetch", "--ca", addr, "--bundle", bundle, "--join-token-file", tokFile, "--out", svidDir); code != 0 {
		t.Fatalf("svid fetch --join-token-file: code %d, %s", code, errOut)
	}
	svid, err := x509svid.Load(filepath.Join(svidDir, "svid.pem"), filepath.Join(svidDir, "svid.key"))
	if err != nil {
		t.Fatal(err)
	}

	// token list shows the hash prefix, ID, expiry, reusable; never the token.
	out, errOut, code = run(t, "ca", "token", "list", "--socket", sock)
	hash, _ := identity.HashJoinToken(token)
	if code != 0 || strings.Contains(out, token) || strings.Contains(out, token[4:]) || !strings.Contains(out, hash[:16]) || !strings.Contains(out, web) || !strings.Contains(out, "reusable") {
		t.Fatalf("token list: code %d, out %q, err %q", code, out, errOut)
	}
	out, errOut, code = run(t, "ca", "token", "list", "--socket", sock, "-o", "json")
	var tokens []struct {
		Hash      string    `json:"hash"`
		SPIFFEID  string    `json:"spiffe_id"`
		ExpiresAt time.Time `json:"expires_at"`
		Reusable  bool      `json:"reusable"`
	}
	if err := json.Unmarshal([]byte(out), &tokens); err != nil || code != 0 || len(tokens) != 1 || tokens[0].Hash != hash ||
		tokens[0].SPIFFEID != web || !tokens[0].Reusable || time.Until(tokens[0].ExpiresAt) <= 0 || strings.Contains(out, token) {
		t.Fatalf("token list -o json: code %d, %v, out %q, err %q", code, err, out, errOut)
	}

	// Revoke the token read from stdin: it is deleted, its SVIDs refused.
	out, errOut, code = runStdin(t, token+"\n", "ca", "revoke", "--socket", sock, "--join-token-file", "-", "--reason", "leaked")
	if code != 0 || !strings.Contains(out, hash[:16]) || !strings.Contains(out, web) {
		t.Fatalf("revoke --join-token-file -: code %d, out %q, err %q", code, out, errOut)
	}
	if out, _, _ := run(t, "ca", "token", "list", "--socket", sock); strings.Contains(out, hash[:16]) {
		t.Fatalf("revoked token still listed: %q", out)
	}
	ca := renewer(t, addr, bundle, svid)
	if _, _, err := ca.FetchSVID(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("renewal of an SVID of the revoked token: %v, want refused as revoked", err)
	}

	// By ID and by serial; status lists them.
	if out, errOut, code = run(t, "ca", "revoke", "--socket", sock, "--spiffe-id", "spiffe://cluster.local/ns/default/sa/db", "--block-for", "2h"); code != 0 || !strings.Contains(out, "blocks attestation until") {
		t.Fatalf("revoke --spiffe-id: code %d, out %q, err %q", code, out, errOut)
	}
	if out, errOut, code = run(t, "ca", "revoke", "--socket", sock, "--serial", "0A:BC:DE"); code != 0 || !strings.Contains(out, "abcde") {
		t.Fatalf("revoke --serial: code %d, out %q, err %q", code, out, errOut)
	}
	out, _, code = run(t, "ca", "status", "--socket", sock)
	t.Logf("tether ca status:\n%s", out)
	for _, want := range []string{"revocations: 4", "spiffe://cluster.local/ns/default/sa/db", "abcde", hash[:16], "leaked"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("status does not show %q: %q", want, out)
		}
	}
	// The same as data.
	out, errOut, code = run(t, "ca", "status", "--socket", sock, "-o", "json")
	var st struct {
		TrustDomain string `json:"trust_domain"`
		Generations []struct {
			ID    uint64 `json:"id"`
			State string `json:"state"`
		} `json:"generations"`
		Revocations []struct {
			Kind     string `json:"kind"`
			Value    string `json:"value"`
			SPIFFEID string `json:"spiffe_id"`
			Blocking bool   `json:"blocking"`
			Reason   string `json:"reason"`
		} `json:"revocations"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || code != 0 {
		t.Fatalf("ca status -o json: exit %d, %v\n%s%s", code, err, out, errOut)
	}
	kinds := map[string]int{}
	for _, r := range st.Revocations {
		kinds[r.Kind]++
		if r.Kind == "serial" && r.Value != "abcde" {
			t.Errorf("ca status -o json: serial revocation %+v", r)
		}
	}
	if st.TrustDomain != "cluster.local" || len(st.Generations) != 1 || st.Generations[0].State != "active" ||
		len(st.Revocations) != 4 || kinds["join_token"] != 1 || kinds["serial"] != 1 || kinds["spiffe_id"] != 2 {
		t.Errorf("ca status -o json: %+v", st)
	}
	if out, _, code = run(t, "ca", "status", "--socket", sock, "-o", "yaml"); code != 0 || !strings.Contains(out, "trust_domain: cluster.local\n") || !strings.Contains(out, "  kind: serial\n  prune_after: ") {
		t.Errorf("ca status -o yaml: exit %d\n%s", code, out)
	}
	if out, errOut, code = run(t, "ca", "unrevoke", "--socket", sock, "--spiffe-id", "spiffe://cluster.local/ns/default/sa/db"); code != 0 || !strings.Contains(out, "may be attested again") {
		t.Fatalf("unrevoke: code %d, out %q, err %q", code, out, errOut)
	}

	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"ca", "revoke", "--socket", sock}, 2, "exactly one of"},
		{[]string{"ca", "revoke", "--socket", sock, "--spiffe-id", web, "--serial", "1"}, 2, "exactly one of"},
		{[]string{"ca", "revoke", "--socket", sock, "--serial", "1", "--allow-reattest"}, 1, "SPIFFE ID only"},
		{[]string{"ca", "revoke", "--socket", sock, "--serial", "nothex"}, 1, "hexadecimal"},
		{[]string{"ca", "revoke", "--socket", sock, "--spiffe-id", web, "--block-for", "500ms"}, 2, "at least 1s"},
		{[]string{"ca", "revoke", "--socket", sock, "--spiffe-id", "spiffe://other.org/x"}, 1, "not in trust domain"},
		{[]string{"ca", "revoke", "--socket", sock, "--join-token-hash", "abc"}, 1, "at least 8"},
		{[]string{"ca", "revoke", "--socket", sock, "--join-token-file", filepath.Join(dir, "none")}, 1, "join token file"},
		{[]string{"ca", "revoke", "--socket", sock, "--join-token-file", bundle}, 1, "not a join token"},
		{[]string{"ca", "unrevoke", "--socket", sock, "--spiffe-id", "spiffe://cluster.local/ns/default/sa/never"}, 1, "not revoked"},
		{[]string{"ca", "unrevoke", "--socket", sock}, 2, `required flag(s) "spiffe-id" not set`},
		{[]string{"svid", "fetch", "--ca", addr, "--bundle", bundle, "--out", svidDir, "--token", "t", "--join-token-file", tokFile}, 2, "exactly one"},
	} {
		_, errOut, code := run(t, tt.args...)
		if code != tt.code || !strings.Contains(errOut, tt.want) {
			t.Errorf("%q: code %d (want %d), stderr %q (want %q)", tt.args, code, tt.code, errOut, tt.want)
		}
	}
}

func runStdin(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = (&cli.App{Stdin: strings.NewReader(stdin), Stdout: &o, Stderr: &e}).Main(context.Background(), args)
	return o.String(), e.String(), code
}

// renewer dials the CA presenting svid, as a sidecar renewing it would.
func renewer(t *testing.T, addr, bundlePath string, svid *x509svid.SVID) *identity.Client {
	t.Helper()
	b, err := identity.LoadBundlePEM(bundlePath, "")
	if err != nil {
		t.Fatal(err)
	}
	c, err := identity.Dial(addr, b.TrustDomain(), b, svid)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestOfflineRoot: the root is made and kept where the CLI runs; tether-ca
// starts on the intermediate signed with it, holds no root key, says so
// in `tether ca status`, refuses to prepare a root, and the SVIDs it
// issues verify against the offline root (openssl as the stock client).
func TestOfflineRoot(t *testing.T) {
	rootDir, interDir := filepath.Join(t.TempDir(), "root"), filepath.Join(t.TempDir(), "inter")
	if out, errOut, code := run(t, "ca", "offline-root", "init", "--dir", rootDir); code != 0 || !strings.Contains(out, "offline root for cluster.local") {
		t.Fatalf("init: %d %s %s", code, out, errOut)
	}
	if fi, err := os.Stat(filepath.Join(rootDir, "root.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("root key: %v %v", fi, err)
	}
	if _, errOut, code := run(t, "ca", "offline-root", "init", "--dir", rootDir); code != 1 || !strings.Contains(errOut, "refusing to overwrite a root key") {
		t.Fatalf("second init over the same root: %d %s", code, errOut)
	}
	if out, errOut, code := run(t, "ca", "offline-root", "sign-intermediate", "--dir", rootDir, "--out", interDir, "--ttl", "720h"); code != 0 || !strings.Contains(out, "replace it before") {
		t.Fatalf("sign-intermediate: %d %s %s", code, out, errOut)
	}

	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svc, err := caserver.New(ctx, caserver.Config{
		TrustDomain: "cluster.local", ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		Store: "dir", StoreDir: dir, SVIDTTL: time.Hour, IntermediateTTL: 720 * time.Hour, RootTTL: 8760 * time.Hour,
		PropagationDelay: time.Minute, TickInterval: time.Second, OfflineIntermediate: interDir,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	defer func() { cancel(); <-done }()
	sock := filepath.Join(dir, "admin.sock")
	for i := 0; svc.Addr("grpc") == nil || !exists(sock); i++ {
		if i > 200 {
			t.Fatal("CA did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	state, err := os.ReadFile(filepath.Join(dir, identity.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(state), `"root_key"`) {
		t.Error("the CA's state holds a root key")
	}
	if out, _, code := run(t, "ca", "status", "--socket", sock); code != 0 || !strings.Contains(out, "root key: offline") {
		t.Errorf("status does not say the root key is offline:\n%s", out)
	}
	if _, errOut, code := run(t, "ca", "rotate", "prepare", "--socket", sock); code != 1 || !strings.Contains(errOut, "root key is offline") {
		t.Errorf("prepare: code %d, %s", code, errOut)
	}

	tok, errOut, code := run(t, "ca", "token", "create", "--socket", sock, "--spiffe-id", "spiffe://cluster.local/ns/default/sa/web")
	if code != 0 {
		t.Fatal(errOut)
	}
	out := t.TempDir()
	if _, errOut, code := run(t, "svid", "fetch", "--ca", svc.Addr("grpc").String(), "--bundle", filepath.Join(interDir, "root.pem"),
		"--token", strings.TrimSpace(tok), "--out", out); code != 0 {
		t.Fatalf("fetch: %s", errOut)
	}
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed (make deps)")
	}
	cmd := exec.Command("openssl", "verify", "-CAfile", filepath.Join(rootDir, "root.pem"), "-untrusted", filepath.Join(interDir, "intermediate.pem"),
		"-purpose", "sslclient", filepath.Join(out, "svid.pem"))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("openssl verify against the offline root: %v\n%s", err, b)
	}
}

func exists(path string) bool { _, err := os.Stat(path); return err == nil }
