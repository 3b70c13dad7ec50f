package proxy_test

import (
	"net"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/proxy"
)

// TestAuditDenyBothEnds: a call audit-denied at the caller (the
// Destination's AuditRule) and at the destination (AuthorizeAudit's rule)
// passes; each end logs decision audit-deny with the would-be rule and
// counts it, and a plain allowed call is neither logged as one nor
// counted. AuthorizeAudit's denial still refuses.
func TestAuditDenyBothEnds(t *testing.T) {
	m := newMesh(t)
	app := echo(t, "")
	const outRule = "no AccessPolicy allows spiffe://cluster.local/ns/default/sa/client to default/server:80 (in audit mode: AccessPolicy default/server)"
	const inRule = "no AccessPolicy allows the caller to default/server:80 (in audit mode: AccessPolicy default/server)"
	audited := map[spiffeid.ID]bool{clientID: true}
	in := inbound(t, m.identity(serverID, false), app, proxy.Config{
		AuthorizeAudit: func(src spiffeid.ID, port uint16) (string, error) {
			if src == serverID {
				return "", &proxy.DeniedError{Rule: "not itself"}
			}
			if audited[src] {
				return inRule, nil
			}
			return "", nil
		},
	})
	dest := proxy.Destination{Name: "default/server:80", Addr: in.addr, IDs: []spiffeid.ID{serverID}, Rule: "mesh default allow-mesh", AuditRule: outRule}
	out := outbound(t, m.identity(clientID, false), dest, proxy.Config{})
	c, err := net.Dial("tcp", out.addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(c, "audited"); err != nil {
		t.Fatalf("an audit-denied call did not pass: %v", err)
	}
	c.Close()
	eventually(t, "the audit denials to be counted at both ends", func() bool {
		return counter(t, out.reg, "tether_sidecar_authz_audit_denials_total", "direction", "outbound", "destination", "default/server:80", "rule", outRule) == 1 &&
			counter(t, in.reg, "tether_sidecar_authz_audit_denials_total", "direction", "inbound", "destination", app, "rule", inRule) == 1
	})
	for s, want := range map[*side][]string{
		out: {`"decision":"audit-deny"`, `"rule":"` + outRule + `"`, `"source_id":"` + clientID.String() + `"`, `"destination_id":"` + serverID.String() + `"`, "allowed to default/server:80 by mesh default allow-mesh"},
		in:  {`"decision":"audit-deny"`, `"rule":"` + inRule + `"`, `"source_id":"` + clientID.String() + `"`, `"destination_id":"` + serverID.String() + `"`},
	} {
		eventually(t, "the audit-deny entry", func() bool { return strings.Contains(s.accessLog(), `"decision":"audit-deny"`) })
		for _, w := range want {
			if !strings.Contains(s.accessLog(), w) {
				t.Errorf("access log lacks %s:\n%s", w, s.accessLog())
			}
		}
	}
	if counter(t, in.reg, "tether_sidecar_authz_denials_total") != 0 {
		t.Error("an audit denial was counted as a denial")
	}

	// Without the audit rules: a plain allow, not counted.
	delete(audited, clientID)
	plain := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "default/server:80", Addr: in.addr, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	c, err = net.Dial("tcp", plain.addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(c, "plain"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	eventually(t, "the plain call to be logged", func() bool { return strings.Count(in.accessLog(), `"decision":"allow"`) == 1 })
	if n := counter(t, in.reg, "tether_sidecar_authz_audit_denials_total"); n != 1 {
		t.Errorf("audit denials = %v after a plain call, want still 1", n)
	}
	if strings.Contains(plain.accessLog(), "audit-deny") {
		t.Errorf("a plain call logged as audit-deny:\n%s", plain.accessLog())
	}

	// AuthorizeAudit's denial refuses, as Authorize's does.
	self := outbound(t, m.identity(serverID, false), proxy.Destination{Name: "default/server:80", Addr: in.addr, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	if c, err := net.Dial("tcp", self.addr); err == nil {
		if roundTrip(c, "x") == nil {
			t.Error("AuthorizeAudit's denial let the call through")
		}
		c.Close()
	}
	eventually(t, "the denial to be counted", func() bool {
		return counter(t, in.reg, "tether_sidecar_authz_denials_total", "reason", "not itself") == 1
	})
}
