package injector

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	admissionregv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/tether-mesh/tether/internal/testutil"
)

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func gauge() prometheus.Gauge { return prometheus.NewGauge(prometheus.GaugeOpts{Name: "x"}) }

func newTestKubeCerts(t *testing.T, clock *testutil.FakeClock, objs ...any) (*kubeCerts, *fake.Clientset) {
	t.Helper()
	cs := fake.NewClientset(&admissionregv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "tether-injector"},
		Webhooks:   []admissionregv1.MutatingWebhook{{Name: "a.tether.dev"}, {Name: "b.tether.dev"}},
	})
	cfg := CertsConfig{Client: cs, Namespace: "tether-system", SecretName: "tether-injector-tls", WebhookName: "tether-injector",
		ServiceName: "tether-injector", TTL: 90 * time.Hour, PropagationDelay: 5 * time.Minute}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	k, err := newKubeCerts(cfg, clock.Now, gauge(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return k, cs
}

func bundleOf(t *testing.T, cs *fake.Clientset) [][]byte {
	t.Helper()
	mwc, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(context.Background(), "tether-injector", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mwc.Webhooks[0].ClientConfig.CABundle, mwc.Webhooks[1].ClientConfig.CABundle) {
		t.Error("webhooks of the configuration have different caBundles")
	}
	var out [][]byte
	rest := mwc.Webhooks[0].ClientConfig.CABundle
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return out
		}
		out = append(out, b.Bytes)
	}
}

func serial(c *tls.Certificate) string { return c.Leaf.SerialNumber.String() }

func TestKubeCertsRotation(t *testing.T) {
	ctx := context.Background()
	clock := testutil.NewFakeClock()
	k, cs := newTestKubeCerts(t, clock)
	if err := k.Ready(); err == nil {
		t.Fatal("ready before the first sync")
	}
	if err := k.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := k.Ready(); err != nil {
		t.Fatalf("not ready after sync: %v", err)
	}
	first := k.Certificate()
	for _, n := range []string{"tether-injector.tether-system.svc", "tether-injector", "tether-injector.tether-system.svc.cluster.local"} {
		if err := first.Leaf.VerifyHostname(n); err != nil {
			t.Errorf("serving certificate: %v", err)
		}
	}
	if b := bundleOf(t, cs); len(b) != 1 || !bytes.Equal(b[0], first.Certificate[0]) {
		t.Fatalf("caBundle holds %d certificates, want the served one", len(b))
	}
	// A second replica reads the same Secret and serves the same certificate.
	k2, _ := newTestKubeCerts(t, clock)
	k2.client = cs
	if err := k2.Sync(ctx); err != nil || serial(k2.Certificate()) != serial(first) {
		t.Fatalf("second replica serves %v (err %v), want the shared certificate", serial(k2.Certificate()), err)
	}

	// Before 2/3 of its life: nothing changes.
	clock.Add(59 * time.Hour)
	if err := k.Sync(ctx); err != nil || serial(k.Certificate()) != serial(first) {
		t.Fatalf("rotated too early (err %v)", err)
	}
	// Past 2/3: a new certificate joins the bundle, the old one is still
	// served until the propagation delay has passed.
	clock.Add(2 * time.Hour)
	if err := k.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if b := bundleOf(t, cs); len(b) != 2 || !bytes.Equal(b[1], first.Certificate[0]) {
		t.Fatalf("caBundle after rotation holds %d certificates, want new + old", len(b))
	}
	if serial(k.Certificate()) != serial(first) {
		t.Error("new certificate served before the propagation delay")
	}
	clock.Add(5 * time.Minute)
	if err := k.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	second := k.Certificate()
	if serial(second) == serial(first) {
		t.Fatal("new certificate not served after the propagation delay")
	}
	if b := bundleOf(t, cs); !bytes.Equal(b[0], second.Certificate[0]) {
		t.Error("served certificate is not in the caBundle")
	}
	if err := k.Ready(); err != nil {
		t.Error(err)
	}

	// A damaged Secret is replaced, not served.
	s, _ := cs.CoreV1().Secrets("tether-system").Get(ctx, "tether-injector-tls", metav1.GetOptions{})
	s.Data[keyKey] = []byte("garbage")
	cs.CoreV1().Secrets("tether-system").Update(ctx, s, metav1.UpdateOptions{})
	if err := k.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	s, _ = cs.CoreV1().Secrets("tether-system").Get(ctx, "tether-injector-tls", metav1.GetOptions{})
	if _, err := tls.X509KeyPair(s.Data[keyCert], s.Data[keyKey]); err != nil {
		t.Errorf("damaged Secret not repaired: %v", err)
	}
}

func TestKubeCertsNoWebhookConfiguration(t *testing.T) {
	clock := testutil.NewFakeClock()
	k, cs := newTestKubeCerts(t, clock)
	cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(context.Background(), "tether-injector", metav1.DeleteOptions{})
	err := k.Sync(context.Background())
	if err == nil || !strings.Contains(err.Error(), "MutatingWebhookConfiguration tether-injector") {
		t.Fatalf("err %v, want one naming the webhook configuration", err)
	}
	k.lastErr = err
	if err := k.Ready(); err == nil {
		t.Error("ready although the caBundle was never set")
	}
}

func TestKubeCertsExpiredIsNotReady(t *testing.T) {
	clock := testutil.NewFakeClock()
	k, _ := newTestKubeCerts(t, clock)
	if err := k.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	clock.Add(91 * time.Hour) // no sync since: the served certificate expired
	if err := k.Ready(); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("Ready = %v, want expired", err)
	}
}

func TestCertsConfigValidate(t *testing.T) {
	for _, c := range []CertsConfig{
		{},
		{Namespace: "n", SecretName: "s", WebhookName: "w", ServiceName: "svc", TTL: time.Minute},
		{Namespace: "n", SecretName: "s", WebhookName: "w", ServiceName: "svc", TTL: 2 * time.Hour, PropagationDelay: time.Hour},
	} {
		if err := c.validate(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}

func TestFileCerts(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	clock := testutil.NewFakeClock()
	write := func(ttl time.Duration) []byte {
		c, k, err := selfSigned([]string{"tether-injector.tether-system.svc"}, clock.Now(), ttl)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(certFile, c, 0o600)
		os.WriteFile(keyFile, k, 0o600)
		return c
	}
	f := newFileCerts(certFile, keyFile, clock.Now, gauge(), slog.New(slog.DiscardHandler))
	if f.Ready() == nil || f.Certificate() != nil {
		t.Fatal("ready without files")
	}
	first := write(2 * time.Hour)
	f.reload()
	if err := f.Ready(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pemCert(f.Certificate().Certificate[0]), first) {
		t.Error("not serving the file's certificate")
	}
	// A broken pair keeps the last good certificate.
	os.WriteFile(keyFile, []byte("broken"), 0o600)
	os.Chtimes(certFile, time.Now().Add(time.Minute), time.Now().Add(time.Minute))
	f.reload()
	if !bytes.Equal(pemCert(f.Certificate().Certificate[0]), first) {
		t.Error("a broken key replaced the good certificate")
	}
	// Renewed files are picked up.
	second := write(2 * time.Hour)
	os.Chtimes(certFile, time.Now().Add(2*time.Minute), time.Now().Add(2*time.Minute))
	f.reload()
	if !bytes.Equal(pemCert(f.Certificate().Certificate[0]), second) {
		t.Error("renewed certificate not loaded")
	}
	clock.Add(3 * time.Hour)
	if err := f.Ready(); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("Ready = %v, want expired", err)
	}
}
