package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	tadmin "github.com/tether-mesh/tether/internal/admin"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/identity"
	"github.com/tether-mesh/tether/pkg/identity/workload"
	"github.com/tether-mesh/tether/pkg/proxy"
	"github.com/tether-mesh/tether/pkg/proxy/capture"
)

// Run serves until ctx ends or Quit is called, then stops accepting,
// drains open connections for up to DrainTimeout and returns nil.
func (s *Sidecar) Run(ctx context.Context) error {
	defer func() {
		for _, c := range s.closers {
			c.Close()
		}
	}()
	// Bind everything first, so a port clash fails at start.
	type bound struct {
		name  string
		l     net.Listener
		serve func(ctx context.Context, l net.Listener) error
	}
	var listeners []bound
	closeAll := func() {
		for _, b := range listeners {
			b.l.Close()
		}
	}
	listen := func(name, addr string, serve func(ctx context.Context, l net.Listener) error) error {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("%s listener: %w", name, err)
		}
		listeners = append(listeners, bound{name, l, serve})
		s.mu.Lock()
		s.addrs[name] = l.Addr()
		s.mu.Unlock()
		return nil
	}
	for i, in := range s.cfg.Inbound {
		target, _ := proxy.FixedTarget(in.App)
		if err := listen(fmt.Sprintf("inbound/%d", i), in.Listen, func(ctx context.Context, l net.Listener) error {
			return s.proxy.ServeInbound(ctx, l, target)
		}); err != nil {
			closeAll()
			return err
		}
	}
	for i, out := range s.cfg.Outbound {
		route := proxy.FixedRoute(out.Dest)
		if out.Service != (wire.ServiceKey{}) {
			route = s.serviceRouter(out.Service, out.Port)
		}
		if err := listen(fmt.Sprintf("outbound/%d", i), out.Listen, func(ctx context.Context, l net.Listener) error {
			return s.proxy.ServeOutbound(ctx, l, route)
		}); err != nil {
			closeAll()
			return err
		}
	}
	if t := s.cfg.Capture; t != nil {
		target := proxy.LocalTarget(originalDst, capture.DeliverySource,
			proxy.DeliverySource6(capture.DeliverySource6), proxy.LoopbackPorts(t.LoopbackPorts...))
		lookup := meshLookup(t.staticLookup)
		if s.cfg.DiscoveryAddr != "" {
			lookup = s.viewLookup
		}
		route := t.router(originalDst, lookup, s.egressAllowed)
		if err := listen("capture/inbound", t.InboundAddr, func(ctx context.Context, l net.Listener) error {
			return s.proxy.ServeInbound(ctx, l, target)
		}); err != nil {
			closeAll()
			return err
		}
		if err := listen("capture/outbound", t.OutboundAddr, func(ctx context.Context, l net.Listener) error {
			return s.proxy.ServeOutbound(ctx, l, route)
		}); err != nil {
			closeAll()
			return err
		}
		// The IPv6 rules redirect outbound IPv6 to [::1] (REDIRECT in
		// OUTPUT points at the loopback address of the family).
		if addr6, ok := loopback6(t.OutboundAddr); ok {
			err := listen("capture/outbound6", addr6, func(ctx context.Context, l net.Listener) error {
				return s.proxy.ServeOutbound(ctx, l, route)
			})
			switch {
			case errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EAFNOSUPPORT):
				// No IPv6 in the pod: nothing to capture.
				s.log.Debug("no IPv6 outbound capture listener: the pod has no ::1", slog.Any("error", err))
			case err != nil:
				closeAll()
				return err
			}
		}
	}
	adminL, err := net.Listen("tcp", s.cfg.AdminAddr)
	if err != nil {
		closeAll()
		return fmt.Errorf("admin listener: %w", err)
	}
	s.mu.Lock()
	s.addrs["admin"] = adminL.Addr()
	s.mu.Unlock()
	s.proxy.Reserve(uint16(adminL.Addr().(*net.TCPAddr).Port))

	agentCtx, stopAgent := context.WithCancel(context.Background())
	serveCtx, stopServing := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	// fatal carries an error that ends Run after start (a failed DNS
	// server or discovery client).
	fatal := make(chan error, 2)
	if s.dns != nil {
		// The DNS server answers (forwarding) from the start; mesh names
		// come with the first view. It binds now, so a clash fails Run.
		dnsDone := make(chan error, 1)
		go func() { dnsDone <- s.dns.Run(agentCtx) }()
		select {
		case <-s.dns.Ready():
		case err := <-dnsDone:
			stopAgent()
			stopServing()
			adminL.Close()
			closeAll()
			return fmt.Errorf("DNS server: %w", err)
		}
		if ap, err := netip.ParseAddrPort(s.dns.Addr()); err == nil {
			s.proxy.Reserve(ap.Port())
			s.mu.Lock()
			s.addrs["dns"] = net.TCPAddrFromAddrPort(ap)
			s.mu.Unlock()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := <-dnsDone; err != nil {
				fatal <- err
			}
		}()
	}
	wg.Add(1)
	go func() { defer wg.Done(); s.agent.Run(agentCtx) }()
	wg.Add(1)
	go func() { defer wg.Done(); s.followFederation(agentCtx) }()

	admin := s.cfg.AdminLimits.HTTPServer(s.adminHandler(), s.log)
	go admin.Serve(s.cfg.AdminLimits.Listener(adminL, s.adminMetrics, s.log))

	if s.cfg.WorkloadSocket != "" {
		wl, err := workload.Listen(s.cfg.WorkloadSocket, s.cfg.WorkloadSocketAccess)
		if err != nil {
			stopAgent()
			stopServing()
			admin.Close()
			closeAll()
			wg.Wait()
			return fmt.Errorf("workload API: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := workload.New(s.agent, s.log).Serve(agentCtx, wl); err != nil {
				s.log.Error("workload API stopped", slog.Any("error", err))
			}
		}()
	}

	// Proxies accept once there is an identity to present.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for s.agent.Ready() != nil {
			select {
			case <-serveCtx.Done():
				closeAll()
				return
			case <-s.agent.Changed():
			}
		}
		if s.cfg.DiscoveryAddr != "" {
			if svid, err := s.agent.GetX509SVID(); err != nil {
				fatal <- fmt.Errorf("discovery: no SPIFFE ID to connect with: %w", err)
			} else {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := s.followDiscovery(agentCtx, svid.ID); err != nil {
						fatal <- err
					}
				}()
				if s.flows != nil {
					wg.Add(1)
					go func() { defer wg.Done(); s.reportFlows(agentCtx) }()
				}
			}
		}
		for _, b := range listeners {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := b.serve(serveCtx, b.l); err != nil {
					s.log.Error("listener stopped", slog.String("listener", b.name), slog.Any("error", err))
				}
			}()
		}
		s.log.Info("tether-sidecar proxying", slog.Int("inbound", len(s.cfg.Inbound)), slog.Int("outbound", len(s.cfg.Outbound)),
			slog.Bool("transparent", s.cfg.Capture != nil))
	}()
	s.log.Info("tether-sidecar started", slog.String("admin", adminL.Addr().String()), slog.String("ca", s.cfg.CAAddr))

	var runErr error
	select {
	case <-ctx.Done():
		s.log.Info("stopping: signal received; draining", slog.Duration("deadline", s.cfg.DrainTimeout))
	case <-s.quit:
		s.log.Info("stopping: /quitquitquit; draining", slog.Duration("deadline", s.cfg.DrainTimeout))
	case runErr = <-fatal:
		s.log.Error("stopping: draining", slog.Any("error", runErr), slog.Duration("deadline", s.cfg.DrainTimeout))
	}
	stopServing()
	dctx, cancel := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
	if err := s.proxy.Shutdown(dctx); err != nil {
		s.log.Warn("drain incomplete", slog.Any("error", err))
	}
	cancel()
	stopAgent()
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	admin.Shutdown(sctx)
	cancel()
	wg.Wait()
	return runErr
}

// adminHandler serves the admin port (:15020): what the kubelet and
// Prometheus need to every caller, the rest (which says what the pod may
// reach, or stops the sidecar) only to callers on the pod's loopback.
func (s *Sidecar) adminHandler() http.Handler {
	local := func(h http.HandlerFunc) http.Handler { return tadmin.LocalOnly(h, s.adminMetrics) }
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if err := s.agent.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		if s.cfg.DiscoveryAddr != "" && s.view.Load() == nil {
			http.Error(w, "not ready: no configuration from discovery at "+s.cfg.DiscoveryAddr+" yet", http.StatusServiceUnavailable)
			return
		}
		if err := s.agent.Degraded(); err != nil {
			// Still ready: traffic flows on the cached SVID until it expires.
			fmt.Fprintln(w, "ready, degraded:", err)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /debug/discovery", local(s.debugDiscovery))
	mux.Handle("GET /debug/denials", local(s.debugDenials))
	mux.HandleFunc("GET /healthz/live", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{}))
	mux.Handle("POST /quitquitquit", local(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "draining and exiting")
		s.Quit()
	}))
	mux.Handle("GET /debug/identity", local(func(w http.ResponseWriter, _ *http.Request) {
		svid, err := s.agent.GetX509SVID()
		if err != nil {
			http.Error(w, "no identity yet: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		leaf := svid.Certificates[0]
		b := s.agent.Bundle()
		seq, _ := b.SequenceNumber()
		var roots []string
		for _, r := range b.X509Authorities() {
			roots = append(roots, identity.Fingerprint(r.Raw))
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(map[string]any{
			"spiffe_id":          svid.ID.String(),
			"serial":             leaf.SerialNumber.Text(16),
			"not_before":         leaf.NotBefore.UTC(),
			"not_after":          leaf.NotAfter.UTC(),
			"expires_in_seconds": int64(time.Until(leaf.NotAfter).Seconds()),
			"bundle_sequence":    seq,
			"roots_sha256":       roots,
			"jwt_key_ids":        keys(b.JWTAuthorities()),
		})
	}))
	// Probes rewritten by tether-injector (probes.go).
	mountAppProbes(mux, os.Getenv(AppProbesEnv), os.Getenv(PodIPEnv), s.log)
	return mux
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// loopback6 returns [::1]:PORT for a capture listener on 127.0.0.1:PORT.
func loopback6(addr string) (string, bool) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host != "127.0.0.1" {
		return "", false
	}
	return net.JoinHostPort("::1", port), true
}
