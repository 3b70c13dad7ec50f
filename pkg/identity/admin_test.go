package identity_test

import (
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tether-mesh/tether/pkg/identity"
)

// TestAdminSocketModeFromTheStart watches the admin socket's path while
// ListenUnix runs: whoever holds the admin socket creates join tokens, so
// it must never exist with a mode other than 0600, not even before a chmod.
func TestAdminSocketModeFromTheStart(t *testing.T) {
	for range 20 {
		path := filepath.Join(t.TempDir(), "admin.sock")
		stop, saw := make(chan struct{}), make(chan struct{})
		var seen []fs.FileMode
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if fi, err := os.Lstat(path); err == nil {
					seen = append(seen, fi.Mode())
					if len(seen) == 1 {
						close(saw)
					}
				}
				select {
				case <-stop:
					return
				default:
				}
			}
		}()
		l, err := identity.ListenUnix(path)
		select { // the watcher has seen the socket, or it never appeared
		case <-saw:
		case <-time.After(time.Second):
		}
		close(stop)
		wg.Wait()
		if err != nil {
			t.Fatal(err)
		}
		if c, err := net.Dial("unix", path); err != nil {
			t.Fatalf("admin socket does not answer: %v", err)
		} else {
			c.Close()
		}
		l.Close()
		if len(seen) == 0 {
			t.Fatal("the watcher never saw the socket")
		}
		for _, m := range seen {
			if m != fs.ModeSocket|0o600 {
				t.Fatalf("the admin socket existed with mode %v, want only %v", m, fs.ModeSocket|0o600)
			}
		}
		if _, err := os.Lstat(path); err == nil {
			t.Fatal("admin socket left behind after Close")
		}
	}
}
