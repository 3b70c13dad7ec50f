package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/tether-mesh/tether/internal/version"
)

// repoRoot is the repository's root, from this package's folder.
const repoRoot = "../.."

func renderT(t *testing.T, o Options) []*unstructured.Unstructured {
	t.Helper()
	objs, err := Render(o)
	if err != nil {
		t.Fatalf("Render(%+v): %v", o, err)
	}
	return objs
}

func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

// container returns the first container of a Deployment.
func container(t *testing.T, objs []*unstructured.Unstructured, deploy string) map[string]any {
	t.Helper()
	d := find(objs, "Deployment", deploy)
	if d == nil {
		t.Fatalf("no Deployment %s", deploy)
	}
	ctrs, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
	return ctrs[0].(map[string]any)
}

func args(t *testing.T, objs []*unstructured.Unstructured, deploy string) []string {
	t.Helper()
	var out []string
	for _, a := range container(t, objs, deploy)["args"].([]any) {
		out = append(out, a.(string))
	}
	return out
}

func replicas(t *testing.T, objs []*unstructured.Unstructured, deploy string) string {
	t.Helper()
	r, _, _ := unstructured.NestedFieldNoCopy(find(objs, "Deployment", deploy).Object, "spec", "replicas")
	return fmt.Sprint(r)
}

func TestChartAppVersionIsTheCLIVersion(t *testing.T) {
	c, err := Chart()
	if err != nil {
		t.Fatal(err)
	}
	if c.Metadata.AppVersion != version.Version {
		t.Errorf("charts/tether/Chart.yaml appVersion %q, internal/version.Version %q: set both to the release", c.Metadata.AppVersion, version.Version)
	}
	if c.Metadata.APIVersion != "v2" || c.Metadata.Name != "tether" {
		t.Errorf("chart %s apiVersion %s, want tether v2", c.Metadata.Name, c.Metadata.APIVersion)
	}
	var crdFiles []string
	for _, o := range c.CRDObjects() {
		crdFiles = append(crdFiles, o.Filename)
	}
	if want := []string{"tether/crds/tether.dev_accesspolicies.yaml", "tether/crds/tether.dev_remoteservices.yaml", "tether/crds/tether.dev_trustdomainfederations.yaml"}; !slices.Equal(crdFiles, want) {
		t.Errorf("CRDs of the chart: %v, want %v", crdFiles, want)
	}
}

func TestRenderDefaults(t *testing.T) {
	objs := renderT(t, Options{})
	image := "tether:" + version.Version
	for _, d := range []string{"tether-ca", "tether-discovery", "tether-injector"} {
		c := container(t, objs, d)
		if c["image"] != image || c["imagePullPolicy"] != "IfNotPresent" {
			t.Errorf("%s: image %v (%v), want %s (IfNotPresent)", d, c["image"], c["imagePullPolicy"], image)
		}
		if replicas(t, objs, d) != "2" {
			t.Errorf("%s: %s replicas, want 2", d, replicas(t, objs, d))
		}
		if !slices.Contains(args(t, objs, d), "--trust-domain=cluster.local") {
			t.Errorf("%s: args %v lack --trust-domain=cluster.local", d, args(t, objs, d))
		}
	}
	env, _ := json.Marshal(container(t, objs, "tether-injector")["env"])
	if !strings.Contains(string(env), `{"name":"TETHER_IMAGE","value":"`+image+`"}`) {
		t.Errorf("injector env %s: TETHER_IMAGE is not %s", env, image)
	}
	if ns := find(objs, "Namespace", Namespace); ns == nil || ns.GetLabels()["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Errorf("no Namespace %s labelled restricted: %v", Namespace, ns)
	}
	for _, o := range objs {
		if o.GetKind() == kindCRD {
			t.Errorf("tether install without --crds prints CRD %s", o.GetName())
		}
		if o.GetAPIVersion() == "cert-manager.io/v1" {
			t.Errorf("default values render cert-manager's %s %s", o.GetKind(), o.GetName())
		}
	}
	if find(objs, "ClusterRole", "tether-injector") == nil || find(objs, "Role", "tether-injector") == nil {
		t.Error("self-managed injector lacks its RBAC")
	}
	if !slices.Contains(args(t, objs, "tether-discovery"), "--default-policy=allow-mesh") {
		t.Errorf("discovery args %v", args(t, objs, "tether-discovery"))
	}
	ca := args(t, objs, "tether-ca")
	for _, a := range ca {
		if strings.HasPrefix(a, "--svid-ttl") || strings.HasPrefix(a, "--propagation-delay") || strings.HasPrefix(a, "--auto-rotate") || strings.HasPrefix(a, "--upstream-issuer") {
			t.Errorf("default tether-ca args carry %s", a)
		}
	}
	// Install order: the Namespace first, the webhook after the Deployments.
	if objs[0].GetKind() != kindNamespace || objs[len(objs)-1].GetKind() != kindWebhook {
		t.Errorf("order: first %s, last %s", objs[0].GetKind(), objs[len(objs)-1].GetKind())
	}

	crds := renderT(t, Options{CRDs: true})
	var crdNames []string
	for _, o := range crds {
		if o.GetKind() == kindCRD {
			crdNames = append(crdNames, o.GetName())
		}
	}
	if want := []string{"accesspolicies.tether.dev", "remoteservices.tether.dev", "trustdomainfederations.tether.dev"}; len(crds) != len(want) || !slices.Equal(crdNames, want) {
		t.Errorf("--crds renders %d objects, CRDs %v, want %v", len(crds), crdNames, want)
	}
}

func TestRenderValues(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	first := write("first.yaml", "ca: {replicas: 3, svidTTL: 1m}\ntrustDomain: first.example\n")
	second := write("second.yaml", "ca: {replicas: 4}\ndiscovery: {replicas: 5}\n")

	// Helm's precedence: files in order (deep merge), then --set, then --set-string.
	objs := renderT(t, Options{Values: Values{
		Files:     []string{first, second},
		Set:       []string{"discovery.replicas=6,injector.replicas=7", "image.tag=1.2.3"},
		SetString: []string{"image.tag=9.9.9"},
	}})
	if replicas(t, objs, "tether-ca") != "4" || replicas(t, objs, "tether-discovery") != "6" || replicas(t, objs, "tether-injector") != "7" {
		t.Errorf("replicas ca %s discovery %s injector %s, want 4 6 7", replicas(t, objs, "tether-ca"), replicas(t, objs, "tether-discovery"), replicas(t, objs, "tether-injector"))
	}
	ca := args(t, objs, "tether-ca")
	if !slices.Contains(ca, "--svid-ttl=1m") || !slices.Contains(ca, "--trust-domain=first.example") {
		t.Errorf("values of the first file lost: %v", ca)
	}
	if img := container(t, objs, "tether-ca")["image"]; img != "tether:9.9.9" {
		t.Errorf("image %v, want --set-string over --set: tether:9.9.9", img)
	}

	// The real-node story's values (test/cluster/testdata/values.yaml).
	objs = renderT(t, Options{Values: Values{Files: []string{filepath.Join(repoRoot, "test/cluster/testdata/values.yaml")}}})
	ca = args(t, objs, "tether-ca")
	for _, want := range []string{"--svid-ttl=1m", "--propagation-delay=10s", "--auto-rotate=false"} {
		if !slices.Contains(ca, want) {
			t.Errorf("story values: tether-ca args %v lack %s", ca, want)
		}
	}

	objs = renderT(t, Options{Values: Values{Set: []string{
		"image.repository=registry.example/tether", "image.digest=sha256:" + strings.Repeat("ab", 32),
		"defaultPolicy=deny", "namespace.create=false", "ca.resources.limits.memory=1Gi",
	}}})
	want := "registry.example/tether@sha256:" + strings.Repeat("ab", 32)
	if img := container(t, objs, "tether-injector")["image"]; img != want {
		t.Errorf("image %v, want %s", img, want)
	}
	if !slices.Contains(args(t, objs, "tether-discovery"), "--default-policy=deny") {
		t.Errorf("discovery args %v", args(t, objs, "tether-discovery"))
	}
	if find(objs, "Namespace", Namespace) != nil {
		t.Error("namespace.create=false still renders the Namespace")
	}
	res, _ := json.Marshal(container(t, objs, "tether-ca")["resources"])
	if string(res) != `{"limits":{"memory":"1Gi"},"requests":{"cpu":"100m","memory":"64Mi"}}` {
		t.Errorf("ca resources %s", res)
	}
}

func TestRenderCertManager(t *testing.T) {
	objs := renderT(t, Options{Values: Values{Set: []string{"certManager.enabled=true"}}})
	if !slices.Contains(args(t, objs, "tether-ca"), "--upstream-issuer=Issuer/tether-root") {
		t.Errorf("tether-ca args %v", args(t, objs, "tether-ca"))
	}
	inj := args(t, objs, "tether-injector")
	if !slices.Contains(inj, "--tls-cert-file=/etc/tether-injector/tls/tls.crt") || !slices.Contains(inj, "--tls-key-file=/etc/tether-injector/tls/tls.key") {
		t.Errorf("injector args %v", inj)
	}
	for _, n := range []string{"tether-selfsigned", "tether-root"} {
		if find(objs, "Issuer", n) == nil {
			t.Errorf("no Issuer %s", n)
		}
	}
	if find(objs, "Certificate", "tether-injector") == nil || find(objs, "Role", "tether-ca-upstream") == nil || find(objs, "RoleBinding", "tether-ca-upstream") == nil {
		t.Error("no injector Certificate or tether-ca-upstream RBAC")
	}
	for _, k := range []string{"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} {
		if find(objs, k, "tether-injector") != nil {
			t.Errorf("with cert-manager the injector needs no %s", k)
		}
	}
	if a := find(objs, kindWebhook, "tether-injector").GetAnnotations()["cert-manager.io/inject-ca-from"]; a != "tether-system/tether-injector" {
		t.Errorf("webhook inject-ca-from %q", a)
	}

	// An issuer of the operator's own.
	objs = renderT(t, Options{Values: Values{Set: []string{"certManager.enabled=true,certManager.createIssuers=false,certManager.issuer.kind=ClusterIssuer,certManager.issuer.name=corp-ca"}}})
	if find(objs, "Issuer", "tether-root") != nil || find(objs, "Certificate", "tether-root") != nil {
		t.Error("createIssuers=false still creates the issuers")
	}
	if !slices.Contains(args(t, objs, "tether-ca"), "--upstream-issuer=ClusterIssuer/corp-ca") {
		t.Errorf("tether-ca args %v", args(t, objs, "tether-ca"))
	}
	ref, _, _ := unstructured.NestedStringMap(find(objs, "Certificate", "tether-injector").Object, "spec", "issuerRef")
	if ref["kind"] != "ClusterIssuer" || ref["name"] != "corp-ca" {
		t.Errorf("injector Certificate issuerRef %v", ref)
	}
}

// TestBadInput: every kind of bad input fails, naming what is wrong.
func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	notMap := filepath.Join(dir, "list.yaml")
	if err := os.WriteFile(notMap, []byte("- a\n- b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	unreadable := filepath.Join(dir, "unreadable.yaml")
	if err := os.WriteFile(unreadable, []byte("ca: {replicas: 3}\n"), 0o000); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		o    Options
		want []string
	}{
		{"unknown key", Options{Values: Values{Set: []string{"replica=3"}}}, []string{"additional properties 'replica' not allowed", "values.schema.json"}},
		{"unknown nested key", Options{Values: Values{Set: []string{"ca.svidTtl=1m"}}}, []string{"/ca", "additional properties 'svidTtl' not allowed"}},
		{"wrong type", Options{Values: Values{Set: []string{"ca.replicas=two"}}}, []string{"/ca/replicas", "want integer"}},
		{"zero replicas", Options{Values: Values{Set: []string{"injector.replicas=0"}}}, []string{"/injector/replicas", "minimum"}},
		{"string where a number goes", Options{Values: Values{SetString: []string{"ca.replicas=3"}}}, []string{"/ca/replicas", "want integer"}},
		{"bad duration", Options{Values: Values{Set: []string{"ca.svidTTL=5 minutes"}}}, []string{"/ca/svidTTL", "does not match pattern"}},
		{"bad policy", Options{Values: Values{Set: []string{"defaultPolicy=allow-all"}}}, []string{"/defaultPolicy", "allow-mesh"}},
		{"bad policy mode", Options{Values: Values{Set: []string{"discovery.defaultPolicyMode=Audit"}}}, []string{"/discovery/defaultPolicyMode", "enforce", "audit"}},
		{"bad digest", Options{Values: Values{Set: []string{"image.digest=latest"}}}, []string{"/image/digest"}},
		{"bad issuer kind", Options{Values: Values{Set: []string{"certManager.issuer.kind=Vault"}}}, []string{"/certManager/issuer/kind"}},
		{"issuer without createIssuers=false", Options{Values: Values{Set: []string{"certManager.enabled=true,certManager.issuer.name=corp"}}}, []string{"certManager.issuer Issuer/corp", "certManager.createIssuers=false"}},
		{"malformed --set", Options{Values: Values{Set: []string{"ca.replicas"}}}, []string{`--set "ca.replicas"`, "no value", "key=value"}},
		{"malformed --set-string", Options{Values: Values{SetString: []string{"ca[x]=1"}}}, []string{`--set-string "ca[x]=1"`, "key=value"}},
		{"missing -f", Options{Values: Values{Files: []string{filepath.Join(dir, "nope.yaml")}}}, []string{"values file " + filepath.Join(dir, "nope.yaml"), "no such file"}},
		{"-f a directory", Options{Values: Values{Files: []string{dir}}}, []string{"values file " + dir, "is a directory"}},
		{"-f not a map", Options{Values: Values{Files: []string{notMap}}}, []string{"values file " + notMap, "not a YAML map"}},
		{"other namespace", Options{Namespace: "mesh"}, []string{`namespace "mesh"`, "runs only in tether-system"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Render(c.o)
			if err == nil {
				t.Fatalf("Render(%+v) succeeded", c.o)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			var ie *InputError
			if !errors.As(err, &ie) {
				t.Errorf("%v is not an InputError", err)
			}
			if _, err := Uninstall(c.o); err == nil {
				t.Errorf("Uninstall(%+v) succeeded", c.o)
			}
		})
	}
	if os.Geteuid() != 0 { // root reads any file
		if _, err := Render(Options{Values: Values{Files: []string{unreadable}}}); err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("unreadable -f: %v", err)
		}
	}
}

func TestUninstallOrder(t *testing.T) {
	for _, cm := range []bool{false, true} {
		o := Options{Values: Values{Set: []string{fmt.Sprintf("certManager.enabled=%t", cm)}}}
		objs, err := Uninstall(o)
		if err != nil {
			t.Fatal(err)
		}
		installed := renderT(t, o)
		if !sameSet(ids(objs), ids(installed)) {
			t.Errorf("cert-manager %t: uninstall deletes %v, install applies %v", cm, ids(objs), ids(installed))
		}
		if objs[0].GetKind() != kindWebhook || objs[len(objs)-1].GetKind() != kindNamespace {
			t.Errorf("cert-manager %t: uninstall order %v: want the webhook first, the Namespace last", cm, ids(objs))
		}
		for _, o := range objs {
			if o.GetKind() == kindCRD {
				t.Error("uninstall without --crds deletes the CRD")
			}
		}
		o.CRDs = true
		objs, err = Uninstall(o)
		if err != nil {
			t.Fatal(err)
		}
		n := len(objs)
		const crds = 3 // AccessPolicy, RemoteService, TrustDomainFederation
		if objs[0].GetKind() != kindWebhook || objs[n-crds-1].GetKind() != kindNamespace ||
			slices.ContainsFunc(objs[n-crds:], func(o *unstructured.Unstructured) bool { return o.GetKind() != kindCRD }) {
			t.Errorf("uninstall --crds order %v: want the webhook first, the Namespace, then the %d CRDs", ids(objs), crds)
		}
	}
}

// TestWrite: the output decodes to the same objects, and is the same bytes
// every time.
func TestWrite(t *testing.T) {
	objs := renderT(t, Options{Values: Values{Set: []string{"certManager.enabled=true"}}})
	var a, b bytes.Buffer
	if err := Write(&a, objs); err != nil {
		t.Fatal(err)
	}
	if err := Write(&b, renderT(t, Options{Values: Values{Set: []string{"certManager.enabled=true"}}})); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("two renders of the same values differ")
	}
	back, err := Decode(a.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := canonical(t, back), canonical(t, objs); !slices.Equal(got, want) {
		t.Error("Write's output does not decode to the objects written")
	}
	if !strings.HasPrefix(a.String(), "---\n# Namespace tether-system\napiVersion: v1\n") {
		t.Errorf("output starts %q", a.String()[:60])
	}
}

// TestGeneratedManifestsAreCurrent: manifests/base and
// manifests/overlays/cert-manager are what `make manifests` writes.
func TestGeneratedManifestsAreCurrent(t *testing.T) {
	files, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(repoRoot, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s is not generated from charts/tether as it is now (%v): run `%s` and commit the result", name, err, GenerateCommand)
		}
	}
}

// canonical returns each object as canonical JSON (keys sorted), sorted.
func canonical(t *testing.T, objs []*unstructured.Unstructured) []string {
	t.Helper()
	var out []string
	for _, o := range objs {
		data, err := json.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(data))
	}
	slices.Sort(out)
	return out
}

func ids(objs []*unstructured.Unstructured) []string {
	var out []string
	for _, o := range objs {
		out = append(out, o.GetKind()+" "+filepath.Join(o.GetNamespace(), o.GetName()))
	}
	return out
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// diff names the objects in which two canonical sets differ.
func diff(a, b []string) string {
	var out []string
	for _, s := range a {
		if !slices.Contains(b, s) {
			out = append(out, "only in the first: "+short(s))
		}
	}
	for _, s := range b {
		if !slices.Contains(a, s) {
			out = append(out, "only in the second: "+short(s))
		}
	}
	return strings.Join(out, "\n")
}

func short(s string) string {
	var m map[string]any
	if err := yaml.Unmarshal([]byte(s), &m); err != nil {
		return s
	}
	u := unstructured.Unstructured{Object: m}
	return u.GetKind() + " " + u.GetName()
}

// TestRenderCNIMode: injector.redirectMode=cni puts the injector in CNI
// mode and adds the node agent, outside tether-system, with the node's CNI
// directories and credentials that may get pods and nothing else; the
// default (init) renders none of it.
func TestRenderCNIMode(t *testing.T) {
	for _, o := range renderT(t, Options{}) {
		if strings.HasPrefix(o.GetName(), "tether-cni") {
			t.Errorf("init mode renders %s %s", o.GetKind(), o.GetName())
		}
	}
	if slices.ContainsFunc(args(t, renderT(t, Options{}), "tether-injector"), func(a string) bool { return strings.HasPrefix(a, "--redirect-mode") }) {
		t.Error("init mode passes --redirect-mode: existing installs would change")
	}

	objs := renderT(t, Options{Values: Values{Set: []string{"injector.redirectMode=cni", "cni.binDir=/home/kubernetes/bin"}}})
	if !slices.Contains(args(t, objs, "tether-injector"), "--redirect-mode=cni") {
		t.Errorf("injector args %v lack --redirect-mode=cni", args(t, objs, "tether-injector"))
	}
	ds := find(objs, "DaemonSet", "tether-cni-node")
	if ds == nil || ds.GetNamespace() != "kube-system" {
		t.Fatalf("no DaemonSet tether-cni-node in kube-system: %v", ds)
	}
	spec, _, _ := unstructured.NestedMap(ds.Object, "spec", "template", "spec")
	js, _ := json.Marshal(spec)
	for _, want := range []string{
		`"serviceAccountName":"tether-cni-node"`,
		`"image":"tether:` + version.Version + `"`,
		`"hostPath":{"path":"/etc/cni/net.d","type":"DirectoryOrCreate"}`,
		`"hostPath":{"path":"/home/kubernetes/bin","type":"DirectoryOrCreate"}`,
		`"readinessProbe":{"httpGet":{"path":"/readyz","port":"admin"}`,
		`"command":["tether-cni-node"]`,
		`"--host-cni-conf-dir=/etc/cni/net.d"`,
		`"--exclude-namespaces=kube-system,tether-system"`,
		`"--uninstall-on-exit"`,
		`"--daemonset=tether-cni-node"`,
		`{"name":"NODE_NAME","valueFrom":{"fieldRef":{"fieldPath":"spec.nodeName"}}}`,
		`"capabilities":{"drop":["ALL"]}`,
		`"allowPrivilegeEscalation":false`,
	} {
		if !strings.Contains(string(js), want) {
			t.Errorf("DaemonSet pod spec lacks %s:\n%s", want, js)
		}
	}
	if sa := find(objs, "ServiceAccount", "tether-cni-node"); sa == nil || sa.GetNamespace() != "kube-system" {
		t.Errorf("no ServiceAccount tether-cni-node in kube-system: %v", sa)
	}
	rules, _, _ := unstructured.NestedSlice(find(objs, "ClusterRole", "tether-cni-node").Object, "rules")
	if got, _ := json.Marshal(rules); string(got) != `[{"apiGroups":[""],"resources":["pods"],"verbs":["get"]}]` {
		t.Errorf("tether-cni-node may %s, want get pods only", got)
	}
	rules, _, _ = unstructured.NestedSlice(find(objs, "Role", "tether-cni-node").Object, "rules")
	if got, _ := json.Marshal(rules); string(got) != `[{"apiGroups":[""],"resourceNames":["tether-cni-node"],"resources":["serviceaccounts/token"],"verbs":["create"]},`+
		`{"apiGroups":["apps"],"resourceNames":["tether-cni-node"],"resources":["daemonsets"],"verbs":["get"]}]` {
		t.Errorf("tether-cni-node may, in its namespace, %s; want create its own token and get its own DaemonSet only", got)
	}
	crb := find(objs, "ClusterRoleBinding", "tether-cni-node")
	subj, _, _ := unstructured.NestedSlice(crb.Object, "subjects")
	if got, _ := json.Marshal(subj); string(got) != `[{"kind":"ServiceAccount","name":"tether-cni-node","namespace":"kube-system"}]` {
		t.Errorf("binding subjects %s", got)
	}
	// tether-system stays restricted.
	if ns := find(objs, "Namespace", Namespace); ns.GetLabels()["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Errorf("CNI mode changed tether-system's Pod Security: %v", ns.GetLabels())
	}
	objs = renderT(t, Options{Values: Values{Set: []string{"injector.redirectMode=cni", "cni.namespace=tether-cni", "cni.confDir=/var/lib/cni/net.d"}}})
	ds = find(objs, "DaemonSet", "tether-cni-node")
	js, _ = json.Marshal(ds.Object)
	for _, want := range []string{`"--exclude-namespaces=kube-system,tether-system,tether-cni"`, `"--host-cni-conf-dir=/var/lib/cni/net.d"`, `"path":"/var/lib/cni/net.d"`} {
		if !strings.Contains(string(js), want) || ds.GetNamespace() != "tether-cni" {
			t.Errorf("cni.namespace=tether-cni, cni.confDir=/var/lib/cni/net.d: DaemonSet in %s lacks %s", ds.GetNamespace(), want)
		}
	}
	un, err := Uninstall(Options{Values: Values{Set: []string{"injector.redirectMode=cni"}}})
	if err != nil || find(un, "DaemonSet", "tether-cni-node") == nil {
		t.Errorf("uninstall in CNI mode does not remove the node agent: %v", err)
	}

	for _, c := range []struct{ set, want string }{
		{"injector.redirectMode=ebpf", "/injector/redirectMode"},
		{"injector.redirectMode=cni,cni.namespace=tether-system", "Pod Security restricted refuses"},
		{"cni.confDir=etc/cni", "/cni/confDir"},
		{"cni.namespace=Kube_System", "/cni/namespace"},
	} {
		if _, err := Render(Options{Values: Values{Set: []string{c.set}}}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("--set %s: %v, want an error saying %q", c.set, err, c.want)
		}
	}
}
