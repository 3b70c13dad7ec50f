package unixsock_test

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tether-mesh/tether/internal/unixsock"
)

func TestLongPaths(t *testing.T) {
	dir := t.TempDir()
	// The private directory makes the bound path longer than path; a path
	// that fits a socket address still works.
	path := filepath.Join(dir, strings.Repeat("d", 107-len(dir)-len("/s.sock")-1), "s.sock")
	if len(path) != 107 {
		t.Fatalf("test path is %d bytes", len(path))
	}
	l, err := unixsock.Listen(path, 0o600, -1, 0o700)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	c.Close()

	long := filepath.Join(dir, strings.Repeat("x", 120), "s.sock")
	if _, err := unixsock.Listen(long, 0o600, -1, 0o700); err == nil || !strings.Contains(err.Error(), "longer than the 107") {
		t.Fatalf("too long a path: %v", err)
	}
}

// TestLeftoversRemoved: a Listen that died between binding and linking
// leaves its private directory; the next Listen removes it.
func TestLeftoversRemoved(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "w.sock")
	stale := filepath.Join(dir, ".w.sock.tmp-123")
	if err := os.Mkdir(stale, 0o700); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, ".other.sock.tmp-1")
	if err := os.Mkdir(other, 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := unixsock.Listen(path, 0o600, -1, 0o700)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("leftover %s not removed: %v", stale, err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another socket's directory was removed: %v", err)
	}
}
