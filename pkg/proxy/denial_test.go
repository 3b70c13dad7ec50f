package proxy_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/proxy"
)

// TestOutboundPolicyDenial: a Router's denial resets the app's connection
// at once, and the access log and the denial metric name the source, the
// destination and the rule.
func TestOutboundPolicyDenial(t *testing.T) {
	m := newMesh(t)
	rule := "no AccessPolicy allows spiffe://cluster.local/ns/default/sa/client to default/db:5432"
	out := start(t, proxy.Config{Identity: m.identity(clientID, false)}, func(p *proxy.Proxy, ctx context.Context, l net.Listener) error {
		return p.ServeOutbound(ctx, l, func(net.Conn) proxy.Route {
			return proxy.Route{Deny: "denied: " + rule, Target: "default/db:5432", Rule: rule}
		})
	})
	began := time.Now()
	// The reset may come before the dial has looked at the socket.
	c, err := net.Dial("tcp", out.addr)
	if err == nil {
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
	}
	if err == nil || !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("a denied connection: %v, want a reset", err)
	}
	if d := time.Since(began); d > time.Second {
		t.Errorf("the denial took %s", d)
	}
	eventually(t, "the denial to be counted", func() bool {
		return counter(t, out.reg, "tether_sidecar_authz_denials_total", "direction", "outbound", "source_id", clientID.String(),
			"destination", "default/db:5432", "reason", rule) == 1
	})
	log := out.accessLog()
	for _, want := range []string{`"decision":"deny"`, `"destination":"default/db:5432"`, `"rule":"` + rule + `"`, `"source_id":"` + clientID.String() + `"`} {
		if !strings.Contains(log, want) {
			t.Errorf("access log lacks %s:\n%s", want, log)
		}
	}
}

// TestInboundDeniedErrorNamesRule: an Authorizer's DeniedError labels the
// inbound denial metric with its rule, and the caller learns the reason.
func TestInboundDeniedErrorNamesRule(t *testing.T) {
	m := newMesh(t)
	app := echo(t, "")
	rule := "no principal of inbound|default/server admits " + clientID.String()
	in := inbound(t, m.identity(serverID, false), app, proxy.Config{Authorize: func(src spiffeid.ID, port uint16) error {
		return &proxy.DeniedError{Rule: rule}
	}})
	out := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "server", Addr: in.addr, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	if c, err := net.Dial("tcp", out.addr); err == nil { // the reset may beat the dial
		if roundTrip(c, "x") == nil {
			t.Fatal("a denied caller got through")
		}
		c.Close()
	}
	eventually(t, "the inbound denial to be counted", func() bool {
		return counter(t, in.reg, "tether_sidecar_authz_denials_total", "direction", "inbound", "source_id", clientID.String(), "destination", app, "reason", rule) == 1
	})
	eventually(t, "the caller to log the callee's rule", func() bool {
		return strings.Contains(out.accessLog(), "refused by "+serverID.String()+": denied by "+rule)
	})
	if !strings.Contains(in.accessLog(), `"rule":"`+rule+`"`) {
		t.Errorf("inbound access log lacks the rule:\n%s", in.accessLog())
	}
}

func TestDeniedError(t *testing.T) {
	err := error(&proxy.DeniedError{Rule: "allow-list", Detail: "x is not on the allow-list"})
	if !errors.Is(err, proxy.ErrDenied) {
		t.Error("DeniedError does not wrap ErrDenied")
	}
	if got := err.Error(); got != "denied by allow-list: x is not on the allow-list" {
		t.Errorf("Error() = %q", got)
	}
	if got := (&proxy.DeniedError{Rule: "mesh default deny"}).Error(); got != "denied by mesh default deny" {
		t.Errorf("Error() = %q", got)
	}
	l := proxy.AllowList{}
	if err := l.ParseAllow(clientID.String() + "=80"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		src  spiffeid.ID
		port uint16
	}{{evilID, 80}, {clientID, 81}} {
		err := l.Authorizer()(tc.src, tc.port)
		de, ok := errors.AsType[*proxy.DeniedError](err)
		if !ok || de.Rule != "allow-list" || !errors.Is(err, proxy.ErrDenied) {
			t.Errorf("allow-list denial of %s:%d = %#v", tc.src, tc.port, err)
		}
	}
}
