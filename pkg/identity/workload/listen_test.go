package workload_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tether-mesh/tether/pkg/identity/workload"
)

func TestListen(t *testing.T) {
	t.Run("creates the directory, socket mode 0666", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "run", "tether", "workload.sock")
		l, err := workload.Listen(path)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o666 {
			t.Fatalf("socket mode %v, want a socket with 0666", fi.Mode())
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
		l, err := workload.Listen(path)
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
		if l, err := workload.Listen(path); !errors.Is(err, workload.ErrInUse) {
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
		l, err := workload.Listen(path)
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
		if _, err := workload.Listen(path); !errors.Is(err, workload.ErrNotSocket) || !strings.Contains(err.Error(), "directory") {
			t.Fatalf("Listen on a directory: %v", err)
		}
	})
}
