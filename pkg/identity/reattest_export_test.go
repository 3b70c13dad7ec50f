package identity

import (
	"crypto/rand"
	"crypto/x509"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// SignUnrecordedForTest issues an SVID the way the CA did before it
// recorded attestations (no attestation extension), with a new key.
func (c *CA) SignUnrecordedForTest(t testing.TB, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	key, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := c.sign(id, csr, nil)
	if err != nil {
		t.Fatal(err)
	}
	var certs []*x509.Certificate
	for _, der := range iss.Chain {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, cert)
	}
	return &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}
}
