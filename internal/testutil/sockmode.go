package testutil

import (
	"io/fs"
	"os"
	"sync"
	"testing"
	"time"
)

// WatchModes runs create while a goroutine watches path, and returns
// create's error and every mode path had while watched: from before create
// until the watcher first saw path, or a second after create returned when
// it never did.
func WatchModes(path string, create func() error) ([]fs.FileMode, error) {
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
	err := create()
	select { // the watcher has seen the socket, or it never appeared
	case <-saw:
	case <-time.After(time.Second):
	}
	close(stop)
	wg.Wait()
	return seen, err
}

// CheckSocketModes fails t unless seen (from WatchModes) holds at least one
// mode and only that of a socket with permissions want; what names the
// socket in the message.
func CheckSocketModes(t testing.TB, seen []fs.FileMode, want fs.FileMode, what string) {
	t.Helper()
	if len(seen) == 0 {
		t.Fatal("the watcher never saw the socket")
	}
	for _, m := range seen {
		if m != fs.ModeSocket|want {
			t.Fatalf("the %s existed with mode %v, want only %v", what, m, fs.ModeSocket|want)
		}
	}
}
