package proxy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/tether-mesh/tether/pkg/proxy"
)

// A stock mTLS client with a valid SVID that does not offer ALPN tether/1
// (offers none, or offers only h2) is refused in the handshake with the TLS
// no_application_protocol alert (120), instead of completing the handshake
// and then waiting for tether/1 frames that never come.
func TestStockClientWithoutALPNIsRefusedInHandshake(t *testing.T) {
	m := newMesh(t)
	app := echo(t, "")
	in := inbound(t, m.identity(serverID, false), app, proxy.Config{HandshakeTimeout: 2 * time.Second})
	client := m.identity(clientID, false)
	for _, protos := range [][]string{nil, {"h2"}, {"http/1.1"}} {
		t.Run(fmt.Sprintf("go-spiffe client offering %q", protos), func(t *testing.T) {
			cfg := tlsconfig.MTLSClientConfig(client, client, tlsconfig.AuthorizeID(serverID))
			cfg.NextProtos = protos
			before := counter(t, in.reg, "tether_sidecar_connections_total", "direction", "inbound", "result", "handshake_error")
			c, err := tls.Dial("tcp", in.addr, cfg)
			if err == nil {
				c.Close()
				t.Fatalf("handshake completed (negotiated %q); want a no_application_protocol alert", c.ConnectionState().NegotiatedProtocol)
			}
			if !strings.Contains(err.Error(), "no application protocol") {
				t.Fatalf("handshake error %q; want the no_application_protocol alert", err)
			}
			eventually(t, "the refusal to be counted", func() bool {
				return counter(t, in.reg, "tether_sidecar_connections_total", "direction", "inbound", "result", "handshake_error") == before+1
			})
		})
	}
	if !strings.Contains(in.accessLog(), "does not offer ALPN tether/1") {
		t.Errorf("access log does not say why:\n%s", in.accessLog())
	}
	// A mesh client is unaffected.
	out := outbound(t, client, proxy.Destination{Name: "server", Addr: in.addr, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	if err := dialRoundTrip(out.addr, "mesh"); err != nil {
		t.Fatalf("mesh client after the refusals: %v", err)
	}

	t.Run("openssl s_client", func(t *testing.T) {
		if _, err := exec.LookPath("openssl"); err != nil {
			t.Skip("openssl not installed (Makefile deps: openssl)")
		}
		dir := t.TempDir()
		var chain, bundle bytes.Buffer
		for _, c := range client.svid.Certificates {
			pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		}
		for _, c := range client.bundle.X509Authorities() {
			pem.Encode(&bundle, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		}
		key, err := x509.MarshalPKCS8PrivateKey(client.svid.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		write := func(name string, b []byte) string {
			p := filepath.Join(dir, name)
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}
		certF, keyF := write("cert.pem", chain.Bytes()), write("key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}))
		caF := write("bundle.pem", bundle.Bytes())
		for _, alpn := range []string{"", "h2"} {
			args := []string{"s_client", "-connect", in.addr, "-tls1_3", "-cert", certF, "-key", keyF, "-CAfile", caF}
			if alpn != "" {
				args = append(args, "-alpn", alpn)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			out, _ := exec.CommandContext(ctx, "openssl", args...).CombinedOutput()
			cancel()
			if !strings.Contains(string(out), "no application protocol") {
				t.Errorf("openssl %s: want the no_application_protocol alert, got:\n%s", strings.Join(args, " "), out)
			}
		}
	})
}

// dialRoundTrip connects to addr and checks that msg comes back.
func dialRoundTrip(addr, msg string) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	return roundTrip(c, msg)
}
