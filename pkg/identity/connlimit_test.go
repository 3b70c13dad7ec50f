package identity_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"google.golang.org/grpc/credentials"

	tu "github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// serveGated is serve with a ConnGate in front.
func serveGated(t *testing.T, ca *identity.CA, lim identity.ConnLimits) (string, *identity.ConnGate, *prometheus.Registry) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	gate := identity.NewConnGate(lim, reg, nil)
	s := identity.NewServer(ca, map[string]identity.Attestor{identity.KindJoinToken: ca.JoinTokens()}, nil)
	g := s.GRPCServer(gate.ServerOptions(credentials.NewTLS(s.TLSConfig()))...)
	go g.Serve(gate.Listener(l))
	t.Cleanup(g.Stop)
	return l.Addr().String(), gate, reg
}

// rawConns opens n connections that send nothing (one the CA refuses
// may already fail to connect).
func rawConns(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	var cs []net.Conn
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			continue
		}
		t.Cleanup(func() { c.Close() })
		cs = append(cs, c)
	}
	return cs
}

// Connections authenticated by an SVID are never evicted by a flood, and
// an unauthenticated one with an RPC in progress (a bundle watcher) is not
// closed as idle; when every slot holds an SVID, new connections are
// refused.
func TestConnGateStates(t *testing.T) {
	ctx := context.Background()
	ca := realCA(t)
	addr, gate, reg := serveGated(t, ca, identity.ConnLimits{MaxConns: 3, IdleTimeout: 300 * time.Millisecond})
	web := tu.ID("/ns/default/sa/web")

	svid, _, err := dial(t, addr, ca, nil).FetchSVID(ctx, joinToken(t, ca, web))
	if err != nil {
		t.Fatal(err)
	}
	// The bootstrap connection, unauthenticated and now idle, is closed.
	tu.Eventually(t, "idle bootstrap connection closed", 2*time.Second, func() bool {
		return gate.Count()["unauthenticated"] == 0
	})
	renewer := dial(t, addr, ca, svid)
	if _, _, err := renewer.FetchSVID(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if n := gate.Count()["authenticated"]; n != 1 {
		t.Fatalf("authenticated connections = %d, want 1", n)
	}

	watching := make(chan struct{}, 8)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watchErr := make(chan error, 1)
	go func() {
		watchErr <- dial(t, addr, ca, nil).WatchBundle(wctx, func(*spiffebundle.Bundle) { watching <- struct{}{} })
	}()
	<-watching
	time.Sleep(time.Second) // > IdleTimeout: an RPC is in progress, so it stays
	select {
	case err := <-watchErr:
		t.Fatalf("unauthenticated bundle watcher ended while streaming: %v", err)
	default:
	}

	// A flood: the unauthenticated watcher and the silent ones are
	// evicted, the SVID's connection is not.
	rawConns(t, addr, 10)
	tu.Eventually(t, "flood held at the cap", 2*time.Second, func() bool {
		c := gate.Count()
		return c["handshake"]+c["unauthenticated"]+c["authenticated"] <= 3
	})
	if n := gate.Count()["authenticated"]; n != 1 {
		t.Fatalf("authenticated connections after the flood = %d, want 1", n)
	}
	if _, _, err := renewer.FetchSVID(ctx, nil); err != nil {
		t.Fatalf("renewal over the connection that survived the flood: %v", err)
	}
	// The flood's connections are accepted (and evict) one by one: on a
	// loaded machine some are still in the listen backlog when the cap
	// first holds.
	tu.Eventually(t, "at least 8 evictions", 5*time.Second, func() bool {
		return refused(t, reg, "evicted") >= 8
	})

	// Every slot authenticated: new connections are refused at accept.
	for i := 0; gate.Count()["authenticated"] < 3 && i < 5; i++ {
		c := dial(t, addr, ca, svid)
		if _, _, err := c.FetchSVID(ctx, nil); err != nil {
			t.Fatal(err)
		}
	}
	before := refused(t, reg, "full")
	rawConns(t, addr, 2)
	tu.Eventually(t, "refused as full", 2*time.Second, func() bool {
		return refused(t, reg, "full") >= before+2
	})
	if n := gate.Count()["authenticated"]; n != 3 {
		t.Fatalf("authenticated connections = %d, want 3", n)
	}
}

// refused reads tether_ca_connections_refused_total{reason} from reg.
func refused(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "tether_ca_connections_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no tether_ca_connections_refused_total{reason=%q}", reason)
	return 0
}
