package injector

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// CertsConfig is the self-managed serving certificate.
//
// tether-ca cannot issue it: an SVID carries exactly one URI SAN and the CA
// never copies names from a CSR, while the API server checks the webhook's
// certificate against the DNS name of the Service. So the replicas share a
// self-signed serving certificate kept in a Secret, publish it as the
// webhook's caBundle, and replace it at 2/3 of its life: the new one is
// added to the caBundle next to the old one and served only after
// PropagationDelay, so the API server trusts it before it sees it.
type CertsConfig struct {
	Kubeconfig string // empty: in-cluster
	Namespace  string // of the Secret and the Service
	SecretName string
	// WebhookName is the MutatingWebhookConfiguration whose caBundle the
	// injector keeps current.
	WebhookName string
	// ServiceName gives the DNS names: <svc>, <svc>.<ns>, <svc>.<ns>.svc,
	// <svc>.<ns>.svc.cluster.local.
	ServiceName string
	// ExtraNames are more DNS names or IP addresses for the certificate.
	ExtraNames []string
	// TTL of a serving certificate (default 1 year).
	TTL time.Duration
	// PropagationDelay: how long a new certificate is in the caBundle
	// before it is served (default 2 minutes).
	PropagationDelay time.Duration
	// Interval between checks of the Secret and the caBundle (default 1m).
	Interval time.Duration

	// Client, if set, is used instead of Kubeconfig (tests).
	Client kubernetes.Interface
}

func (c *CertsConfig) validate() error {
	if c.Namespace == "" || c.SecretName == "" || c.WebhookName == "" || c.ServiceName == "" {
		return errors.New("the self-managed serving certificate needs --namespace, --secret-name, --webhook-name and --service-name")
	}
	if c.TTL == 0 {
		c.TTL = 365 * 24 * time.Hour
	}
	if c.PropagationDelay == 0 {
		c.PropagationDelay = 2 * time.Minute
	}
	if c.Interval == 0 {
		c.Interval = time.Minute
	}
	if c.TTL < time.Hour || c.PropagationDelay < 0 || c.PropagationDelay*3 > c.TTL {
		return fmt.Errorf("--cert-ttl %s must be at least 1h and 3 times --cert-propagation-delay %s", c.TTL, c.PropagationDelay)
	}
	return nil
}

func (c *CertsConfig) names() []string {
	svc, ns := c.ServiceName, c.Namespace
	return append([]string{svc + "." + ns + ".svc", svc, svc + "." + ns, svc + "." + ns + ".svc.cluster.local"}, c.ExtraNames...)
}

// Secret keys.
const (
	keyCert     = "tls.crt"
	keyKey      = "tls.key"
	keyPrevCert = "prev.crt"
	keyPrevKey  = "prev.key"
	keyBundle   = "ca.crt"
	backdate    = time.Minute
)

type kubeCerts struct {
	cfg    CertsConfig
	client kubernetes.Interface
	now    func() time.Time
	expiry prometheus.Gauge
	log    *slog.Logger

	cur     atomic.Pointer[tls.Certificate]
	mu      sync.Mutex
	trusted bool  // the caBundle holds the served certificate
	lastErr error // of the last sync
}

func newKubeCerts(cfg CertsConfig, now func() time.Time, expiry prometheus.Gauge, log *slog.Logger) (*kubeCerts, error) {
	client := cfg.Client
	if client == nil {
		var rc *rest.Config
		var err error
		if cfg.Kubeconfig != "" {
			rc, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
		} else {
			rc, err = rest.InClusterConfig()
		}
		if err != nil {
			return nil, fmt.Errorf("kubernetes client: %w (outside a cluster, pass --kubeconfig)", err)
		}
		if client, err = kubernetes.NewForConfig(rc); err != nil {
			return nil, err
		}
	}
	return &kubeCerts{cfg: cfg, client: client, now: now, expiry: expiry, log: log}, nil
}

func (k *kubeCerts) Certificate() *tls.Certificate { return k.cur.Load() }

func (k *kubeCerts) Ready() error {
	k.mu.Lock()
	trusted, lastErr := k.trusted, k.lastErr
	k.mu.Unlock()
	c := k.cur.Load()
	if c == nil {
		return fmt.Errorf("no serving certificate yet: %v", lastErr)
	}
	if !trusted {
		return fmt.Errorf("caBundle of MutatingWebhookConfiguration %s not updated yet: %v", k.cfg.WebhookName, lastErr)
	}
	return validAt(c.Leaf, k.now())
}

// Run syncs at once, then every Interval (every 2 s until the first sync
// succeeds), until ctx ends. Sync errors are logged and retried.
func (k *kubeCerts) Run(ctx context.Context) error {
	for {
		err := k.Sync(ctx)
		k.mu.Lock()
		k.lastErr = err
		k.mu.Unlock()
		wait := k.cfg.Interval
		if err != nil {
			k.log.Warn("serving certificate sync failed; retrying", slog.Any("error", err))
			if k.cur.Load() == nil || !k.isTrusted() {
				wait = min(wait, 2*time.Second)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

func (k *kubeCerts) isTrusted() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.trusted
}

// Sync makes sure the Secret holds a certificate that is not due for
// rotation, the caBundle trusts it, and the right one is served.
func (k *kubeCerts) Sync(ctx context.Context) error {
	secrets := k.client.CoreV1().Secrets(k.cfg.Namespace)
	s, err := secrets.Get(ctx, k.cfg.SecretName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		data, err := k.rotate(nil)
		if err != nil {
			return err
		}
		s, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: k.cfg.SecretName, Namespace: k.cfg.Namespace,
				Labels: map[string]string{"app.kubernetes.io/part-of": "tether", "app.kubernetes.io/component": "injector"}},
			Type: corev1.SecretTypeOpaque,
			Data: data,
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) { // another replica was first
			s, err = secrets.Get(ctx, k.cfg.SecretName, metav1.GetOptions{})
		}
		if err != nil {
			return fmt.Errorf("create Secret %s/%s: %w", k.cfg.Namespace, k.cfg.SecretName, err)
		}
		k.log.Info("serving certificate created", slog.String("secret", k.cfg.SecretName))
	} else if err != nil {
		return fmt.Errorf("get Secret %s/%s: %w", k.cfg.Namespace, k.cfg.SecretName, err)
	}
	cur, curErr := tls.X509KeyPair(s.Data[keyCert], s.Data[keyKey])
	if curErr != nil || k.due(cur.Leaf) {
		why := "due for rotation"
		if curErr != nil {
			why = "unreadable: " + curErr.Error()
		}
		data, err := k.rotate(s.Data)
		if err != nil {
			return err
		}
		s = s.DeepCopy()
		s.Data = data
		if s, err = secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			// A conflict means another replica rotated: next sync reads it.
			return fmt.Errorf("update Secret %s/%s: %w", k.cfg.Namespace, k.cfg.SecretName, err)
		}
		k.log.Info("serving certificate rotated", slog.String("reason", why))
		if cur, err = tls.X509KeyPair(s.Data[keyCert], s.Data[keyKey]); err != nil {
			return err
		}
	}
	if err := k.publishBundle(ctx, s.Data[keyBundle]); err != nil {
		k.mu.Lock()
		// Still trusted if what we serve is in the bundle we last set.
		k.trusted = k.trusted && k.cur.Load() != nil
		k.mu.Unlock()
		return err
	}
	serve := &cur
	if prev, err := tls.X509KeyPair(s.Data[keyPrevCert], s.Data[keyPrevKey]); err == nil &&
		validAt(prev.Leaf, k.now()) == nil && k.now().Before(cur.Leaf.NotBefore.Add(backdate+k.cfg.PropagationDelay)) {
		serve = &prev // the new one may not be trusted everywhere yet
	}
	if old := k.cur.Load(); old == nil || !bytes.Equal(old.Certificate[0], serve.Certificate[0]) {
		k.log.Info("serving certificate in use", slog.String("serial", serve.Leaf.SerialNumber.Text(16)), slog.Time("not_after", serve.Leaf.NotAfter))
	}
	k.cur.Store(serve)
	k.expiry.Set(float64(serve.Leaf.NotAfter.Unix()))
	k.mu.Lock()
	k.trusted = true
	k.mu.Unlock()
	return nil
}

// due: past 2/3 of its life, or not valid for our names.
func (k *kubeCerts) due(leaf *x509.Certificate) bool {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	if !k.now().Before(leaf.NotBefore.Add(life * 2 / 3)) {
		return true
	}
	for _, n := range k.cfg.names() {
		if leaf.VerifyHostname(n) != nil {
			return true
		}
	}
	return false
}

// rotate returns new Secret data: a fresh certificate, the old current one
// as previous while it is valid, and the bundle of both.
func (k *kubeCerts) rotate(old map[string][]byte) (map[string][]byte, error) {
	certPEM, keyPEM, err := selfSigned(k.cfg.names(), k.now(), k.cfg.TTL)
	if err != nil {
		return nil, err
	}
	data := map[string][]byte{keyCert: certPEM, keyKey: keyPEM, keyBundle: certPEM}
	if prev, err := tls.X509KeyPair(old[keyCert], old[keyKey]); err == nil && validAt(prev.Leaf, k.now()) == nil {
		data[keyPrevCert], data[keyPrevKey] = old[keyCert], old[keyKey]
		data[keyBundle] = append(append([]byte{}, certPEM...), old[keyCert]...)
	}
	return data, nil
}

// publishBundle sets caBundle on every webhook of the configuration.
func (k *kubeCerts) publishBundle(ctx context.Context, bundle []byte) error {
	api := k.client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	mwc, err := api.Get(ctx, k.cfg.WebhookName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get MutatingWebhookConfiguration %s: %w", k.cfg.WebhookName, err)
	}
	changed := false
	for i := range mwc.Webhooks {
		if !bytes.Equal(mwc.Webhooks[i].ClientConfig.CABundle, bundle) {
			mwc.Webhooks[i].ClientConfig.CABundle = bundle
			changed = true
		}
	}
	if !changed {
		return nil
	}
	if _, err := api.Update(ctx, mwc, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update caBundle of MutatingWebhookConfiguration %s: %w", k.cfg.WebhookName, err)
	}
	k.log.Info("webhook caBundle updated", slog.String("webhook", k.cfg.WebhookName))
	return nil
}

// selfSigned makes an ECDSA P-256 serving certificate for names (DNS names
// or IP addresses) that is its own trust anchor.
func selfSigned(names []string, now time.Time, ttl time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: names[0], Organization: []string{"tether-injector"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("serving certificate: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}
