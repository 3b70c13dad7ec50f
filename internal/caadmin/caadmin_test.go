package caadmin

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestDialMissingSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "admin.sock")
	_, _, err := Dial(sock)
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Dial(%s) = %v, want a not-exist error", sock, err)
	}
	for _, want := range []string{sock, "is tether-ca running?", "TETHER_CA_ADMIN_SOCKET"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

func TestRPCError(t *testing.T) {
	err := RPCError("rotate", status.Error(codes.FailedPrecondition, "the prepared root is too new"))
	if got, want := err.Error(), "rotate: the prepared root is too new (FailedPrecondition)"; got != want {
		t.Errorf("RPCError(status) = %q, want %q", got, want)
	}
	plain := errors.New("connection refused")
	err = RPCError("status", plain)
	if !errors.Is(err, plain) || err.Error() != "status: connection refused" {
		t.Errorf("RPCError(plain) = %v, want it wrapped", err)
	}
}
