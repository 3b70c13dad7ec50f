package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/tether-mesh/tether/internal/cli"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
)

// whyMeshYAML is the loopback mesh of TestWhyAgreesWithSidecars: api has
// port 8080 (to its app) and admin port 9000 (to a port nothing listens
// on); api-from-web lets web reach api on 8080 only; db-from-api lets
// only api reach db; web-audit, in audit mode, would let only "nobody"
// reach web. Endpoints are the sidecars' inbound listeners, with
// pod names.
func whyMeshYAML(web, api, db *meshApp) string {
	var b strings.Builder
	b.WriteString("services:\n")
	for _, s := range []struct {
		a     *meshApp
		ip    string
		ports string
	}{
		{web, "10.96.0.10", fmt.Sprintf("{name: tcp, port: 80, targetPort: %s}", web.port())},
		{api, "10.96.0.11", fmt.Sprintf("{name: tcp, port: 8080, targetPort: %s}, {name: admin, port: 9000, targetPort: 1}", api.port())},
		{db, "10.96.0.12", fmt.Sprintf("{name: tcp, port: 5432, targetPort: %s}", db.port())},
	} {
		fmt.Fprintf(&b, "  - name: %s\n    clusterIPs: [%s]\n    ports: [%s]\n", s.a.name, s.ip, s.ports)
		if s.a.sidecar != nil {
			fmt.Fprintf(&b, "    endpoints: [{address: 127.0.0.1, port: %s, serviceAccount: %s, pod: %s-0}]\n", s.a.inboundPort(), s.a.name, s.a.name)
		}
	}
	b.WriteString(`policies:
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: api-from-web, namespace: default}
    spec:
      destination: {service: api, ports: [8080]}
      sources: [{serviceAccount: {name: web}}]
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: db-from-api, namespace: default}
    spec:
      destination: {service: db}
      sources: [{serviceAccount: {name: api}}]
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: web-audit, namespace: default}
    spec:
      mode: Audit
      destination: {service: web}
      sources: [{serviceAccount: {name: nobody}}]
`)
	return b.String()
}

// whyAnswer is the part of `tether policy why -o json` this test reads.
type whyAnswer struct {
	Allowed bool `json:"allowed"`
	Calls   []struct {
		Allowed     bool   `json:"allowed"`
		Rule        string `json:"rule"`
		AuditDenied bool   `json:"audit_denied"`
		AuditRule   string `json:"audit_rule"`
		AuditLog    string `json:"audit_log"`
		RefusedBy   *struct {
			Component string   `json:"component"`
			AccessLog string   `json:"access_log"`
			Metric    string   `json:"metric"`
			Otherwise []string `json:"otherwise"`
		} `json:"refused_by"`
	} `json:"calls"`
}

// why runs `tether policy why --mesh file` with args and decodes it.
func why(t *testing.T, file string, args ...string) whyAnswer {
	t.Helper()
	var out, errOut bytes.Buffer
	code := (&cli.App{Stdout: &out, Stderr: &errOut}).Main(context.Background(),
		append([]string{"policy", "why", "--mesh", file, "-o", "json"}, args...))
	var w whyAnswer
	if err := json.Unmarshal(out.Bytes(), &w); err != nil || code != map[bool]int{true: 0, false: 1}[w.Allowed] || len(w.Calls) != 1 {
		t.Fatalf("policy why %s: exit %d, %v, stdout %s, stderr %s", args, code, err, out.String(), errOut.String())
	}
	return w
}

// logLine is one access log line.
type logLine struct {
	Direction, Destination, Decision, Rule, Reason string
	SourceID                                       string `json:"source_id"`
}

// findLog waits for a line of a's access log that matches and returns it.
func findLog(t *testing.T, a *meshApp, what string, match func(l logLine) bool) logLine {
	t.Helper()
	var found logLine
	waitFor(t, what, func() bool {
		f, err := os.Open(a.log)
		if err != nil {
			return false
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var l logLine
			if json.Unmarshal(sc.Bytes(), &l) == nil && match(l) {
				found = l
				return true
			}
		}
		return false
	})
	return found
}

// appSees dials addr as an app would, writes a request and reads: it
// returns the first error of the three calls (and which call it was).
func appSees(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "connect", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return "write", err
	}
	_, err = c.Read(make([]byte, 64))
	return "read", err
}

// wantReset checks what an app sees of a refused call: the sidecar
// accepts the connection, then resets it: the first of the app's calls
// after the RST arrives (usually the read; the write, or the connect
// itself, when the RST comes first) fails with ECONNRESET; never an
// orderly close (EOF) first, nor a byte.
func wantReset(t *testing.T, what, addr string) {
	t.Helper()
	op, err := appSees(addr)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("%s: %s: %v; want ECONNRESET", what, op, err)
	}
}

// TestWhyAgreesWithSidecars runs real sidecars under discovery on
// loopback and checks, for each refusal path, that `tether policy why`
// answered from the same mesh.yaml names the component that refused, and
// the decision and rule its access log records; and what the calling app
// sees on each path (the behaviour docs/sidecar.md documents).
func TestWhyAgreesWithSidecars(t *testing.T) {
	ca := startCA(t)
	web, api, db := webAPIDB(t)
	disc := startDiscovery(t, ca, whyMeshYAML(web, api, db))
	dir := t.TempDir()
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.1\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	upstream := fakeResolver(t, map[string]string{"db.default.svc.cluster.local.": "10.96.0.12"})
	start := func(a *meshApp, outbound ...string) {
		a.log = filepath.Join(dir, a.name+".access.log")
		cfg := Config{
			CAAddr: ca.addr, BundleFile: ca.bundle, JoinToken: ca.token(t, testutil.ID("/ns/default/sa/"+a.name)),
			Inbound: []InboundListener{{Listen: "127.0.0.1:0", App: a.app}}, DiscoveryAddr: disc.addr,
			AccessLog: a.log, AccessLogSample: 1,
		}
		if a == web {
			cfg.DNS = &DNS{Listen: "127.0.0.1:0", ResolvConf: resolv, Upstreams: []string{upstream}}
		}
		for _, spec := range outbound {
			o, err := ParseOutbound(spec)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Outbound = append(cfg.Outbound, o)
		}
		a.sidecar, a.done = startSidecar(t, cfg)
	}
	start(db)
	start(api, "127.0.0.1:0=default/web:80")
	start(web, "127.0.0.1:0=default/api:8080", "127.0.0.1:0=default/api:9000", "127.0.0.1:0=default/db:5432",
		"127.0.0.1:0="+db.sidecar.Addr("inbound/0").String()+"@"+dbID.String())
	toAPI, toAPIAdmin := web.sidecar.Addr("outbound/0").String(), web.sidecar.Addr("outbound/1").String()
	toDB, toDBDirect := web.sidecar.Addr("outbound/2").String(), web.sidecar.Addr("outbound/3").String()
	meshFile := filepath.Join(dir, "mesh.yaml")
	content := whyMeshYAML(web, api, db)
	if err := os.WriteFile(meshFile, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	disc.write(t, content)
	waitView(t, "web to learn api's endpoint", web.sidecar, func(v *xdsclient.View) bool {
		s, ok := v.Service(key("api"))
		return ok && len(s.Endpoints) > 0
	})
	waitView(t, "db to learn its inbound policy", db.sidecar, func(v *xdsclient.View) bool { return !v.Authorize(webID, mustPort(db.port())).Allowed })
	isWeb := func(l logLine) bool { return l.SourceID == webID.String() }
	waitView(t, "api to learn web's endpoint", api.sidecar, func(v *xdsclient.View) bool {
		s, ok := v.Service(key("web"))
		return ok && len(s.Endpoints) > 0
	})

	t.Run("audit-deny", func(t *testing.T) {
		// api → web passes (the mesh default allows it); web-audit, in
		// audit mode, would deny it: both sidecars log audit-deny with the
		// would-be rule why names.
		w := why(t, meshFile, "--from", "default/api", "--to", "default/web:80")
		c := w.Calls[0]
		if !w.Allowed || !c.AuditDenied || c.AuditRule == "" {
			t.Fatalf("why: %+v, want an audit-deny", w)
		}
		if err := call(api.sidecar.Addr("outbound/0").String(), "audited"); err != nil {
			t.Fatalf("api → web, audit-denied, must pass: %v", err)
		}
		l := findLog(t, api, "api's audit-deny", func(l logLine) bool { return l.Direction == "outbound" && l.Decision == "audit-deny" })
		if l.Rule != c.AuditRule || !strings.Contains(c.AuditLog, "rule="+strconv.Quote(l.Rule)) {
			t.Errorf("api's access log: audit-deny by %q; why: %q (%s)", l.Rule, c.AuditRule, c.AuditLog)
		}
		in := findLog(t, web, "web's audit-deny", func(l logLine) bool { return l.Direction == "inbound" && l.Decision == "audit-deny" })
		if !strings.Contains(c.AuditLog, "rule="+strconv.Quote(in.Rule)) {
			t.Errorf("web's access log: audit-deny by %q; why: %s", in.Rule, c.AuditLog)
		}
		if n := gatherCounter(t, api.sidecar.registry, "tether_sidecar_authz_audit_denials_total", map[string]string{"direction": "outbound", "rule": c.AuditRule}); n != 1 {
			t.Errorf("api counted %v audit denials with rule %q", n, c.AuditRule)
		}
	})

	t.Run("allowed", func(t *testing.T) {
		w := why(t, meshFile, "--from", "default/web", "--to", "default/api:8080")
		if err := call(toAPI, "hello"); err != nil || !w.Allowed {
			t.Fatalf("web → api:8080: call %v, why allowed=%v", err, w.Allowed)
		}
		l := findLog(t, web, "web's allowed call", func(l logLine) bool { return l.Direction == "outbound" && l.Decision == "allow" && isWeb(l) })
		if l.Rule != w.Calls[0].Rule {
			t.Errorf("web's sidecar allowed by %q; why says %q", l.Rule, w.Calls[0].Rule)
		}
	})

	t.Run("caller's sidecar", func(t *testing.T) {
		w := why(t, meshFile, "--from", "default/web", "--to", "default/api:admin")
		r := w.Calls[0].RefusedBy
		if w.Allowed || r == nil || r.Component != "caller-sidecar" {
			t.Fatalf("why: %+v, want a refusal by the caller's sidecar", w)
		}
		wantReset(t, "web → api:9000", toAPIAdmin)
		l := findLog(t, web, "web's outbound denial", func(l logLine) bool {
			return l.Direction == "outbound" && l.Decision == "deny" && l.Destination == "default/api:9000"
		})
		if l.Rule != w.Calls[0].Rule || !strings.Contains(r.AccessLog, "rule="+strconv.Quote(l.Rule)) || !strings.Contains(r.AccessLog, `destination="default/api:9000"`) {
			t.Errorf("web's access log: rule %q; why: rule %q, access log %q", l.Rule, w.Calls[0].Rule, r.AccessLog)
		}
		if n := web.denials(t, map[string]string{"direction": "outbound", "destination": "default/api:9000", "reason": l.Rule}); n != 1 ||
			!strings.Contains(r.Metric, `reason=`+strconv.Quote(l.Rule)) {
			t.Errorf("metric: %v denials; why says %s", n, r.Metric)
		}
	})

	t.Run("caller's DNS", func(t *testing.T) {
		w := why(t, meshFile, "--from", "default/web", "--to", "default/db:5432")
		r := w.Calls[0].RefusedBy
		if w.Allowed || r == nil || r.Component != "caller-dns" {
			t.Fatalf("why: %+v, want a refusal by the caller's DNS", w)
		}
		if m := query(t, web.sidecar.Addr("dns").String(), "db.default.svc.cluster.local", mdns.TypeA); m.Rcode != mdns.RcodeNameError {
			t.Errorf("db.default.svc.cluster.local from web: %s, want NXDOMAIN", mdns.RcodeToString[m.Rcode])
		}
		// An app that dials the service anyway is reset by its sidecar,
		// with the rule why names.
		wantReset(t, "web → db by service", toDB)
		l := findLog(t, web, "web's denial of db", func(l logLine) bool {
			return l.Direction == "outbound" && l.Decision == "deny" && l.Destination == "default/db:5432"
		})
		if !strings.Contains(r.AccessLog, "rule="+strconv.Quote(l.Rule)) {
			t.Errorf("web's access log: rule %q; why: %q", l.Rule, r.AccessLog)
		}
	})

	t.Run("destination's sidecar", func(t *testing.T) {
		// web calls db's pod straight, past its own view: db decides.
		w := why(t, meshFile, "--from", "default/web", "--to", "db-0:"+db.port())
		r := w.Calls[0].RefusedBy
		if w.Allowed || r == nil || r.Component != "destination-sidecar" {
			t.Fatalf("why: %+v, want a refusal by the destination's sidecar", w)
		}
		wantReset(t, "web → db's sidecar", toDBDirect)
		l := findLog(t, db, "db's inbound denial", func(l logLine) bool { return l.Direction == "inbound" && l.Decision == "deny" && isWeb(l) })
		// web may reach no port of db: why's main answer is the plaintext
		// path (web's sidecar does not know db's pod address); the mTLS
		// path this test takes (a fixed peer) is the one it adds.
		if all := strings.Join(r.Otherwise, "\n"); !strings.Contains(all, "rule="+strconv.Quote(l.Rule)) || !strings.Contains(all, "PEER@ID") {
			t.Errorf("db's access log: rule %q; why: %q", l.Rule, all)
		}
		findLog(t, web, "web's record of db's refusal", func(l logLine) bool {
			return l.Direction == "outbound" && l.Decision == "deny" && strings.HasPrefix(l.Reason, "refused by "+dbID.String()+": ")
		})
		if n := db.denials(t, map[string]string{"direction": "inbound", "source_id": webID.String(), "reason": l.Rule}); n != 1 {
			t.Errorf("db counted %v inbound denials with reason %q", n, l.Rule)
		}
	})

	t.Run("revoked", func(t *testing.T) {
		// An open call that policy stops allowing is cut by a sidecar
		// (the caller's, or the destination's: the caller's then closes
		// the app's side): an orderly close, the app reads EOF.
		c, err := net.DialTimeout("tcp", toAPI, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := echoOnce(c, "open"); err != nil {
			t.Fatal(err)
		}
		revoked := strings.Replace(content, "sources: [{serviceAccount: {name: web}}]", "sources: [{serviceAccount: {name: nobody}}]", 1)
		if err := os.WriteFile(meshFile, []byte(revoked), 0o600); err != nil {
			t.Fatal(err)
		}
		disc.write(t, revoked)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(make([]byte, 64))
		if n != 0 || err != io.EOF {
			t.Errorf("the app's read of a revoked call: %d bytes, %v; want EOF (a FIN)", n, err)
		}
		if w := why(t, meshFile, "--from", "default/web", "--to", "default/api:8080"); w.Allowed || w.Calls[0].RefusedBy.Component != "caller-dns" {
			t.Errorf("why after the revocation: %+v", w)
		}
	})

	t.Run("no sidecar", func(t *testing.T) {
		// A caller without a sidecar reaches db's strict inbound listener
		// in plaintext: the handshake fails and the connection is reset.
		wantReset(t, "plaintext to db's sidecar", db.sidecar.Addr("inbound/0").String())
	})
}
