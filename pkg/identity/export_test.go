package identity_test

import (
	"crypto/tls"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/tether-mesh/tether/pkg/identity"
)

func tlsClientConfig(ca *identity.CA) *tls.Config {
	return tlsconfig.TLSClientConfig(ca, tlsconfig.AuthorizeID(identity.CAID(ca.TrustDomain())))
}
