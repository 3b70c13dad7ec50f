package identity

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ReservedNamespace is the namespace of the mesh's own components
// (tether-ca, tether-discovery, tether-injector). Every SPIFFE ID under
// /ns/tether-system/ is reserved for them.
const ReservedNamespace = "tether-system"

// IsReserved reports whether id is one of the mesh's own identities: the
// path /ns/tether-system or anything under it.
func IsReserved(id spiffeid.ID) bool {
	p := "/ns/" + ReservedNamespace
	return id.Path() == p || strings.HasPrefix(id.Path(), p+"/")
}

func reservedPrefix(td spiffeid.TrustDomain) string {
	return td.IDString() + "/ns/" + ReservedNamespace + "/"
}

// checkIssuable refuses IDs the CA never issues to a caller: another trust
// domain, the bare trust domain (an X509-SVID's ID must have a path) and
// the CA's own ID. The errors wrap ErrPermissionDenied.
func (c *CA) checkIssuable(id spiffeid.ID) error {
	switch {
	case id.TrustDomain() != c.cfg.TrustDomain:
		return fmt.Errorf("%w: %s is not in trust domain %s", ErrPermissionDenied, id, c.cfg.TrustDomain)
	case id.Path() == "":
		return errNoPath(id)
	case id == c.selfID:
		return fmt.Errorf("%w: %s is reserved for the CA itself", ErrPermissionDenied, id)
	}
	return nil
}

// errNoPath refuses the bare trust domain's ID.
func errNoPath(id spiffeid.ID) error {
	return fmt.Errorf("%w: %s is the trust domain itself and has no path; an X509-SVID names a workload, e.g. %s/ns/default/sa/web",
		ErrPermissionDenied, id, id)
}
