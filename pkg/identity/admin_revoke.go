package identity

import (
	"context"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
)

// Revoke implements cav1.AdminServer.
func (a *AdminServer) Revoke(ctx context.Context, req *cav1.RevokeRequest) (*cav1.RevokeResponse, error) {
	_, byID := req.GetTarget().(*cav1.RevokeRequest_SpiffeId)
	_, byToken := req.GetTarget().(*cav1.RevokeRequest_JoinToken)
	_, byHash := req.GetTarget().(*cav1.RevokeRequest_JoinTokenHash)
	switch {
	case !byID && (req.GetAllowReattest() || req.GetBlockSeconds() != 0):
		return nil, grpcError(fmt.Errorf("%w: allow-reattest and a block period apply to a SPIFFE ID only", ErrConfig))
	case !byToken && !byHash && req.GetKeepSvids():
		return nil, grpcError(fmt.Errorf("%w: keep-svids applies to a join token only", ErrConfig))
	}
	var rs []Revocation
	var err error
	switch t := req.GetTarget().(type) {
	case *cav1.RevokeRequest_SpiffeId:
		id, perr := spiffeid.FromString(t.SpiffeId)
		if perr != nil {
			return nil, grpcError(fmt.Errorf("%w: SPIFFE ID %q: %v", ErrConfig, t.SpiffeId, perr))
		}
		var r Revocation
		r, err = a.ca.RevokeID(ctx, id, IDRevocation{AllowReattest: req.GetAllowReattest(), For: time.Duration(req.GetBlockSeconds()) * time.Second, Reason: req.GetReason()})
		rs = []Revocation{r}
	case *cav1.RevokeRequest_Serial:
		serial, perr := ParseSerial(t.Serial)
		if perr != nil {
			return nil, grpcError(perr)
		}
		var r Revocation
		r, err = a.ca.RevokeSerial(ctx, serial, req.GetReason())
		rs = []Revocation{r}
	case *cav1.RevokeRequest_JoinToken:
		h, herr := HashJoinToken(t.JoinToken)
		if herr != nil {
			return nil, grpcError(fmt.Errorf("%w: %v", ErrConfig, herr))
		}
		rs, err = a.ca.RevokeJoinToken(ctx, h, !req.GetKeepSvids(), req.GetReason())
	case *cav1.RevokeRequest_JoinTokenHash:
		rs, err = a.ca.RevokeJoinToken(ctx, t.JoinTokenHash, !req.GetKeepSvids(), req.GetReason())
	default:
		return nil, grpcError(fmt.Errorf("%w: say what to revoke: a SPIFFE ID, a serial, a join token or a join token hash", ErrConfig))
	}
	if err != nil {
		return nil, grpcError(err)
	}
	return &cav1.RevokeResponse{Revocations: a.revocationMessages(rs)}, nil
}

// Unrevoke implements cav1.AdminServer.
func (a *AdminServer) Unrevoke(ctx context.Context, req *cav1.UnrevokeRequest) (*cav1.RevokeResponse, error) {
	id, err := spiffeid.FromString(req.GetSpiffeId())
	if err != nil {
		return nil, grpcError(fmt.Errorf("%w: SPIFFE ID %q: %v", ErrConfig, req.GetSpiffeId(), err))
	}
	r, err := a.ca.Unrevoke(ctx, id)
	if err != nil {
		return nil, grpcError(err)
	}
	return &cav1.RevokeResponse{Revocations: a.revocationMessages([]Revocation{r})}, nil
}

// ListJoinTokens implements cav1.AdminServer.
func (a *AdminServer) ListJoinTokens(context.Context, *cav1.ListJoinTokensRequest) (*cav1.ListJoinTokensResponse, error) {
	m := &cav1.ListJoinTokensResponse{}
	for _, t := range a.ca.LiveJoinTokens() {
		m.Tokens = append(m.Tokens, &cav1.JoinTokenInfo{Hash: t.Hash, SpiffeId: t.SPIFFEID, ExpiresAtUnix: t.ExpiresAt.Unix(), Reusable: t.Reusable})
	}
	return m, nil
}

func (a *AdminServer) revocationMessages(rs []Revocation) []*cav1.Revocation {
	now := a.ca.cfg.Clock.Now()
	out := make([]*cav1.Revocation, 0, len(rs))
	for _, r := range rs {
		out = append(out, revocationMessage(RevocationStatus{Revocation: r, Blocking: r.Blocking(now), PruneAfter: r.PruneAfter(a.ca.maxSVIDLife())}))
	}
	return out
}

func revocationMessage(r RevocationStatus) *cav1.Revocation {
	return &cav1.Revocation{
		Kind: string(r.Kind), Value: r.Value, SpiffeId: r.SPIFFEID, RevokedAtUnix: unixOrZero(r.RevokedAt),
		UntilUnix: unixOrZero(r.Until), Blocking: r.Blocking, PruneAfterUnix: unixOrZero(r.PruneAfter), Reason: r.Reason,
	}
}
