package mesh

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// auditMesh is a mesh.yaml whose mesh default is allow-mesh, with service
// web (ClusterIP 10.96.0.50, port 80 to webApp, served by the sidecar
// listening on webIn) and one AccessPolicy naming only api, in mode.
func auditMesh(mode, webApp, webIn string) string {
	_, tp, _ := net.SplitHostPort(webApp)
	host, ep, _ := net.SplitHostPort(webIn)
	return fmt.Sprintf(`defaultPolicy: allow-mesh
services:
  - name: web
    clusterIPs: [10.96.0.50]
    ports: [{name: tcp, port: 80, targetPort: %s}]
    endpoints: [{address: %s, port: %s, serviceAccount: web}]
policies:
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: web-from-api, namespace: default}
    spec:
      destination: {service: web}
      sources: [{serviceAccount: {name: api}}]
      mode: %s
`, tp, host, ep, mode)
}

// upstreamDNS answers every A question with addr, as a cluster's DNS
// answers a Service name with its ClusterIP.
func upstreamDNS(t *testing.T, addr string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &mdns.Server{PacketConn: pc, Handler: mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 && r.Question[0].Qtype == mdns.TypeA {
			rr, _ := mdns.NewRR(r.Question[0].Name + " 5 IN A " + addr)
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

func dnsQuery(server, name string) (*mdns.Msg, error) {
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), mdns.TypeA)
	r, _, err := (&mdns.Client{Timeout: 3 * time.Second}).Exchange(m, server)
	return r, err
}

// accessEntry is one line of a sidecar's access log.
type accessEntry struct {
	Direction     string `json:"direction"`
	SourceID      string `json:"source_id"`
	DestinationID string `json:"destination_id"`
	Source        string `json:"source"`
	Destination   string `json:"destination"`
	Decision      string `json:"decision"`
	Reason        string `json:"reason"`
	Rule          string `json:"rule"`
}

// accessLog reads the entries of path, in order.
func accessLog(t *testing.T, path string) []accessEntry {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []accessEntry
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if line == "" {
			continue
		}
		var e accessEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("%s: %q: %v", path, line, err)
		}
		out = append(out, e)
	}
	return out
}

// findEntry returns the last entry of the access log at path that ok
// accepts, or an error naming what.
func findEntry(t *testing.T, path, what string, ok func(accessEntry) bool) (accessEntry, error) {
	es := accessLog(t, path)
	for i := len(es) - 1; i >= 0; i-- {
		if ok(es[i]) {
			return es[i], nil
		}
	}
	return accessEntry{}, fmt.Errorf("no %s in %s", what, path)
}

// Issue 15, audit mode on real processes: web's AccessPolicy names only
// api. In Audit mode a caller it does not name (intruder) gets through,
// and both ends log "audit-deny" with the would-be rule and count it;
// web's name is answered. Switched to Enforce by editing mesh.yaml (no
// restart), the first new call is refused at the caller's sidecar, and a
// call that bypasses the caller's check (dialing web's sidecar directly
// with intruder's SVID) at web's; the open audited connection is closed
// like any revoked one; the name is NXDOMAIN. Switched back, calls pass
// again.
func TestAuditModeSwitch(t *testing.T) {
	needMesh(t)
	t.Parallel()
	ca := startCA(t)
	app := startApp(t, "web")
	webIn := loopback(t)
	d := startDiscovery(t, ca, auditMesh("Audit", app.addr, webIn))
	webID := workloadID("default", "web")
	web := startSidecar(t, ca, d, sidecarSpec{sa: "web", inbound: webIn, app: app.addr})
	api := startSidecar(t, ca, d, sidecarSpec{sa: "api", outbound: []string{"default/web:80"}})
	dnsAddr := loopback(t)
	intruder := startSidecar(t, ca, d, sidecarSpec{sa: "intruder",
		outbound: []string{"default/web:80", webIn + "@" + webID.String()},
		extra:    []string{"--dns-listen", dnsAddr, "--dns-upstream", upstreamDNS(t, "10.96.0.50")}})
	viaService, direct := intruder.outbound[0], intruder.outbound[1]
	intruderID := workloadID("default", "intruder").String()
	const wouldBe = "no AccessPolicy allows spiffe://cluster.local/ns/default/sa/intruder to default/web:80 (in audit mode: AccessPolicy default/web-from-api)"

	// Audit: everyone passes; intruder is audit-denied at both ends.
	eventually(t, "intruder's call to pass while auditing", 20*time.Second, func() error { return call(viaService, "web") })
	if err := call(api.outbound[0], "web"); err != nil {
		t.Fatalf("api, named by the policy: %v", err)
	}
	if err := call(direct, "web"); err != nil {
		t.Fatalf("intruder dialing web's sidecar directly while auditing: %v", err)
	}
	eventually(t, "audit-deny entries at both ends", 10*time.Second, func() error {
		out, err := findEntry(t, intruder.accessLog, "outbound audit-deny", func(e accessEntry) bool {
			return e.Direction == "outbound" && e.Decision == "audit-deny"
		})
		if err != nil {
			return err
		}
		if out.Rule != wouldBe || out.SourceID != intruderID || out.DestinationID != webID.String() || out.Source == "" || out.Destination != webIn {
			t.Fatalf("intruder's entry %+v: want the would-be rule %q, both identities and addresses", out, wouldBe)
		}
		in, err := findEntry(t, web.accessLog, "inbound audit-deny", func(e accessEntry) bool {
			return e.Direction == "inbound" && e.Decision == "audit-deny"
		})
		if err != nil {
			return err
		}
		if in.SourceID != intruderID || in.DestinationID != webID.String() || in.Destination != app.addr ||
			!strings.Contains(in.Rule, "no AccessPolicy allows the caller to default/web:80 (in audit mode: AccessPolicy default/web-from-api)") {
			t.Fatalf("web's entry %+v: want the would-be rule, both identities and addresses", in)
		}
		for _, path := range []string{intruder.accessLog, web.accessLog} {
			data, _ := os.ReadFile(path)
			t.Logf("access log lines with audit-deny:\n%s", grepLines(string(data), `"audit-deny"`))
		}
		return nil
	})
	if _, err := findEntry(t, web.accessLog, "api audit-deny", func(e accessEntry) bool {
		return e.Decision == "audit-deny" && e.SourceID == workloadID("default", "api").String()
	}); err == nil {
		t.Error("api, which the policy names, was audit-denied")
	}
	if n := metric(intruder.metrics(t), "tether_sidecar_authz_audit_denials_total", `direction="outbound"`, `destination="default/web:80"`); n != 1 {
		t.Errorf("intruder's outbound audit denials = %v, want 1 (the call through the service; the direct one is not checked at the caller)", n)
	}
	if n := metric(web.metrics(t), "tether_sidecar_authz_audit_denials_total", `direction="inbound"`); n != 2 {
		t.Errorf("web's inbound audit denials = %v, want 2 (intruder's call and its direct one)", n)
	}
	t.Logf("intruder's metric: %s", grepLines(intruder.metrics(t), "tether_sidecar_authz_audit_denials_total"))
	t.Logf("web's metric: %s", grepLines(web.metrics(t), "tether_sidecar_authz_audit_denials_total"))
	if r, err := dnsQuery(dnsAddr, "web.default.svc.cluster.local"); err != nil || r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("web's name while auditing: %v %v; want it answered", r, err)
	}

	// A connection opened while auditing stays open until enforcement.
	open, err := net.DialTimeout("tcp", viaService, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	openR := bufio.NewReader(open)
	if err := exchange(open, openR, "web"); err != nil {
		t.Fatalf("long-lived call while auditing: %v", err)
	}

	// Enforce, by editing the policy: no restart.
	lds := metric(web.metrics(t), "tether_sidecar_xds_updates_total", `type="lds"`, `result="ack"`)
	d.write(t, auditMesh("Enforce", app.addr, webIn))
	eventually(t, "web's name to be NXDOMAIN at intruder once enforced", 10*time.Second, func() error {
		r, err := dnsQuery(dnsAddr, "web.default.svc.cluster.local")
		if err != nil {
			return err
		}
		if r.Rcode != mdns.RcodeNameError {
			return fmt.Errorf("rcode %s %v", mdns.RcodeToString[r.Rcode], r.Answer)
		}
		return nil
	})
	// Intruder's sidecar has the new view: its very next call is refused.
	if err := refused(viaService); err != nil {
		t.Fatalf("first call through intruder's sidecar once enforced: %v", err)
	}
	// (The service is out of reach on every port: the view no longer
	// names it, as DNS does not.)
	if e, err := findEntry(t, intruder.accessLog, "outbound deny", func(e accessEntry) bool {
		return e.Direction == "outbound" && e.Decision == "deny" && e.Destination == "default/web:80"
	}); err != nil || e.Rule != "unknown service, or policy allows none of its ports" {
		t.Errorf("intruder's refusal: %+v %v", e, err)
	} else {
		t.Logf("caller's refusal once enforced: %+v", e)
	}
	// The audited connection is revoked like any other the policy now denies.
	open.SetDeadline(time.Now().Add(10 * time.Second))
	if err := exchange(open, openR, "web"); err == nil {
		t.Error("the connection opened while auditing still works once enforced")
	}
	// Web's sidecar has taken the new listener: a call that skips the
	// caller's check is refused there.
	eventually(t, "web's sidecar to take the enforced listener", 10*time.Second, func() error {
		if n := metric(web.metrics(t), "tether_sidecar_xds_updates_total", `type="lds"`, `result="ack"`); n <= lds {
			return fmt.Errorf("lds acks %v", n)
		}
		return nil
	})
	time.Sleep(300 * time.Millisecond) // from the ACK to the view in force
	if err := refused(direct); err != nil {
		t.Fatalf("first direct call to web's sidecar once enforced: %v", err)
	}
	if n := metric(web.metrics(t), "tether_sidecar_authz_denials_total", `direction="inbound"`, `source_id="`+intruderID+`"`); n != 1 {
		t.Errorf("web's inbound denials of intruder = %v, want 1", n)
	}
	if err := call(api.outbound[0], "web"); err != nil {
		t.Fatalf("api once enforced: %v", err)
	}

	// Back to Audit: intruder passes again.
	d.write(t, auditMesh("Audit", app.addr, webIn))
	eventually(t, "intruder's call to pass again", 10*time.Second, func() error { return call(viaService, "web") })
	eventually(t, "the direct call to pass again", 10*time.Second, func() error { return call(direct, "web") })
	if r, err := dnsQuery(dnsAddr, "web.default.svc.cluster.local"); err != nil || r.Rcode != mdns.RcodeSuccess {
		t.Errorf("web's name auditing again: %v %v", r, err)
	}
}
