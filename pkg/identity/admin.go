package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/unixsock"
)

// AdminServer is the operator API (join tokens, status, rotation). It is
// served only on a unix socket whose file mode restricts it to the CA's
// user: whoever can open the socket is an operator.
type AdminServer struct {
	cav1.UnimplementedAdminServer
	ca  *CA
	log *slog.Logger
}

// NewAdminServer serves ca's operator API.
func NewAdminServer(ca *CA, log *slog.Logger) *AdminServer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &AdminServer{ca: ca, log: log}
}

// ListenUnix listens on path with mode 0600 from the moment the socket can
// be reached (see package unixsock), replacing a stale socket file. Its
// directory is created with mode 0700 if needed.
func ListenUnix(path string) (net.Listener, error) {
	l, err := unixsock.Listen(path, 0o600, -1, 0o700)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	return l, nil
}

// GRPCServer returns a gRPC server with the admin service registered.
func (a *AdminServer) GRPCServer() *grpc.Server {
	g := grpc.NewServer(grpc.MaxRecvMsgSize(MaxRequestSize))
	cav1.RegisterAdminServer(g, a)
	return g
}

// CreateJoinToken implements cav1.AdminServer.
func (a *AdminServer) CreateJoinToken(ctx context.Context, req *cav1.CreateJoinTokenRequest) (*cav1.CreateJoinTokenResponse, error) {
	id, err := spiffeid.FromString(req.GetSpiffeId())
	if err != nil {
		return nil, grpcError(fmt.Errorf("%w: SPIFFE ID %q: %v", ErrConfig, req.GetSpiffeId(), err))
	}
	if id == a.ca.selfID {
		return nil, grpcError(fmt.Errorf("%w: %s is reserved for the CA itself", ErrConfig, id))
	}
	create := a.ca.CreateJoinToken
	if req.GetAllowReserved() {
		create = a.ca.CreateReservedJoinToken
	}
	tok, exp, err := create(ctx, id, time.Duration(req.GetTtlSeconds())*time.Second, req.GetReusable())
	if err != nil {
		return nil, grpcError(err)
	}
	if IsReserved(id) {
		a.log.Warn("join token created for a reserved identity of the mesh's own components", slog.String("spiffe_id", id.String()),
			slog.Time("expires_at", exp), slog.Bool("reusable", req.GetReusable()))
	} else {
		a.log.Info("join token created", slog.String("spiffe_id", id.String()), slog.Time("expires_at", exp), slog.Bool("reusable", req.GetReusable()))
	}
	return &cav1.CreateJoinTokenResponse{Token: tok, ExpiresAtUnix: exp.Unix()}, nil
}

// Status implements cav1.AdminServer.
func (a *AdminServer) Status(context.Context, *cav1.StatusRequest) (*cav1.StatusResponse, error) {
	return statusMessage(a.ca.Status()), nil
}

// Rotate implements cav1.AdminServer.
func (a *AdminServer) Rotate(ctx context.Context, req *cav1.RotateRequest) (*cav1.StatusResponse, error) {
	warnings, err := a.ca.RotateStep(ctx, Step(req.GetStep()), req.GetForce())
	if err != nil {
		if !errors.Is(err, ErrRotation) {
			a.log.Error("rotation step failed", slog.String("step", req.GetStep()), slog.Any("error", err))
		}
		return nil, grpcError(err)
	}
	m := statusMessage(a.ca.Status())
	m.Warnings = warnings
	return m, nil
}

func statusMessage(s Status) *cav1.StatusResponse {
	m := &cav1.StatusResponse{TrustDomain: s.TrustDomain, BundleSequence: s.BundleSequence, NextStep: string(s.NextStep), NextStepAtUnix: unixOrZero(s.NextStepAt),
		NextStepOverdue: s.NextStepOverdue, NextStepManual: s.NextStepManual,
		IntermediateRenewalAtUnix: unixOrZero(s.IntermediateRenewalAt), IntermediateRenewalOverdue: s.IntermediateRenewalOverdue}
	for _, r := range s.Revocations {
		m.Revocations = append(m.Revocations, revocationMessage(r))
	}
	for _, g := range s.Generations {
		m.Generations = append(m.Generations, &cav1.Generation{
			Id: g.ID, State: string(g.State), RootFingerprint: g.RootFingerprint, AnchorFingerprint: g.AnchorFingerprint, AnchorIsIntermediate: g.AnchorIsIntermediate,
			RootNotAfterUnix: unixOrZero(g.RootNotAfter), IntermediateNotAfterUnix: unixOrZero(g.IntermediateNotAfter),
			RetireAfterUnix: unixOrZero(g.RetireAfter), Upstream: g.Upstream,
			RootOffline: g.RootOffline,
		})
	}
	return m
}

func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}
