package identity_test

import (
	"crypto/x509"
	"net/url"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

func spiffeidMust(t *testing.T, s string) spiffeid.ID {
	t.Helper()
	id, err := spiffeid.FromString(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// FuzzParseCSR: no input makes the CSR parser panic, and whatever it
// accepts has a verified self-signature and an allowed key.
func FuzzParseCSR(f *testing.F) {
	good, _ := testutil.NewCSR(f, nil, nil)
	u, _ := url.Parse("spiffe://cluster.local/evil")
	named, _ := testutil.NewCSR(f, nil, &x509.CertificateRequest{URIs: []*url.URL{u}, DNSNames: []string{"x"}})
	f.Add(good)
	f.Add(named)
	f.Add([]byte{})
	f.Add([]byte{0x30, 0x82, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, der []byte) {
		pub, err := identity.ParseCSR(der)
		if err != nil {
			return
		}
		csr, perr := x509.ParseCertificateRequest(der)
		if perr != nil || csr.CheckSignature() != nil || pub == nil {
			t.Fatalf("ParseCSR accepted a CSR that does not parse or verify")
		}
	})
}

// FuzzParseJoinToken: the join token parser never panics, and accepts only
// tokens of the documented form.
func FuzzParseJoinToken(f *testing.F) {
	f.Add("tjt_" + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	f.Add("")
	f.Add("tjt_\x00")
	f.Fuzz(func(t *testing.T, tok string) {
		if identity.ParseJoinToken(tok) == nil && (len(tok) != 47 || tok[:4] != "tjt_") {
			t.Fatalf("accepted malformed token %q", tok)
		}
	})
}
