package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MaxCSRSize bounds the CSRs the CA parses. A P-256 CSR is about 300 bytes;
// an RSA-8192 one about 1.2 KiB.
const MaxCSRSize = 16 << 10

// Errors returned for bad CSRs. They wrap into ErrBadCSR so callers can test
// for the whole class with errors.Is.
var (
	ErrBadCSR       = errors.New("bad certificate signing request")
	ErrWeakKey      = fmt.Errorf("%w: key type or size not allowed (use ECDSA P-256 or P-384, or RSA of at least 2048 bits)", ErrBadCSR)
	ErrCSRSignature = fmt.Errorf("%w: self-signature does not verify", ErrBadCSR)
)

// ParseCSR parses a DER PKCS#10 request, checks its self-signature and its
// key, and returns the public key. Every name in the request is ignored.
func ParseCSR(der []byte) (crypto.PublicKey, error) {
	if len(der) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrBadCSR)
	}
	if len(der) > MaxCSRSize {
		return nil, fmt.Errorf("%w: %d bytes is more than the limit of %d", ErrBadCSR, len(der), MaxCSRSize)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCSR, err)
	}
	if err := checkKey(csr.PublicKey); err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w (%v)", ErrCSRSignature, err)
	}
	return csr.PublicKey, nil
}

func checkKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return nil
		}
		return fmt.Errorf("%w: curve %s", ErrWeakKey, k.Curve.Params().Name)
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < 2048 || n > 8192 {
			return fmt.Errorf("%w: RSA-%d", ErrWeakKey, n)
		}
		return nil
	case ed25519.PublicKey:
		return fmt.Errorf("%w: Ed25519", ErrWeakKey)
	default:
		return fmt.Errorf("%w: %T", ErrWeakKey, pub)
	}
}

// NewKey makes an ECDSA P-256 key, the default everywhere in Tether.
func NewKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

// caTemplate is a CA certificate template per the X509-SVID standard:
// cA=true, keyCertSign, and the path-less SPIFFE ID of the trust domain.
func caTemplate(td spiffeid.TrustDomain, cn string, notBefore, notAfter time.Time, maxPathLen int) (*x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Tether"}, CommonName: cn},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            maxPathLen,
		MaxPathLenZero:        maxPathLen == 0,
		URIs:                  []*url.URL{td.ID().URL()},
	}, nil
}

// leafTemplate is an X509-SVID leaf: exactly one URI SAN, cA=false,
// digitalSignature only (Go marks key usage critical), EKU server and client.
func leafTemplate(id spiffeid.ID, notBefore, notAfter time.Time) (*x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Tether"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{id.URL()},
	}, nil
}

// Fingerprint is the hex SHA-256 of a certificate's DER.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// minTime returns the earlier of a and b.
func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
