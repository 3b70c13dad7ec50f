// Package identity is Tether's certificate authority: it keeps a journal of
// CA generations (root and signing intermediate), attests callers, and issues
// SPIFFE X.509-SVIDs for the attested identity only.
//
// The pieces, and where they are used:
//   - CA signs CSRs, owns the trust bundle and rotates roots (ca.go, journal.go);
//   - Store keeps the CA's state durably (DiskStore here; a Kubernetes Secret
//     store in package identity/kube);
//   - Attestor turns a credential into a SPIFFE ID (JoinTokens here; the
//     Kubernetes TokenReview attestor in identity/kube);
//   - Server exposes the CA over gRPC (api/ca/v1), Client is its counterpart.
package identity
