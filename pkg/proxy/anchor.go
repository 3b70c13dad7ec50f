package proxy

import (
	"bytes"
	"crypto/x509"
)

// A tunnel outlives the handshake that authenticated it, and a root can
// leave the trust bundle in between (`tether ca rotate retire`). Each
// tunnel therefore remembers the roots its two ends chain to, and a new
// stream may start on it only while those roots are still trusted: after a
// retire, streams already open continue, new ones take a new handshake.

// anchorOf returns the authority of the current bundle that chain ends at
// (its last certificate is that authority, or is signed by it), or nil.
func (p *Proxy) anchorOf(chain []*x509.Certificate) *x509.Certificate {
	if len(chain) == 0 {
		return nil
	}
	b, err := p.cfg.Identity.GetX509BundleForTrustDomain(p.cfg.TrustDomain)
	if err != nil {
		return nil
	}
	last := chain[len(chain)-1]
	for _, a := range b.X509Authorities() {
		if last.Equal(a) {
			return a
		}
		if bytes.Equal(last.RawIssuer, a.RawSubject) && last.CheckSignatureFrom(a) == nil {
			return a
		}
	}
	return nil
}

// stillTrusted reports whether every anchor is an authority of the current
// bundle. A nil anchor (not found at handshake time) is never trusted.
func (p *Proxy) stillTrusted(anchors ...*x509.Certificate) bool {
	b, err := p.cfg.Identity.GetX509BundleForTrustDomain(p.cfg.TrustDomain)
	if err != nil {
		return false
	}
	for _, a := range anchors {
		if a == nil || !b.HasX509Authority(a) {
			return false
		}
	}
	return true
}
