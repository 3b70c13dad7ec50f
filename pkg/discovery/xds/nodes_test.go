package xds_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/discovery/xds"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
)

func TestParseNodeMetadata(t *testing.T) {
	str := structpb.NewStringValue
	md := func(kv ...any) *structpb.Struct {
		s := &structpb.Struct{Fields: map[string]*structpb.Value{}}
		for i := 0; i < len(kv); i += 2 {
			s.Fields[kv[i].(string)] = kv[i+1].(*structpb.Value)
		}
		return s
	}
	manyFields := md()
	for i := range wire.MaxMetadataFields + 1 {
		manyFields.Fields[string(rune('a'+i))] = str("x")
	}
	expiry := time.Date(2026, 7, 1, 10, 30, 0, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		in      *structpb.Struct
		want    wire.NodeMetadata
		wantErr []string // substrings; nil: no error
	}{
		{name: "nil", in: nil},
		{name: "empty", in: md()},
		{
			name: "all valid",
			in:   md("admin_addr", str("10.1.2.3:15020"), "svid_expiry", str("2026-07-01T12:30:00+02:00"), "version", str("v1.2.3+dirty")),
			want: wire.NodeMetadata{AdminAddr: "10.1.2.3:15020", SVIDExpiry: expiry, Version: "v1.2.3+dirty"},
		},
		{name: "no host", in: md("admin_addr", str(":15020")), want: wire.NodeMetadata{AdminAddr: ":15020"}},
		{name: "ipv6", in: md("admin_addr", str("[fd00::2]:15020")), want: wire.NodeMetadata{AdminAddr: "[fd00::2]:15020"}},
		{name: "unknown keys are ignored", in: md("zone", str("eu"), "nested", structpb.NewStructValue(md("a", str("b")))), want: wire.NodeMetadata{}},
		{name: "a name, not an address", in: md("admin_addr", str("evil.example.com:80")), wantErr: []string{"admin_addr", "not a name"}},
		{name: "no port", in: md("admin_addr", str("10.1.2.3")), wantErr: []string{"host:port"}},
		{name: "port 0", in: md("admin_addr", str("10.1.2.3:0")), wantErr: []string{"port from 1 to 65535"}},
		{name: "port too big", in: md("admin_addr", str("10.1.2.3:65536")), wantErr: []string{"port from 1 to 65535"}},
		{name: "named port", in: md("admin_addr", str("10.1.2.3:http")), wantErr: []string{"port from 1 to 65535"}},
		{name: "zone", in: md("admin_addr", str("[fe80::1%eth0]:15020")), wantErr: []string{"IP address"}},
		{name: "number for a string", in: md("admin_addr", structpb.NewNumberValue(15020)), wantErr: []string{"admin_addr: want a string"}},
		{name: "list for a string", in: md("version", structpb.NewListValue(&structpb.ListValue{})), wantErr: []string{"version: want a string"}},
		{name: "bad time", in: md("svid_expiry", str("tomorrow")), wantErr: []string{"svid_expiry", "RFC 3339"}},
		{name: "unix time", in: md("svid_expiry", structpb.NewNumberValue(1.7e9)), wantErr: []string{"svid_expiry: want a string"}},
		{name: "control characters", in: md("version", str("v1\n\x1b[31mred")), wantErr: []string{"version: not printable"}},
		{name: "non-ASCII", in: md("version", str("vé")), wantErr: []string{"version: not printable"}},
		{name: "long version", in: md("version", str(strings.Repeat("v", 65))), wantErr: []string{"version: 65 bytes"}},
		{
			name:    "valid fields stay when others are bad",
			in:      md("admin_addr", str("10.1.2.3:15020"), "svid_expiry", str("soon"), "version", structpb.NewBoolValue(true)),
			want:    wire.NodeMetadata{AdminAddr: "10.1.2.3:15020"},
			wantErr: []string{"svid_expiry", "version: want a string"},
		},
		{name: "too many fields", in: manyFields, wantErr: []string{"17 fields"}},
		{
			name:    "too large: refused whole",
			in:      md("version", str("v1"), "padding", str(strings.Repeat("x", wire.MaxMetadataBytes))),
			wantErr: []string{"bytes, more than 4096"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := wire.ParseNodeMetadata(tc.in)
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			if tc.wantErr == nil {
				if err != nil {
					t.Errorf("error %v", err)
				}
				return
			}
			if !errors.Is(err, wire.ErrBadMetadata) {
				t.Fatalf("error %v, want ErrBadMetadata", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error has a newline: %q", err)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// FuzzParseNodeMetadata: whatever a sidecar sends, parsing does not panic
// and what it keeps is within the limits.
func FuzzParseNodeMetadata(f *testing.F) {
	for _, s := range []*structpb.Struct{
		wire.NodeMetadata{AdminAddr: "10.0.0.1:15020", SVIDExpiry: time.Now(), Version: "v1"}.Struct(),
		{Fields: map[string]*structpb.Value{"admin_addr": structpb.NewNumberValue(1)}},
	} {
		b, _ := proto.Marshal(s)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var s structpb.Struct
		if proto.Unmarshal(b, &s) != nil {
			return
		}
		m, err := wire.ParseNodeMetadata(&s)
		if err != nil && !errors.Is(err, wire.ErrBadMetadata) {
			t.Fatalf("error %v does not wrap ErrBadMetadata", err)
		}
		if len(m.AdminAddr) > 64 || len(m.Version) > 64 {
			t.Fatalf("kept oversized metadata %+v", m)
		}
		if m.AdminAddr != "" {
			if _, _, err := net.SplitHostPort(m.AdminAddr); err != nil {
				t.Fatalf("kept admin_addr %q: %v", m.AdminAddr, err)
			}
		}
	})
}

// nodesServer is the xDS server of a mesh, kept for Nodes.
func nodesServer(t *testing.T, m *mesh) *xds.Server {
	t.Helper()
	serverID := testutil.ID("/discovery")
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(
		tlsconfig.MTLSServerConfig(m.svid(serverID), m.ca.Bundle().Bundle, tlsconfig.AuthorizeMemberOf(testutil.TrustDomain)))))
	srv := &xds.Server{Registry: m.reg, Logger: slog.New(slog.DiscardHandler)}
	srv.Register(g)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m.addr = l.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { g.Serve(l) })
	wg.Go(func() { srv.Run(ctx) })
	t.Cleanup(func() { cancel(); g.Stop(); wg.Wait() })
	return srv
}

func newNodesMesh(t *testing.T, clock *testutil.FakeClock) (*mesh, *xds.Server) {
	t.Helper()
	reg, err := discovery.NewRegistry(testutil.TrustDomain, policy.Deny)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Update(meshState("10.0.0.4")); err != nil {
		t.Fatal(err)
	}
	m := &mesh{t: t, ca: testutil.NewCA(t, clock, nil), reg: reg}
	return m, nodesServer(t, m)
}

// swapSVID is an SVID source the test renews.
type swapSVID struct {
	mu   sync.Mutex
	svid *x509svid.SVID
}

func (s *swapSVID) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.svid, nil
}

func waitNodes(t *testing.T, srv *xds.Server, what string, ok func([]xds.NodeInfo) bool) []xds.NodeInfo {
	t.Helper()
	var got []xds.NodeInfo
	testutil.Eventually(t, what, 10*time.Second, func() bool { got = srv.Nodes(); return ok(got) })
	return got
}

// TestNodesReportSidecarMetadata: a real client's metadata reaches Nodes,
// its admin address made absolute with the address it connected from,
// and a renewed SVID's expiry follows without a new stream.
func TestNodesReportSidecarMetadata(t *testing.T) {
	clock := testutil.NewFakeClock()
	clock.Set(time.Now())
	m, srv := newNodesMesh(t, clock)
	src := &swapSVID{svid: m.svid(webID)}
	reg := prometheus.NewRegistry()
	updates := func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		n := 0.0
		for _, mf := range mfs {
			if mf.GetName() == "tether_sidecar_xds_updates_total" {
				for _, m := range mf.GetMetric() {
					n += m.GetCounter().GetValue()
				}
			}
		}
		return n
	}
	first := src.svid.Certificates[0].NotAfter
	c, err := xdsclient.New(xdsclient.Config{
		Addr: m.addr, ID: webID, SVIDs: src, Bundles: m.ca.Bundle().Bundle, Logger: slog.New(slog.DiscardHandler),
		AdminAddr: "0.0.0.0:15020", Version: "v0.9.0-test", MetadataRefresh: 20 * time.Millisecond, Metrics: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	stop := sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(stop)
	<-c.Ready()

	nodes := waitNodes(t, srv, "web to be listed", func(n []xds.NodeInfo) bool { return len(n) == 1 })
	n := nodes[0]
	if n.ID != webID.String() || !strings.HasPrefix(n.Peer, "127.0.0.1:") || time.Since(n.ConnectedSince) > time.Minute || n.MetadataError != "" {
		t.Errorf("node %+v", n)
	}
	want := wire.NodeMetadata{AdminAddr: "127.0.0.1:15020", SVIDExpiry: first.UTC().Truncate(time.Second), Version: "v0.9.0-test"}
	if n.Metadata != want {
		t.Errorf("metadata %+v, want %+v", n.Metadata, want)
	}
	if !n.ConnectionSVIDExpiry.Equal(first) {
		t.Errorf("connection SVID expiry %v, want %v", n.ConnectionSVIDExpiry, first)
	}

	// Renewal: a later SVID; the stream stays, the metadata follows.
	before := updates()
	clock.Add(20 * time.Minute)
	renewed := m.svid(webID)
	src.mu.Lock()
	src.svid = renewed
	src.mu.Unlock()
	nodes = waitNodes(t, srv, "the renewed expiry", func(n []xds.NodeInfo) bool {
		return len(n) == 1 && n[0].Metadata.SVIDExpiry.Equal(renewed.Certificates[0].NotAfter.Truncate(time.Second))
	})
	if !nodes[0].ConnectedSince.Equal(n.ConnectedSince) || !nodes[0].ConnectionSVIDExpiry.Equal(first) {
		t.Errorf("the renewal opened a new stream: %+v", nodes[0])
	}
	// The re-sent ACK that carried the metadata asked for nothing new.
	time.Sleep(200 * time.Millisecond)
	if after := updates(); after != before {
		t.Errorf("discovery pushed %v updates after a metadata refresh, want none", after-before)
	}

	stop()
	waitNodes(t, srv, "web to be gone after it disconnects", func(n []xds.NodeInfo) bool { return len(n) == 0 })
}

// TestNodesRefuseBadMetadata: metadata a sidecar made up is refused field
// by field (or whole, if too large), said so in Nodes, and the stream is
// served all the same.
func TestNodesRefuseBadMetadata(t *testing.T) {
	clock := testutil.NewFakeClock()
	clock.Set(time.Now())
	m, srv := newNodesMesh(t, clock)
	for _, tc := range []struct {
		name    string
		md      *structpb.Struct
		want    wire.NodeMetadata
		wantErr string
	}{
		{
			name: "another host's address",
			md:   wire.NodeMetadata{AdminAddr: "10.9.9.9:15020", Version: "v1"}.Struct(),
			want: wire.NodeMetadata{Version: "v1"}, wantErr: "host 10.9.9.9 is not the address the sidecar connected from (127.0.0.1)",
		},
		{
			name: "a name and a wrong type",
			md: &structpb.Struct{Fields: map[string]*structpb.Value{
				"admin_addr": structpb.NewStringValue("metadata.google.internal:80"), "svid_expiry": structpb.NewNumberValue(42), "version": structpb.NewStringValue("v2"),
			}},
			want: wire.NodeMetadata{Version: "v2"}, wantErr: "not a name",
		},
		{
			name:    "too large",
			md:      &structpb.Struct{Fields: map[string]*structpb.Value{"version": structpb.NewStringValue("v3"), "junk": structpb.NewStringValue(strings.Repeat("x", 100000))}},
			wantErr: "more than 4096",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := m.connect(webID, webID.String())
			c.node.Metadata = tc.md
			c.send(resource.ClusterType, nil, nil)
			if c.recv(5*time.Second) == nil {
				t.Fatal("the stream with bad metadata was not served")
			}
			nodes := waitNodes(t, srv, "the node", func(n []xds.NodeInfo) bool { return len(n) > 0 })
			var n *xds.NodeInfo
			for i := range nodes {
				if nodes[i].MetadataError != "" && strings.Contains(nodes[i].MetadataError, tc.wantErr) {
					n = &nodes[i]
				}
			}
			if n == nil {
				t.Fatalf("no node with error %q: %+v", tc.wantErr, nodes)
			}
			if n.Metadata != tc.want {
				t.Errorf("kept %+v, want %+v", n.Metadata, tc.want)
			}
			if len(n.MetadataError) > 300 {
				t.Errorf("error not bounded: %d bytes", len(n.MetadataError))
			}
		})
	}
}
