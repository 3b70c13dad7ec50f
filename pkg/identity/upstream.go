package identity

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Upstream signs the CA's intermediate with an organisation's own PKI
// (cert-manager, in package identity/kube), so that the root stays there.
//
// SignIntermediate blocks until the certificate is issued or ctx ends. It is
// called only by the replica that writes the state.
type Upstream interface {
	// Name identifies the upstream in logs and status, e.g. "cert-manager Issuer/corp-ca".
	Name() string
	SignIntermediate(ctx context.Context, csrDER []byte, ttl time.Duration) (*UpstreamResult, error)
}

// UpstreamResult is a signed intermediate.
type UpstreamResult struct {
	// Chain is the intermediate first, then any certificates above it
	// that are not roots, DER.
	Chain [][]byte
	// Roots are the upstream's trust anchors, DER.
	Roots [][]byte
}

// intermediateCSR asks for a CA certificate with the trust domain's
// path-less SPIFFE ID.
func intermediateCSR(td spiffeid.TrustDomain, key crypto.Signer) ([]byte, error) {
	return x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{Organization: []string{"Tether"}, CommonName: "Tether intermediate"},
		URIs:    []*url.URL{td.ID().URL()},
	}, key)
}
