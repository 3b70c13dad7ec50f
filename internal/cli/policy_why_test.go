package cli_test

import (
	"encoding/json"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/tether-mesh/tether/internal/discoverytest"
)

// whyMesh is the mesh the `policy why` tests explain: namespace shop
// (same-namespace by annotation) with api (http 80 -> 8080, grpc 9090)
// and db; web with frontend; pods named worker-1 in ops and in jobs.
const whyMesh = `
trustDomain: cluster.local
namespaces:
  - {name: shop, defaultPolicy: same-namespace}
services:
  - name: api
    namespace: shop
    clusterIPs: [10.96.0.10]
    ports: [{name: http, port: 80, targetPort: 8080}, {name: grpc, port: 9090}]
    endpoints: [{address: 10.1.0.1, serviceAccount: api, pod: api-1}]
  - name: db
    namespace: shop
    clusterIPs: [10.96.0.11]
    ports: [{name: pg, port: 5432}]
    endpoints: [{address: 10.1.0.2, serviceAccount: db, pod: db-1}]
  - name: frontend
    namespace: web
    clusterIPs: [10.96.0.12]
    ports: [{name: http, port: 80}]
    endpoints: [{address: 10.1.0.3, serviceAccount: frontend, pod: front-1}]
  - name: metrics
    namespace: ops
    ports: [{port: 9100}]
    endpoints: [{address: 10.1.0.4, serviceAccount: monitor, pod: worker-1}]
  - name: runner
    namespace: jobs
    ports: [{port: 8000}]
    endpoints: [{address: 10.1.0.5, serviceAccount: runner, pod: worker-1}]
  - name: pay
    namespace: shop
    clusterIPs: [10.96.0.13]
    ports: [{name: http, port: 80}]
    endpoints: [{address: 10.1.0.6, serviceAccount: pay, pod: pay-1}]
policies:
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: pay-from-b, namespace: shop}
    spec:
      destination: {service: pay}
      sources:
        - namespace: shop
        - spiffeID: spiffe://b.example/ns/ops/sa/x
        - trustDomain: c.example
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: api-from-frontend, namespace: shop}
    spec:
      destination: {service: api, ports: [80]}
      sources:
        - serviceAccount: {name: frontend, namespace: web}
        - spiffeID: spiffe://cluster.local/vm/billing
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: api-from-ops, namespace: shop}
    spec:
      destination: {service: api}
      sources: [{namespace: ops}]
`

// whyJSON is `policy why -o json`, decoded strictly.
type whyJSON struct {
	Source         string   `json:"source"`
	SourcePod      *podJSON `json:"source_pod"`
	Destination    string   `json:"destination"`
	DestinationPod *podJSON `json:"destination_pod"`
	Allowed        bool     `json:"allowed"`
	Calls          []struct {
		Service      string            `json:"service"`
		Port         uint16            `json:"port"`
		PortName     string            `json:"port_name"`
		PodAddress   string            `json:"pod_address"`
		TargetPort   uint16            `json:"target_port"`
		Allowed      bool              `json:"allowed"`
		Rule         string            `json:"rule"`
		AuditDenied  bool              `json:"audit_denied"`
		AuditRule    string            `json:"audit_rule"`
		AuditLog     string            `json:"audit_log"`
		Explanations []explanationJSON `json:"explanations"`
		RefusedBy    *struct {
			Component string   `json:"component"`
			AppSees   string   `json:"app_sees"`
			AccessLog string   `json:"access_log"`
			Metric    string   `json:"metric"`
			Otherwise []string `json:"otherwise"`
		} `json:"refused_by"`
	} `json:"calls"`
}

// explanationJSON is a policy.Explanation as -o json prints it.
type explanationJSON struct {
	Source        string `json:"source"`
	Namespace     string `json:"namespace"`
	Service       string `json:"service"`
	Port          uint16 `json:"port"`
	Allowed       bool   `json:"allowed"`
	Rule          string `json:"rule"`
	AuditDenied   bool   `json:"audit_denied"`
	AuditRule     string `json:"audit_rule"`
	SourceRefused string `json:"source_refused"`
	Foreign       bool   `json:"foreign"`
	Policies      []struct {
		Name        string  `json:"name"`
		Rule        string  `json:"rule"`
		Mode        string  `json:"mode"`
		Ports       []int32 `json:"ports"`
		PortCovered bool    `json:"port_covered"`
		Matched     bool    `json:"matched"`
		Reason      string  `json:"reason"`
		Sources     []struct {
			Source  string `json:"source"`
			Matched bool   `json:"matched"`
			Reason  string `json:"reason"`
		} `json:"sources"`
	} `json:"policies"`
	Default *struct {
		Default string `json:"default"`
		From    string `json:"from"`
		Rule    string `json:"rule"`
		Reason  string `json:"reason"`
	} `json:"default"`
	WouldBe *explanationJSON `json:"would_be"`
}

type podJSON struct {
	Namespace      string   `json:"namespace"`
	Name           string   `json:"name"`
	ServiceAccount string   `json:"service_account"`
	Addresses      []string `json:"addresses"`
	Sidecar        bool     `json:"sidecar"`
}

func decodeWhy(t *testing.T, out string) whyJSON {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	var w whyJSON
	if err := dec.Decode(&w); err != nil {
		t.Fatalf("%v in\n%s", err, out)
	}
	return w
}

// TestPolicyWhyText checks the whole text of one denied call: the rule,
// every policy with its reasons, and who refuses.
func TestPolicyWhyText(t *testing.T) {
	mesh := meshFile(t, whyMesh)
	out, errOut, code := run(t, "policy", "why", "--mesh", mesh, "--from", "web/frontend", "--to", "shop/api:grpc")
	want := `denied web/frontend -> shop/api:9090 (grpc)
  rule: no AccessPolicy allows spiffe://cluster.local/ns/web/sa/frontend to shop/api:9090
  shop/api:9090: 2 AccessPolicy(s) name the service; only they decide:
    AccessPolicy shop/api-from-frontend: port 9090 is not one of its ports (80)
    AccessPolicy shop/api-from-ops: none of its sources matches the caller
      namespace ops: other namespace: the caller is in web
  who refuses: the caller's sidecar (outbound)
    the app sees: the sidecar accepts the connection, then resets it (RST) before any byte: the app's first socket call after the RST (usually its read; its write, or connect() itself, when the RST comes first) fails with ECONNRESET, "connection reset by peer"; TCP carries no reason
    access log: the caller's sidecar: direction="outbound" decision="deny" destination="shop/api:9090" rule="no AccessPolicy allows spiffe://cluster.local/ns/web/sa/frontend to shop/api:9090"
    metric: tether_sidecar_authz_denials_total{direction="outbound",source_id="spiffe://cluster.local/ns/web/sa/frontend",destination="shop/api:9090",reason="no AccessPolicy allows spiffe://cluster.local/ns/web/sa/frontend to shop/api:9090"} on the caller's sidecar
    also: if the call bypasses the caller's sidecar (traffic not captured): the destination's sidecar sees no client certificate: in strict inbound mode the mTLS handshake fails and it resets the connection (RST); in permissive mode it admits the call only on ports no AccessPolicy restricts
`
	if code != 1 || out != want {
		t.Errorf("exit %d, stdout\n%s\nwant\n%s", code, out, want)
	}
	if want := "tether: denied: web/frontend may not reach shop/api on 1 of 1 port(s)\n"; errOut != want {
		t.Errorf("stderr %q, want %q", errOut, want)
	}
}

// TestPolicyWhy explains allowed and denied calls of every kind of
// caller and callee, as JSON, and checks the decision, the reasons and
// who refuses.
func TestPolicyWhy(t *testing.T) {
	mesh := meshFile(t, whyMesh)
	const (
		frontendID = "spiffe://cluster.local/ns/web/sa/frontend"
		noPolicy   = "no AccessPolicy allows "
		shopAnnot  = "namespace default same-namespace (annotation tether.dev/default-policy on shop)"
	)
	type call struct {
		dest      string // service:port or pod address
		allowed   bool
		rule      string
		component string   // who refuses; "" when allowed
		reasons   []string // each in some policy's, source's or default's reason
	}
	for _, c := range []struct {
		name      string
		from, to  string
		code      int
		source    string
		srcPod    string // namespace/name
		dstPod    string
		calls     []call
		extraArgs []string
	}{
		{"every port of a service", "web/frontend", "shop/api", 1, frontendID, "", "", []call{
			{"shop/api:80", true, "AccessPolicy shop/api-from-frontend", "", []string{"allows it: serviceAccount web/frontend matches", "other namespace: the caller is in web"}},
			{"shop/api:9090", false, noPolicy + frontendID + " to shop/api:9090", "caller-sidecar", []string{"port 9090 is not one of its ports (80)"}},
		}, nil},
		{"no port of the service: DNS", "web/frontend", "shop/db", 1, frontendID, "", "", []call{
			{"shop/db:5432", false, shopAnnot, "caller-dns", []string{"namespace shop sets tether.dev/default-policy=same-namespace: only workloads of namespace shop may call; the caller is in web"}},
		}, nil},
		{"namespace default admits", "shop/api", "shop/db:pg", 0, "spiffe://cluster.local/ns/shop/sa/api", "", "", []call{
			{"shop/db:5432", true, shopAnnot, "", []string{"the caller is in shop, like the service"}},
		}, nil},
		{"mesh default", "shop/db", "web/frontend:80", 1, "spiffe://cluster.local/ns/shop/sa/db", "", "", []call{
			{"web/frontend:80", false, "mesh default deny", "caller-dns", []string{"namespace web has no tether.dev/default-policy annotation: the mesh default deny applies: nobody may call"}},
		}, []string{"--default-policy", "deny"}},
		{"SPIFFE ID caller", "spiffe://cluster.local/vm/billing", "shop/api:80", 0, "spiffe://cluster.local/vm/billing", "", "", []call{
			{"shop/api:80", true, "AccessPolicy shop/api-from-frontend", "", []string{"spiffeID spiffe://cluster.local/vm/billing matches"}},
		}, nil},
		{"other SPIFFE ID", "spiffe://cluster.local/vm/other", "shop/api:80", 1, "spiffe://cluster.local/vm/other", "", "", []call{
			{"shop/api:80", false, noPolicy + "spiffe://cluster.local/vm/other to shop/api:80", "caller-dns", []string{
				"other SPIFFE ID: the caller is spiffe://cluster.local/vm/other", "is not a Kubernetes workload ID"}},
		}, nil},
		{"other service account", "web/backend", "shop/api:80", 1, "spiffe://cluster.local/ns/web/sa/backend", "", "", []call{
			{"shop/api:80", false, noPolicy + "spiffe://cluster.local/ns/web/sa/backend to shop/api:80", "caller-dns", []string{
				"other service account: the caller is web/backend"}},
		}, nil},
		{"outside the trust domain", "spiffe://evil.example/ns/ops/sa/x", "shop/api:80", 1, "spiffe://evil.example/ns/ops/sa/x", "", "", []call{
			{"shop/api:80", false, noPolicy + "spiffe://evil.example/ns/ops/sa/x to shop/api:80", "destination-sidecar", []string{
				"the caller is of trust domain evil.example: namespace and serviceAccount sources match only workloads of trust domain cluster.local"}},
		}, nil},
		{"another trust domain, default", "spiffe://b.example/ns/ops/sa/x", "web/frontend", 1, "spiffe://b.example/ns/ops/sa/x", "", "", []call{
			{"web/frontend:80", false, "source spiffe://b.example/ns/ops/sa/x is outside trust domain cluster.local, and no AccessPolicy names web/frontend: its default (mesh default allow-mesh) never admits a caller of another trust domain; an AccessPolicy source with its spiffeID or trustDomain does", "destination-sidecar", []string{
				"the caller is of trust domain b.example, and a default never admits a caller of another trust domain"}},
		}, nil},
		{"another trust domain, by spiffeID", "spiffe://b.example/ns/ops/sa/x", "shop/pay", 0, "spiffe://b.example/ns/ops/sa/x", "", "", []call{
			{"shop/pay:80", true, "AccessPolicy shop/pay-from-b", "", []string{"allows it: spiffeID spiffe://b.example/ns/ops/sa/x matches"}},
		}, nil},
		{"another trust domain, by trustDomain", "spiffe://c.example/ns/shop/sa/y", "shop/pay", 0, "spiffe://c.example/ns/shop/sa/y", "", "", []call{
			{"shop/pay:80", true, "AccessPolicy shop/pay-from-b", "", []string{"allows it: trustDomain c.example matches"}},
		}, nil},
		{"another trust domain, another ID", "spiffe://b.example/ns/shop/sa/x", "shop/pay", 1, "spiffe://b.example/ns/shop/sa/x", "", "", []call{
			{"shop/pay:80", false, noPolicy + "spiffe://b.example/ns/shop/sa/x to shop/pay:80", "destination-sidecar", []string{
				"other SPIFFE ID: the caller is spiffe://b.example/ns/shop/sa/x", "other trust domain: the caller is of b.example"}},
		}, nil},
		{"pod caller", "front-1", "shop/api:http", 0, frontendID, "web/front-1", "", []call{
			{"shop/api:80", true, "AccessPolicy shop/api-from-frontend", "", nil},
		}, nil},
		{"qualified pod caller", "ops/pod/worker-1", "shop/api:grpc", 0, "spiffe://cluster.local/ns/ops/sa/monitor", "ops/worker-1", "", []call{
			{"shop/api:9090", true, "AccessPolicy shop/api-from-ops", "", []string{"allows it: namespace ops matches"}},
		}, nil},
		{"pod callee, its ports", "jobs/pod/worker-1", "api-1", 1, "spiffe://cluster.local/ns/jobs/sa/runner", "jobs/worker-1", "shop/api-1", []call{
			{"10.1.0.1:8080", false, "pod port 8080 is shop/api's port 80: " + noPolicy + "spiffe://cluster.local/ns/jobs/sa/runner to shop/api:80", "destination-sidecar", nil},
			{"10.1.0.1:9090", false, "pod port 9090 is shop/api's port 9090: " + noPolicy + "spiffe://cluster.local/ns/jobs/sa/runner to shop/api:9090", "destination-sidecar", nil},
		}, nil},
		{"pod callee, a port no Service covers", "web/frontend", "shop/pod/api-1:7000", 1, frontendID, "", "shop/api-1", []call{
			{"10.1.0.1:7000", false, "no Service covers port 7000: " + shopAnnot, "destination-sidecar", []string{"only workloads of namespace shop may call; the caller is in web"}},
		}, nil},
		{"pod address", "ops/monitor", "10.1.0.1:8080", 0, "spiffe://cluster.local/ns/ops/sa/monitor", "", "", []call{
			{"10.1.0.1:8080", true, "AccessPolicy shop/api-from-ops", "", nil},
		}, nil},
		{"SPIFFE ID callee", "web/frontend", "spiffe://cluster.local/ns/shop/sa/api:http", 0, frontendID, "", "", []call{
			{"shop/api:80", true, "AccessPolicy shop/api-from-frontend", "", nil},
		}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"policy", "why", "--mesh", mesh, "--from", c.from, "--to", c.to, "-o", "json"}, c.extraArgs...)
			out, errOut, code := run(t, args...)
			if code != c.code {
				t.Fatalf("exit %d, want %d; stderr %s", code, c.code, errOut)
			}
			w := decodeWhy(t, out)
			if w.Source != c.source || w.Allowed != (c.code == 0) {
				t.Errorf("source %q allowed %v; want %q %v", w.Source, w.Allowed, c.source, c.code == 0)
			}
			if got := podName(w.SourcePod); got != c.srcPod {
				t.Errorf("source pod %q, want %q", got, c.srcPod)
			}
			if got := podName(w.DestinationPod); got != c.dstPod {
				t.Errorf("destination pod %q, want %q", got, c.dstPod)
			}
			if len(w.Calls) != len(c.calls) {
				t.Fatalf("%d calls, want %d:\n%s", len(w.Calls), len(c.calls), out)
			}
			for i, want := range c.calls {
				got := w.Calls[i]
				dest := got.PodAddress
				if got.Service != "" {
					dest = got.Service + ":" + itoa(got.Port)
				}
				component := ""
				if got.RefusedBy != nil {
					component = got.RefusedBy.Component
				}
				if dest != want.dest || got.Allowed != want.allowed || got.Rule != want.rule || component != want.component {
					t.Errorf("call %d: %s allowed=%v rule %q refused by %q; want %s %v %q %q", i, dest, got.Allowed, got.Rule, component,
						want.dest, want.allowed, want.rule, want.component)
				}
				b, _ := json.Marshal(got.Explanations)
				for _, r := range want.reasons {
					if !strings.Contains(string(b), jsonEscape(r)) {
						t.Errorf("call %d: no reason %q in %s", i, r, b)
					}
				}
			}
		})
	}
}

// A call the policy engine allows but a pod's sidecar refuses (the pod
// is another Service's too): the destination's sidecar decides, and the
// explanation names the Service whose policy refuses.
func TestPolicyWhySharedPods(t *testing.T) {
	mesh := meshFile(t, discoverytest.SharedPodsMesh)
	out, _, code := run(t, "policy", "why", "--mesh", mesh, "--from", "default/intruder", "--to", "default/all:8080", "-o", "json")
	if code != 1 {
		t.Fatalf("exit %d\n%s", code, out)
	}
	w := decodeWhy(t, out)
	c := w.Calls[0]
	noPolicy := "no AccessPolicy allows spiffe://cluster.local/ns/default/sa/intruder to default/payments:80"
	if c.RefusedBy == nil || c.RefusedBy.Component != "destination-sidecar" || !strings.Contains(c.Rule, "the sidecar of pod 10.0.1.1 (default/shared) refuses it on port 8080") {
		t.Fatalf("call %+v", c)
	}
	if len(c.Explanations) != 2 || !c.Explanations[0].Allowed || c.Explanations[1].Service != "payments" || c.Explanations[1].Rule != noPolicy {
		t.Errorf("explanations %+v: want default/all's (allowed) and default/payments's (%s)", c.Explanations, noPolicy)
	}
	wantLog := `rule="no principal of inbound|15006 chain 8080|default/payments:80 (inbound_default_payments_80) admits spiffe://cluster.local/ns/default/sa/intruder"`
	if !strings.Contains(c.RefusedBy.AccessLog, wantLog) || !strings.Contains(c.RefusedBy.AccessLog, "the sidecar of pod 10.0.1.1 (default/shared)") {
		t.Errorf("access log %q, want it to contain %q", c.RefusedBy.AccessLog, wantLog)
	}
	// YAML has the same fields.
	out, _, code = run(t, "policy", "why", "--mesh", mesh, "--from", "default/intruder", "--to", "default/all:8080", "-o", "yaml")
	var y map[string]any
	if err := yaml.Unmarshal([]byte(out), &y); code != 1 || err != nil || y["destination"] != "default/all" || y["allowed"] != false {
		t.Errorf("-o yaml: exit %d, %v, %v", code, err, y)
	}
}

// Every bad input is refused with a message that says what is wrong.
func TestPolicyWhyErrors(t *testing.T) {
	mesh := meshFile(t, whyMesh)
	inconsistent := meshFile(t, strings.Replace(whyMesh, "pod: front-1}]", "pod: front-1}, {address: 10.1.0.9, serviceAccount: admin, pod: front-1}]", 1))
	for _, c := range []struct {
		name string
		mesh string
		args []string
		code int
		want string
	}{
		{"unknown namespace", mesh, []string{"--from", "web/frontend", "--to", "nowhere/api"}, 1, "service nowhere/api does not exist in " + mesh + "; there is no namespace nowhere"},
		{"unknown service", mesh, []string{"--from", "web/frontend", "--to", "shop/cart"}, 1, "service shop/cart does not exist in " + mesh + "; services in namespace shop: api, db"},
		{"unknown port", mesh, []string{"--from", "web/frontend", "--to", "shop/api:8080"}, 1, `service shop/api has no port "8080" in ` + mesh + " (ports: 80 (http), 9090 (grpc))"},
		{"unknown pod", mesh, []string{"--from", "nobody-1", "--to", "shop/api"}, 1, "--from nobody-1: no pod nobody-1 in " + mesh},
		{"unknown pod in namespace", mesh, []string{"--from", "web/frontend", "--to", "web/pod/api-1"}, 1, "--to web/pod/api-1: no pod api-1 in " + mesh},
		{"ambiguous pod", mesh, []string{"--from", "worker-1", "--to", "shop/api"}, 2,
			"--from worker-1 is ambiguous in " + mesh + ": it names jobs/pod/worker-1 (spiffe://cluster.local/ns/jobs/sa/runner), ops/pod/worker-1 (spiffe://cluster.local/ns/ops/sa/monitor); give one of them"},
		{"ambiguous pod callee", mesh, []string{"--from", "web/frontend", "--to", "worker-1:9100"}, 2, "--to worker-1 is ambiguous"},
		{"pod with two identities", inconsistent, []string{"--from", "front-1", "--to", "shop/api"}, 1, "give pod web/front-1 several identities"},
		{"malformed SPIFFE ID caller", mesh, []string{"--from", "spiffe://cluster.local/ns//sa/x", "--to", "shop/api"}, 2, `--from "spiffe://cluster.local/ns//sa/x": path cannot contain empty segments`},
		{"malformed SPIFFE ID callee", mesh, []string{"--from", "web/frontend", "--to", "spiffe://Cluster.local/ns/shop/sa/api"}, 2, `--to "spiffe://Cluster.local/ns/shop/sa/api": trust domain characters are limited`},
		{"SPIFFE ID callee, empty port", mesh, []string{"--from", "web/frontend", "--to", "spiffe://cluster.local/ns/shop/sa/api:"}, 2, "empty port"},
		{"SPIFFE ID nobody runs as", mesh, []string{"--from", "web/frontend", "--to", "spiffe://cluster.local/ns/shop/sa/ghost"}, 1, "no mesh endpoint runs as spiffe://cluster.local/ns/shop/sa/ghost"},
		{"SPIFFE ID callee, unknown port", mesh, []string{"--from", "web/frontend", "--to", "spiffe://cluster.local/ns/shop/sa/api:5432"}, 1, `no Service whose pods run as spiffe://cluster.local/ns/shop/sa/api has a port "5432"`},
		{"bad caller", mesh, []string{"--from", "a/b/c", "--to", "shop/api"}, 2, `--from "a/b/c": want NAMESPACE/SERVICEACCOUNT or spiffe://...`},
		{"bad pod reference", mesh, []string{"--from", "web/pod/", "--to", "shop/api"}, 2, `--from "web/pod/": want NAMESPACE/pod/NAME for a pod`},
		{"bad callee", mesh, []string{"--from", "web/frontend", "--to", "shop/api/x"}, 2, `--to "shop/api/x": want NAMESPACE/SERVICE[:PORT] or POD-IP:PORT`},
		{"pod port 0", mesh, []string{"--from", "web/frontend", "--to", "api-1:0"}, 2, `a pod's port must be a number in 1-65535, got "0"`},
		{"pod port by name", mesh, []string{"--from", "web/frontend", "--to", "api-1:http"}, 2, `a pod's port must be a number in 1-65535, got "http"`},
		{"unknown pod address", mesh, []string{"--from", "web/frontend", "--to", "10.9.9.9:80"}, 1, "no mesh endpoint has address 10.9.9.9 in " + mesh},
		{"no --to", mesh, []string{"--from", "web/frontend"}, 2, `required flag(s) "to" not set`},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := run(t, append([]string{"policy", "why", "--mesh", c.mesh}, c.args...)...)
			if code != c.code || !strings.Contains(errOut, c.want) {
				t.Errorf("exit %d (want %d), stderr %q; want it to contain %q", code, c.code, errOut, c.want)
			}
			if out != "" {
				t.Errorf("stdout %q", out)
			}
		})
	}
}

func podName(p *podJSON) string {
	if p == nil {
		return ""
	}
	return p.Namespace + "/" + p.Name
}

func itoa(n uint16) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// jsonEscape is s as it appears inside a JSON string.
func jsonEscape(s string) string {
	b, _ := json.Marshal(s)
	return string(b[1 : len(b)-1])
}

// A call that passes while a policy or default in audit mode would deny
// it: why says audit-deny, the would-be rule, and where it is logged.
func TestPolicyWhyAudit(t *testing.T) {
	mesh := meshFile(t, whyMesh+`  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: frontend-audit, namespace: web}
    spec:
      mode: Audit
      destination: {service: frontend}
      sources: [{namespace: shop}]
`)
	wouldBe := "no AccessPolicy allows spiffe://cluster.local/ns/ops/sa/x to web/frontend:80 (in audit mode: AccessPolicy web/frontend-audit)"
	out, errOut, code := run(t, "policy", "why", "--mesh", mesh, "--from", "ops/x", "--to", "web/frontend")
	for _, want := range []string{
		"allowed (audit-deny) ops/x -> web/frontend:80 (http)\n  rule: mesh default allow-mesh\n  would be denied by: " + wouldBe + "\n",
		`the caller's sidecar logs direction="outbound" decision="audit-deny" rule=` + strconvQuote(wouldBe),
		`the sidecar of pod 10.1.0.3 (web/frontend) logs direction="inbound" decision="audit-deny" source_id="spiffe://cluster.local/ns/ops/sa/x" ` +
			`rule="80|web/frontend:80 (inbound_web_frontend_80): no AccessPolicy allows the caller to web/frontend:80 (in audit mode: AccessPolicy web/frontend-audit)"`,
		"  would be, with the policies and defaults in audit mode enforcing: denied (" + wouldBe + ")\n",
		"      AccessPolicy web/frontend-audit (audit mode): none of its sources matches the caller\n        namespace shop: other namespace: the caller is in ops\n",
	} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("exit %d (stderr %q), no %q in\n%s", code, errOut, want, out)
		}
	}
	out, _, code = run(t, "policy", "why", "--mesh", mesh, "--from", "ops/x", "--to", "web/frontend", "-o", "json")
	w := decodeWhy(t, out)
	c := w.Calls[0]
	if code != 0 || !w.Allowed || !c.AuditDenied || c.AuditRule != wouldBe || c.RefusedBy != nil || len(c.Explanations) != 1 ||
		c.Explanations[0].WouldBe == nil || c.Explanations[0].WouldBe.Policies[0].Mode != "Audit" {
		t.Errorf("exit %d: %s", code, out)
	}
	// The audit policy's sources pass: no audit-deny.
	out, _, code = run(t, "policy", "why", "--mesh", mesh, "--from", "shop/api", "--to", "web/frontend", "-o", "json")
	if w := decodeWhy(t, out); code != 0 || w.Calls[0].AuditDenied || w.Calls[0].AuditLog != "" {
		t.Errorf("exit %d: %s", code, out)
	}
}

func strconvQuote(s string) string { b, _ := json.Marshal(s); return string(b) }
