package identity

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// LoadBundlePEM reads a PEM bundle. With td empty the trust domain is taken
// from the first root's SPIFFE ID.
func LoadBundlePEM(path, td string) (*x509bundle.Bundle, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read bundle: %w", err)
	}
	var certs []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("bundle %s: %w", path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("bundle %s holds no PEM certificate", path)
	}
	if td == "" {
		id, err := x509svid.IDFromCert(certs[0])
		if err != nil {
			return nil, errors.New("cannot tell the trust domain from the bundle's root; pass --trust-domain")
		}
		td = id.TrustDomain().Name()
	}
	trustDomain, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return nil, fmt.Errorf("trust domain %q: %w", td, err)
	}
	return x509bundle.FromX509Authorities(trustDomain, certs), nil
}

// WriteBundlePEM writes the bundle's roots as PEM, atomically, mode 0644
// (a bundle is public).
func WriteBundlePEM(path string, b *x509bundle.Bundle) error {
	var out []byte
	for _, c := range b.X509Authorities() {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return WriteFileAtomic(path, out, 0o644)
}
