package caserver

import (
	"context"
	"fmt"
	"strings"

	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned/typed/certmanager/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/tether-mesh/tether/pkg/identity"
	"github.com/tether-mesh/tether/pkg/identity/kube"
)

// restConfig is the Kubernetes client config: the kubeconfig file if one
// is given, else in-cluster.
func (s *Service) restConfig() (*rest.Config, error) {
	if s.kubeRest != nil {
		return s.kubeRest, nil
	}
	var err error
	if s.cfg.Kube.Kubeconfig != "" {
		s.kubeRest, err = clientcmd.BuildConfigFromFlags("", s.cfg.Kube.Kubeconfig)
	} else {
		s.kubeRest, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w (outside a cluster, pass --kubeconfig)", err)
	}
	return s.kubeRest, nil
}

func (s *Service) clientset() (kubernetes.Interface, error) {
	if s.kubeClient != nil {
		return s.kubeClient, nil
	}
	rc, err := s.restConfig()
	if err != nil {
		return nil, err
	}
	s.kubeClient, err = kubernetes.NewForConfig(rc)
	return s.kubeClient, err
}

// setupKube wires the Secret store, TokenReview attestation, Lease leader
// election and the cert-manager upstream into caCfg.
func (s *Service) setupKube(ctx context.Context, caCfg *identity.Config) error {
	cs, err := s.clientset()
	if err != nil {
		return err
	}
	klog.SetSlogLogger(s.log) // client-go's own logs (leader election) in our format
	k := s.cfg.Kube
	store, err := kube.NewSecretStore(kube.SecretStoreConfig{Client: cs.CoreV1(), Namespace: k.Namespace, Name: k.SecretName, Logger: s.log})
	if err != nil {
		return err
	}
	caCfg.Store = store
	el, err := kube.NewLeaderElector(kube.LeaderElectorConfig{Client: cs.CoordinationV1(), Namespace: k.Namespace, Name: k.LeaseName, Identity: k.Identity, Logger: s.log})
	if err != nil {
		return err
	}
	s.isLeader = el.IsLeader
	caCfg.IsLeader = el.IsLeader
	caCfg.Replica = k.Identity
	if caCfg.MaxReports == 0 {
		caCfg.MaxReports = kube.MaxReportsKubernetes
	}
	// The exchange is made once the CA exists (setupReportExchange); the
	// CA reads the other replicas' reports through it.
	caCfg.PeerReports = func(ctx context.Context) ([]identity.ReportSnapshot, error) {
		if s.reports == nil {
			return nil, nil
		}
		return s.reports.Peers(ctx)
	}
	s.background = append(s.background, el.Run)
	if k.UpstreamIssuer != "" {
		rc, err := s.restConfig()
		if err != nil {
			return err
		}
		cm, err := cmclient.NewForConfig(rc)
		if err != nil {
			return fmt.Errorf("cert-manager client: %w", err)
		}
		kind, name, _ := strings.Cut(k.UpstreamIssuer, "/")
		up, err := kube.NewCertManagerUpstream(kube.CertManagerConfig{Client: cm, Namespace: k.UpstreamNamespace, IssuerName: name, IssuerKind: kind, Logger: s.log})
		if err != nil {
			return err
		}
		caCfg.Upstream = up
	}
	return nil
}

// setupAttestors adds TokenReview attestation, behind a local precheck,
// when enabled.
func (s *Service) setupAttestors(td identity.Config) error {
	if !s.cfg.Kube.TokenReview {
		return nil
	}
	cs, err := s.clientset()
	if err != nil {
		return err
	}
	att, err := kube.NewTokenReviewAttestor(kube.TokenReviewConfig{Client: cs.AuthenticationV1(), TrustDomain: td.TrustDomain, Audiences: []string{s.cfg.Kube.Audience}, Logger: s.log})
	if err != nil {
		return err
	}
	// Tokens the API server would refuse are refused here first, so that
	// invalid tokens do not each cost a TokenReview.
	pre, err := kube.NewTokenPrecheck(kube.TokenPrecheckConfig{
		Next: att, Client: cs.Discovery().RESTClient(), Audiences: []string{s.cfg.Kube.Audience},
		ExtraIssuers: s.cfg.Kube.ExtraIssuers, Registerer: s.registry, Logger: s.log,
	})
	if err != nil {
		return err
	}
	s.attestors[identity.KindK8sSAT] = pre
	return nil
}

// setupBundlePublisher keeps the tether-trust-bundle ConfigMaps current.
func (s *Service) setupBundlePublisher(ctx context.Context, caCfg *identity.Config) error {
	cs, err := s.clientset()
	if err != nil {
		return err
	}
	pub, err := kube.NewBundlePublisher(kube.BundlePublisherConfig{
		Client: cs, Bundles: s.ca, Federated: s.federator.Bundles(), IsLeader: s.isLeader, Logger: s.log,
		// tether-discovery and tether-injector run in the CA's namespace.
		Namespaces: []string{s.cfg.Kube.Namespace},
	})
	if err != nil {
		return err
	}
	s.background = append(s.background, pub.Run)
	return nil
}

// setupReportExchange shares this replica's sidecar reports with the
// others through the ConfigMap kube.DefaultReportsName.
func (s *Service) setupReportExchange() error {
	cs, err := s.clientset()
	if err != nil {
		return err
	}
	ex, err := kube.NewReportExchange(kube.ReportExchangeConfig{Client: cs.CoreV1(), Namespace: s.cfg.Kube.Namespace,
		Replica: s.cfg.Kube.Identity, Reports: s.ca, IsLeader: s.isLeader, Logger: s.log})
	if err != nil {
		return err
	}
	s.reports = ex
	s.background = append(s.background, ex.Run)
	return nil
}
