//go:build linux

package mesh

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/sys/unix"

	"github.com/tether-mesh/tether/pkg/identity"
)

// journal summarises a CA state as "id:state" in order, e.g.
// "1:superseded 2:active".
func journal(st *identity.State) string {
	var parts []string
	for _, g := range st.Generations {
		parts = append(parts, fmt.Sprintf("%d:%s", g.ID, g.State))
	}
	return strings.Join(parts, " ")
}

// nextStep is the rotation step that moves st on: retire a superseded
// generation, else activate a prepared one, else prepare.
func nextStep(st *identity.State) identity.Step {
	switch {
	case slices.ContainsFunc(st.Generations, func(g identity.Generation) bool { return g.State == identity.Superseded }):
		return identity.StepRetire
	case slices.ContainsFunc(st.Generations, func(g identity.Generation) bool { return g.State == identity.Prepared }):
		return identity.StepActivate
	}
	return identity.StepPrepare
}

// applied is the journal after step.
func applied(st *identity.State, step identity.Step) string {
	var parts []string
	for _, g := range st.Generations {
		s := g.State
		switch {
		case step == identity.StepActivate && s == identity.Active:
			s = identity.Superseded
		case step == identity.StepActivate && s == identity.Prepared:
			s = identity.Active
		case step == identity.StepRetire && s == identity.Superseded:
			s = identity.Retired
		}
		parts = append(parts, fmt.Sprintf("%d:%s", g.ID, s))
	}
	if step == identity.StepPrepare {
		parts = append(parts, fmt.Sprintf("%d:%s", st.NextGeneration+1, identity.Prepared))
	}
	return strings.Join(parts, " ")
}

// consistent checks the journal's rules beyond what DecodeState checks:
// at most one prepared and one superseded generation, and no key left of
// a retired one.
func consistent(st *identity.State) error {
	count := map[identity.GenerationState]int{}
	for _, g := range st.Generations {
		count[g.State]++
		if g.State == identity.Retired && (len(g.RootKey) > 0 || len(g.ChainKey) > 0 || len(g.JWTKey) > 0) {
			return fmt.Errorf("retired generation %d still holds keys", g.ID)
		}
		if g.ID > st.NextGeneration {
			return fmt.Errorf("generation %d is past next_generation %d", g.ID, st.NextGeneration)
		}
	}
	if count[identity.Active] != 1 || count[identity.Prepared] > 1 || count[identity.Superseded] > 1 {
		return fmt.Errorf("generations by state: %v", count)
	}
	return nil
}

// trustedRoots are the roots of the generations still in the bundle.
func trustedRoots(st *identity.State) [][]byte {
	var roots [][]byte
	for _, g := range st.Generations {
		if g.State != identity.Retired {
			roots = append(roots, g.Roots...)
		}
	}
	return roots
}

// createWatch reports the names of files created in dir.
type createWatch struct {
	f     *os.File
	names chan string
}

func watchCreates(t *testing.T, dir string) *createWatch {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	w := &createWatch{f: os.NewFile(uintptr(fd), "inotify"), names: make(chan string, 1024)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64*1024)
		for {
			n, err := w.f.Read(buf)
			if err != nil {
				return
			}
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				name := string(bytes.TrimRight(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)], "\x00"))
				select {
				case w.names <- name:
				default:
				}
				off += unix.SizeofInotifyEvent + int(ev.Len)
			}
		}
	}()
	t.Cleanup(func() { w.f.Close(); <-done })
	return w
}

// drain forgets earlier events.
func (w *createWatch) drain() {
	for {
		select {
		case <-w.names:
		default:
			return
		}
	}
}

// TestCACrashDuringRotation kills tether-ca with SIGKILL in the middle of
// rotation steps, again and again: the moment it creates the temporary
// file of its state (before the rename that commits it), the moment it
// creates the temporary file of bundle.pem, or at a random moment up to
// 120ms after `tether ca rotate` starts. After each kill the state file
// decodes and keeps the journal's rules, bundle.pem parses, and the
// journal is either as before or one step on; a step the CLI reported
// done is always there. The restarted CA shows that journal in
// `tether ca status`, its bundle file holds exactly the trusted roots, and
// a lost step can be completed. The propagation delay is an hour, so
// activate needs --force, as does retire (SVIDs of the old generation are
// still valid). At the end the CA issues a working SVID.
func TestCACrashDuringRotation(t *testing.T) {
	needMesh(t)
	t.Parallel()
	ca := startCA(t, "--propagation-delay", "1h")
	watch := watchCreates(t, ca.dir)
	iterations := 9
	if s := os.Getenv("TETHER_MESH_CRASH_ITERATIONS"); s != "" {
		iterations, _ = strconv.Atoi(s)
	}
	outcomes := map[string]int{}
	for i := range iterations {
		before, err := ca.state()
		if err != nil {
			t.Fatalf("iteration %d: state before the step: %v", i, err)
		}
		step := nextStep(before)
		args := []string{"ca", "rotate", string(step)}
		if step != identity.StepPrepare {
			args = append(args, "--force")
		}
		// Steps cycle with period 3; shift the triggers so each step meets each.
		trigger := []string{"." + identity.StateFile + ".tmp-", ".bundle.pem.tmp-", ""}[(i+i/3)%3]
		if step == identity.StepActivate && trigger == ".bundle.pem.tmp-" {
			trigger = "" // activate does not change the bundle
		}
		watch.drain()
		cmd := exec.Command(filepath.Join(binDir, "tether"), args...)
		cmd.Env = append(os.Environ(), "TETHER_CA_ADMIN_SOCKET="+ca.socket)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		how := "at a random moment"
		if trigger == "" {
			time.Sleep(time.Duration(rand.IntN(120)) * time.Millisecond)
		} else {
			how = "when " + trigger + "* appeared"
			timeout := time.After(5 * time.Second)
		wait:
			for {
				select {
				case name := <-watch.names:
					if strings.HasPrefix(name, trigger) {
						break wait
					}
				case <-timeout:
					how = "after " + trigger + "* never appeared"
					break wait
				}
			}
		}
		ca.p.kill(t)
		cliErr := cmd.Wait()
		cliDone := cliErr == nil && strings.Contains(out.String(), string(step)+": done")

		after, err := ca.state()
		if err != nil {
			t.Fatalf("iteration %d (%s, killed %s): the state file is damaged: %v", i, step, how, err)
		}
		if err := consistent(after); err != nil {
			t.Fatalf("iteration %d (%s, killed %s): %v", i, step, how, err)
		}
		if _, err := identity.LoadBundlePEM(ca.bundle, td.Name()); err != nil {
			t.Fatalf("iteration %d (%s, killed %s): bundle.pem is damaged: %v", i, step, how, err)
		}
		was, want, got := journal(before), applied(before, step), journal(after)
		outcome := "lost"
		switch got {
		case was:
			if cliDone {
				t.Errorf("iteration %d (%s, killed %s): the CLI said done but the step is not in the store: %s", i, step, how, got)
			}
		case want:
			outcome = "durable"
		default:
			t.Fatalf("iteration %d (%s, killed %s): journal %q is neither %q nor %q", i, step, how, got, was, want)
		}
		outcomes[fmt.Sprintf("%s killed %s: %s", step, how, outcome)]++
		left := tempFiles(ca.dir)

		// Restart: the CA serves the journal it finds, and the step completes.
		ca.start(t)
		// A temporary state file left by the crash holds a whole copy of
		// the state, keys included (a later retire would not erase them).
		for _, f := range tempFiles(ca.dir) {
			if strings.HasPrefix(f, "."+identity.StateFile+".tmp-") {
				t.Errorf("iteration %d: the restarted CA left %s, a copy of its state with its keys, in its store", i, f)
			}
		}
		status, err := ca.cli("ca", "status")
		if err != nil {
			t.Fatal(err)
		}
		if err := statusMatches(status, after); err != nil {
			t.Errorf("iteration %d: after the restart, %v\n%s", i, err, status)
		}
		eventually(t, "the bundle file to hold the trusted roots", 5*time.Second, func() error {
			var got [][]byte
			for _, r := range ca.roots(t) {
				got = append(got, r.Raw)
			}
			if !slices.EqualFunc(got, trustedRoots(after), bytes.Equal) {
				return fmt.Errorf("bundle.pem holds %d roots, the journal trusts %d", len(got), len(trustedRoots(after)))
			}
			return nil
		})
		if got == was {
			if _, err := ca.cli(args...); err != nil {
				t.Fatalf("iteration %d: completing the lost step: %v", i, err)
			}
			if st, err := ca.state(); err != nil || journal(st) != want {
				t.Fatalf("iteration %d: after completing %s the journal is %v (%v), want %q", i, step, st, err, want)
			}
		}
		t.Logf("iteration %d: %s killed %s: %s; journal %s; temporary files the crash left: %v", i, step, how, outcome, journal(mustState(t, ca)), left)
	}
	t.Logf("outcomes: %v", outcomes)

	// The CA still issues SVIDs that chain to its active root.
	st := mustState(t, ca)
	var active *x509.Certificate
	for _, g := range st.Generations {
		if g.State == identity.Active {
			active, _ = x509.ParseCertificate(g.Roots[0])
		}
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(binDir, "tether"), "svid", "fetch", "--ca", ca.addr, "--bundle", ca.bundle,
		"--token", ca.token(t, "default", "after-crashes"), "--out", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("svid fetch after the crashes: %v\n%s", err, out)
	}
	svid, err := x509svid.Load(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid.key"))
	if err != nil {
		t.Fatal(err)
	}
	if err := chainsTo(svid.Certificates, active); err != nil {
		t.Errorf("the SVID issued after the crashes does not chain to the active root: %v", err)
	}
}

// tempFiles lists the temporary files of atomic writes in dir.
func tempFiles(dir string) []string {
	var names []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			names = append(names, e.Name())
		}
	}
	return names
}

func mustState(t *testing.T, ca *caProc) *identity.State {
	t.Helper()
	st, err := ca.state()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// statusMatches checks `tether ca status` against the stored journal.
func statusMatches(status string, st *identity.State) error {
	rows := parseStatus(status)
	if len(rows) != len(st.Generations) {
		return fmt.Errorf("status lists %d generations, the store %d", len(rows), len(st.Generations))
	}
	for i, g := range st.Generations {
		r := rows[i]
		if r.id != strconv.FormatUint(g.ID, 10) || r.state != string(g.State) {
			return fmt.Errorf("status row %d is %s:%s, the store has %d:%s", i, r.id, r.state, g.ID, g.State)
		}
		if len(g.Roots) > 0 && !strings.HasPrefix(identity.Fingerprint(g.Roots[0]), r.rootPrefix) {
			return fmt.Errorf("generation %d: status shows root %s…, the store %s", g.ID, r.rootPrefix, identity.Fingerprint(g.Roots[0])[:16])
		}
	}
	return nil
}
