package caserver

import (
	"context"
	"errors"

	"github.com/tether-mesh/tether/pkg/identity"
)

// setupKube wires the Kubernetes store, TokenReview attestation, leader
// election and the cert-manager upstream.
func (s *Service) setupKube(ctx context.Context, caCfg *identity.Config) error {
	return errors.New("--store=kubernetes: not wired yet")
}

func (s *Service) setupBundlePublisher(ctx context.Context, caCfg *identity.Config) error {
	return errors.New("--publish-bundle: not wired yet")
}
