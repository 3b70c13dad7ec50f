package xds

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// errCertExpired is the cause of a stream's context ending when the
// client certificate it was opened with expires.
var errCertExpired = errors.New("client certificate expired")

// certBound serves ADS streams that end, with Unauthenticated, when the
// client certificate of their connection expires: a stream does not
// outlive the SVID it authenticated with. The client then reconnects with
// its renewed SVID (a new TLS connection) and is checked again.
type certBound struct {
	serverv3.Server
	log *slog.Logger
}

func (b certBound) StreamAggregatedResources(st grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	return untilCertExpiry(st, b.log, b.Server.StreamAggregatedResources)
}

func (b certBound) DeltaAggregatedResources(st grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	return untilCertExpiry(st, b.log, b.Server.DeltaAggregatedResources)
}

// untilCertExpiry serves st with serve until the client certificate's
// NotAfter. A stream without one is served as it is: the open callback
// refuses it.
func untilCertExpiry[Req, Resp any](st grpc.BidiStreamingServer[Req, Resp], log *slog.Logger, serve func(grpc.BidiStreamingServer[Req, Resp]) error) error {
	_, notAfter := peerInfo(st.Context())
	if notAfter.IsZero() {
		return serve(st)
	}
	ctx, cancel := context.WithDeadlineCause(st.Context(), notAfter, errCertExpired)
	defer cancel()
	err := serve(newExpiringStream(ctx, st))
	if errors.Is(context.Cause(ctx), errCertExpired) {
		id, _ := peerID(st.Context())
		log.Info("xds: stream cut: its client certificate expired", slog.String("spiffe_id", id.String()),
			slog.Time("not_after", notAfter))
		return status.Errorf(codes.Unauthenticated, "the client certificate this stream was opened with expired at %s; reconnect with a current SVID",
			notAfter.UTC().Format(time.RFC3339))
	}
	return err
}

// expiringStream is a stream whose Context is ctx and whose Recv returns
// once ctx ends, so that the server's receive loop (which go-control-plane
// runs on a blocking Recv) ends with it. Recvs run on one goroutine,
// which ends when the stream does (gRPC cancels the stream when the
// handler returns).
type expiringStream[Req, Resp any] struct {
	grpc.BidiStreamingServer[Req, Resp]
	ctx   context.Context
	reqs  chan recvResult[Req]
	start func()
}

type recvResult[Req any] struct {
	req *Req
	err error
}

func newExpiringStream[Req, Resp any](ctx context.Context, st grpc.BidiStreamingServer[Req, Resp]) *expiringStream[Req, Resp] {
	s := &expiringStream[Req, Resp]{BidiStreamingServer: st, ctx: ctx, reqs: make(chan recvResult[Req])}
	s.start = sync.OnceFunc(func() {
		go func() {
			defer close(s.reqs)
			for {
				req, err := st.Recv()
				select {
				case s.reqs <- recvResult[Req]{req, err}:
				case <-ctx.Done():
					return
				}
				if err != nil {
					return
				}
			}
		}()
	})
	return s
}

func (s *expiringStream[Req, Resp]) Context() context.Context { return s.ctx }

func (s *expiringStream[Req, Resp]) Recv() (*Req, error) {
	s.start()
	select {
	case r, ok := <-s.reqs:
		if !ok { // (go-control-plane does not Recv again after an error)
			return nil, status.Error(codes.Canceled, "stream ended")
		}
		return r.req, r.err
	case <-s.ctx.Done():
		return nil, context.Cause(s.ctx)
	}
}
