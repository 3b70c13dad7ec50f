package identity_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

func TestDiskStoreFilesArePrivate(t *testing.T) {
	dir := t.TempDir()
	store, _ := identity.NewDiskStore(dir)
	if _, err := identity.NewCA(context.Background(), identity.Config{TrustDomain: testutil.TrustDomain, Store: store}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, identity.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, want 0600", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != identity.StateFile && e.Name() != identity.LockFile {
			t.Errorf("store dir holds %s, want only the state and lock files (no temp files left)", e.Name())
		}
		if fi, err := e.Info(); err != nil {
			t.Error(err)
		} else if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", e.Name(), fi.Mode().Perm())
		}
	}
}

func TestDiskStoreCompareAndSwap(t *testing.T) {
	ctx := context.Background()
	store, _ := identity.NewDiskStore(t.TempDir())
	if _, _, err := store.Load(ctx); !errors.Is(err, identity.ErrNotFound) {
		t.Fatalf("empty store: err = %v, want ErrNotFound", err)
	}
	st := &identity.State{Version: identity.StateVersion, TrustDomain: "cluster.local"}
	rev1, err := store.Save(ctx, st, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Save(ctx, st, ""); !errors.Is(err, identity.ErrConflict) {
		t.Fatalf("create over existing: err = %v, want ErrConflict", err)
	}
	st.BundleSequence = 7
	rev2, err := store.Save(ctx, st, rev1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Save(ctx, st, rev1); !errors.Is(err, identity.ErrConflict) {
		t.Fatalf("save with stale revision: err = %v, want ErrConflict", err)
	}
	got, rev, err := store.Load(ctx)
	if err != nil || rev != rev2 || got.BundleSequence != 7 {
		t.Fatalf("Load = seq %v rev %q err %v, want seq 7 rev %q", got, rev, err, rev2)
	}
}

// TestCorruptStoreIsNeverOverwritten: a CA refuses to start on a damaged
// state file and leaves it exactly as it was, for the operator to inspect.
func TestCorruptStoreIsNeverOverwritten(t *testing.T) {
	valid := func(t *testing.T) []byte {
		dir := t.TempDir()
		store, _ := identity.NewDiskStore(dir)
		if _, err := identity.NewCA(context.Background(), identity.Config{TrustDomain: testutil.TrustDomain, Store: store}); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(filepath.Join(dir, identity.StateFile))
		return b
	}(t)
	tests := map[string][]byte{
		"empty file":         {},
		"truncated":          valid[:len(valid)/2],
		"not JSON":           []byte("\x00\x01garbage"),
		"wrong version":      bytes.Replace(valid, []byte(`"version": 1`), []byte(`"version": 99`), 1),
		"no active":          bytes.Replace(valid, []byte(`"state": "active"`), []byte(`"state": "prepared"`), 1),
		"unknown state":      bytes.Replace(valid, []byte(`"state": "active"`), []byte(`"state": "sleepy"`), 1),
		"key does not match": bytes.Replace(valid, []byte(`"chain_key": "`), []byte(`"chain_key": "AAAA`), 1),
	}
	for name, content := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, identity.StateFile)
			if err := os.WriteFile(path, content, 0o600); err != nil {
				t.Fatal(err)
			}
			store, _ := identity.NewDiskStore(dir)
			_, err := identity.NewCA(context.Background(), identity.Config{TrustDomain: testutil.TrustDomain, Store: store})
			if !errors.Is(err, identity.ErrCorruptState) {
				t.Fatalf("err = %v, want ErrCorruptState", err)
			}
			after, _ := os.ReadFile(path)
			if !bytes.Equal(after, content) {
				t.Fatal("the corrupt state file was modified")
			}
		})
	}
}

func TestDiskStoreUnwritableDir(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root can write any directory; this check needs an unprivileged user")
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o500)
	defer os.Chmod(dir, 0o700)
	if _, err := identity.NewDiskStore(dir); err == nil {
		t.Fatal("NewDiskStore on a read-only directory succeeded")
	}
}

func TestDiskStoreDirIsAFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o600)
	if _, err := identity.NewDiskStore(f); err == nil {
		t.Fatal("NewDiskStore on a regular file succeeded")
	}
}

// TestDiskStoreSingleUseTokenAcrossProcesses races two real tether-ca
// processes (this test binary, re-executed) sharing one store directory to
// spend the same single-use join token. Exactly one may win, every round.
func TestDiskStoreSingleUseTokenAcrossProcesses(t *testing.T) {
	if os.Getenv("TETHER_TEST_SPEND_CHILD") != "" {
		spendTokenChild()
		return
	}
	if testing.Short() {
		t.Skip("starts processes")
	}
	ctx := context.Background()
	dir := t.TempDir()
	store, err := identity.NewDiskStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := identity.NewCA(ctx, identity.Config{TrustDomain: testutil.TrustDomain, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	const rounds = 12
	for round := range rounds {
		token, _, err := ca.CreateJoinToken(ctx, testutil.ID("/race"), time.Hour, false)
		if err != nil {
			t.Fatal(err)
		}
		type child struct {
			cmd   *exec.Cmd
			stdin io.WriteCloser
			out   *bufio.Reader
		}
		var children []child
		for range 2 {
			cmd := exec.Command(os.Args[0], "-test.run=^TestDiskStoreSingleUseTokenAcrossProcesses$")
			cmd.Env = append(os.Environ(), "TETHER_TEST_SPEND_CHILD=1", "TETHER_TEST_STORE_DIR="+dir, "TETHER_TEST_TOKEN="+token)
			cmd.Stderr = os.Stderr
			stdin, _ := cmd.StdinPipe()
			stdout, _ := cmd.StdoutPipe()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			c := child{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
			t.Cleanup(func() { c.cmd.Process.Kill(); c.cmd.Wait() })
			if line, err := c.out.ReadString('\n'); err != nil || line != "READY\n" {
				t.Fatalf("round %d: child did not start: %q %v", round, line, err)
			}
			children = append(children, c)
		}
		for _, c := range children { // both spend at once
			c.stdin.Write([]byte("go\n"))
		}
		won := 0
		var results []string
		for _, c := range children {
			line, _ := c.out.ReadString('\n')
			results = append(results, strings.TrimSpace(line))
			if strings.HasPrefix(line, "ISSUED") {
				won++
			}
			c.cmd.Wait()
		}
		if won != 1 {
			t.Errorf("round %d: the single-use token was spent %d times, want exactly once: %q", round, won, results)
		}
	}
}

// spendTokenChild is the child process of
// TestDiskStoreSingleUseTokenAcrossProcesses: a CA on the shared directory
// that spends the token when told to.
func spendTokenChild() {
	ctx := context.Background()
	store, err := identity.NewDiskStore(os.Getenv("TETHER_TEST_STORE_DIR"))
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	ca, err := identity.NewCA(ctx, identity.Config{TrustDomain: testutil.TrustDomain, Store: store})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	fmt.Println("READY")
	bufio.NewReader(os.Stdin).ReadString('\n')
	id, err := ca.JoinTokens().Attest(ctx, os.Getenv("TETHER_TEST_TOKEN"))
	if err != nil {
		fmt.Println("REFUSED", err)
	} else {
		fmt.Println("ISSUED", id)
	}
	os.Exit(0)
}
