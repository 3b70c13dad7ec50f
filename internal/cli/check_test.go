package cli_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/tether-mesh/tether/internal/check"
	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/pkg/inject"
)

// TestCheckCommand runs tether check against a real kube-apiserver: exit
// status 0 when no check fails, 1 when one does, 2 on bad usage, and the
// report as JSON and YAML. internal/check tests each check.
func TestCheckCommand(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"check", "--pre", "--proxy", "-n", "x"}, "give one or the other"},
		{[]string{"check", "--proxy"}, "--proxy needs the namespace to check: -n NAMESPACE"},
		{[]string{"check", "-n", "shop"}, "-n names the namespace of --proxy"},
		{[]string{"check", "--expiry-warning", "soon"}, `want a duration such as 30d`},
		{[]string{"check", "--expiry-warning", "-3d"}, `want a duration such as 30d`},
		{[]string{"check", "-o", "xml"}, `unknown output format "xml"`},
		{[]string{"check", "extra"}, "tether check takes no arguments"},
		{[]string{"check", "--pre", "--redirect-mode", "ebpf"}, `--redirect-mode "ebpf": want init or cni`},
		{[]string{"check", "--redirect-mode", "cni"}, "--redirect-mode goes with --pre"},
	} {
		_, errOut, code := run(t, tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) || !strings.Contains(errOut, "Run 'tether check --help' for usage.") {
			t.Errorf("%q: exit %d, stderr %q; want 2 and %q", tc.args, code, errOut, tc.want)
		}
	}

	env := kubetest.Start(t)
	admin := writeKubeconfig(t, "test", map[string]*rest.Config{"test": env.Config})

	// An empty cluster can run Tether: exit 0.
	out, errOut, code := run(t, "check", "--pre", "--kubeconfig", admin)
	if code != 0 || !strings.Contains(out, "[ok]   kubernetes-version: Kubernetes v1.") || !strings.Contains(out, "passed: 4 ok, 0 warning(s), 0 failure(s)") {
		t.Errorf("check --pre: exit %d\n%s\n%s", code, out, errOut)
	}
	// A caller without the permissions: exit 1, the report on stdout.
	nobody := writeKubeconfig(t, "nobody", map[string]*rest.Config{"nobody": env.UserConfig(t, "nobody")})
	out, errOut, code = run(t, "check", "--pre", "--kubeconfig", nobody, "-o", "json")
	var rep check.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("check --pre -o json: %v\n%s", err, out)
	}
	if code != 1 || rep.Mode != "pre" || rep.Failures == 0 || rep.Find("permissions") == nil || rep.Find("permissions").Result != check.Fail ||
		!strings.Contains(errOut, "tether: a check failed:") {
		t.Errorf("check --pre as nobody: exit %d, %+v, stderr %q", code, rep, errOut)
	}

	// Nothing installed: tether check fails, each failure with its hint;
	// the same as YAML.
	out, _, code = run(t, "check", "--kubeconfig", admin, "-o", "yaml")
	rep = check.Report{}
	if err := yaml.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("check -o yaml: %v\n%s", err, out)
	}
	if code != 1 || rep.Mode != "install" || rep.Find("crds") == nil || rep.Find("crds").Result != check.Fail || rep.Find("crds").Hint == "" {
		t.Errorf("check with nothing installed: exit %d, %+v", code, rep)
	}

	// --proxy of a labelled namespace without pods passes.
	ns := env.EnsureNamespace(t, "shop")
	ns.Labels = map[string]string{inject.InjectLabel: "enabled"}
	if _, err := env.Client.CoreV1().Namespaces().Update(context.Background(), ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = run(t, "check", "--proxy", "-n", "shop", "--kubeconfig", admin)
	if code != 0 || !strings.Contains(out, "namespace shop is labelled tether.dev/inject=enabled") {
		t.Errorf("check --proxy -n shop: exit %d\n%s\n%s", code, out, errOut)
	}
	out, _, code = run(t, "check", "--proxy", "-n", "nowhere", "--kubeconfig", admin)
	if code != 1 || !strings.Contains(out, "[FAIL] namespace-labelled: no namespace nowhere") {
		t.Errorf("check --proxy -n nowhere: exit %d\n%s", code, out)
	}
}
