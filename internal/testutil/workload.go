package testutil

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/tether-mesh/tether/pkg/identity/workload"
)

// ServeWorkloadAPI runs Tether's Workload API server for src on a unix
// socket in a temporary directory until the test ends, and returns the
// socket's path (for SPIFFE_ENDPOINT_SOCKET as unix://PATH).
func ServeWorkloadAPI(t testing.TB, src workload.Source) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "wl", "workload.sock")
	l, err := workload.Listen(path, workload.Access{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- workload.New(src, nil).Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Workload API server: %v", err)
		}
	})
	return path
}
