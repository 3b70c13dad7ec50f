package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The setups, in report order. extraSetups run only when named in -setups.
var (
	allSetups   = []string{"direct", "relay", "tether", "stunnel", "haproxy"}
	extraSetups = []string{"tether-base", "tether-flows", "tether-noflows", "stunnel-noresume", "haproxy-noresume"}
	setupByName = map[string]setup{
		"direct":           {start: startDirect},
		"relay":            {start: startRelay},
		"tether":           {start: startTether, needsCA: true},
		"tether-base":      {start: startTetherBase, needsCA: true},
		"tether-flows":     {start: startTetherFlows("1s"), needsCA: true},
		"tether-noflows":   {start: startTetherFlows("0"), needsCA: true},
		"stunnel":          {start: stunnelPair(true), needsCerts: true},
		"haproxy":          {start: haproxyPair(true), needsCerts: true},
		"stunnel-noresume": {start: stunnelPair(false), needsCerts: true},
		"haproxy-noresume": {start: haproxyPair(false), needsCerts: true},
	}
)

// The SPIFFE IDs of proxy A (client side) and proxy B (server side).
const (
	idA = "spiffe://cluster.local/ns/default/sa/proxybench-a"
	idB = "spiffe://cluster.local/ns/default/sa/proxybench-b"
)

// setup starts one pair. Its processes are the proxies only; the echo
// server and tether-ca belong to the env.
type setup struct {
	start      func(ctx context.Context, e *env, dir string) (*pair, error)
	needsCA    bool // the tether-ca and join tokens
	needsCerts bool // SVIDs as files
}

// pair is a started setup: the client connects to entry.
type pair struct {
	entry string
	// target is the server-side proxy's listener (tether: sidecar B's
	// inbound), which the flood subcommand attacks; admins are the tether
	// sidecars' admin addresses (A, then B).
	target string
	admins []string
	procs  []*child // A, then B
	// note, if set, says something about the run after the workloads.
	note func() string
}

// env is what the setups of one run share.
type env struct {
	dir  string // configs, certificates, logs
	self string // this executable: echo and relay children
	bins string // tether-ca, tether, tether-sidecar
	echo string // echo server address
	// certs are the SVID files of A and B for stunnel and haproxy.
	certs certFiles
	ca    *tetherCA
	// long-lived children: echo server, tether-ca.
	children []*child
	// baseBins holds the tether-sidecar of the tether-base setup
	// (-baseline-bin); empty when not given.
	baseBins string
	// discovery is tether-discovery, started by the first flow setup.
	discovery *tetherDiscovery
	// sidecarFlags caches the flags each tether-sidecar binary has.
	sidecarFlags map[string]map[string]string
}

type certFiles struct {
	// aCert and bCert hold the leaf, then the intermediate.
	aCert, aKey, bCert, bKey string
	bundle                   string
}

type tetherCA struct {
	addr, bundle   string
	sock           string // admin socket: join tokens
	tokenA, tokenB string
}

func (e *env) close() { stopAll(e.children) }

// newEnv makes an env in workDir, created if missing, or in a temporary
// directory named for tmpPrefix when workDir is empty, with the binaries
// of binDir and baseBinDir (none when empty), and starts its echo server.
// done stops the env's children and removes a temporary directory.
func newEnv(ctx context.Context, workDir, tmpPrefix, binDir, baseBinDir string) (e *env, done func(), err error) {
	e = &env{dir: workDir}
	removeDir := func() {}
	if e.dir == "" {
		d, err := os.MkdirTemp("", tmpPrefix)
		if err != nil {
			return nil, nil, err
		}
		e.dir, removeDir = d, func() { os.RemoveAll(d) }
	} else if err := os.MkdirAll(e.dir, 0o755); err != nil {
		return nil, nil, err
	}
	done = func() {
		e.close()
		removeDir()
	}
	defer func() {
		if err != nil {
			done()
			e, done = nil, nil
		}
	}()
	if e.self, err = os.Executable(); err != nil {
		return
	}
	if e.bins, err = filepath.Abs(binDir); err != nil {
		return
	}
	if baseBinDir != "" {
		if e.baseBins, err = filepath.Abs(baseBinDir); err != nil {
			return
		}
	}
	err = e.startEcho(ctx)
	return
}

// startEcho starts the echo server all setups share.
func (e *env) startEcho(ctx context.Context) error {
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	c, err := startChild(e.dir, "echo", e.self, "echo", "-listen", addr)
	if err != nil {
		return err
	}
	e.children = append(e.children, c)
	if err := waitEcho(ctx, addr, 10*time.Second, []*child{c}); err != nil {
		return fmt.Errorf("echo server: %w", err)
	}
	e.echo = addr
	return nil
}

// startTetherCA starts tether-ca, creates reusable join tokens for A and B
// and fetches their SVIDs as files for stunnel and haproxy.
func (e *env) startTetherCA(ctx context.Context) error {
	dir := filepath.Join(e.dir, "ca")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	addrs, err := freeAddrs(2)
	if err != nil {
		return err
	}
	ca, err := startChild(e.dir, "tether-ca", filepath.Join(e.bins, "tether-ca"),
		"--store-dir", dir, "--listen", addrs[0], "--admin-listen", addrs[1], "--log-level", "warn")
	if err != nil {
		return err
	}
	e.children = append(e.children, ca)
	sock, bundle := filepath.Join(dir, "admin.sock"), filepath.Join(dir, "bundle.pem")
	for deadline := time.Now().Add(30 * time.Second); ; {
		if err := ca.exited(); err != nil {
			return err
		}
		_, err1 := os.Stat(sock)
		_, err2 := os.Stat(bundle)
		if err1 == nil && err2 == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tether-ca wrote no %s and %s in 30s: %s", sock, bundle, ca.tail())
		}
		sleepCtx(ctx, 50*time.Millisecond)
	}
	e.ca = &tetherCA{addr: addrs[0], bundle: bundle, sock: sock}
	tether := filepath.Join(e.bins, "tether")
	for _, t := range []struct {
		id  string
		tok *string
		out string
	}{{idA, &e.ca.tokenA, "svid-a"}, {idB, &e.ca.tokenB, "svid-b"}} {
		tok, err := e.joinToken(ctx, t.id)
		if err != nil {
			return err
		}
		*t.tok = tok
		out := filepath.Join(e.dir, t.out)
		for deadline := time.Now().Add(15 * time.Second); ; {
			_, err = output(ctx, tether, "svid", "fetch", "--ca", e.ca.addr, "--bundle", bundle, "--token", tok, "--out", out)
			if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
				break
			}
			sleepCtx(ctx, 200*time.Millisecond)
		}
		if err != nil {
			return err
		}
	}
	e.certs = certFiles{
		aCert: filepath.Join(e.dir, "svid-a", "svid.pem"), aKey: filepath.Join(e.dir, "svid-a", "svid.key"),
		bCert: filepath.Join(e.dir, "svid-b", "svid.pem"), bKey: filepath.Join(e.dir, "svid-b", "svid.key"),
		bundle: filepath.Join(e.dir, "svid-a", "bundle.pem"),
	}
	return nil
}

// joinToken creates a reusable join token for id at the running tether-ca.
func (e *env) joinToken(ctx context.Context, id string) (string, error) {
	return output(ctx, filepath.Join(e.bins, "tether"), "ca", "token", "create", "--socket", e.ca.sock, "--spiffe-id", id, "--ttl", "12h", "--reusable")
}

// output runs a short command and returns its trimmed standard output.
func output(ctx context.Context, bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %v: %s", filepath.Base(bin), strings.Join(args[:min(3, len(args))], " "), err, strings.TrimSpace(errOut.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

// started waits for an echo through entry, stopping the children if none
// comes.
func started(ctx context.Context, entry string, procs []*child) (*pair, error) {
	if err := waitEcho(ctx, entry, 30*time.Second, procs); err != nil {
		stopAll(procs)
		return nil, err
	}
	return &pair{entry: entry, procs: procs}, nil
}

// startPair starts B, then A (each from its name, binary and args), and
// waits for an echo through entry.
func startPair(ctx context.Context, dir, entry string, procs ...[]string) (*pair, error) {
	var cs []*child
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		c, err := startChild(dir, p[0], p[1], p[2:]...)
		if err != nil {
			stopAll(cs)
			return nil, err
		}
		cs = append([]*child{c}, cs...)
	}
	return started(ctx, entry, cs)
}

func startDirect(_ context.Context, e *env, _ string) (*pair, error) {
	return &pair{entry: e.echo}, nil
}

func startRelay(ctx context.Context, e *env, dir string) (*pair, error) {
	a, err := freeAddrs(2)
	if err != nil {
		return nil, err
	}
	return startPair(ctx, dir, a[0],
		[]string{"relay-a", e.self, "relay", "-listen", a[0], "-to", a[1]},
		[]string{"relay-b", e.self, "relay", "-listen", a[1], "-to", e.echo})
}

func startTether(ctx context.Context, e *env, dir string) (*pair, error) {
	return startTetherFrom(ctx, e, dir, e.bins)
}

// startTetherBase is the tether pair with the older tether-sidecar of
// -baseline-bin.
func startTetherBase(ctx context.Context, e *env, dir string) (*pair, error) {
	if e.baseBins == "" {
		return nil, errors.New("tether-base: no -baseline-bin given")
	}
	return startTetherFrom(ctx, e, dir, e.baseBins)
}

// startTetherFrom starts two tether-sidecar processes from the directory
// bins.
func startTetherFrom(ctx context.Context, e *env, dir, bins string) (*pair, error) {
	if e.ca == nil {
		return nil, errors.New("tether: no tether-ca")
	}
	a, err := freeAddrs(4)
	if err != nil {
		return nil, err
	}
	sidecar := filepath.Join(bins, "tether-sidecar")
	ca, err := e.sidecarArgs(ctx, sidecar, dir, "sidecar-a", e.ca.tokenA, a[2])
	if err != nil {
		return nil, err
	}
	cb, err := e.sidecarArgs(ctx, sidecar, dir, "sidecar-b", e.ca.tokenB, a[3])
	if err != nil {
		return nil, err
	}
	p, err := startPair(ctx, dir, a[0],
		append([]string{"sidecar-a", sidecar, "--outbound", a[0] + "=" + a[1] + "@" + idB}, ca...),
		append([]string{"sidecar-b", sidecar, "--inbound", a[1] + "=" + e.echo, "--allow", idA}, cb...))
	if err != nil {
		return nil, err
	}
	p.note = func() string { return tetherNote(ctx, "http://"+a[2]+"/metrics") }
	p.target, p.admins = a[1], []string{a[2], a[3]}
	return p, nil
}

// tetherNote reads sidecar A's stream and handshake counters: how many
// client connections reused a pooled tunnel.
func tetherNote(ctx context.Context, url string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "metrics: " + err.Error()
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "metrics: " + err.Error()
	}
	defer resp.Body.Close()
	vals := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		for _, name := range []string{
			`tether_sidecar_outbound_streams_total{reused="true"}`,
			`tether_sidecar_outbound_streams_total{reused="false"}`,
			`tether_sidecar_handshake_duration_seconds_count{direction="outbound"}`,
		} {
			if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
				vals[name], _ = strconv.ParseFloat(v, 64)
			}
		}
	}
	reused, fresh := vals[`tether_sidecar_outbound_streams_total{reused="true"}`], vals[`tether_sidecar_outbound_streams_total{reused="false"}`]
	return fmt.Sprintf("sidecar A: %.0f streams, %.0f on a reused tunnel, %.0f handshakes", reused+fresh, reused,
		vals[`tether_sidecar_handshake_duration_seconds_count{direction="outbound"}`])
}

// stunnelPair runs stunnel in client mode (A) and server mode (B), both
// verifying the peer's chain against the bundle, B requiring a client
// certificate. resume false turns TLS session resumption off.
func stunnelPair(resume bool) func(ctx context.Context, e *env, dir string) (*pair, error) {
	return func(ctx context.Context, e *env, dir string) (*pair, error) {
		bin, err := lookPath("stunnel4", "stunnel")
		if err != nil {
			return nil, err
		}
		a, err := freeAddrs(2)
		if err != nil {
			return nil, err
		}
		conf := func(name string, client bool, accept, connect, cert, key string) (string, error) {
			s := fmt.Sprintf(`foreground = yes
pid =
syslog = no
debug = 3
output = %s

[%s]
client = %s
accept = %s
connect = %s
cert = %s
key = %s
CAfile = %s
verifyChain = yes
requireCert = yes
sslVersionMin = TLSv1.3
sessionResume = %s
`, filepath.Join(dir, name+".stunnel.log"), name, yesNo(client), accept, connect, cert, key, e.certs.bundle, yesNo(resume))
			p := filepath.Join(dir, name+".conf")
			return p, os.WriteFile(p, []byte(s), 0o600)
		}
		ca, err := conf("stunnel-a", true, a[0], a[1], e.certs.aCert, e.certs.aKey)
		if err != nil {
			return nil, err
		}
		cb, err := conf("stunnel-b", false, a[1], e.echo, e.certs.bCert, e.certs.bKey)
		if err != nil {
			return nil, err
		}
		return startPair(ctx, dir, a[0], []string{"stunnel-a", bin, ca}, []string{"stunnel-b", bin, cb})
	}
}

// haproxyPair runs haproxy in TCP mode: A originates TLS to B with its
// certificate and verifies B's chain; B terminates TLS, requires and
// verifies A's certificate. resume false turns off session reuse (A) and
// tickets (B).
func haproxyPair(resume bool) func(ctx context.Context, e *env, dir string) (*pair, error) {
	return func(ctx context.Context, e *env, dir string) (*pair, error) {
		bin, err := lookPath("haproxy")
		if err != nil {
			return nil, err
		}
		a, err := freeAddrs(2)
		if err != nil {
			return nil, err
		}
		// haproxy's crt wants the key in the same PEM file.
		pem := func(name, cert, key string) (string, error) {
			c, err := os.ReadFile(cert)
			if err != nil {
				return "", err
			}
			k, err := os.ReadFile(key)
			if err != nil {
				return "", err
			}
			p := filepath.Join(dir, name+".pem")
			return p, os.WriteFile(p, append(append(c, '\n'), k...), 0o600)
		}
		pa, err := pem("haproxy-a", e.certs.aCert, e.certs.aKey)
		if err != nil {
			return nil, err
		}
		pb, err := pem("haproxy-b", e.certs.bCert, e.certs.bKey)
		if err != nil {
			return nil, err
		}
		reuse, tickets := "", ""
		if !resume {
			reuse, tickets = " no-ssl-reuse", " no-tls-tickets"
		}
		head := `global
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
`
		conf := func(name, body string) (string, error) {
			p := filepath.Join(dir, name+".cfg")
			return p, os.WriteFile(p, []byte(head+body), 0o600)
		}
		ca, err := conf("haproxy-a", fmt.Sprintf("listen a\n    bind %s\n    server b %s ssl crt %s ca-file %s verify required ssl-min-ver TLSv1.3%s\n",
			a[0], a[1], pa, e.certs.bundle, reuse))
		if err != nil {
			return nil, err
		}
		cb, err := conf("haproxy-b", fmt.Sprintf("listen b\n    bind %s ssl crt %s ca-file %s verify required ssl-min-ver TLSv1.3%s\n    server echo %s\n",
			a[1], pb, e.certs.bundle, tickets, e.echo))
		if err != nil {
			return nil, err
		}
		return startPair(ctx, dir, a[0], []string{"haproxy-a", bin, "-db", "-f", ca}, []string{"haproxy-b", bin, "-db", "-f", cb})
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// lookPath finds the first of names in PATH or /usr/sbin.
func lookPath(names ...string) (string, error) {
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p, nil
		}
		if p := filepath.Join("/usr/sbin", n); isExec(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not installed (Debian: apt-get install %s; bench/proxy/run.sh installs it as root)", names[0], debianPackage[names[0]])
}

var debianPackage = map[string]string{"stunnel4": "stunnel4", "haproxy": "haproxy"}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}
