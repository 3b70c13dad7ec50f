// Package caadmin is the command line's client of tether-ca's operator
// API: it dials the operator socket and turns the CA's gRPC errors into its
// own messages.
package caadmin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
)

// Dial connects to the CA's operator API on the unix socket and returns the
// client and the function that closes it.
func Dial(socket string) (cav1.AdminClient, func(), error) {
	if _, err := os.Stat(socket); err != nil {
		return nil, nil, fmt.Errorf("CA operator socket %s: %w (is tether-ca running? pass --socket or set TETHER_CA_ADMIN_SOCKET)", socket, err)
	}
	// "unix://" needs an absolute path: a relative one would parse as a host.
	abs, err := filepath.Abs(socket)
	if err != nil {
		return nil, nil, fmt.Errorf("CA operator socket %s: %w", socket, err)
	}
	conn, err := grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return cav1.NewAdminClient(conn), func() { conn.Close() }, nil
}

// RPCError turns a gRPC error into the CA's own message.
func RPCError(what string, err error) error {
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		s := se.GRPCStatus()
		return fmt.Errorf("%s: %s (%s)", what, s.Message(), s.Code())
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Call dials the CA's operator API on the socket, makes one call and
// closes the connection; a gRPC error is worded by RPCError with what.
func Call[T any](ctx context.Context, socket, what string, call func(context.Context, cav1.AdminClient) (T, error)) (T, error) {
	var zero T
	api, done, err := Dial(socket)
	if err != nil {
		return zero, err
	}
	defer done()
	resp, err := call(ctx, api)
	if err != nil {
		return zero, RPCError(what, err)
	}
	return resp, nil
}
