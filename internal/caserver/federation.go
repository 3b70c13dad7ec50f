package caserver

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"k8s.io/client-go/dynamic"

	"github.com/tether-mesh/tether/pkg/identity"
	"github.com/tether-mesh/tether/pkg/identity/kube"
)

// Federation is the set of foreign trust domains tether-ca follows.
func (s *Service) Federation() *identity.Federator { return s.federator }

// setupFederation makes the federator (loading --federation-file) and the
// bundle endpoint's server.
func (s *Service) setupFederation() error {
	s.federator = identity.NewFederator(identity.FederatorConfig{
		TrustDomain: s.ca.TrustDomain(), Local: s.ca,
		MinRefresh: s.cfg.Federation.MinRefresh, MaxRefresh: s.cfg.Federation.MaxRefresh,
		Logger: s.log.With(slog.String("component", "federation")), Registerer: s.registry,
	})
	if f := s.cfg.Federation.File; f != "" {
		domains, err := loadFederationFile(f, s.ca.TrustDomain())
		if err != nil {
			return fmt.Errorf("--federation-file: %w", err)
		}
		if err := s.federator.SetDomains(domains); err != nil {
			return fmt.Errorf("--federation-file: %w", err)
		}
	}
	if s.cfg.Federation.WatchCRD {
		if err := s.setupFederationCRD(); err != nil {
			return err
		}
	}
	be := s.cfg.BundleEndpoint
	if be.Listen == "" {
		return nil
	}
	h, err := s.ca.BundleEndpointHandler(be.RefreshHint)
	if err != nil {
		return err
	}
	switch be.Profile {
	case identity.ProfileHTTPSWeb:
		w, err := identity.NewWebCertificate(be.WebCertFile, be.WebKeyFile)
		if err != nil {
			return err
		}
		s.endpointTLS = w.TLSConfig()
	default:
		if s.endpointTLS, err = s.ca.BundleEndpointSPIFFETLS(); err != nil {
			return err
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/", h)
	s.endpoint = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 30 * time.Second, MaxHeaderBytes: 16 << 10}
	return nil
}

// serveBundleEndpoint serves srv over TLS on l until ctx ends.
func serveBundleEndpoint(ctx context.Context, srv *http.Server, l net.Listener, cfg *tls.Config) error {
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shut)
	}()
	if err := srv.Serve(tls.NewListener(l, cfg)); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// watchFederationFile rereads --federation-file every tick and applies it
// when it changed; a file that does not load keeps the domains as they are.
func (s *Service) watchFederationFile(ctx context.Context) error {
	path := s.cfg.Federation.File
	last, _ := os.ReadFile(path)
	t := time.NewTicker(s.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		data, err := os.ReadFile(path)
		if err != nil || bytes.Equal(data, last) {
			continue
		}
		last = data
		domains, err := loadFederationFile(path, s.ca.TrustDomain())
		if err == nil {
			err = s.federator.SetDomains(domains)
		}
		if err != nil {
			s.log.Error("federation file not applied; the domains stay as they were", slog.String("path", path), slog.Any("error", err))
			continue
		}
		s.log.Info("federation file applied", slog.String("path", path), slog.Int("domains", len(domains)))
	}
}

// setupFederationCRD applies the cluster's TrustDomainFederation objects to
// the federator and, on the leader, writes their status.
func (s *Service) setupFederationCRD() error {
	rc, err := s.restConfig()
	if err != nil {
		return err
	}
	dc, err := dynamic.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	w := kube.NewFederationWatcher(kube.FederationWatcherConfig{Client: dc, Federator: s.federator, Local: s.cfg.TrustDomain,
		IsLeader: s.isLeader, Interval: s.cfg.TickInterval, Logger: s.log.With(slog.String("component", "federation"))})
	s.background = append(s.background, w.Run)
	return nil
}
