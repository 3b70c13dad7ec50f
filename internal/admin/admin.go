// Package admin serves the admin HTTP port every Tether component has:
// liveness, readiness and Prometheus metrics.
package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server is an admin HTTP server.
type Server struct {
	Mux *http.ServeMux
	srv *http.Server
	log *slog.Logger
}

// New serves /healthz (always ok while the process runs), /readyz (ok while
// ready returns nil) and /metrics (from gatherer) on addr.
func New(addr string, ready func() error, gatherer prometheus.Gatherer, log *slog.Logger) *Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	return &Server{
		Mux: mux,
		srv: &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second},
		log: log,
	}
}

// Run serves until ctx ends, then shuts down within a few seconds.
func (s *Server) Run(ctx context.Context) error {
	l, err := net.Listen("tcp", s.srv.Addr)
	if err != nil {
		return fmt.Errorf("admin listener: %w", err)
	}
	return s.Serve(ctx, l)
}

// Serve is Run on a listener the caller made.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(l) }()
	s.log.Info("admin server listening", slog.String("addr", l.Addr().String()))
	select {
	case err := <-errc:
		return fmt.Errorf("admin server: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}
