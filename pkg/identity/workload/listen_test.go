package workload_test

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity/workload"
)

func TestListen(t *testing.T) {
	t.Run("creates the directory, socket mode 0600", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "run", "tether", "workload.sock")
		l, err := workload.Listen(path, workload.Access{})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
			t.Fatalf("socket mode %v, want a socket with 0600", fi.Mode())
		}
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("the sidecar's own user cannot connect: %v", err)
		}
		c.Close()
		l.Close()
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket left behind after Close: %v", err)
		}
		if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 0 {
			t.Errorf("files left in the socket directory: %v", entries)
		}
	})

	t.Run("replaces a stale socket", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "workload.sock")
		old, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		old.(*net.UnixListener).SetUnlinkOnClose(false)
		old.Close() // a crashed sidecar leaves its socket file behind
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("no stale socket to test with: %v", err)
		}
		l, err := workload.Listen(path, workload.Access{})
		if err != nil {
			t.Fatalf("stale socket not replaced: %v", err)
		}
		defer l.Close()
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("new socket does not answer: %v", err)
		}
		c.Close()
	})

	t.Run("refuses a live socket", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "workload.sock")
		live, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		if l, err := workload.Listen(path, workload.Access{}); !errors.Is(err, workload.ErrInUse) {
			if l != nil {
				l.Close()
			}
			t.Fatalf("Listen on a live socket: %v, want ErrInUse", err)
		}
	})

	t.Run("leaves a regular file alone", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "workload.sock")
		if err := os.WriteFile(path, []byte("precious"), 0o644); err != nil {
			t.Fatal(err)
		}
		l, err := workload.Listen(path, workload.Access{})
		if !errors.Is(err, workload.ErrNotSocket) || !strings.Contains(err.Error(), "regular file") {
			if l != nil {
				l.Close()
			}
			t.Fatalf("Listen on a regular file: %v, want ErrNotSocket naming a regular file", err)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != "precious" {
			t.Fatalf("the file was touched: %q, %v", b, err)
		}
	})

	t.Run("leaves a directory alone", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "workload.sock")
		if err := os.Mkdir(path, 0o755); err != nil {
			t.Fatal(err)
		}
		if _, err := workload.Listen(path, workload.Access{}); !errors.Is(err, workload.ErrNotSocket) || !strings.Contains(err.Error(), "directory") {
			t.Fatalf("Listen on a directory: %v", err)
		}
	})
}

// TestSocketModeFromTheStart watches the socket path while Listen runs: the
// socket must never be there with a wider mode than asked, not even for
// an instant before a chmod.
func TestSocketModeFromTheStart(t *testing.T) {
	for _, tc := range []struct {
		access workload.Access
		want   fs.FileMode
	}{
		{workload.Access{}, 0o600},
		{workload.Access{Mode: 0o660}, 0o660},
		{workload.Access{Mode: 0o666}, 0o666},
	} {
		t.Run(fmt.Sprintf("%04o", tc.want), func(t *testing.T) {
			for range 20 {
				path := filepath.Join(t.TempDir(), "workload.sock")
				var l net.Listener
				seen, err := testutil.WatchModes(path, func() (err error) {
					l, err = workload.Listen(path, tc.access)
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
				l.Close()
				testutil.CheckSocketModes(t, seen, tc.want, "socket")
			}
		})
	}
}

// TestOtherUserCannotConnect connects as another user (uid 65534) with a
// child process: refused on a 0600 socket in a 0755 directory (standalone
// mode on /run/tether), accepted for the socket's group with 0660, and for
// anyone with 0666 (the pod's emptyDir mode).
func TestOtherUserCannotConnect(t *testing.T) {
	if path := os.Getenv("TETHER_TEST_CONNECT"); path != "" {
		c, err := net.Dial("unix", path)
		if err != nil {
			fmt.Println("REFUSED", err)
		} else {
			c.Close()
			fmt.Println("CONNECTED")
		}
		os.Exit(0)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a child as another user")
	}
	dir, err := os.MkdirTemp("", "tether-wl-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil { // like /run/tether
		t.Fatal(err)
	}
	// The test binary, where the other user may run it.
	bin := filepath.Join(dir, "connect.test")
	src, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(dst, src)
	src.Close()
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	connectAs := func(path string, uid, gid uint32) string {
		cmd := exec.Command(bin, "-test.run=^TestOtherUserCannotConnect$")
		cmd.Env = []string{"TETHER_TEST_CONNECT=" + path}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("child as uid %d: %v", uid, err)
		}
		return strings.TrimSpace(string(out))
	}
	for _, tc := range []struct {
		name     string
		access   workload.Access
		uid, gid uint32
		want     string
	}{
		{"0600, another user", workload.Access{}, 65534, 65534, "REFUSED"},
		{"0660, another user outside the group", workload.Access{Mode: 0o660, Group: "65533"}, 65534, 65534, "REFUSED"},
		{"0660, a member of the group", workload.Access{Mode: 0o660, Group: "65533"}, 65534, 65533, "CONNECTED"},
		{"0666, another user", workload.Access{Mode: 0o666}, 65534, 65534, "CONNECTED"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "run", strings.ReplaceAll(tc.name, " ", "_")+".sock")
			l, err := workload.Listen(path, tc.access)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if got := connectAs(path, tc.uid, tc.gid); !strings.HasPrefix(got, tc.want) {
				t.Fatalf("uid %d gid %d: %q, want %s", tc.uid, tc.gid, got, tc.want)
			}
		})
	}
}
