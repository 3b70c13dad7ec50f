package caserver

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"

	"github.com/tether-mesh/tether/pkg/identity"
)

// loadFederationFile reads and validates a federation file for a CA of
// trust domain local. Unknown fields are errors (a typo must not drop a
// setting silently).
func loadFederationFile(path string, local spiffeid.TrustDomain) ([]identity.FederatedDomain, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("federation file: %w", err)
	}
	var f identity.FederationFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("%w: federation file %s: %v", identity.ErrConfig, path, err)
	}
	out := make([]identity.FederatedDomain, 0, len(f.Federation))
	seen := map[spiffeid.TrustDomain]bool{}
	for i, s := range f.Federation {
		d, err := s.Domain(filepath.Dir(path))
		if err == nil {
			err = d.Validate(local)
		}
		if err == nil && seen[d.TrustDomain] {
			err = fmt.Errorf("%w: trust domain %s is declared twice", identity.ErrConfig, d.TrustDomain)
		}
		if err != nil {
			return nil, fmt.Errorf("federation file %s, entry %d: %w", path, i+1, err)
		}
		seen[d.TrustDomain] = true
		out = append(out, d)
	}
	return out, nil
}
