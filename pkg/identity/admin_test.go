package identity_test

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// TestAdminSocketModeFromTheStart watches the admin socket's path while
// ListenUnix runs: whoever holds the admin socket creates join tokens, so
// it must never exist with a mode other than 0600, not even before a chmod.
func TestAdminSocketModeFromTheStart(t *testing.T) {
	for range 20 {
		path := filepath.Join(t.TempDir(), "admin.sock")
		var l net.Listener
		seen, err := testutil.WatchModes(path, func() (err error) {
			l, err = identity.ListenUnix(path)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if c, err := net.Dial("unix", path); err != nil {
			t.Fatalf("admin socket does not answer: %v", err)
		} else {
			c.Close()
		}
		l.Close()
		testutil.CheckSocketModes(t, seen, 0o600, "admin socket")
		if _, err := os.Lstat(path); err == nil {
			t.Fatal("admin socket left behind after Close")
		}
	}
}
