package cli_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
)

// TestPolicyWhyKube runs `tether policy why` against a real
// kube-apiserver: pods are resolved through the API (a pod that backs no
// Service is a caller too; one without the sidecar has no identity), with
// the RBAC the docs give.
func TestPolicyWhyKube(t *testing.T) {
	env := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	grant(ctx, t, env, "reader", kubeReadRules)
	kc := writeKubeconfig(t, "admin", map[string]*rest.Config{"admin": env.Config, "reader": env.UserConfig(t, "reader")})
	where := `Kubernetes context "admin" at ` + env.Config.Host
	env.InstallCRD(t, filepath.Join("..", "..", "manifests", "crds", "accesspolicies.tether.dev.yaml"))
	env.InstallCRD(t, filepath.Join("..", "..", "manifests", "crds", "remoteservices.tether.dev.yaml"))
	createMesh(ctx, t, env)
	env.EnsureMeshPod(t, "ops", "monitor", "twin")
	env.EnsureMeshPod(t, "web", "frontend", "twin")
	env.EnsurePod(t, "web", "legacy", "plain-1")
	dc, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	audit := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": policy.SchemeGroupVersion.String(), "kind": policy.Kind,
		"metadata": map[string]any{"name": "frontend-audit", "namespace": "web"},
		"spec": map[string]any{"mode": "Audit", "destination": map[string]any{"service": "frontend"},
			"sources": []any{map[string]any{"namespace": "shop"}}},
	}}
	if _, err := dc.Resource(policy.SchemeGroupVersionResource).Namespace("web").Create(ctx, audit, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name      string
		args      []string
		code      int
		source    string
		srcPod    string
		calls     []string // "<dest> <allowed> <component>"
		stderrHas string
	}{
		{"pod without a Service", []string{"--from", "mon-1", "--to", "shop/api"}, 0, "spiffe://cluster.local/ns/ops/sa/monitor", "ops/mon-1",
			[]string{"shop/api:80 true ", "shop/api:9090 true "}, ""},
		{"pod caller, denied port", []string{"--from", "front-1", "--to", "shop/api:grpc"}, 1, "spiffe://cluster.local/ns/web/sa/frontend", "web/front-1",
			[]string{"shop/api:9090 false caller-sidecar"}, "may not reach shop/api on 1 of 1 port(s)"},
		{"namespace annotation hides the service", []string{"--from", "web/frontend", "--to", "shop/db"}, 1, "spiffe://cluster.local/ns/web/sa/frontend", "",
			[]string{"shop/db:5432 false caller-dns"}, ""},
		{"pod callee by endpoint address", []string{"--from", "web/frontend", "--to", "shop/pod/api-1:8080"}, 0, "spiffe://cluster.local/ns/web/sa/frontend", "",
			[]string{"10.1.0.1:8080 true "}, ""},
		{"qualified pod", []string{"--from", "ops/pod/twin", "--to", "shop/api:9090"}, 0, "spiffe://cluster.local/ns/ops/sa/monitor", "ops/twin",
			[]string{"shop/api:9090 true "}, ""},
		{"pod without the sidecar", []string{"--from", "plain-1", "--to", "shop/api:80"}, 1, "", "web/plain-1",
			[]string{"shop/api:80 false destination-sidecar"}, ""},
		{"audit-mode policy", []string{"--from", "mon-1", "--to", "web/frontend"}, 0, "spiffe://cluster.local/ns/ops/sa/monitor", "ops/mon-1",
			[]string{"web/frontend:80 true audit-deny"}, ""},
		{"the documented RBAC", []string{"--context", "reader", "--from", "mon-1", "--to", "shop/api:80"}, 0, "spiffe://cluster.local/ns/ops/sa/monitor", "ops/mon-1",
			[]string{"shop/api:80 true "}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := run(t, append([]string{"policy", "why", "--kubeconfig", kc, "-o", "json"}, c.args...)...)
			if code != c.code || !strings.Contains(errOut, c.stderrHas) {
				t.Fatalf("exit %d (want %d), stderr %q (want it to contain %q)", code, c.code, errOut, c.stderrHas)
			}
			w := decodeWhy(t, out)
			if w.Source != c.source || podName(w.SourcePod) != c.srcPod {
				t.Errorf("source %q pod %q, want %q %q", w.Source, podName(w.SourcePod), c.source, c.srcPod)
			}
			var got []string
			for _, call := range w.Calls {
				dest := call.PodAddress
				if call.Service != "" {
					dest = call.Service + ":" + itoa(call.Port)
				}
				component := ""
				switch {
				case call.RefusedBy != nil:
					component = call.RefusedBy.Component
				case call.AuditDenied:
					component = "audit-deny"
				}
				got = append(got, dest+" "+map[bool]string{true: "true", false: "false"}[call.Allowed]+" "+component)
			}
			if strings.Join(got, "\n") != strings.Join(c.calls, "\n") {
				t.Errorf("calls\n%s\nwant\n%s\n%s", strings.Join(got, "\n"), strings.Join(c.calls, "\n"), out)
			}
		})
	}

	t.Run("pod without the sidecar, text", func(t *testing.T) {
		out, _, code := run(t, "policy", "why", "--kubeconfig", kc, "--from", "plain-1", "--to", "shop/api:80")
		for _, want := range []string{
			"caller: pod web/plain-1, service account legacy; it has no tether-sidecar: its calls carry no identity\n",
			"denied pod web/plain-1 -> shop/api:80 (http)\n  rule: source has no SPIFFE ID\n",
			"who refuses: the destination's sidecar (inbound)",
		} {
			if code != 1 || !strings.Contains(out, want) {
				t.Errorf("exit %d, no %q in\n%s", code, want, out)
			}
		}
	})

	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"ambiguous pod", []string{"--from", "twin", "--to", "shop/api"}, 2,
			"--from twin is ambiguous in " + where + ": it names ops/pod/twin (spiffe://cluster.local/ns/ops/sa/monitor), web/pod/twin (spiffe://cluster.local/ns/web/sa/frontend); give one of them"},
		{"unknown pod", []string{"--from", "ghost-1", "--to", "shop/api"}, 1, "--from ghost-1: no pod ghost-1 in " + where + "; give NAME or NAMESPACE/pod/NAME of a pod"},
		{"pod in another namespace", []string{"--from", "web/frontend", "--to", "web/pod/api-1:8080"}, 1, "--to web/pod/api-1: no pod api-1 in " + where},
		{"pod without the sidecar as callee", []string{"--from", "web/frontend", "--to", "plain-1:80"}, 1, "pod web/plain-1 has no tether-sidecar"},
		{"pod without an address", []string{"--from", "web/frontend", "--to", "mon-1:80"}, 1, "pod ops/mon-1 has no address yet"},
		{"unknown namespace", []string{"--from", "web/frontend", "--to", "nowhere/x"}, 1, "service nowhere/x does not exist in " + where + "; there is no namespace nowhere"},
		{"unknown port", []string{"--from", "web/frontend", "--to", "shop/api:7"}, 1, `service shop/api has no port "7"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := run(t, append([]string{"policy", "why", "--kubeconfig", kc}, c.args...)...)
			if code != c.code || !strings.Contains(errOut, c.want) || out != "" {
				t.Errorf("exit %d (want %d), stdout %q, stderr %q; want it to contain %q", code, c.code, out, errOut, c.want)
			}
		})
	}
}
