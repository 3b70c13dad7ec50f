package identity

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
)

// MaxRequestSize bounds a gRPC request to the CA.
const MaxRequestSize = 64 << 10

// Server serves the CA gRPC API. Callers prove who they are with a
// credential (one Attestor per kind) or, to renew, with their current SVID.
type Server struct {
	cav1.UnimplementedCAServer
	ca        *CA
	attestors map[string]Attestor
	log       *slog.Logger
	// lastBundle caches the bundle message of the current version; it is
	// shared by responses and never modified.
	lastBundle atomic.Pointer[cav1.Bundle]
	// federated is the set of foreign bundles WatchBundle sends (nil: none);
	// lastWatch caches the WatchBundle message of the current versions.
	federated *FederatedBundles
	lastWatch atomic.Pointer[watchMessage]
	// shutdown is closed by Shutdown; it ends WatchBundle streams, which
	// would otherwise hold a graceful stop until their clients leave.
	shutdown     chan struct{}
	shutdownOnce sync.Once
}

// Shutdown ends every WatchBundle stream with Unavailable (clients then
// reconnect, to another replica or to this one when it is back). Call it
// before grpc.Server.GracefulStop.
func (s *Server) Shutdown() { s.shutdownOnce.Do(func() { close(s.shutdown) }) }

// NewServer serves ca; attestors maps a credential kind (KindJoinToken,
// KindK8sSAT, ...) to the attestor that verifies it.
func NewServer(ca *CA, attestors map[string]Attestor, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{ca: ca, attestors: attestors, log: log, shutdown: make(chan struct{})}
}

// TLSConfig presents the CA's own SVID and accepts (without requiring) a
// client SVID, which must then verify against the bundle.
func (s *Server) TLSConfig() *tls.Config {
	cfg := tlsconfig.TLSServerConfig(s.ca)
	cfg.MinVersion = tls.VersionTLS13
	cfg.ClientAuth = tls.RequestClientCert
	verify := tlsconfig.VerifyPeerCertificate(s.ca, tlsconfig.AuthorizeMemberOf(s.ca.TrustDomain()))
	cfg.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return nil // bootstrap with a credential
		}
		return verify(raw, chains)
	}
	return cfg
}

// Per-connection gRPC transport buffers. The defaults (32 KiB each way)
// are most of what an idle connection costs; the CA's messages are small
// (requests at most MaxRequestSize), so smaller buffers cost little speed
// and let a flood of idle connections take less memory (bench/ca).
const (
	grpcReadBufferSize  = 8 << 10
	grpcWriteBufferSize = 8 << 10
)

// GRPCServer returns a gRPC server with the CA service registered, TLS from
// TLSConfig, request size limits and small transport buffers. Connection
// limits come with ConnGate.ServerOptions, passed in opts.
func (s *Server) GRPCServer(opts ...grpc.ServerOption) *grpc.Server {
	opts = append([]grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(s.TLSConfig())),
		grpc.MaxRecvMsgSize(MaxRequestSize),
		grpc.ReadBufferSize(grpcReadBufferSize),
		grpc.WriteBufferSize(grpcWriteBufferSize),
		grpc.SharedWriteBuffer(true),
		grpc.MaxConcurrentStreams(1024),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.ConnectionTimeout(10 * time.Second),
	}, opts...)
	g := grpc.NewServer(opts...)
	cav1.RegisterCAServer(g, s)
	return g
}

// Sign implements cav1.CAServer.
func (s *Server) Sign(ctx context.Context, req *cav1.SignRequest) (*cav1.SignResponse, error) {
	start := s.ca.cfg.Clock.Now()
	kind, id, att, err := s.kindLabel(req.GetCredential()), spiffeid.ID{}, Attestation{}, s.checkBeforeSpending(req)
	if err == nil {
		kind, id, att, err = s.authenticate(ctx, req.GetCredential())
	}
	var iss *Issued
	if err == nil && id == s.ca.selfID {
		err = fmt.Errorf("%w: %s is reserved for the CA itself", ErrPermissionDenied, id)
	}
	if err == nil {
		iss, err = s.ca.SignAttested(id, req.GetCsr(), att)
	}
	s.ca.metrics.issuance(kind, err, s.ca.cfg.Clock.Now().Sub(start))
	if err != nil {
		s.log.Warn("SVID request refused", slog.String("kind", kind), slog.String("spiffe_id", idString(id)),
			slog.String("peer", peerAddr(ctx)), slog.Any("error", err))
		return nil, grpcError(err)
	}
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.Debug("SVID issued", slog.String("kind", kind), slog.String("spiffe_id", id.String()),
			slog.String("serial", iss.Serial.Text(16)), slog.Time("not_after", iss.NotAfter))
	}
	return &cav1.SignResponse{CertChain: iss.Chain, SpiffeId: id.String(), Bundle: s.bundleMessage(s.ca.Bundle())}, nil
}

// checkBeforeSpending checks what can refuse a request that carries a
// credential before the attestor sees it, since attesting may spend the
// credential (a single-use join token): the CSR, and that the CA can sign.
// The identity is checked by the attestor before it spends anything.
func (s *Server) checkBeforeSpending(req *cav1.SignRequest) error {
	if cred := req.GetCredential(); cred == nil || (cred.GetKind() == "" && cred.GetToken() == "") {
		return nil // a renewal spends nothing; CA.Sign checks the CSR
	}
	if _, err := ParseCSR(req.GetCsr()); err != nil {
		return err
	}
	return s.ca.Ready()
}

// kindLabel is the metric label of a credential's kind, from a fixed set.
func (s *Server) kindLabel(cred *cav1.Credential) string {
	if cred == nil || (cred.GetKind() == "" && cred.GetToken() == "") {
		return "mtls"
	}
	if _, ok := s.attestors[cred.GetKind()]; ok {
		return cred.GetKind()
	}
	return "unknown"
}

// authenticate returns the caller's identity, and how and when it was
// last attested (recorded in the SVID issued): from its credential (now),
// or from the SVID it presented (copied forward, within the limits of
// CA.renewal: Kubernetes identities always need a fresh token, others a
// credential every MaxRenewalAge). When it did both they must agree, so
// an SVID can only ever renew itself.
func (s *Server) authenticate(ctx context.Context, cred *cav1.Credential) (string, spiffeid.ID, Attestation, error) {
	leaf, peerID, hasPeer := s.peerCert(ctx)
	if hasPeer {
		if err := s.refuseRevokedPeer(ctx, peerID); err != nil {
			return "mtls", peerID, Attestation{}, err
		}
	}
	if cred == nil || (cred.GetKind() == "" && cred.GetToken() == "") {
		if !hasPeer {
			return "none", spiffeid.ID{}, Attestation{}, fmt.Errorf("%w: no credential; send a join token or a Kubernetes token, or renew over mTLS with a current SVID", ErrUnauthenticated)
		}
		att, err := s.ca.renewal(leaf, peerID)
		return "mtls", peerID, att, err
	}
	kind := cred.GetKind()
	att, ok := s.attestors[kind]
	if !ok {
		kinds := make([]string, 0, len(s.attestors))
		for k := range s.attestors {
			kinds = append(kinds, k)
		}
		slices.Sort(kinds)
		return "unknown", spiffeid.ID{}, Attestation{}, fmt.Errorf("%w: credential kind %q is not accepted here (accepted: %s)", ErrUnauthenticated, kind, strings.Join(kinds, ", "))
	}
	if hasPeer {
		ctx = context.WithValue(ctx, renewingKey{}, peerID)
	}
	id, err := att.Attest(ctx, cred.GetToken())
	if err != nil {
		return kind, spiffeid.ID{}, Attestation{}, err
	}
	if err := s.ca.CheckAttestation(id); err != nil {
		return kind, id, Attestation{}, err
	}
	if hasPeer && peerID != id {
		return kind, id, Attestation{}, fmt.Errorf("%w: the presented SVID %s may only renew itself, not %s", ErrPermissionDenied, peerID, id)
	}
	return kind, id, Attestation{Kind: kind, At: s.ca.cfg.Clock.Now()}, nil
}

// renewingKey carries, in an Attest context, the ID of the SVID the caller
// presented: a credential for another ID is refused, and an attestor that
// spends credentials refuses before spending.
type renewingKey struct{}

// presentedSVID returns the ID of the SVID presented with a credential.
func presentedSVID(ctx context.Context) (spiffeid.ID, bool) {
	id, ok := ctx.Value(renewingKey{}).(spiffeid.ID)
	return id, ok
}

// peerSVID returns the SPIFFE ID of the client certificate, which the TLS
// layer has already verified against the bundle.
func (s *Server) peerSVID(ctx context.Context) (spiffeid.ID, bool) {
	_, id, ok := s.peerCert(ctx)
	return id, ok
}

// peerCert returns the client's leaf certificate and its SPIFFE ID, while
// the leaf is valid.
func (s *Server) peerCert(ctx context.Context) (*x509.Certificate, spiffeid.ID, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, spiffeid.ID{}, false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return nil, spiffeid.ID{}, false
	}
	leaf := info.State.PeerCertificates[0]
	if s.ca.cfg.Clock.Now().After(leaf.NotAfter) {
		// The connection outlived the SVID it was opened with.
		return nil, spiffeid.ID{}, false
	}
	id, err := x509svid.IDFromCert(leaf)
	return leaf, id, err == nil
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

func idString(id spiffeid.ID) string {
	if id.IsZero() {
		return ""
	}
	return id.String()
}

// SetFederatedBundles makes WatchBundle send the foreign bundles of set
// (the Federator's) with every message, and a new message at every change
// of the set. Call it before serving.
func (s *Server) SetFederatedBundles(set *FederatedBundles) { s.federated = set }

// watchMessage is a WatchBundle message and the versions it was built from:
// the local bundle's sequence and the federated set's change channel.
type watchMessage struct {
	sequence uint64
	fedGen   <-chan struct{}
	msg      *cav1.Bundle
}

// WatchBundle implements cav1.CAServer. A caller presenting an SVID is
// listed as not reporting until it sends a Report over the same connection.
func (s *Server) WatchBundle(_ *cav1.WatchBundleRequest, stream grpc.ServerStreamingServer[cav1.Bundle]) error {
	if id, ok := s.peerSVID(stream.Context()); ok {
		defer s.ca.reports.Watching(peerAddr(stream.Context()), id.String())()
	}
	for {
		v := s.ca.Bundle()
		m, fedChanged := s.watchMessage(v)
		if err := stream.Send(m); err != nil {
			return err
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-s.shutdown:
			return status.Error(codes.Unavailable, "tether-ca is shutting down")
		case <-v.Changed:
		case <-fedChanged:
		}
	}
}

// watchMessage returns the WatchBundle message for v and the federated set
// held now, built once per version, and a channel closed at the next change
// of the set (nil without federation: it never fires).
func (s *Server) watchMessage(v *BundleVersion) (*cav1.Bundle, <-chan struct{}) {
	if s.federated == nil {
		return s.bundleMessage(v), nil
	}
	foreign, changed := s.federated.Snapshot()
	if w := s.lastWatch.Load(); w != nil && w.sequence == v.Sequence && w.fedGen == changed {
		return w.msg, changed
	}
	m := proto.CloneOf(s.bundleMessage(v))
	for _, b := range foreign {
		m.FederatedBundles = append(m.FederatedBundles, federatedBundleMessage(b))
	}
	s.lastWatch.Store(&watchMessage{sequence: v.Sequence, fedGen: changed, msg: m})
	return m, changed
}

// federatedBundleMessage encodes a foreign bundle for WatchBundle.
func federatedBundleMessage(b *spiffebundle.Bundle) *cav1.FederatedBundle {
	seq, _ := b.SequenceNumber()
	m := &cav1.FederatedBundle{TrustDomain: b.TrustDomain().Name(), Sequence: seq}
	for _, c := range b.X509Authorities() {
		m.X509Authorities = append(m.X509Authorities, c.Raw)
	}
	m.JwtAuthorities = jwtAuthorityMessages(b.JWTAuthorities())
	return m
}

// bundleMessage returns the message for a bundle version, built once.
func (s *Server) bundleMessage(v *BundleVersion) *cav1.Bundle {
	if m := s.lastBundle.Load(); m != nil && m.GetSequence() == v.Sequence {
		return m
	}
	m := s.buildBundleMessage(v)
	s.lastBundle.Store(m)
	return m
}

func (s *Server) buildBundleMessage(v *BundleVersion) *cav1.Bundle {
	m := &cav1.Bundle{TrustDomain: s.ca.TrustDomain().Name(), Sequence: v.Sequence, RefreshHintSeconds: int64(s.ca.cfg.TickInterval / time.Second)}
	for _, c := range v.Bundle.X509Authorities() {
		m.X509Authorities = append(m.X509Authorities, c.Raw)
	}
	m.JwtAuthorities = jwtAuthorityMessages(v.SPIFFE.JWTAuthorities())
	return m
}

// jwtAuthorityMessages encodes JWT keys, sorted by key ID; a key that does
// not encode is left out.
func jwtAuthorityMessages(keys map[string]crypto.PublicKey) []*cav1.JWTAuthority {
	var out []*cav1.JWTAuthority
	for _, kid := range slices.Sorted(maps.Keys(keys)) {
		der, err := x509.MarshalPKIXPublicKey(keys[kid])
		if err != nil {
			continue
		}
		out = append(out, &cav1.JWTAuthority{KeyId: kid, PublicKey: der})
	}
	return out
}

// SignJWT implements cav1.CAServer. Only a caller presenting its SVID may
// ask, and only for its own identity.
func (s *Server) SignJWT(ctx context.Context, req *cav1.SignJWTRequest) (*cav1.SignJWTResponse, error) {
	id, ok := s.peerSVID(ctx)
	if !ok {
		return nil, grpcError(fmt.Errorf("%w: JWT-SVIDs are issued only over mTLS with the caller's X509-SVID", ErrUnauthenticated))
	}
	var j *JWTSVID
	err := s.refuseRevokedPeer(ctx, id) // a revoked SVID gets no JWT-SVID either
	if err == nil {
		j, err = s.ca.SignJWT(id, req.GetAudience(), time.Duration(req.GetTtlSeconds())*time.Second)
	}
	s.ca.metrics.issuances.WithLabelValues("jwt", resultOf(err)).Inc()
	if err != nil {
		return nil, grpcError(err)
	}
	return &cav1.SignJWTResponse{Token: j.Token, SpiffeId: id.String(), ExpiresAtUnix: j.ExpiresAt.Unix()}, nil
}

// grpcError maps the CA's errors to gRPC status codes; the message stays
// the CA's own, which says what went wrong.
func grpcError(err error) error {
	code := codes.Internal
	switch {
	case errors.Is(err, ErrBadCSR), errors.Is(err, ErrConfig):
		code = codes.InvalidArgument
	case errors.Is(err, ErrUnauthenticated):
		code = codes.Unauthenticated
	case errors.Is(err, ErrPermissionDenied):
		code = codes.PermissionDenied
	case errors.Is(err, ErrUnavailable), errors.Is(err, ErrNotReady), errors.Is(err, ErrConflict):
		code = codes.Unavailable
	case errors.Is(err, ErrRotation):
		code = codes.FailedPrecondition
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	}
	return status.Error(code, err.Error())
}
