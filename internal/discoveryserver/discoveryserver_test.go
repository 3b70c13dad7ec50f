package discoveryserver

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

var (
	webID = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/web")
	apiID = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/api")
)

// meshYAML is a mesh with default deny: web may reach api (if webToAPI),
// api may reach db; api's endpoint is apiAddr.
func meshYAML(apiAddr string, webToAPI bool) string {
	s := fmt.Sprintf(`defaultPolicy: deny
services:
  - name: web
    ports: [{port: 80, targetPort: 8080}]
    endpoints: [{address: 127.0.0.1, serviceAccount: web}]
  - name: api
    clusterIPs: [10.96.0.20]
    ports: [{name: http, port: 80, targetPort: 8080}]
    endpoints: [{address: %s, serviceAccount: api}]
  - name: db
    ports: [{port: 5432}]
    endpoints: [{address: 127.0.0.3, serviceAccount: db}]
policies:
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: api-to-db, namespace: default}
    spec:
      destination: {service: db}
      sources: [{serviceAccount: {name: api}}]
`, apiAddr)
	if webToAPI {
		s += `  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: web-to-api, namespace: default}
    spec:
      destination: {service: api, ports: [80]}
      sources: [{serviceAccount: {name: web}}]
`
	}
	return s
}

// TestFileMode runs discovery on a mesh.yaml with a real CA and checks
// what sidecars receive over mTLS, that edits reach them within a second,
// that bad edits keep the last good state, and the metrics.
func TestFileMode(t *testing.T) {
	ca := startCA(t)
	mesh := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, mesh, meshYAML("127.0.0.2", true))
	cfg := baseConfig(t, ca, mesh)
	cfg.ClusterDomain = "example.org"
	s := start(t, cfg)

	if got := s.Registry().MeshDefault().String(); got != "deny" {
		t.Errorf("mesh default = %s, want the file's deny", got)
	}
	web := connect(t, s, ca, webID)
	wv := web.subscribe()
	if got := wv.clusters(t); !slices.Equal(got, []string{"default/api"}) {
		t.Fatalf("web's clusters = %v, want only default/api", got)
	}
	if got := wv.sans(t, "default/api"); !slices.Equal(got, []string{apiID.String()}) {
		t.Errorf("default/api accepts servers %v, want %s", got, apiID)
	}
	if got := wv.endpoints(t, "default/api"); !slices.Equal(got, []string{"127.0.0.2:8080"}) {
		t.Errorf("default/api endpoints = %v", got)
	}
	if got := wv.listeners(t); !slices.Equal(got, []string{"inbound|15006"}) {
		t.Errorf("web's listeners = %v, want inbound|15006", got)
	}
	if got := wv.principals(t, "inbound|15006"); len(got) != 0 {
		t.Errorf("nobody may reach web, but its RBAC allows %v", got)
	}
	nt := wv.names(t)
	if nt.ClusterDomain != "example.org" || len(nt.Services) != 1 || nt.Services[0].Fqdn != "api.default.svc.example.org." ||
		!slices.Equal(nt.Services[0].Addresses, []string{"10.96.0.20"}) {
		t.Errorf("web's name table: domain %q, services %v; want example.org and only api at 10.96.0.20", nt.ClusterDomain, nt.Services)
	}
	if len(nt.UnreachableAddresses) != 2 {
		t.Errorf("web's name table hides %q, want the addresses of web and db", nt.UnreachableAddresses)
	}

	api := connect(t, s, ca, apiID)
	av := api.subscribe()
	if got := av.clusters(t); !slices.Equal(got, []string{"default/db"}) {
		t.Errorf("api's clusters = %v, want only default/db", got)
	}
	if got := av.principals(t, "inbound|15006"); !slices.Equal(got, []string{"exact:" + webID.String()}) {
		t.Errorf("api's inbound principals = %v, want only web", got)
	}

	for series, want := range map[string]float64{
		"tether_discovery_xds_streams":                                              2,
		"tether_discovery_snapshot_version":                                         1,
		"tether_discovery_registry_services":                                        3,
		"tether_discovery_registry_endpoints":                                       3,
		"tether_discovery_registry_policies":                                        2,
		"tether_discovery_registry_reload_errors_total":                             0,
		`tether_discovery_xds_pushes_total{type="envoy.config.cluster.v3.Cluster"}`: 2,
	} {
		if got := s.metric(t, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	// Both have acknowledged everything: their sync slots are free.
	testutil.Eventually(t, "sync slots freed", 5*time.Second, func() bool {
		return s.metric(t, "tether_discovery_xds_syncs_in_progress") == 0 && s.metric(t, "tether_discovery_xds_syncs_waiting") == 0
	})
	if got := s.metric(t, "tether_discovery_svid_expiry_timestamp_seconds"); got < float64(time.Now().Unix()) {
		t.Errorf("svid expiry = %v, want a time in the future", got)
	}

	// An edit reaches web within a second, and only web.
	writeFile(t, mesh, meshYAML("127.0.0.9", true))
	took := web.waitFor(wv, "api's new endpoint at web", time.Second, func(v view) bool {
		return slices.Equal(v.endpoints(t, "default/api"), []string{"127.0.0.9:8080"})
	})
	t.Logf("mesh.yaml edit reached the sidecar in %s", took)
	// api's own pod moved: only its inbound Listener, whose chains match
	// its pods' addresses, changes for it.
	if r := api.recv(300 * time.Millisecond); r != nil && r.TypeUrl != resource.ListenerType {
		t.Errorf("api got a %s push for a change that does not concern it", r.TypeUrl)
	}

	// Bad edits keep the last good state and are counted.
	bad := []struct {
		name  string
		apply func()
	}{
		{"broken YAML", func() { writeFile(t, mesh, "services: [oops\n") }},
		{"unknown field", func() { writeFile(t, mesh, "services:\n  - name: web\n    replicas: 3\n") }},
		{"invalid service", func() { writeFile(t, mesh, "services:\n  - name: Web_Server\n") }},
		{"other defaultPolicy", func() { writeFile(t, mesh, "defaultPolicy: allow-mesh\n") }},
		{"deleted", func() { os.Remove(mesh) }},
	}
	for i, b := range bad {
		b.apply()
		testutil.Eventually(t, b.name+" counted as a reload error", 5*time.Second, func() bool {
			return s.metric(t, "tether_discovery_registry_reload_errors_total") == float64(i+1)
		})
		if r := web.recv(100 * time.Millisecond); r != nil {
			t.Errorf("%s: web got a %s push", b.name, r.TypeUrl)
		}
	}
	if got := s.metric(t, "tether_discovery_snapshot_version"); got != 2 {
		t.Errorf("snapshot version after bad edits = %v, want 2 (the last good)", got)
	}
	if code, body := s.get(t, "/readyz"); code != http.StatusOK {
		t.Errorf("/readyz after bad edits = %d %s, want ready (last good state)", code, body)
	}
	// A newly connected sidecar still gets the last good state.
	if got := connect(t, s, ca, webID).subscribe().endpoints(t, "default/api"); !slices.Equal(got, []string{"127.0.0.9:8080"}) {
		t.Errorf("new client after bad edits: default/api endpoints = %v, want the last good 127.0.0.9:8080", got)
	}

	// A good file again: web loses api (policy removed) within a second.
	writeFile(t, mesh, meshYAML("127.0.0.9", false))
	took = web.waitFor(wv, "web losing api", time.Second, func(v view) bool {
		return len(v.clusters(t)) == 0 && len(v.names(t).Services) == 0
	})
	t.Logf("policy removal reached the sidecar in %s", took)
	if got := s.metric(t, "tether_discovery_registry_policies"); got != 1 {
		t.Errorf("policies = %v, want 1", got)
	}
}

// TestStreamsPerIdentityFlag: --max-streams-per-identity refuses the
// streams of one identity over it with ResourceExhausted, counted in
// tether_discovery_xds_streams_over_limit_total; others are served.
func TestStreamsPerIdentityFlag(t *testing.T) {
	ca := startCA(t)
	mesh := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, mesh, meshYAML("127.0.0.2", true))
	cfg := baseConfig(t, ca, mesh)
	cfg.MaxStreamsPerIdentity = 1
	s := start(t, cfg)
	connect(t, s, ca, webID).subscribe()
	over := connect(t, s, ca, webID)
	// (The stream is refused as it opens: the request may find it closed.)
	_ = over.stream.Send(&discoveryv3.DiscoveryRequest{Node: over.node, TypeUrl: resource.ClusterType})
	err := over.streamErr(5 * time.Second)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "--max-streams-per-identity") {
		t.Fatalf("second stream of web: err = %v, want ResourceExhausted naming the flag", err)
	}
	testutil.Eventually(t, "refusal counted", 5*time.Second, func() bool {
		return s.metric(t, "tether_discovery_xds_streams_over_limit_total") == 1
	})
	connect(t, s, ca, apiID).subscribe()
}

// TestRefusals checks who cannot get configuration.
func TestRefusals(t *testing.T) {
	ca := startCA(t)
	mesh := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, mesh, meshYAML("127.0.0.2", true))
	s := start(t, baseConfig(t, ca, mesh))
	addr := s.Addr("grpc").String()

	t.Run("node.id of another identity", func(t *testing.T) {
		tc := tlsconfig.MTLSClientConfig(ca.svid(t, webID), ca.bundle(), tlsconfig.AuthorizeID(discoveryID))
		c := dialADS(t, addr, tc, apiID.String())
		c.send(resource.ClusterType, nil, nil)
		err := c.streamErr(5 * time.Second)
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), apiID.String()) {
			t.Fatalf("err = %v, want PermissionDenied naming the node.id", err)
		}
		testutil.Eventually(t, "refusal counted", 5*time.Second, func() bool {
			return s.metric(t, "tether_discovery_xds_refused_total") == 1
		})
	})

	// refused checks that an ADS client with tc gets no configuration, and
	// returns the TLS error a raw connection with tc ends with (with TLS 1.3
	// the client learns of the refusal at its first read).
	refused := func(t *testing.T, tc *tls.Config) error {
		t.Helper()
		c := dialADS(t, addr, tc, webID.String())
		if c.stream != nil {
			c.stream.Send(&discoveryv3.DiscoveryRequest{Node: c.node, TypeUrl: resource.ClusterType}) // may fail; Recv reports why
		}
		if err := c.streamErr(10 * time.Second); status.Code(err) != codes.Unavailable {
			t.Errorf("ADS stream ended with %v, want Unavailable (no connection)", err)
		}
		raw := tc.Clone()
		raw.NextProtos = []string{"h2"}
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, raw)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		return err
	}
	t.Run("no client certificate", func(t *testing.T) {
		err := refused(t, tlsconfig.TLSClientConfig(ca.bundle(), tlsconfig.AuthorizeID(discoveryID)))
		if err == nil || !strings.Contains(err.Error(), "certificate required") {
			t.Fatalf("TLS error = %v, want the server's alert certificate required", err)
		}
	})
	t.Run("SVID from another CA", func(t *testing.T) {
		other := testutil.NewCA(t, identity.RealClock, nil)
		err := refused(t, tlsconfig.MTLSClientConfig(signSVID(t, other, webID), ca.bundle(), tlsconfig.AuthorizeID(discoveryID)))
		if err == nil || !strings.Contains(err.Error(), "bad certificate") {
			t.Fatalf("TLS error = %v, want the server's alert bad certificate", err)
		}
	})
	testutil.Eventually(t, "no stream left open", 5*time.Second, func() bool {
		return s.metric(t, "tether_discovery_xds_streams") == 0
	})
	if got := s.metric(t, `tether_discovery_xds_pushes_total{type="envoy.config.cluster.v3.Cluster"}`); got > 0 {
		t.Errorf("refused clients got %v cluster pushes", got)
	}
}

// serverLeaf handshakes with discovery's gRPC port and returns the
// certificate it presents.
func serverLeaf(t *testing.T, s *Server, ca *testCA) *x509svid.SVID {
	t.Helper()
	tc := tlsconfig.MTLSClientConfig(ca.svid(t, webID), ca.bundle(), tlsconfig.AuthorizeID(discoveryID))
	tc.NextProtos = []string{"h2"}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", s.Addr("grpc").String(), tc)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st := conn.ConnectionState()
	id, err := x509svid.IDFromCert(st.PeerCertificates[0])
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: st.PeerCertificates}
}

// TestRenewedSVIDServesNewHandshakes checks that discovery presents its
// renewed SVID on new connections without a restart.
func TestRenewedSVIDServesNewHandshakes(t *testing.T) {
	ca := startCA(t)
	mesh := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, mesh, meshYAML("127.0.0.2", true))
	s := start(t, baseConfig(t, ca, mesh))

	before := serverLeaf(t, s, ca)
	if before.ID != discoveryID {
		t.Fatalf("discovery presents %s, want %s", before.ID, discoveryID)
	}
	changed := s.Agent().Changed()
	s.Agent().RenewNow()
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not renew within 10s")
	}
	after := serverLeaf(t, s, ca)
	cur, err := s.Agent().GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if after.Certificates[0].SerialNumber.Cmp(before.Certificates[0].SerialNumber) == 0 {
		t.Fatal("discovery still presents the SVID it had before renewal")
	}
	if after.Certificates[0].SerialNumber.Cmp(cur.Certificates[0].SerialNumber) != 0 {
		t.Errorf("discovery presents serial %x, its agent holds %x", after.Certificates[0].SerialNumber, cur.Certificates[0].SerialNumber)
	}
	// ADS works over a connection made after the renewal.
	if got := connect(t, s, ca, webID).subscribe().clusters(t); !slices.Equal(got, []string{"default/api"}) {
		t.Errorf("after renewal web's clusters = %v", got)
	}
}

// TestNotReadyWithoutIdentity: with tether-ca unreachable discovery has
// no SVID, says so on /readyz and serves no xDS.
func TestNotReadyWithoutIdentity(t *testing.T) {
	ca := startCA(t)
	mesh := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, mesh, meshYAML("127.0.0.2", true))
	cfg := baseConfig(t, ca, mesh)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.CAAddr = l.Addr().String() // nothing answers there
	l.Close()
	s := startUnready(t, cfg)

	testutil.Eventually(t, "mesh file loaded", 5*time.Second, func() bool {
		return s.metric(t, "tether_discovery_snapshot_version") == 1
	})
	code, body := s.get(t, "/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "no SVID") {
		t.Errorf("/readyz = %d %q, want 503 saying there is no SVID", code, body)
	}
	if code, _ := s.get(t, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d, want 200 (the process is alive)", code)
	}
	if got := s.metric(t, "tether_discovery_svid_expiry_timestamp_seconds"); got != 0 {
		t.Errorf("svid expiry = %v, want 0", got)
	}
	// The xDS port accepts TCP (it is bound) but does not handshake.
	conn, err := net.DialTimeout("tcp", s.Addr("grpc").String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tc := tls.Client(conn, tlsconfig.TLSClientConfig(ca.bundle(), tlsconfig.AuthorizeID(discoveryID)))
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err == nil {
		t.Error("TLS handshake with discovery succeeded without an SVID")
	}
}

func TestListenerInUse(t *testing.T) {
	ca := startCA(t)
	mesh := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, mesh, meshYAML("127.0.0.2", true))
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, flag := range []string{"--listen", "--admin-listen"} {
		t.Run(flag, func(t *testing.T) {
			cfg := baseConfig(t, ca, mesh)
			if flag == "--listen" {
				cfg.ListenAddr = busy.Addr().String()
			} else {
				cfg.AdminAddr = busy.Addr().String()
			}
			s, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := s.Run(ctx); err == nil || !strings.Contains(err.Error(), flag) || !strings.Contains(err.Error(), "address already in use") {
				t.Fatalf("Run = %v, want an error naming %s and the busy address", err, flag)
			}
		})
	}
}
