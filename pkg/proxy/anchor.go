package proxy

import (
	"bytes"
	"crypto/x509"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// A tunnel outlives the handshake that authenticated it, and a root can
// leave the trust bundle in between (`tether ca rotate retire`, or a
// federated domain's root rotation or removal). Each tunnel therefore
// remembers the roots its two ends chain to, and a new stream may start on
// it only while those roots are still trusted: after a retire, streams
// already open continue, new ones take a new handshake. (A stream with a
// peer of another trust domain is also closed by Revalidate once that
// domain's root is no longer trusted: see revoke.go.)

// anchorOf returns the authority of td's current bundle that chain ends at
// (its last certificate is that authority, or is signed by it); its cert
// is nil when there is none.
func (p *Proxy) anchorOf(chain []*x509.Certificate, td spiffeid.TrustDomain) anchor {
	a := anchor{td: td}
	if len(chain) == 0 {
		return a
	}
	b, err := p.trust.GetX509BundleForTrustDomain(td)
	if err != nil {
		return a
	}
	last := chain[len(chain)-1]
	for _, root := range b.X509Authorities() {
		if last.Equal(root) || bytes.Equal(last.RawIssuer, root.RawSubject) && last.CheckSignatureFrom(root) == nil {
			a.cert = root
			return a
		}
	}
	return a
}

// stillTrusted reports whether every anchor is an authority of its trust
// domain's current bundle. A nil anchor (not found at handshake time) is
// never trusted.
func (p *Proxy) stillTrusted(anchors ...anchor) bool {
	var b *x509bundle.Bundle
	var btd spiffeid.TrustDomain
	for _, a := range anchors {
		if a.cert == nil {
			return false
		}
		if b == nil || a.td != btd {
			var err error
			if b, err = p.trust.GetX509BundleForTrustDomain(a.td); err != nil {
				return false
			}
			btd = a.td
		}
		if !b.HasX509Authority(a.cert) {
			return false
		}
	}
	return true
}
