package identity

import (
	"context"
	"errors"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Attestor verifies one kind of credential and returns the SPIFFE ID it
// proves. It is safe for concurrent use.
//
// Errors wrap ErrUnauthenticated when the credential is not valid (the caller
// should not retry with it) and ErrUnavailable when the attestor cannot decide
// now, for example because the Kubernetes API is unreachable (the caller may
// retry). Attestors fail closed.
type Attestor interface {
	Attest(ctx context.Context, token string) (spiffeid.ID, error)
}

// AttestorFunc adapts a function to Attestor.
type AttestorFunc func(ctx context.Context, token string) (spiffeid.ID, error)

// Attest calls f.
func (f AttestorFunc) Attest(ctx context.Context, token string) (spiffeid.ID, error) {
	return f(ctx, token)
}

// Credential kinds understood by the CA.
const (
	KindJoinToken = "join_token"
	KindK8sSAT    = "k8s_sat"
)

// Attestation errors.
var (
	ErrUnauthenticated  = errors.New("credential not valid")
	ErrUnavailable      = errors.New("attestation temporarily unavailable")
	ErrPermissionDenied = errors.New("permission denied")
)
