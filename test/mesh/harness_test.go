//go:build linux

package mesh

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/tether-mesh/tether/internal/freeport"
	"github.com/tether-mesh/tether/pkg/identity"
)

// binDir holds the binaries built by TestMain ("" with -short).
var binDir string

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	// The tests mostly wait on real timers: let them overlap even on two
	// cores (the default -parallel is GOMAXPROCS).
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		flag.Set("test.parallel", "8")
	}
	dir, err := buildBinaries()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	// Every test stops what it started; say so if anything is left, and
	// stop it (by process group, only ours).
	if left := leftovers(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "processes left running after the tests: %v\n", left)
		code = 1
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildBinaries builds the four binaries into a temporary directory with
// the environment's GOFLAGS (make test: -tags=grpcnotrace).
func buildBinaries() (string, error) {
	dir, err := os.MkdirTemp("", "tether-mesh-bin-")
	if err != nil {
		return "", err
	}
	began := time.Now()
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/ca", "./cmd/discovery", "./cmd/sidecar", "./cmd/tether")
	cmd.Dir = "../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	for _, b := range []string{"ca", "discovery", "sidecar"} {
		if err := os.Rename(filepath.Join(dir, b), filepath.Join(dir, "tether-"+b)); err != nil {
			os.RemoveAll(dir)
			return "", err
		}
	}
	fmt.Fprintf(os.Stderr, "built the binaries in %s (GOFLAGS=%q)\n", time.Since(began).Round(time.Millisecond), os.Getenv("GOFLAGS"))
	return dir, nil
}

// needMesh skips in -short mode.
func needMesh(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end mesh tests run real processes for minutes; skipped with -short")
	}
}

// ---------------------------------------------------------------------
// Processes.

var (
	procsMu sync.Mutex
	procs   = map[int]*proc{}
)

// proc is a process started by a test, in its own process group, with its
// output in a log file.
type proc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
}

// startProc starts bin (a name in binDir) with args; output is appended
// to logPath.
func startProc(t *testing.T, name, logPath, bin string, args ...string) *proc {
	t.Helper()
	return startProcWith(t, (*exec.Cmd).Start, name, logPath, bin, args...)
}

// startProcWith is startProc with start starting the command (e.g. inside
// a network namespace).
func startProcWith(t *testing.T, start func(*exec.Cmd) error, name, logPath, bin string, args ...string) *proc {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "==== %s start %s: %s %s\n", name, time.Now().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	cmd := exec.Command(filepath.Join(binDir, bin), args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Own process group, so that stopping it stops everything it started;
	// and killed with the test binary (Pdeathsig) should that die first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := start(cmd); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	f.Close()
	p := &proc{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	procsMu.Lock()
	procs[cmd.Process.Pid] = p
	procsMu.Unlock()
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() { p.stop(t) })
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// signal signals the process group.
func (p *proc) signal(sig syscall.Signal) {
	if p.alive() {
		syscall.Kill(-p.pid(), sig)
	}
}

// kill sends SIGKILL to the group and waits for the exit.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	p.signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s (pid %d) did not die within 10s of SIGKILL", p.name, p.pid())
	}
	p.forget()
}

// terminate sends SIGTERM and waits up to timeout for a clean exit; it
// returns the exit error, or an error if the process had to be killed.
func (p *proc) terminate(timeout time.Duration) error {
	p.signal(syscall.SIGTERM)
	select {
	case <-p.done:
		p.forget()
		return p.err
	case <-time.After(timeout):
		p.signal(syscall.SIGKILL)
		<-p.done
		p.forget()
		return fmt.Errorf("%s did not exit within %s of SIGTERM; killed", p.name, timeout)
	}
}

// stop ends the process (SIGTERM, then SIGKILL) and makes sure nothing of
// its group is left.
func (p *proc) stop(t *testing.T) {
	if p.alive() {
		if err := p.terminate(15 * time.Second); err != nil {
			t.Errorf("stopping %s (SIGTERM must drain and exit 0): %v", p.name, err)
		}
	}
	p.forget()
	// The group must be gone: ESRCH.
	if err := syscall.Kill(-p.pid(), 0); err == nil {
		syscall.Kill(-p.pid(), syscall.SIGKILL)
		t.Errorf("process group of %s (%d) was still alive after it exited; killed", p.name, p.pid())
	}
}

func (p *proc) forget() {
	procsMu.Lock()
	delete(procs, p.pid())
	procsMu.Unlock()
}

// output returns the process's log.
func (p *proc) output() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// leftovers kills and names processes still registered, and any process
// running one of our binaries.
func leftovers() []string {
	var left []string
	procsMu.Lock()
	for pid, p := range procs {
		syscall.Kill(-pid, syscall.SIGKILL)
		left = append(left, fmt.Sprintf("%s (%d)", p.name, pid))
	}
	procsMu.Unlock()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err == nil && binDir != "" && strings.HasPrefix(exe, binDir+"/") {
			syscall.Kill(pid, syscall.SIGKILL)
			left = append(left, fmt.Sprintf("%s (%d)", filepath.Base(exe), pid))
		}
	}
	return left
}

// procDir is a directory for a process's files (state, logs, sockets),
// removed after the test, unless it failed and TETHER_MESH_KEEP_LOGS is
// set.
func procDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tether-mesh-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() && os.Getenv("TETHER_MESH_KEEP_LOGS") != "" {
			t.Logf("kept %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}

// dumpOnFailure logs the tail of each process's log if the test failed.
func dumpOnFailure(t *testing.T, ps ...func() *proc) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, get := range ps {
			p := get()
			if p == nil {
				continue
			}
			out := p.output()
			if len(out) > 6000 {
				out = "…" + out[len(out)-6000:]
			}
			t.Logf("---- log of %s (%s):\n%s", p.name, p.logPath, out)
		}
	})
}

// ---------------------------------------------------------------------
// Ports.

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ports, err := freeport.Ports(1)
	if err != nil {
		t.Fatal(err)
	}
	return ports[0]
}

func loopback(t *testing.T) string { return fmt.Sprintf("127.0.0.1:%d", freePort(t)) }

// ---------------------------------------------------------------------
// Polling and HTTP.

// eventually polls cond every interval until it returns nil, and fails the
// test with cond's last error after timeout.
func eventually(t *testing.T, what string, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var httpClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// get returns the status and body of http://addr/path.
func get(addr, path string) (int, string, error) {
	resp, err := httpClient.Get("http://" + addr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// metric sums the samples of a metric whose labels include every one of
// labels (`name="value"`) in a Prometheus text exposition.
func metric(text, name string, labels ...string) float64 {
	sum := 0.0
	for _, line := range strings.Split(text, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		series, value, ok := cutLast(line, " ")
		if !ok {
			continue
		}
		n, ls, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(ls, l)
		}
		if v, err := strconv.ParseFloat(value, 64); err == nil && match {
			sum += v
		}
	}
	return sum
}

func cutLast(s, sep string) (string, string, bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

// scrape returns addr's /metrics.
func scrape(addr string) (string, error) {
	code, body, err := get(addr, "/metrics")
	if err == nil && code != 200 {
		err = fmt.Errorf("/metrics: %d", code)
	}
	return body, err
}

// ---------------------------------------------------------------------
// tether-ca.

// caProc is a running (or stopped) tether-ca on a directory store.
type caProc struct {
	// td is the CA's trust domain (--trust-domain; cluster.local unless
	// given).
	td                               spiffeid.TrustDomain
	dir, addr, admin, socket, bundle string
	args                             []string
	logPath                          string
	p                                *proc
}

// startCA starts tether-ca with SVIDs of one minute (the shortest it
// allows), NotBefore backdated 1s, and no automatic rotation; extra flags
// override.
func startCA(t *testing.T, extra ...string) *caProc {
	t.Helper()
	dir := procDir(t)
	c := &caProc{td: td, dir: filepath.Join(dir, "ca"), addr: loopback(t), admin: loopback(t), logPath: filepath.Join(dir, "tether-ca.log")}
	for i, a := range extra {
		if a == "--trust-domain" && i+1 < len(extra) {
			c.td = spiffeid.RequireTrustDomainFromString(extra[i+1])
		}
	}
	c.socket = filepath.Join(c.dir, "admin.sock")
	c.bundle = filepath.Join(c.dir, "bundle.pem")
	c.args = append([]string{"--store-dir", c.dir, "--listen", c.addr, "--admin-listen", c.admin,
		"--svid-ttl", "1m", "--backdate", "1s", "--tick", "1s", "--auto-rotate=false"}, extra...)
	c.start(t)
	dumpOnFailure(t, func() *proc { return c.p })
	return c
}

// start starts the process and waits until it serves.
func (c *caProc) start(t *testing.T) {
	t.Helper()
	c.p = startProc(t, "tether-ca", c.logPath, "tether-ca", c.args...)
	eventually(t, "tether-ca to serve", 20*time.Second, func() error {
		if !c.p.alive() {
			t.Fatalf("tether-ca exited: %v\n%s", c.p.err, c.p.output())
		}
		if code, body, err := get(c.admin, "/readyz"); err != nil || code != 200 {
			return fmt.Errorf("readyz %d %q %v", code, body, err)
		}
		_, err := c.cli("ca", "status")
		return err
	})
}

// cli runs the tether CLI against this CA's operator socket.
func (c *caProc) cli(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "tether"), args...)
	cmd.Env = append(os.Environ(), "TETHER_CA_ADMIN_SOCKET="+c.socket)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("tether %s: %v: %s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// token creates a reusable join token for the service account sa of
// namespace ns.
func (c *caProc) token(t *testing.T, ns, sa string) string {
	t.Helper()
	args := []string{"ca", "token", "create", "--spiffe-id", c.id(ns, sa).String(), "--ttl", "2h", "--reusable"}
	if ns == identity.ReservedNamespace {
		args = append(args, "--allow-reserved")
	}
	out, err := c.cli(args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

func workloadID(ns, sa string) spiffeid.ID {
	return spiffeid.RequireFromPath(td, "/ns/"+ns+"/sa/"+sa)
}

// id is the SPIFFE ID of service account sa of namespace ns in the CA's
// trust domain.
func (c *caProc) id(ns, sa string) spiffeid.ID {
	return spiffeid.RequireFromPath(c.td, "/ns/"+ns+"/sa/"+sa)
}

// roots reads the CA's bundle file.
func (c *caProc) roots(t *testing.T) []*x509.Certificate {
	t.Helper()
	b, err := identity.LoadBundlePEM(c.bundle, c.td.Name())
	if err != nil {
		t.Fatal(err)
	}
	return b.X509Authorities()
}

// state reads the CA's state file with the CA's own decoder, which
// validates it.
func (c *caProc) state() (*identity.State, error) {
	data, err := os.ReadFile(filepath.Join(c.dir, identity.StateFile))
	if err != nil {
		return nil, err
	}
	return identity.DecodeState(data)
}

// ---------------------------------------------------------------------
// tether-discovery.

type discoveryProc struct {
	file, addr, admin, logPath string
	args                       []string
	p                          *proc
}

func startDiscovery(t *testing.T, ca *caProc, meshYAML string) *discoveryProc {
	t.Helper()
	dir := procDir(t)
	d := &discoveryProc{file: filepath.Join(dir, "mesh.yaml"), addr: loopback(t), admin: loopback(t), logPath: filepath.Join(dir, "tether-discovery.log")}
	d.write(t, meshYAML)
	d.args = []string{"--mesh-file", d.file, "--mesh-file-interval", "100ms", "--listen", d.addr, "--admin-listen", d.admin,
		"--ca", ca.addr, "--bundle", ca.bundle, "--join-token", ca.token(t, "tether-system", "tether-discovery"), "--trust-domain", ca.td.Name()}
	d.start(t)
	dumpOnFailure(t, func() *proc { return d.p })
	return d
}

func (d *discoveryProc) start(t *testing.T) {
	t.Helper()
	d.p = startProc(t, "tether-discovery", d.logPath, "tether-discovery", d.args...)
	eventually(t, "tether-discovery to be ready", 20*time.Second, func() error {
		if !d.p.alive() {
			t.Fatalf("tether-discovery exited: %v\n%s", d.p.err, d.p.output())
		}
		if code, body, err := get(d.admin, "/readyz"); err != nil || code != 200 {
			return fmt.Errorf("readyz %d %q %v", code, body, err)
		}
		return nil
	})
}

// write replaces the mesh file atomically, as an editor's rename does.
func (d *discoveryProc) write(t *testing.T, content string) {
	t.Helper()
	tmp := d.file + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, d.file); err != nil {
		t.Fatal(err)
	}
}

// svc is a mesh service backed by one sidecar's inbound listener.
type svc struct {
	name, sa  string
	ip        string // ClusterIP
	port      int    // service port
	app       string // the app's address (targetPort is its port)
	endpoint  string // the sidecar's inbound listener
	allowFrom []string
}

// writeYAML writes s as an entry of mesh.yaml's services.
func (s svc) writeYAML(b *strings.Builder) {
	_, tp, _ := net.SplitHostPort(s.app)
	host, ep, _ := net.SplitHostPort(s.endpoint)
	fmt.Fprintf(b, "  - name: %s\n    clusterIPs: [%s]\n    ports: [{name: tcp, port: %d, targetPort: %s}]\n", s.name, s.ip, s.port, tp)
	fmt.Fprintf(b, "    endpoints: [{address: %s, port: %s, serviceAccount: %s}]\n", host, ep, s.sa)
}

// meshYAML writes a mesh.yaml (default namespace) with a deny-by-default
// policy and one AccessPolicy per service that allows anyone.
func meshYAML(svcs ...svc) string {
	var b strings.Builder
	b.WriteString("defaultPolicy: deny\nservices:\n")
	for _, s := range svcs {
		s.writeYAML(&b)
	}
	b.WriteString("policies:\n")
	for _, s := range svcs {
		if len(s.allowFrom) == 0 {
			continue
		}
		fmt.Fprintf(&b, "  - apiVersion: tether.dev/v1alpha1\n    kind: AccessPolicy\n    metadata: {name: %s-clients, namespace: default}\n    spec:\n      destination: {service: %s}\n      sources:\n", s.name, s.name)
		for _, src := range s.allowFrom {
			fmt.Fprintf(&b, "        - serviceAccount: {name: %s}\n", src)
		}
	}
	return b.String()
}

// ---------------------------------------------------------------------
// tether-sidecar.

// sidecarSpec describes a sidecar in explicit mode. app, if set, gets an
// inbound listener; each outbound is NAMESPACE/SERVICE:PORT or
// PEER@SPIFFE_ID.
type sidecarSpec struct {
	sa       string
	inbound  string // listen address of the inbound listener (with app)
	app      string
	outbound []string
	extra    []string
	bin      string // a binary in binDir; "" is tether-sidecar
}

type sidecarProc struct {
	name, sa  string
	admin     string
	inbound   string
	outbound  []string // listen addresses, in spec order
	socket    string
	logPath   string
	accessLog string
	args      []string
	p         *proc
}

// startSidecar starts a sidecar with identity spiffe://<ca's trust domain>/ns/default/sa/<sa>,
// following discovery when d is not nil, and waits until it is ready.
func startSidecar(t *testing.T, ca *caProc, d *discoveryProc, spec sidecarSpec) *sidecarProc {
	t.Helper()
	dir := procDir(t)
	s := &sidecarProc{name: "sidecar " + spec.sa, sa: spec.sa, admin: loopback(t), inbound: spec.inbound, socket: filepath.Join(dir, "w.sock"),
		logPath: filepath.Join(dir, "sidecar-"+spec.sa+".log"), accessLog: filepath.Join(dir, "access.log")}
	s.args = []string{"--ca", ca.addr, "--bundle", ca.bundle, "--join-token", ca.token(t, "default", spec.sa),
		"--admin-listen", s.admin, "--workload-socket", s.socket, "--drain-timeout", "2s",
		"--access-log", s.accessLog, "--trust-domain", ca.td.Name()}
	if d != nil {
		s.args = append(s.args, "--discovery", d.addr)
	}
	if spec.app != "" {
		s.args = append(s.args, "--inbound", spec.inbound+"="+spec.app)
	}
	for _, o := range spec.outbound {
		l := loopback(t)
		s.outbound = append(s.outbound, l)
		s.args = append(s.args, "--outbound", l+"="+o)
	}
	s.args = append(s.args, spec.extra...)
	s.p = startProc(t, s.name, s.logPath, cmp.Or(spec.bin, "tether-sidecar"), s.args...)
	dumpOnFailure(t, func() *proc { return s.p })
	s.waitReady(t)
	return s
}

func (s *sidecarProc) waitReady(t *testing.T) {
	t.Helper()
	eventually(t, s.name+" to be ready", 30*time.Second, func() error {
		if !s.p.alive() {
			t.Fatalf("%s exited: %v\n%s", s.name, s.p.err, s.p.output())
		}
		code, body, err := get(s.admin, "/healthz/ready")
		if err != nil || code != 200 {
			return fmt.Errorf("/healthz/ready %d %q %v", code, body, err)
		}
		return nil
	})
}

func (s *sidecarProc) metrics(t *testing.T) string {
	t.Helper()
	m, err := scrape(s.admin)
	if err != nil {
		t.Fatalf("%s: %v", s.name, err)
	}
	return m
}

// handshakes counts the outbound mTLS handshakes the sidecar completed.
func (s *sidecarProc) handshakes(t *testing.T) float64 {
	return metric(s.metrics(t), "tether_sidecar_handshake_duration_seconds_count", `direction="outbound"`)
}

// x509Context fetches the sidecar's SVID and bundle over the Workload API.
func (s *sidecarProc) x509Context() (*workloadapi.X509Context, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+s.socket))
}

// debugIdentity is the sidecar's /debug/identity.
type debugIdentity struct {
	SpiffeID string    `json:"spiffe_id"`
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"not_after"`
	Roots    []string  `json:"roots_sha256"`
}

func (s *sidecarProc) debugIdentity() (debugIdentity, error) {
	var d debugIdentity
	code, body, err := get(s.admin, "/debug/identity")
	if err != nil {
		return d, err
	}
	if code != 200 {
		return d, fmt.Errorf("/debug/identity: %d %s", code, body)
	}
	return d, json.Unmarshal([]byte(body), &d)
}

// ---------------------------------------------------------------------
// Certificates.

// chainsTo checks with go-spiffe that chain (leaf first) is a valid
// X509-SVID under exactly the given roots.
func chainsTo(chain []*x509.Certificate, roots ...*x509.Certificate) error {
	_, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(td, roots))
	return err
}

// servedChain connects to a TLS server and returns the chain it presents,
// without completing the handshake (no client certificate is sent).
func servedChain(addr string, alpn ...string) ([]*x509.Certificate, error) {
	var got []*x509.Certificate
	conf := &tls.Config{InsecureSkipVerify: true, NextProtos: alpn, MinVersion: tls.VersionTLS12,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			for _, der := range raw {
				c, err := x509.ParseCertificate(der)
				if err != nil {
					return err
				}
				got = append(got, c)
			}
			return nil
		}}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, conf)
	if c != nil {
		c.Close()
	}
	if len(got) > 0 {
		return got, nil
	}
	if err == nil {
		err = errors.New("no certificate presented")
	}
	return nil, err
}

func fingerprint(c *x509.Certificate) string { return identity.Fingerprint(c.Raw) }

// ---------------------------------------------------------------------
// Apps and calls.

// echoApp is a workload behind a sidecar: for every line it receives it
// answers "<name> <line>", so a caller knows who answered what.
type echoApp struct {
	name     string
	addr     string
	accepted atomic.Int64
	l        net.Listener
	mu       sync.Mutex
	conns    map[net.Conn]bool
}

func startApp(t *testing.T, name string) *echoApp {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &echoApp{name: name, addr: l.Addr().String(), l: l, conns: map[net.Conn]bool{}}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			a.accepted.Add(1)
			a.mu.Lock()
			a.conns[c] = true
			a.mu.Unlock()
			wg.Go(func() {
				defer func() {
					c.Close()
					a.mu.Lock()
					delete(a.conns, c)
					a.mu.Unlock()
				}()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := io.WriteString(c, a.name+" "+line); err != nil {
						return
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		l.Close()
		a.mu.Lock()
		for c := range a.conns {
			c.Close()
		}
		a.mu.Unlock()
		wg.Wait()
	})
	return a
}

var callID atomic.Int64

// exchange sends one request line on c and checks that app want answered it.
func exchange(c net.Conn, r *bufio.Reader, want string) error {
	id := strconv.FormatInt(callID.Add(1), 10)
	if _, err := io.WriteString(c, id+"\n"); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if line != want+" "+id+"\n" {
		return fmt.Errorf("answer %q, want %q", line, want+" "+id)
	}
	return nil
}

// call makes one request on a new connection to addr (an outbound
// listener) and checks that app want answered.
func call(addr, want string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	return callOn(c, err, want)
}

// callOn is call on the connection c dialled (or err).
func callOn(c net.Conn, err error, want string) error {
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return exchange(c, bufio.NewReader(c), want)
}

// refused checks that a call to addr is refused: the connection ends
// without a byte of any app.
func refused(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	return refusedOn(c, err)
}

// refusedOn is refused on the connection c dialled (or err).
func refusedOn(c net.Conn, err error) error {
	if err != nil {
		return nil // refused at connect
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "let me in\n")
	b, err := io.ReadAll(c)
	if len(b) > 0 {
		return fmt.Errorf("a refused call got an answer: %q", b)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errors.New("the call was neither answered nor refused within 10s")
	}
	return nil
}
