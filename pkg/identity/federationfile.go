package identity

import (
	"crypto/x509"
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
	if s.WebRootsFile != "" {
		pemData, err := os.ReadFile(resolve(dir, s.WebRootsFile))
		if err != nil {
			return FederatedDomain{}, fmt.Errorf("%w: federation with %s: %v", ErrConfig, td, err)
		}
		d.WebRoots = x509.NewCertPool()
		if !d.WebRoots.AppendCertsFromPEM(pemData) {
			return FederatedDomain{}, fmt.Errorf("%w: federation with %s: webRootsFile %s holds no PEM certificate", ErrConfig, td, s.WebRootsFile)
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
