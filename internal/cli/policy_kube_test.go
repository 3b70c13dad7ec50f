package cli_test

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
)

// writeKubeconfig writes a kubeconfig with one context (and cluster and
// user) per entry of contexts, current is its current context.
func writeKubeconfig(t *testing.T, current string, contexts map[string]*rest.Config) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	for name, c := range contexts {
		cfg.Clusters[name] = &clientcmdapi.Cluster{Server: c.Host, CertificateAuthorityData: c.CAData}
		cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{ClientCertificateData: c.CertData, ClientKeyData: c.KeyData, Token: c.BearerToken}
		cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	}
	cfg.CurrentContext = current
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// kubeReadRules are the RBAC rules the docs give for the policy commands.
var kubeReadRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"namespaces", "services", "pods"}, Verbs: []string{"list", "watch"}},
	{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
	{APIGroups: []string{"tether.dev"}, Resources: []string{"accesspolicies", "remoteservices"}, Verbs: []string{"list", "watch"}},
}

// grant binds a new ClusterRole with rules to user.
func grant(ctx context.Context, t *testing.T, env *kubetest.Env, user string, rules []rbacv1.PolicyRule) {
	t.Helper()
	rbac := env.Client.RbacV1()
	if _, err := rbac.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: user}, Rules: rules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: user},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// createMesh creates, through the API server, the mesh the Kubernetes
// tests answer about:
//
//   - namespace shop (tether.dev/default-policy: same-namespace) with
//     Services api (http 80 -> 8080, grpc 9090) backed by pod api-1 (service
//     account api) and db (pg 5432) backed by db-1 (db); namespace web with
//     Service frontend (http 80) backed by front-1 (frontend); namespace ops
//     with pod mon-1 (monitor) and no Service. Every pod carries the
//     sidecar.
//   - AccessPolicy shop/api-from-frontend: web/frontend and
//     spiffe://cluster.local/vm/billing may reach api on port 80;
//     AccessPolicy shop/api-from-ops: namespace ops may reach api.
func createMesh(ctx context.Context, t *testing.T, env *kubetest.Env) {
	t.Helper()
	core := env.Client.CoreV1()
	if _, err := core.Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: "shop", Annotations: map[string]string{policy.DefaultPolicyAnnotation: "same-namespace"},
	}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	env.EnsureMeshPod(t, "shop", "api", "api-1")
	env.EnsureMeshPod(t, "shop", "db", "db-1")
	env.EnsureMeshPod(t, "web", "frontend", "front-1")
	env.EnsureMeshPod(t, "ops", "monitor", "mon-1")

	services := []struct {
		ns, name string
		ports    []corev1.ServicePort
		pod      string
		addr     string
	}{
		{"shop", "api", []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)},
			{Name: "grpc", Port: 9090},
		}, "api-1", "10.1.0.1"},
		{"shop", "db", []corev1.ServicePort{{Name: "pg", Port: 5432}}, "db-1", "10.1.0.2"},
		{"web", "frontend", []corev1.ServicePort{{Name: "http", Port: 80}}, "front-1", "10.1.0.3"},
	}
	for _, s := range services {
		if _, err := core.Services(s.ns).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: s.name},
			Spec:       corev1.ServiceSpec{Ports: s.ports},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := env.Client.DiscoveryV1().EndpointSlices(s.ns).Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: s.name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: s.name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{{
				Addresses: []string{s.addr},
				TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: s.ns, Name: s.pod},
			}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	dc, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	for name, spec := range map[string]map[string]any{
		"api-from-frontend": {
			"destination": map[string]any{"service": "api", "ports": []any{int64(80)}},
			"sources": []any{
				map[string]any{"serviceAccount": map[string]any{"name": "frontend", "namespace": "web"}},
				map[string]any{"spiffeID": "spiffe://cluster.local/vm/billing"},
			},
		},
		"api-from-ops": {
			"destination": map[string]any{"service": "api"},
			"sources":     []any{map[string]any{"namespace": "ops"}},
		},
	} {
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": policy.SchemeGroupVersion.String(),
			"kind":       policy.Kind,
			"metadata":   map[string]any{"name": name, "namespace": "shop"},
			"spec":       spec,
		}}
		// The resource can be served a moment after the CRD is Established.
		for {
			_, err := dc.Resource(policy.SchemeGroupVersionResource).Namespace("shop").Create(ctx, obj, metav1.CreateOptions{})
			if err == nil {
				break
			}
			if !apierrors.IsNotFound(err) || ctx.Err() != nil {
				t.Fatalf("create AccessPolicy %s: %v", name, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// TestPolicyKube runs `tether policy check` and `tether policy graph`
// against a real kube-apiserver, with the mesh created through its API.
func TestPolicyKube(t *testing.T) {
	env := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	grant(ctx, t, env, "reader", kubeReadRules)
	grant(ctx, t, env, "partial", kubeReadRules[:2]) // no accesspolicies
	kc := writeKubeconfig(t, "admin", map[string]*rest.Config{
		"admin":   env.Config,
		"reader":  env.UserConfig(t, "reader"),
		"partial": env.UserConfig(t, "partial"),
		"nobody":  env.UserConfig(t, "nobody"),
	})
	where := `Kubernetes context "admin" at ` + env.Config.Host

	// Before the CRD is installed the commands say so, and exit 1.
	t.Run("CRD missing", func(t *testing.T) {
		out, errOut, code := run(t, "policy", "graph", "--kubeconfig", kc)
		want := where + ": the AccessPolicy CRD (accesspolicies.tether.dev) is not installed"
		if code != 1 || out != "" || !strings.Contains(errOut, want) {
			t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1 and %q", code, out, errOut, want)
		}
	})

	env.InstallCRD(t, filepath.Join("..", "..", "manifests", "crds", "accesspolicies.tether.dev.yaml"))
	env.InstallCRD(t, filepath.Join("..", "..", "manifests", "crds", "remoteservices.tether.dev.yaml"))
	createMesh(ctx, t, env)

	const (
		assumedNote      = `tether: note: "mesh default allow-mesh" assumes tether-discovery runs with --default-policy=allow-mesh (its default); if it runs with another, give the same --default-policy here` + "\n"
		byFrontendPolicy = "AccessPolicy shop/api-from-frontend"
		byOpsPolicy      = "AccessPolicy shop/api-from-ops"
		shopDefault      = "namespace default same-namespace (annotation tether.dev/default-policy on shop)"
	)
	t.Run("check", func(t *testing.T) {
		for _, c := range []struct {
			name     string
			args     []string
			code     int
			stdout   []string
			stderrIn string
		}{
			{"allowed by policy", []string{"--from", "web/frontend", "--to", "shop/api:80"}, 0,
				[]string{"allowed web/frontend -> shop/api:80: " + byFrontendPolicy}, ""},
			{"port by name", []string{"--from", "web/frontend", "--to", "shop/api:http"}, 0,
				[]string{"allowed web/frontend -> shop/api:80: " + byFrontendPolicy}, ""},
			{"denied on a port no policy opens", []string{"--from", "web/frontend", "--to", "shop/api:grpc"}, 1,
				[]string{"denied web/frontend -> shop/api:9090: no AccessPolicy allows spiffe://cluster.local/ns/web/sa/frontend to shop/api:9090"},
				"tether: denied: web/frontend may not reach shop/api on 1 of 1 port(s)"},
			{"every port", []string{"--from", "web/frontend", "--to", "shop/api"}, 1,
				[]string{"allowed web/frontend -> shop/api:80: " + byFrontendPolicy,
					"denied web/frontend -> shop/api:9090: no AccessPolicy allows spiffe://cluster.local/ns/web/sa/frontend to shop/api:9090"},
				"on 1 of 2 port(s)"},
			{"spiffe id source", []string{"--from", "spiffe://cluster.local/vm/billing", "--to", "shop/api:80"}, 0,
				[]string{"allowed spiffe://cluster.local/vm/billing -> shop/api:80: " + byFrontendPolicy}, ""},
			{"workload spiffe id source", []string{"--from", "spiffe://cluster.local/ns/web/sa/frontend", "--to", "shop/api:80"}, 0,
				[]string{"allowed web/frontend -> shop/api:80: " + byFrontendPolicy}, ""},
			{"namespace source", []string{"--from", "ops/monitor", "--to", "shop/api"}, 0,
				[]string{"allowed ops/monitor -> shop/api:80: " + byOpsPolicy, "allowed ops/monitor -> shop/api:9090: " + byOpsPolicy}, ""},
			{"named service denies others", []string{"--from", "shop/db", "--to", "shop/api:80"}, 1,
				[]string{"denied shop/db -> shop/api:80: no AccessPolicy allows spiffe://cluster.local/ns/shop/sa/db to shop/api:80"}, ""},
			{"namespace annotation denies", []string{"--from", "web/frontend", "--to", "shop/db"}, 1,
				[]string{"denied web/frontend -> shop/db:5432: " + shopDefault}, ""},
			{"namespace annotation allows", []string{"--from", "shop/api", "--to", "shop/db:pg"}, 0,
				[]string{"allowed shop/api -> shop/db:5432: " + shopDefault}, ""},
			{"mesh default", []string{"--from", "shop/db", "--to", "web/frontend"}, 0,
				[]string{"allowed shop/db -> web/frontend:80: mesh default allow-mesh"}, assumedNote},
			{"mesh default flag", []string{"--from", "shop/db", "--to", "web/frontend", "--default-policy", "same-namespace"}, 1,
				[]string{"denied shop/db -> web/frontend:80: mesh default same-namespace"}, ""},
			{"namespace annotation beats the flag", []string{"--from", "shop/api", "--to", "shop/db", "--default-policy", "deny"}, 0,
				[]string{"allowed shop/api -> shop/db:5432: " + shopDefault}, ""},
			{"trust domain flag", []string{"--from", "web/frontend", "--to", "shop/api:80", "--trust-domain", "example.org"}, 0,
				[]string{"allowed web/frontend -> shop/api:80: " + byFrontendPolicy}, ""},
			// A caller of another trust domain is allowed only by a source
			// naming it: api-from-frontend names spiffe://cluster.local/vm/billing.
			{"outside the trust domain, named", []string{"--from", "spiffe://cluster.local/vm/billing", "--to", "shop/api:80", "--trust-domain", "example.org"}, 0,
				[]string{"allowed spiffe://cluster.local/vm/billing -> shop/api:80: " + byFrontendPolicy}, ""},
			{"outside the trust domain, not named", []string{"--from", "spiffe://cluster.local/ns/web/sa/frontend", "--to", "shop/api:80", "--trust-domain", "example.org"}, 1,
				[]string{"denied spiffe://cluster.local/ns/web/sa/frontend -> shop/api:80: no AccessPolicy allows spiffe://cluster.local/ns/web/sa/frontend to shop/api:80"}, ""},
			{"unknown source namespace", []string{"--from", "nowhere/x", "--to", "web/frontend", "--default-policy", "allow-mesh"}, 0,
				[]string{"allowed nowhere/x -> web/frontend:80: mesh default allow-mesh"},
				"note: namespace nowhere does not exist in " + where},
			{"context with the documented RBAC", []string{"--context", "reader", "--from", "web/frontend", "--to", "shop/api:80"}, 0,
				[]string{"allowed web/frontend -> shop/api:80: " + byFrontendPolicy}, ""},
		} {
			t.Run(c.name, func(t *testing.T) {
				out, errOut, code := run(t, append([]string{"policy", "check", "--kubeconfig", kc}, c.args...)...)
				if code != c.code {
					t.Errorf("exit %d, want %d; stderr %s", code, c.code, errOut)
				}
				if want := strings.Join(c.stdout, "\n") + "\n"; out != want {
					t.Errorf("stdout\n%s\nwant\n%s", out, want)
				}
				if !strings.Contains(errOut, c.stderrIn) {
					t.Errorf("stderr %q does not contain %q", errOut, c.stderrIn)
				}
				if c.stderrIn == "" && errOut != "" && c.code == 0 {
					t.Errorf("stderr %q", errOut)
				}
				if c.stderrIn != assumedNote && strings.Contains(errOut, assumedNote) {
					t.Errorf("stderr %q has the note about the assumed default", errOut)
				}
			})
		}
	})

	t.Run("json", func(t *testing.T) {
		type decision struct {
			Port     uint16 `json:"port"`
			PortName string `json:"port_name"`
			Allowed  bool   `json:"allowed"`
			Rule     string `json:"rule"`
		}
		type result struct {
			Source, Destination string
			Allowed             bool
			Ports               []decision
		}
		for _, c := range []struct {
			to   string
			code int
			want result
		}{
			{"shop/api:80", 0, result{"spiffe://cluster.local/ns/web/sa/frontend", "shop/api", true,
				[]decision{{80, "http", true, byFrontendPolicy}}}},
			{"shop/api", 1, result{"spiffe://cluster.local/ns/web/sa/frontend", "shop/api", false, []decision{
				{80, "http", true, byFrontendPolicy},
				{9090, "grpc", false, "no AccessPolicy allows spiffe://cluster.local/ns/web/sa/frontend to shop/api:9090"},
			}}},
		} {
			out, errOut, code := run(t, "policy", "check", "--kubeconfig", kc, "--from", "web/frontend", "--to", c.to, "--json")
			if code != c.code {
				t.Errorf("--to %s: exit %d, want %d; stderr %s", c.to, code, c.code, errOut)
			}
			dec := json.NewDecoder(strings.NewReader(out))
			dec.DisallowUnknownFields()
			var got result
			if err := dec.Decode(&got); err != nil {
				t.Fatalf("--to %s: %v in\n%s", c.to, err, out)
			}
			if got.Source != c.want.Source || got.Destination != c.want.Destination || got.Allowed != c.want.Allowed || !slices.Equal(got.Ports, c.want.Ports) {
				t.Errorf("--to %s: got %+v, want %+v", c.to, got, c.want)
			}
		}
	})

	// Sources: the endpoints' identities (shop/api, shop/db, web/frontend)
	// and those the policies name (web/frontend, spiffe://cluster.local/vm/billing).
	// The API server's own Service default/kubernetes is not a destination:
	// no pod with the sidecar serves it, so it is not a mesh service.
	allRows := []string{
		"shop/api shop/db 5432 " + shopDefault,
		"shop/api web/frontend 80 mesh default allow-mesh",
		"shop/db shop/db 5432 " + shopDefault,
		"shop/db web/frontend 80 mesh default allow-mesh",
		"spiffe://cluster.local/vm/billing shop/api 80 " + byFrontendPolicy,
		"spiffe://cluster.local/vm/billing web/frontend 80 mesh default allow-mesh",
		"web/frontend shop/api 80 " + byFrontendPolicy,
		"web/frontend web/frontend 80 mesh default allow-mesh",
	}
	t.Run("graph", func(t *testing.T) {
		for _, c := range []struct {
			name string
			args []string
			rows []string
			note bool // about the assumed mesh default
		}{
			{"all", nil, allRows, true},
			{"namespace web", []string{"--namespace", "web"}, []string{
				"shop/api web/frontend 80 mesh default allow-mesh",
				"shop/db web/frontend 80 mesh default allow-mesh",
				"spiffe://cluster.local/vm/billing web/frontend 80 mesh default allow-mesh",
				"web/frontend shop/api 80 " + byFrontendPolicy,
				"web/frontend web/frontend 80 mesh default allow-mesh",
			}, true},
			{"namespace without pairs", []string{"--namespace", "ops"}, nil, false},
			{"mesh default deny", []string{"--default-policy", "deny"}, []string{
				"shop/api shop/db 5432 " + shopDefault,
				"shop/db shop/db 5432 " + shopDefault,
				"spiffe://cluster.local/vm/billing shop/api 80 " + byFrontendPolicy,
				"web/frontend shop/api 80 " + byFrontendPolicy,
			}, false},
		} {
			t.Run(c.name, func(t *testing.T) {
				out, errOut, code := run(t, append([]string{"policy", "graph", "--kubeconfig", kc}, c.args...)...)
				wantErr := ""
				if c.note {
					wantErr = assumedNote
				}
				if code != 0 || errOut != wantErr {
					t.Fatalf("exit %d, stderr %q, want %q", code, errOut, wantErr)
				}
				var got []string
				for r := range tableRows(t, out) {
					got = append(got, r)
				}
				slices.Sort(got)
				if !slices.Equal(got, c.rows) {
					t.Errorf("rows\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(c.rows, "\n"))
				}
			})
		}
		t.Run("dot", func(t *testing.T) {
			out, errOut, code := run(t, "policy", "graph", "--kubeconfig", kc, "--dot")
			if code != 0 || errOut != assumedNote {
				t.Fatalf("exit %d, stderr %s", code, errOut)
			}
			edges := dotEdges(t, out)
			if len(edges) != len(allRows) {
				t.Errorf("%d edges, want %d:\n%s", len(edges), len(allRows), out)
			}
			for _, want := range []string{
				`	"shop/api" [shape=box];`,
				`	"spiffe://cluster.local/vm/billing" [shape=ellipse];`,
				`	"web/frontend" -> "shop/api" [label="80", tooltip="` + byFrontendPolicy + `"];`,
				`	"shop/api" -> "shop/db" [label="5432", tooltip="namespace default same-namespace (annotation tether.dev/default-policy on shop)"];`,
			} {
				if !strings.Contains(out, want+"\n") {
					t.Errorf("missing line %s in\n%s", want, out)
				}
			}
			out, _, code = run(t, "policy", "graph", "--kubeconfig", kc, "--dot", "--namespace", "ops")
			if code != 0 || out != "digraph mesh {\n\trankdir=LR;\n}\n" {
				t.Errorf("empty graph: exit %d\n%s", code, out)
			}
		})
	})

	t.Run("errors", func(t *testing.T) {
		for _, c := range []struct {
			name string
			args []string
			code int
			want string
		}{
			{"unknown service", []string{"policy", "check", "--from", "web/frontend", "--to", "shop/cart:80"}, 1,
				"tether: service shop/cart does not exist in " + where + "; services in namespace shop: api, db; only Services with at least one Pod running tether-sidecar are mesh services\n"},
			{"unknown namespace", []string{"policy", "check", "--from", "web/frontend", "--to", "nowhere/cart"}, 1,
				"service nowhere/cart does not exist in " + where + "; there is no namespace nowhere"},
			{"namespace without services", []string{"policy", "check", "--from", "web/frontend", "--to", "ops/cart"}, 1,
				"service ops/cart does not exist in " + where + "; namespace ops has no services"},
			{"unknown port", []string{"policy", "check", "--from", "web/frontend", "--to", "shop/api:8080"}, 1,
				`service shop/api has no port "8080" in ` + where + " (ports: 80 (http), 9090 (grpc))"},
			{"bad from", []string{"policy", "check", "--from", "frontend", "--to", "shop/api"}, 2,
				`--from "frontend": want NAMESPACE/SERVICEACCOUNT or spiffe://...`},
			{"bad spiffe id", []string{"policy", "check", "--from", "spiffe://cluster.local/ns//sa/x", "--to", "shop/api"}, 2,
				`--from "spiffe://cluster.local/ns//sa/x": path cannot contain empty segments`},
			{"bad to", []string{"policy", "check", "--from", "web/frontend", "--to", "shop"}, 2,
				`--to "shop": want NAMESPACE/SERVICE[:PORT]`},
			{"graph unknown namespace", []string{"policy", "graph", "--namespace", "nowhere"}, 1,
				"namespace nowhere does not exist in " + where},
			{"no such context", []string{"policy", "graph", "--context", "prod"}, 1,
				`kubeconfig: context "prod" does not exist`},
			{"RBAC forbids everything", []string{"policy", "graph", "--context", "nobody"}, 1,
				`RBAC forbids reading the mesh: namespaces is forbidden: User "nobody" cannot list resource "namespaces" in API group "" at the cluster scope; the policy commands need list and watch`},
			{"RBAC forbids policies", []string{"policy", "check", "--context", "partial", "--from", "web/frontend", "--to", "shop/api"}, 1,
				`RBAC forbids reading the mesh: accesspolicies.tether.dev is forbidden: User "partial" cannot list resource "accesspolicies" in API group "tether.dev" at the cluster scope`},
		} {
			t.Run(c.name, func(t *testing.T) {
				args := append(slices.Clone(c.args[:2]), append([]string{"--kubeconfig", kc}, c.args[2:]...)...)
				out, errOut, code := run(t, args...)
				if code != c.code || !strings.Contains(errOut, c.want) {
					t.Errorf("exit %d (want %d), stderr %q, want it to contain %q", code, c.code, errOut, c.want)
				}
				if out != "" {
					t.Errorf("stdout %q", out)
				}
			})
		}
	})

	// Without --kubeconfig, $KUBECONFIG is read.
	t.Run("KUBECONFIG", func(t *testing.T) {
		t.Setenv("KUBECONFIG", kc)
		out, errOut, code := run(t, "policy", "check", "--from", "web/frontend", "--to", "shop/api:80")
		if code != 0 || out != "allowed web/frontend -> shop/api:80: "+byFrontendPolicy+"\n" {
			t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
		}
	})

	// A namespace annotation that is not a default is left out with a
	// warning on stderr, as tether-discovery does; the mesh default applies.
	t.Run("bad annotation", func(t *testing.T) {
		ns, err := env.Client.CoreV1().Namespaces().Get(ctx, "shop", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ns.Annotations[policy.DefaultPolicyAnnotation] = "open"
		if _, err := env.Client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		out, errOut, code := run(t, "policy", "check", "--kubeconfig", kc, "--from", "web/frontend", "--to", "shop/db", "--default-policy", "deny")
		if code != 1 || out != "denied web/frontend -> shop/db:5432: mesh default deny\n" {
			t.Errorf("exit %d, stdout %q", code, out)
		}
		for _, want := range []string{`level=WARN msg="ignoring namespace default policy; the mesh default applies"`,
			"namespace=shop", `unknown default policy \"open\"`} {
			if !strings.Contains(errOut, want) {
				t.Errorf("stderr %q does not contain %q", errOut, want)
			}
		}
	})
}

// TestPolicyKubeUnreachable points the policy commands at API servers that
// refuse connections or never answer.
func TestPolicyKubeUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "https://" + l.Addr().String()
	l.Close()

	// A server that accepts connections and never says a word.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	defer func() {
		silent.Close()
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	}()

	kc := writeKubeconfig(t, "closed", map[string]*rest.Config{
		"closed": {Host: closed},
		"silent": {Host: "https://" + silent.Addr().String()},
	})
	for _, c := range []struct {
		name string
		args []string
		want []string
		max  time.Duration
	}{
		{"refused", []string{"policy", "check", "--kubeconfig", kc, "--from", "a/b", "--to", "a/c"},
			[]string{`Kubernetes context "closed" at ` + closed + ": cannot reach the API server: ", "connection refused"}, 10 * time.Second},
		{"refused graph", []string{"policy", "graph", "--kubeconfig", kc},
			[]string{`Kubernetes context "closed" at ` + closed + ": cannot reach the API server: "}, 10 * time.Second},
		{"silent", []string{"policy", "check", "--kubeconfig", kc, "--context", "silent", "--timeout", "500ms", "--from", "a/b", "--to", "a/c"},
			[]string{`Kubernetes context "silent" at https://` + silent.Addr().String() + ": the API server did not answer within --timeout: "}, 5 * time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			out, errOut, code := run(t, c.args...)
			if took := time.Since(start); took > c.max {
				t.Errorf("took %v, want under %v", took, c.max)
			}
			if code != 1 || out != "" {
				t.Errorf("exit %d (want 1), stdout %q", code, out)
			}
			for _, w := range c.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr %q does not contain %q", errOut, w)
				}
			}
		})
	}
}

// TestPolicyNoSource checks the error when neither --mesh nor a cluster is
// given or found.
func TestPolicyNoSource(t *testing.T) {
	if _, err := os.Stat(clientcmd.RecommendedHomeFile); err == nil {
		t.Skipf("%s exists: the commands would read it", clientcmd.RecommendedHomeFile)
	}
	t.Setenv("KUBECONFIG", "")
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	for _, cmd := range [][]string{{"policy", "graph"}, {"policy", "check", "--from", "a/b", "--to", "a/c"}} {
		out, errOut, code := run(t, cmd...)
		want := "tether: no mesh to read: give --mesh FILE for a mesh.yaml, or --kubeconfig PATH for a cluster (there is no kubeconfig at " +
			clientcmd.RecommendedHomeFile + ", and this is not a pod of a cluster)"
		if code != 2 || out != "" || !strings.Contains(errOut, want) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit 2 and %q", cmd, code, out, errOut, want)
		}
	}
}
