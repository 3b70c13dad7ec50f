// Package workload serves the SPIFFE Workload API on a unix socket, so that
// applications in a pod get the pod's identity (X.509-SVID, JWT-SVIDs and
// trust bundles) from the sidecar with any stock SPIFFE client, such as
// go-spiffe's workloadapi package.
//
// There is no per-caller attestation: every process that can open the socket
// gets the pod's identity. The socket therefore lives in a directory only the
// pod shares (the injected emptyDir mounted at /run/tether), and is made
// world-writable (0666) so that app containers running as any UID can
// connect; access control is the pod boundary, as for the pod's network
// namespace.
//
// Streams (FetchX509SVID, FetchX509Bundles, FetchJWTBundles) send the current
// value, then a new one at every change of the identity or bundle (renewal,
// root rotation), until the client goes away or the server stops.
//
// With a FederatedSource, the bundles of the federated trust domains are
// returned too (FetchX509SVID's federated_bundles, FetchX509Bundles,
// FetchJWTBundles), so the application verifies their peers; the sidecar's
// own mTLS does not trust them.
//
// Before the sidecar has its first SVID, FetchX509SVID and FetchJWTBundles
// stay open without sending anything, and send as soon as the identity
// arrives. The SPIFFE Workload API lets a server answer PermissionDenied
// ("no identity issued") instead, but go-spiffe's clients then retry with a
// linear backoff of 1s, 2s, 3s... so an app started a moment before the
// sidecar is ready would wait seconds longer than needed. Waiting makes
// workloadapi.NewX509Source return the moment the sidecar is ready, and a
// one-shot fetch (workloadapi.FetchX509Context) simply waits until its
// context's deadline. FetchJWTSVID, being unary, answers Unavailable while
// there is no identity yet.
package workload

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// Source is the workload's identity as the Workload API reads it; the
// sidecar's *agent.Agent is one. All methods must be safe for concurrent
// use, and the getters must not block on the network.
type Source interface {
	// GetX509SVID returns the current X.509-SVID, or an error while there
	// is none yet.
	GetX509SVID() (*x509svid.SVID, error)
	// Bundle returns the current bundle (X.509 roots and JWT keys) of the
	// workload's trust domain; never nil.
	Bundle() *spiffebundle.Bundle
	// Changed returns a channel that is closed at the next change of the
	// SVID or the bundle. Callers take it before reading the state, so that
	// no change is missed.
	Changed() <-chan struct{}
	// FetchJWTSVID returns a JWT-SVID of the workload's identity for the
	// audience (at least one); it may ask the CA, within ctx.
	FetchJWTSVID(ctx context.Context, audience []string) (*jwtsvid.SVID, error)
}

// FederatedSource is a Source that also holds the bundles of foreign trust
// domains (the sidecar's *agent.Agent does). The Workload API returns them
// with the workload's own: in FetchX509SVID's federated_bundles, and in
// FetchX509Bundles and FetchJWTBundles, so that a stock SPIFFE client
// verifies peers of those domains. Changed must also fire when they change.
type FederatedSource interface {
	Source
	// FederatedBundles returns the foreign bundles trusted now, never one
	// of the workload's own trust domain.
	FederatedBundles() []*spiffebundle.Bundle
}

// HeaderKey is the gRPC metadata key every Workload API request must carry
// with the value "true" (it proves the request was made on purpose by a
// Workload API client, not forged by a redirected request).
const HeaderKey = "workload.spiffe.io"

// DrainTimeout bounds how long Serve waits for unary calls in flight after
// its context ends; open streams are ended at once.
const DrainTimeout = 5 * time.Second

// Server serves the Workload API for one Source.
type Server struct {
	src Source
	log *slog.Logger
}

// New returns a server for src. log may be nil.
func New(src Source, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{src: src, log: log.With(slog.String("component", "workload-api"))}
}

// ListenAndServe listens on the unix socket at path (see Listen) and serves
// until ctx ends.
func (s *Server) ListenAndServe(ctx context.Context, path string, access Access) error {
	l, err := Listen(path, access)
	if err != nil {
		return err
	}
	s.log.Info("Workload API listening", slog.String("socket", path))
	return s.Serve(ctx, l)
}

// Serve serves the Workload API on l until ctx ends, then ends open streams
// (with Unavailable, so clients reconnect to the next sidecar), lets unary
// calls finish for up to DrainTimeout, and closes l (which removes a unix
// socket file). It returns nil after a shutdown caused by ctx.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	a := &api{src: s.src, log: s.log, stopping: make(chan struct{})}
	g := grpc.NewServer(grpc.UnaryInterceptor(unaryHeader), grpc.StreamInterceptor(streamHeader))
	workloadpb.RegisterSpiffeWorkloadAPIServer(g, a)

	errc := make(chan error, 1)
	go func() { errc <- g.Serve(l) }()
	select {
	case err := <-errc:
		close(a.stopping)
		return fmt.Errorf("serve Workload API: %w", err)
	case <-ctx.Done():
	}
	close(a.stopping)
	drained := make(chan struct{})
	go func() { g.GracefulStop(); close(drained) }()
	t := time.NewTimer(DrainTimeout)
	defer t.Stop()
	select {
	case <-drained:
	case <-t.C:
		s.log.Warn("Workload API calls still running after the drain timeout; cutting them", slog.Duration("timeout", DrainTimeout))
		g.Stop()
		<-drained
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve Workload API: %w", err)
	}
	return nil
}

var errNoHeader = status.Error(codes.InvalidArgument, "security header missing from request")

func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(HeaderKey); len(v) != 1 || v[0] != "true" {
		return errNoHeader
	}
	return nil
}

func unaryHeader(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func streamHeader(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := checkHeader(ss.Context()); err != nil {
		return err
	}
	return handler(srv, ss)
}

// api implements the generated service for one Serve call.
type api struct {
	workloadpb.UnimplementedSpiffeWorkloadAPIServer
	src      Source
	log      *slog.Logger
	stopping chan struct{} // closed when Serve shuts down
}

var errStopping = status.Error(codes.Unavailable, "the Workload API server is shutting down")

// watch sends build's response now and after every change of the source,
// skipping responses equal to the last one sent and those build is not
// ready to give (ok false), until the client leaves or the server stops.
func watch[T proto.Message](ctx context.Context, a *api, rpc string, send func(T) error, build func() (resp T, ok bool, err error)) error {
	var last T
	sent := false
	for {
		changed := a.src.Changed()
		resp, ok, err := build()
		if err != nil {
			a.log.Error("cannot build a Workload API response", slog.String("rpc", rpc), slog.Any("error", err))
			return status.Errorf(codes.Internal, "%s: %v", rpc, err)
		}
		if ok && (!sent || !proto.Equal(last, resp)) {
			if err := send(resp); err != nil {
				return err // the client went away
			}
			last, sent = resp, true
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-a.stopping:
			return errStopping
		}
	}
}

// FetchX509SVID streams the workload's X.509-SVID with its trust domain's
// roots; it waits while there is no SVID yet.
func (a *api) FetchX509SVID(_ *workloadpb.X509SVIDRequest, stream grpc.ServerStreamingServer[workloadpb.X509SVIDResponse]) error {
	return watch(stream.Context(), a, "FetchX509SVID", stream.Send, func() (*workloadpb.X509SVIDResponse, bool, error) {
		svid, err := a.src.GetX509SVID()
		if err != nil || svid == nil {
			return nil, false, nil
		}
		key, err := x509.MarshalPKCS8PrivateKey(svid.PrivateKey)
		if err != nil {
			return nil, false, fmt.Errorf("encode private key: %w", err)
		}
		var chain []byte
		for _, c := range svid.Certificates {
			chain = append(chain, c.Raw...)
		}
		local := a.src.Bundle()
		resp := &workloadpb.X509SVIDResponse{Svids: []*workloadpb.X509SVID{{
			SpiffeId:    svid.ID.String(),
			X509Svid:    chain,
			X509SvidKey: key,
			Bundle:      rootsDER(local),
		}}}
		for _, b := range a.federated(local) {
			if resp.FederatedBundles == nil {
				resp.FederatedBundles = map[string][]byte{}
			}
			resp.FederatedBundles[b.TrustDomain().IDString()] = rootsDER(b)
		}
		return resp, true, nil
	})
}

// federated returns the source's foreign bundles, leaving out any of the
// local trust domain (which would shadow the workload's own bundle).
func (a *api) federated(local *spiffebundle.Bundle) []*spiffebundle.Bundle {
	fs, ok := a.src.(FederatedSource)
	if !ok {
		return nil
	}
	var out []*spiffebundle.Bundle
	for _, b := range fs.FederatedBundles() {
		if b.TrustDomain() != local.TrustDomain() {
			out = append(out, b)
		}
	}
	return out
}

// FetchX509Bundles streams the X.509 roots by trust domain: the workload's
// own and every federated domain's.
func (a *api) FetchX509Bundles(_ *workloadpb.X509BundlesRequest, stream grpc.ServerStreamingServer[workloadpb.X509BundlesResponse]) error {
	return watch(stream.Context(), a, "FetchX509Bundles", stream.Send, func() (*workloadpb.X509BundlesResponse, bool, error) {
		b := a.src.Bundle()
		resp := &workloadpb.X509BundlesResponse{Bundles: map[string][]byte{b.TrustDomain().IDString(): rootsDER(b)}}
		for _, f := range a.federated(b) {
			resp.Bundles[f.TrustDomain().IDString()] = rootsDER(f)
		}
		return resp, true, nil
	})
}

// FetchJWTBundles streams the JWT keys (JWKS) by trust domain: the
// workload's own and those of the federated domains that have any. It waits
// until the sidecar has talked to the CA (has an SVID) or knows some JWT
// key: the bootstrap bundle holds X.509 roots only.
func (a *api) FetchJWTBundles(_ *workloadpb.JWTBundlesRequest, stream grpc.ServerStreamingServer[workloadpb.JWTBundlesResponse]) error {
	return watch(stream.Context(), a, "FetchJWTBundles", stream.Send, func() (*workloadpb.JWTBundlesResponse, bool, error) {
		b := a.src.Bundle()
		if _, err := a.src.GetX509SVID(); err != nil && len(b.JWTAuthorities()) == 0 {
			return nil, false, nil
		}
		resp := &workloadpb.JWTBundlesResponse{Bundles: map[string][]byte{}}
		for _, f := range append([]*spiffebundle.Bundle{b}, a.federated(b)...) {
			if f != b && len(f.JWTAuthorities()) == 0 {
				continue // a foreign domain without JWT keys has no JWT bundle
			}
			jwks, err := f.JWTBundle().Marshal()
			if err != nil {
				return nil, false, fmt.Errorf("encode JWT bundle of %s: %w", f.TrustDomain(), err)
			}
			resp.Bundles[f.TrustDomain().IDString()] = jwks
		}
		return resp, true, nil
	})
}

// FetchJWTSVID returns a JWT-SVID of the workload's identity for the
// requested audience. A spiffe_id in the request must be that identity.
func (a *api) FetchJWTSVID(ctx context.Context, req *workloadpb.JWTSVIDRequest) (*workloadpb.JWTSVIDResponse, error) {
	if len(req.Audience) == 0 {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	for _, aud := range req.Audience {
		if aud == "" {
			return nil, status.Error(codes.InvalidArgument, "audience must not be empty")
		}
	}
	svid, err := a.src.GetX509SVID()
	if err != nil || svid == nil {
		return nil, status.Error(codes.Unavailable, "the sidecar has no identity yet; retry shortly")
	}
	if req.SpiffeId != "" && req.SpiffeId != svid.ID.String() {
		return nil, status.Errorf(codes.PermissionDenied, "this workload is %s, not %s", svid.ID, req.SpiffeId)
	}
	j, err := a.src.FetchJWTSVID(ctx, req.Audience)
	if err != nil {
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		a.log.Warn("cannot get a JWT-SVID", slog.String("spiffe_id", svid.ID.String()), slog.Any("audience", req.Audience), slog.Any("error", err))
		return nil, status.Errorf(codes.Unavailable, "fetch JWT-SVID: %v", err)
	}
	return &workloadpb.JWTSVIDResponse{Svids: []*workloadpb.JWTSVID{{SpiffeId: j.ID.String(), Svid: j.Marshal()}}}, nil
}

// ValidateJWTSVID checks a JWT-SVID's signature, expiry and audience
// against the trust domain's JWT keys and returns its subject and claims.
// Only the workload's own trust domain's tokens validate here, not yet a
// federated domain's (FetchJWTBundles hands out their keys).
func (a *api) ValidateJWTSVID(_ context.Context, req *workloadpb.ValidateJWTSVIDRequest) (*workloadpb.ValidateJWTSVIDResponse, error) {
	switch {
	case req.Audience == "":
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	case req.Svid == "":
		return nil, status.Error(codes.InvalidArgument, "svid must be specified")
	}
	j, err := jwtsvid.ParseAndValidate(req.Svid, a.src.Bundle(), []string{req.Audience})
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "invalid JWT-SVID: %v", err)
	}
	claims, err := structpb.NewStruct(j.Claims)
	if err != nil {
		a.log.Error("cannot encode JWT-SVID claims", slog.String("spiffe_id", j.ID.String()), slog.Any("error", err))
		return nil, status.Errorf(codes.Internal, "encode claims: %v", err)
	}
	return &workloadpb.ValidateJWTSVIDResponse{SpiffeId: j.ID.String(), Claims: claims}, nil
}

// rootsDER is the concatenated DER of the bundle's X.509 roots.
func rootsDER(b *spiffebundle.Bundle) []byte {
	var der []byte
	for _, c := range b.X509Authorities() {
		der = append(der, c.Raw...)
	}
	return der
}

var _ workloadpb.SpiffeWorkloadAPIServer = (*api)(nil)
