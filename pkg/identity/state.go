package identity

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// StateVersion is the schema version of State written by this code.
const StateVersion = 1

// GenerationState is where a CA generation is in the rotation journal.
type GenerationState string

// The journal: prepared (root trusted, not signing) → active (signing) →
// superseded (still trusted, no longer signing, until nothing it signed is
// valid) → retired (dropped from the bundle, keys erased).
const (
	Prepared   GenerationState = "prepared"
	Active     GenerationState = "active"
	Superseded GenerationState = "superseded"
	Retired    GenerationState = "retired"
)

// State is everything the CA keeps durably. It is one JSON document so that a
// store can write it atomically.
type State struct {
	Version        int          `json:"version"`
	TrustDomain    string       `json:"trust_domain"`
	BundleSequence uint64       `json:"bundle_sequence"`
	NextGeneration uint64       `json:"next_generation"`
	Generations    []Generation `json:"generations"`
	JoinTokens     []JoinToken  `json:"join_tokens,omitempty"`
	// UpstreamAnchors is AnchorsIntermediates once the bundle published for
	// this state trusts upstream generations' own intermediates rather than
	// the upstream's roots. A state written before (which trusted the roots)
	// gets a new bundle sequence once, so that no two bundles with the same
	// sequence differ.
	UpstreamAnchors string `json:"upstream_anchors,omitempty"`
	// UpstreamRootsUntil, while set, keeps the upstream's roots in the
	// bundle next to the intermediates: a state written before may hold an
	// intermediate renewed in place, and what the replaced one signed is
	// valid until then. The CA clears it at that time.
	UpstreamRootsUntil time.Time `json:"upstream_roots_until,omitzero"`
	// Revocations are the SPIFFE IDs, serials and join tokens the CA
	// refuses to renew or accept (see revoke.go).
	Revocations []Revocation `json:"revocations,omitempty"`
}

// AnchorsIntermediates is State.UpstreamAnchors for a state whose upstream
// generations are trusted through their own intermediates.
const AnchorsIntermediates = "intermediates"

// Generation is one CA generation: a root (or, in upstream mode, the
// upstream's roots) and the intermediate that signs SVIDs. Its trust anchor
// in the bundle is the root, or in upstream mode the intermediate itself
// (see anchors).
type Generation struct {
	ID    uint64          `json:"id"`
	State GenerationState `json:"state"`
	// Roots are the roots of this generation (DER): one self-made root (the
	// generation's trust anchor), or the roots an upstream issuer returned
	// (kept for information and to check the chain, never trusted: the
	// upstream signs for others too).
	Roots [][]byte `json:"roots"`
	// RootKey is the PKCS#8 key of a self-made root; empty in upstream mode.
	RootKey []byte `json:"root_key,omitempty"`
	// Chain is the signing intermediate first, then any certificates
	// between it and the root (upstream mode), DER.
	Chain [][]byte `json:"chain"`
	// ChainKey is the PKCS#8 key of Chain[0].
	ChainKey []byte `json:"chain_key,omitempty"`
	// JWTKeyID and JWTKey (PKCS#8) sign this generation's JWT-SVIDs; the
	// public key is in the bundle while the generation is.
	JWTKeyID string `json:"jwt_key_id,omitempty"`
	JWTKey   []byte `json:"jwt_key,omitempty"`
	// Upstream names the cert-manager issuer that signed Chain, if any.
	Upstream string `json:"upstream,omitempty"`
	// OfflineRoot: Chain was signed by a root whose key the CA does not
	// hold (offline-root mode); RootKey is empty.
	OfflineRoot bool      `json:"offline_root,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	ActivatedAt time.Time `json:"activated_at,omitzero"`
	// RetireAfter is set when the generation stops signing: nothing it
	// signed is valid past this time.
	RetireAfter time.Time `json:"retire_after,omitzero"`
	RetiredAt   time.Time `json:"retired_at,omitzero"`
	// EndpointServed is when the bundle endpoint first answered a fetch
	// with a bundle holding this generation's anchors while it was
	// prepared (the bundle endpoint gate of activate); zero until then.
	EndpointServed EndpointServed `json:"endpoint_served,omitzero"`
}

// EndpointServed records the bundle endpoint's first answer holding a
// prepared generation's anchors.
type EndpointServed struct {
	// At is when the response was written; Sequence is the bundle
	// sequence it carried and RefreshHint the refresh hint it served.
	At          time.Time     `json:"at,omitzero"`
	Sequence    uint64        `json:"sequence,omitempty"`
	RefreshHint time.Duration `json:"refresh_hint,omitempty"`
}

// JoinToken is a stored join token. Only the SHA-256 of the token is kept.
type JoinToken struct {
	Hash      string    `json:"hash"`
	SPIFFEID  string    `json:"spiffe_id"`
	ExpiresAt time.Time `json:"expires_at"`
	Reusable  bool      `json:"reusable,omitempty"`
}

// ErrCorruptState means a store holds something that is not a valid CA
// state. The CA refuses to start rather than overwrite it.
var ErrCorruptState = errors.New("CA state is corrupt")

// DecodeState parses and validates a stored state.
func DecodeState(data []byte) (*State, error) {
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorruptState, err)
	}
	if err := st.validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorruptState, err)
	}
	return &st, nil
}

// Encode serializes the state.
func (s *State) Encode() ([]byte, error) {
	return json.MarshalIndent(s, "", "  ")
}

func (s *State) validate() error {
	if s.Version != StateVersion {
		return fmt.Errorf("schema version %d, this CA reads version %d", s.Version, StateVersion)
	}
	if s.TrustDomain == "" {
		return errors.New("no trust domain")
	}
	active := 0
	for i := range s.Generations {
		g := &s.Generations[i]
		switch g.State {
		case Active:
			active++
		case Prepared, Superseded, Retired:
		default:
			return fmt.Errorf("generation %d: unknown state %q", g.ID, g.State)
		}
		if g.State == Retired {
			continue
		}
		if _, err := g.authority(); err != nil {
			return fmt.Errorf("generation %d: %v", g.ID, err)
		}
	}
	if len(s.Generations) > 0 && active != 1 {
		return fmt.Errorf("%d active generations, want exactly 1", active)
	}
	return validateRevocations(s.Revocations)
}

// anchors returns the certificates (DER) the bundle trusts for g: its own
// root, or for an upstream-signed generation its intermediate, since the
// upstream's roots also vouch for every certificate the upstream signed for
// anyone else.
func (g *Generation) anchors() [][]byte {
	if g.Upstream != "" {
		return g.Chain[:min(1, len(g.Chain))]
	}
	return g.Roots
}

// clone returns a deep-enough copy: slices are copied, certificate bytes
// are never mutated in place so they may be shared.
func (s *State) clone() *State {
	c := *s
	c.Generations = append([]Generation(nil), s.Generations...)
	c.JoinTokens = append([]JoinToken(nil), s.JoinTokens...)
	c.Revocations = append([]Revocation(nil), s.Revocations...)
	return &c
}

// active returns the active generation, or nil.
func (s *State) active() *Generation {
	return s.find(Active)
}

// activeAuthority returns the active generation and its parsed authority;
// an error (ErrCorruptState) when there is none or it does not parse.
func (s *State) activeAuthority() (*Generation, *authority, error) {
	act := s.active()
	if act == nil {
		return nil, nil, fmt.Errorf("%w: no active generation", ErrCorruptState)
	}
	a, err := act.authority()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: generation %d: %v", ErrCorruptState, act.ID, err)
	}
	return act, a, nil
}

func (s *State) find(state GenerationState) *Generation {
	for i := range s.Generations {
		if s.Generations[i].State == state {
			return &s.Generations[i]
		}
	}
	return nil
}

// authority is a parsed, usable generation.
type authority struct {
	gen      uint64
	roots    []*x509.Certificate
	chain    []*x509.Certificate // intermediate first
	chainDER [][]byte
	key      crypto.Signer
	jwtKID   string
	jwtKey   crypto.Signer // nil when the generation has none
}

func (g *Generation) authority() (*authority, error) {
	a := &authority{gen: g.ID, chainDER: g.Chain}
	if len(g.Roots) == 0 {
		return nil, errors.New("no root certificates")
	}
	for _, der := range g.Roots {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("root certificate: %v", err)
		}
		a.roots = append(a.roots, c)
	}
	if len(g.Chain) == 0 {
		return nil, errors.New("no signing certificate")
	}
	for _, der := range g.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("signing chain: %v", err)
		}
		a.chain = append(a.chain, c)
	}
	k, err := x509.ParsePKCS8PrivateKey(g.ChainKey)
	if err != nil {
		return nil, fmt.Errorf("signing key: %v", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("signing key of type %T cannot sign", k)
	}
	a.key = signer
	if !publicKeysEqual(signer.Public(), a.chain[0].PublicKey) {
		return nil, errors.New("signing key does not match the signing certificate")
	}
	if len(g.JWTKey) > 0 {
		k, err := x509.ParsePKCS8PrivateKey(g.JWTKey)
		if err != nil {
			return nil, fmt.Errorf("JWT key: %v", err)
		}
		s, ok := k.(crypto.Signer)
		if !ok || g.JWTKeyID == "" {
			return nil, errors.New("JWT key unusable or without key ID")
		}
		a.jwtKID, a.jwtKey = g.JWTKeyID, s
	}
	return a, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ak.Equal(b)
}
