package discoverytest

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
)

// Snapshot is the snapshot of a registry in trust domain td, with mesh
// default def (and opts), that has taken st; it fails t if the registry
// refuses either.
func Snapshot(t testing.TB, td spiffeid.TrustDomain, def policy.Default, st discovery.State, opts ...discovery.RegistryOption) *discovery.Snapshot {
	t.Helper()
	reg, err := discovery.NewRegistry(td, def, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Update(st); err != nil {
		t.Fatal(err)
	}
	return reg.Snapshot()
}
