//go:build linux

package demo_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/freeport"
	"github.com/tether-mesh/tether/internal/testutil"
)

// The tests below run `tether demo` as a user does: the real binaries,
// built into a temporary directory (with the GOFLAGS of the environment,
// so -tags=grpcnotrace as make sets it), each component a process.

var demoBins struct {
	once sync.Once
	dir  string
	err  error
}

// demoBinaries builds tether, tether-ca, tether-discovery and
// tether-sidecar once for the package's tests.
func demoBinaries(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the real binaries; skipped with -short")
	}
	if runtime.GOOS != "linux" {
		t.Skip("the demo tests check processes the Linux way")
	}
	demoBins.once.Do(func() {
		dir, err := os.MkdirTemp("", "tether-demo-bin-")
		if err != nil {
			demoBins.err = err
			return
		}
		demoBins.dir = dir
		cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/tether", "./cmd/ca", "./cmd/discovery", "./cmd/sidecar")
		cmd.Dir = "../.."
		if out, err := cmd.CombinedOutput(); err != nil {
			demoBins.err = errors.New("go build: " + err.Error() + "\n" + string(out))
			return
		}
		for _, n := range []string{"ca", "discovery", "sidecar"} {
			if err := os.Rename(filepath.Join(dir, n), filepath.Join(dir, "tether-"+n)); err != nil {
				demoBins.err = err
				return
			}
		}
	})
	if demoBins.err != nil {
		t.Fatal(demoBins.err)
	}
	return demoBins.dir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if demoBins.dir != "" {
		os.RemoveAll(demoBins.dir)
	}
	os.Exit(code)
}

// freePortRange returns a base port N such that N to N+32 are free now,
// below the ephemeral ports: there no client connection takes one of them
// between this check and the demo's start, as could happen to ports the
// kernel picked with --ports 0.
func freePortRange(t *testing.T) int {
	t.Helper()
	base, err := freeport.Range(33)
	if err != nil {
		t.Fatal(err)
	}
	return base
}

// demoRun is a `tether demo` process.
type demoRun struct {
	cmd    *exec.Cmd
	stdout testutil.SyncBuffer
	stderr testutil.SyncBuffer
	done   chan struct{}
	err    error
}

func startDemo(t *testing.T, args ...string) *demoRun {
	t.Helper()
	bin := demoBinaries(t)
	r := &demoRun{done: make(chan struct{})}
	r.cmd = exec.Command(filepath.Join(bin, "tether"), append([]string{"demo", "--ports", strconv.Itoa(freePortRange(t))}, args...)...)
	r.cmd.Dir = t.TempDir()
	r.cmd.Stdout, r.cmd.Stderr = &r.stdout, &r.stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.err = r.cmd.Wait(); close(r.done) }()
	t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			r.cmd.Process.Kill() // its components die with it (parent-death signal)
			<-r.done
		}
		dir := r.dir()
		if t.Failed() {
			t.Logf("stdout:\n%s\nstderr:\n%s", r.stdout.String(), r.stderr.String())
			logs, _ := filepath.Glob(filepath.Join(dir, "logs", "*.log"))
			for _, l := range logs {
				if b, err := os.ReadFile(l); err == nil && !strings.HasSuffix(l, ".access.log") {
					t.Logf("%s:\n%s", l, b)
				}
			}
		}
		// A demo that failed or was killed keeps its temporary directory.
		if strings.HasPrefix(filepath.Base(dir), "tether-demo-") {
			os.RemoveAll(dir)
		}
	})
	return r
}

var dirRE = regexp.MustCompile(`State, sockets and logs in (\S+) `)

// dir is the directory the demo says it uses.
func (r *demoRun) dir() string {
	if m := dirRE.FindStringSubmatch(r.stdout.String()); m != nil {
		return m[1]
	}
	return ""
}

// wait waits for the demo to exit and returns its exit code.
func (r *demoRun) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(timeout):
		t.Fatalf("tether demo still runs after %s", timeout)
	}
	var ee *exec.ExitError
	if errors.As(r.err, &ee) {
		return ee.ExitCode()
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	return 0
}

// waitOutput waits until stdout contains s.
func (r *demoRun) waitOutput(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(r.stdout.String(), s) {
		select {
		case <-r.done:
			t.Fatalf("tether demo exited (%v) before saying %q", r.err, s)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("tether demo did not say %q within %s", s, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var pidRE = regexp.MustCompile(`pid (\d+)`)

// components returns the pids of the processes the demo says it started.
func (r *demoRun) components(t *testing.T) []int {
	t.Helper()
	return r.componentsN(t, 8, "CA, discovery, 3 apps, 3 sidecars")
}

// componentsN returns the pids the demo names, which must be want.
func (r *demoRun) componentsN(t *testing.T, want int, what string) []int {
	t.Helper()
	var pids []int
	for _, m := range pidRE.FindAllStringSubmatch(r.stdout.String(), -1) {
		p, _ := strconv.Atoi(m[1])
		pids = append(pids, p)
	}
	if len(pids) != want {
		t.Fatalf("the demo names %d processes (%v), want %d: %s", len(pids), pids, want, what)
	}
	return pids
}

// nothingLeft checks that no component, nor anything of its process
// group, still runs.
func nothingLeft(t *testing.T, pids []int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range pids {
		for {
			_, statErr := os.Stat("/proc/" + strconv.Itoa(p))
			gone := errors.Is(syscall.Kill(-p, 0), syscall.ESRCH) && errors.Is(statErr, os.ErrNotExist)
			if gone {
				break
			}
			if time.Now().After(deadline) {
				cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(p) + "/cmdline")
				t.Errorf("process %d (or its group) still runs after the demo: %s", p, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func mustSay(t *testing.T, out string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Errorf("the demo does not say %q", w)
		}
	}
}

// TestDemoDuration runs the demo for a few seconds: identities, the
// allowed call, the denied web → db with the sidecars' rules, traffic, a
// clean stop.
func TestDemoDuration(t *testing.T) {
	r := startDemo(t, "--duration", "4s")
	if code := r.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("exit code %d; stderr: %s", code, r.stderr.String())
	}
	out := r.stdout.String()
	mustSay(t, out,
		"spiffe://cluster.local/ns/default/sa/web ", "spiffe://cluster.local/ns/tether-system/sa/tether-discovery ",
		"default/web  default/api  80     AccessPolicy default/api-from-web",
		`allowed  you → web → api → db: web answered "web → api → db"`,
		`rule "AccessPolicy default/api-from-web"`, `rule "AccessPolicy default/db-from-api"`,
		"denied   web → db: web's sidecar reset the call",
		`"decision":"deny", "destination":"default/db:5432", "rule":"unknown service, or policy allows none of its ports"`,
		`tether_sidecar_authz_denials_total{direction="outbound",destination="default/db:5432",reason="unknown service, or policy allows none of its ports"} 1`,
		"denied default/web -> default/db:5432: no AccessPolicy allows spiffe://cluster.local/ns/default/sa/web to default/db:5432",
		`"rule":"no principal of inbound|15006 chain `, // then db's app port, the chain's target port
		`|default/db:5432 (inbound_default_db_5432) admits spiffe://cluster.local/ns/default/sa/web"`,
		" identity --socket ", " policy graph --mesh ", " policy check --mesh ", "/metrics",
		"Stopping (--duration 4s is over)", ", 0 failed; web → db tried ",
		"Stopped 8 processes", "nothing is left running", "Removed ")
	nothingLeft(t, r.components(t))
	if _, err := os.Stat(r.dir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the demo's directory %q is still there (%v)", r.dir(), err)
	}
}

// TestDemoInterrupt: Ctrl-C (SIGINT) and SIGTERM stop everything cleanly.
func TestDemoInterrupt(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			r := startDemo(t)
			r.waitOutput(t, "\nTraffic: ", 45*time.Second)
			pids := r.components(t)
			r.cmd.Process.Signal(sig)
			if code := r.wait(t, 20*time.Second); code != 0 {
				t.Fatalf("exit code %d after %s; stderr: %s", code, sig, r.stderr.String())
			}
			mustSay(t, r.stdout.String(), "Stopping (interrupted)", "Stopped 8 processes", "nothing is left running")
			nothingLeft(t, pids)
		})
	}
}

// TestDemoKilled: even kill -9 of tether demo leaves nothing running (the
// kernel's parent-death signal ends the components).
func TestDemoKilled(t *testing.T) {
	// In a directory of the test: the demo cannot remove its own.
	r := startDemo(t, "--dir", t.TempDir())
	r.waitOutput(t, "\nTraffic: ", 45*time.Second)
	pids := r.components(t)
	r.cmd.Process.Kill()
	r.wait(t, 10*time.Second)
	nothingLeft(t, pids)
}

// TestDemoRotate: a full root rotation under traffic loses no call, and
// every sidecar ends on the new root.
func TestDemoRotate(t *testing.T) {
	r := startDemo(t, "--rotate", "--duration", "1s", "--rate", "10")
	if code := r.wait(t, 90*time.Second); code != 0 {
		t.Fatalf("exit code %d; stderr: %s", code, r.stderr.String())
	}
	out := r.stdout.String()
	mustSay(t, out,
		"prepare: generation 2", "every sidecar trusts both roots", "activate (after the 3s propagation delay): generation 2 signs",
		"tether-ca serves with a certificate from generation 2", "tether-discovery renewed its SVID from generation 2",
		"web's sidecar renewed its SVID from generation 2", "api's sidecar renewed its SVID from generation 2", "db's sidecar renewed its SVID from generation 2",
		"generation 1 leaves the trust bundle", "every sidecar's bundle holds generation 2's root only",
		"a burst of 16 calls at once: 16 succeeded, over ",
		"verify against generation 2's root alone", "Rotation complete under traffic", "none failed",
		"nothing is left running")
	phases := map[string]bool{}
	row := regexp.MustCompile(`(?m)^    (before|prepared|activated|retired|all phases)\b.*?\s(\d+)\s+(\d+)\s+(\d+)$`)
	for _, m := range row.FindAllStringSubmatch(out, -1) {
		phases[m[1]] = true
		attempted, _ := strconv.Atoi(m[2])
		succeeded, _ := strconv.Atoi(m[3])
		if m[4] != "0" || attempted == 0 || attempted != succeeded {
			t.Errorf("phase %s: attempted %s, succeeded %s, failed %s; want all succeeded", m[1], m[2], m[3], m[4])
		}
	}
	for _, p := range []string{"before", "prepared", "activated", "retired", "all phases"} {
		if !phases[p] {
			t.Errorf("no row for phase %q in the rotation's table", p)
		}
	}
	if !regexp.MustCompile(`(?m)^\s+2\s+active\s`).MatchString(out) || !regexp.MustCompile(`(?m)^\s+1\s+retired\s`).MatchString(out) {
		t.Errorf("tether ca status should show generation 2 active and 1 retired")
	}
	nothingLeft(t, r.components(t))
}

// TestDemoFederation runs the two meshes for a few seconds: each CA
// follows the other's bundle endpoint, a.example's web is admitted by
// b.example's api with web's own ID in api's access log, batch is refused
// there with its ID, traffic, a clean stop.
func TestDemoFederation(t *testing.T) {
	r := startDemo(t, "--federation", "--duration", "4s")
	if code := r.wait(t, 90*time.Second); code != 0 {
		t.Fatalf("exit code %d; stderr: %s", code, r.stderr.String())
	}
	out := r.stdout.String()
	mustSay(t, out,
		"b.example's tether-ca follows a.example's bundle endpoint https://127.0.0.1:",
		"a.example's tether-ca follows b.example's bundle endpoint https://127.0.0.1:",
		"spiffe://a.example/ns/default/sa/web ", "bundles of a.example, b.example",
		`allowed  web (a.example) → api (b.example): web answered "web → api"`,
		`the peer proved "spiffe://b.example/ns/default/sa/api"`,
		`b.example's api sidecar access log: "source_id":"spiffe://a.example/ns/default/sa/web", "destination_id":"spiffe://b.example/ns/default/sa/api", "decision":"allow"`,
		"refused  batch (a.example) → api (b.example)",
		`batch's sidecar let it out (a.example's rule "AccessPolicy default/api-from-web-and-batch")`,
		`b.example's api sidecar access log: "source_id":"spiffe://a.example/ns/default/sa/batch", "decision":"deny"`,
		"Stopping (--duration 4s is over)", ", 0 failed; batch → api tried ",
		"Stopped 10 processes", "nothing is left running", "Removed ")
	if regexp.MustCompile(`batch → api tried \d+ times?, refused \d+ times?, went through`).MatchString(out) {
		t.Errorf("batch → api went through")
	}
	nothingLeft(t, r.componentsN(t, 10, "2 CAs, 2 discoveries, 3 apps, 3 sidecars"))
}
