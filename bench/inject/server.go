package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"runtime"
	"time"

	"github.com/tether-mesh/tether/pkg/inject"
)

// baselineBody is the fixed answer of the baseline server.
var baselineBody = []byte(`{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","response":{"uid":"00000000-0000-4000-8000-000000000000","allowed":true}}`)

// serve runs both servers on one core and prints their addresses and the
// PEM certificate as one JSON line, then serves until stdin closes.
func serve(out io.Writer) error {
	runtime.GOMAXPROCS(1)
	pinToOneCPU()
	cert, certPEM, err := selfSigned()
	if err != nil {
		return err
	}
	cfg := inject.DefaultConfig("registry.example/tether:bench")
	wh, err := inject.NewWebhook(cfg, 0, nil, nil)
	if err != nil {
		return err
	}
	handlers := map[string]http.Handler{
		"injector": wh,
		"baseline": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, inject.DefaultMaxRequestBytes))
			w.Header().Set("Content-Type", "application/json")
			w.Write(baselineBody)
		}),
	}
	addrs := map[string]string{}
	for name, h := range handlers {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		addrs[name] = l.Addr().String()
		srv := &http.Server{Handler: h, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
			ReadHeaderTimeout: 5 * time.Second}
		go srv.ServeTLS(l, "", "")
	}
	if err := json.NewEncoder(out).Encode(map[string]any{"addrs": addrs, "cert": string(certPEM)}); err != nil {
		return err
	}
	io.Copy(io.Discard, os.Stdin) // until the parent goes
	return nil
}

func selfSigned() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}
