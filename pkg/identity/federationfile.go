package identity

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// FederationSpec declares one foreign trust domain, with the field names of
// the TrustDomainFederation resource's spec.
type FederationSpec struct {
	TrustDomain       string `json:"trustDomain"`
	BundleEndpointURL string `json:"bundleEndpointURL"`
	// Profile is https_spiffe (default) or https_web.
	Profile          string `json:"profile,omitempty"`
	EndpointSPIFFEID string `json:"endpointSPIFFEID,omitempty"`
	// InitialBundle is PEM certificates or a SPIFFE bundle document.
	InitialBundle string `json:"initialBundle,omitempty"`
	// WebRoots are PEM CA certificates that verify an https_web endpoint
	// instead of the system roots (a private web PKI).
	WebRoots string `json:"webRoots,omitempty"`
	// InitialBundleFile and WebRootsFile (PEM CA certificates verifying an
	// https_web endpoint instead of the system roots) exist in files only;
	// relative paths are relative to the file.
	InitialBundleFile string `json:"initialBundleFile,omitempty"`
	WebRootsFile      string `json:"webRootsFile,omitempty"`
}

// FederationFile is a standalone tether-ca's --federation-file (read by
// internal/caserver, so that this package, which the sidecar links, does
// not link a YAML parser).
type FederationFile struct {
	Federation []FederationSpec `json:"federation"`
}

// Domain turns the spec into a FederatedDomain; dir resolves relative file
// paths. It does not validate the domain (FederatedDomain.Validate does).
func (s FederationSpec) Domain(dir string) (FederatedDomain, error) {
	td, err := spiffeid.TrustDomainFromString(s.TrustDomain)
	if err != nil {
		return FederatedDomain{}, fmt.Errorf("%w: trustDomain %q: %v", ErrConfig, s.TrustDomain, err)
	}
	d := FederatedDomain{TrustDomain: td, URL: s.BundleEndpointURL, Profile: s.Profile}
	if d.Profile == "" {
		d.Profile = ProfileHTTPSSPIFFE
	}
	if s.EndpointSPIFFEID != "" {
		if d.EndpointID, err = spiffeid.FromString(s.EndpointSPIFFEID); err != nil {
			return FederatedDomain{}, fmt.Errorf("%w: federation with %s: endpointSPIFFEID %q: %v", ErrConfig, td, s.EndpointSPIFFEID, err)
		}
	}
	initial := []byte(s.InitialBundle)
	if s.InitialBundleFile != "" {
		if s.InitialBundle != "" {
			return FederatedDomain{}, fmt.Errorf("%w: federation with %s: give initialBundle or initialBundleFile, not both", ErrConfig, td)
		}
		if initial, err = os.ReadFile(resolve(dir, s.InitialBundleFile)); err != nil {
			return FederatedDomain{}, fmt.Errorf("%w: federation with %s: %v", ErrConfig, td, err)
		}
	}
	if len(initial) > 0 {
		if d.Initial, err = ParseInitialBundle(td, initial); err != nil {
			return FederatedDomain{}, fmt.Errorf("%w: federation with %s: %v", ErrConfig, td, err)
		}
	}
	roots := []byte(s.WebRoots)
	if s.WebRootsFile != "" {
		if s.WebRoots != "" {
			return FederatedDomain{}, fmt.Errorf("%w: federation with %s: give webRoots or webRootsFile, not both", ErrConfig, td)
		}
		if roots, err = os.ReadFile(resolve(dir, s.WebRootsFile)); err != nil {
			return FederatedDomain{}, fmt.Errorf("%w: federation with %s: %v", ErrConfig, td, err)
		}
	}
	if len(roots) > 0 {
		if d.WebRoots, err = ParseWebRoots(roots); err != nil {
			return FederatedDomain{}, fmt.Errorf("%w: federation with %s: web roots: %v", ErrConfig, td, err)
		}
	}
	return d, nil
}

func resolve(dir, path string) string {
	if filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(dir, path)
}

// ParseWebRoots reads PEM certificates (the roots a web endpoint's chain
// ends at, or a pinned self-signed certificate) into a pool. Every block must be
// a CERTIFICATE that parses, and there must be one at least: a typo must
// not leave an endpoint verified by nothing, or silently by fewer roots.
func ParseWebRoots(data []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	n := 0
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			if n > 0 && len(bytes.TrimSpace(rest)) > 0 {
				return nil, errors.New("text that is not PEM after the certificates")
			}
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("a PEM block of type %q, want CERTIFICATE", block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %v", n+1, err)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return pool, nil
}
