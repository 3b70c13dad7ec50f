package injector

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/inject"
)

// TestServeWithFiles runs the injector with a certificate from files (the
// cert-manager variant) on loopback: HTTPS webhook, size limit, admin port.
func TestServeWithFiles(t *testing.T) {
	dir := t.TempDir()
	certPEM, keyPEM, err := selfSigned([]string{"tether-injector.tether-system.svc", "127.0.0.1"}, time.Now(), 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	os.WriteFile(certFile, certPEM, 0o600)
	os.WriteFile(keyFile, keyPEM, 0o600)
	inj, err := New(Config{Inject: inject.DefaultConfig(testImage), CertFile: certFile, KeyFile: keyFile, MaxRequestBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	wl, _ := net.Listen("tcp", "127.0.0.1:0")
	al, _ := net.Listen("tcp", "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- inj.Serve(ctx, wl, al) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	}()
	admin := "http://" + al.Addr().String()
	testutil.Eventually(t, "admin ready", 5*time.Second, func() bool {
		resp, err := http.Get(admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "tether-injector.tether-system.svc"}}}
	url := "https://" + wl.Addr().String() + "/mutate"
	body := []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","resource":{"version":"v1","resource":"pods"},"operation":"CREATE","namespace":"shop","object":{"metadata":{"name":"p"},"spec":{"containers":[{"name":"a","image":"i"}]}}}}`)
	resp, err := client.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var rv struct {
		Response struct {
			UID     string `json:"uid"`
			Allowed bool   `json:"allowed"`
			Patch   []byte `json:"patch"`
		} `json:"response"`
	}
	if err := json.Unmarshal(out, &rv); err != nil || rv.Response.UID != "u1" || !rv.Response.Allowed || !strings.Contains(string(rv.Response.Patch), "tether-sidecar") {
		t.Fatalf("HTTP %d %s (%v)", resp.StatusCode, out, err)
	}
	// Too large: 413, and the server lives on.
	big := append([]byte(`{"x":"`), bytes.Repeat([]byte("a"), 100<<10)...)
	resp, err = client.Post(url, "application/json", bytes.NewReader(append(big, '"', '}')))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized review: HTTP %d, want 413", resp.StatusCode)
	}
	// Plain HTTP to the TLS port is refused, not served.
	if resp, err := http.Post("http://"+wl.Addr().String()+"/mutate", "application/json", bytes.NewReader(body)); err == nil {
		if resp.StatusCode == 200 {
			t.Error("plaintext admission served")
		}
		resp.Body.Close()
	}
	resp, err = http.Get(admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`tether_injector_injections_total{result="injected"} 1`, `tether_injector_injections_total{result="error"} 1`, "tether_injector_serving_cert_expiry_timestamp_seconds"} {
		if !strings.Contains(string(m), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestServeNotReadyWithoutCertificate(t *testing.T) {
	dir := t.TempDir()
	inj, err := New(Config{Inject: inject.DefaultConfig(testImage), CertFile: filepath.Join(dir, "missing.crt"), KeyFile: filepath.Join(dir, "missing.key")})
	if err != nil {
		t.Fatal(err)
	}
	if err := inj.Ready(); err == nil || !strings.Contains(err.Error(), "no serving certificate") {
		t.Errorf("Ready = %v, want no serving certificate", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no image", Config{}, "--image"},
		{"cert without key", Config{Inject: inject.DefaultConfig("i"), CertFile: "c"}, "--tls-key-file"},
		{"self-managed without names", Config{Inject: inject.DefaultConfig("i")}, "--namespace"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err %v, want %q", err, tt.want)
			}
		})
	}
}
