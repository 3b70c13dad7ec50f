package install

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// variants are the values compared three ways: the chart's defaults, the
// cert-manager variant and the CNI-mode variant, each with the kustomize folder generated from it.
var variants = []struct {
	name, kustomize string
	set             []string
}{
	{"default", "manifests/base", nil},
	{"cert-manager", "manifests/overlays/cert-manager", []string{"certManager.enabled=true"}},
	{"cni", "manifests/overlays/cni", []string{"injector.redirectMode=cni"}},
}

// installed is what `tether install --crds` and `tether install` print,
// together.
func installed(t *testing.T, set []string) []*unstructured.Unstructured {
	t.Helper()
	return append(renderT(t, Options{CRDs: true, Values: Values{Set: set}}), renderT(t, Options{Values: Values{Set: set}})...)
}

// TestKustomizeRendersTheSameObjects: kustomize build of the generated
// folders (the library kubectl -k uses) gives the objects tether install
// gives, byte for byte as canonical JSON.
func TestKustomizeRendersTheSameObjects(t *testing.T) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), filepath.Join(repoRoot, v.kustomize))
			if err != nil {
				t.Fatalf("kustomize build %s: %v", v.kustomize, err)
			}
			out, err := rm.AsYaml()
			if err != nil {
				t.Fatal(err)
			}
			k, err := Decode(out)
			if err != nil {
				t.Fatal(err)
			}
			got, want := canonical(t, k), canonical(t, installed(t, v.set))
			if d := diff(got, want); d != "" {
				t.Errorf("kustomize build %s (first) and tether install --crds + tether install (second) differ; run `%s`:\n%s", v.kustomize, GenerateCommand, d)
			}
		})
	}
}

// helmBinary returns the helm that hack/kube/build.sh builds
// ($TETHER_KUBE_BIN_DIR/helm, default .cache/kube/bin/helm), skipping the
// test when it is missing, or failing it under CI or TETHER_REQUIRE_KUBE=1.
func helmBinary(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("TETHER_KUBE_BIN_DIR")
	if dir == "" {
		dir = filepath.Join(repoRoot, ".cache/kube/bin")
	}
	bin, err := filepath.Abs(filepath.Join(dir, "helm"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		msg := "no helm binary (" + err.Error() + "); build it with `make kube-bins` (hack/kube/build.sh helm)"
		for _, env := range []string{"CI", "TETHER_REQUIRE_KUBE"} {
			if b, _ := strconv.ParseBool(os.Getenv(env)); b {
				t.Fatal(msg + " (" + env + " is set, so this is a failure)")
			}
		}
		t.Skip(msg)
	}
	return bin
}

// helm runs the helm binary in an empty home, so no user configuration
// or repository touches the result.
func helm(t *testing.T, bin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "HOME="+home, "HELM_CACHE_HOME="+home+"/cache", "HELM_CONFIG_HOME="+home+"/config", "HELM_DATA_HOME="+home+"/data", "KUBECONFIG="+home+"/none")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// TestHelmTemplateRendersTheSameObjects: the real helm binary's `helm
// template` of charts/tether gives the objects tether install gives.
func TestHelmTemplateRendersTheSameObjects(t *testing.T) {
	bin := helmBinary(t)
	chartDir := filepath.Join(repoRoot, "charts/tether")
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			args := []string{"template", "tether", chartDir, "--namespace", Namespace, "--include-crds", "--set", "namespace.create=true"}
			for _, s := range v.set {
				args = append(args, "--set", s)
			}
			out, stderr, err := helm(t, bin, args...)
			if err != nil {
				t.Fatalf("helm %s: %v: %s", strings.Join(args, " "), err, stderr)
			}
			h, err := Decode([]byte(out))
			if err != nil {
				t.Fatal(err)
			}
			if d := diff(canonical(t, h), canonical(t, installed(t, v.set))); d != "" {
				t.Errorf("helm %s (first) and tether install --crds + tether install (second) differ:\n%s", strings.Join(args, " "), d)
			}
		})
	}
	// Helm's convention (the namespace from --create-namespace), and the
	// story's values file.
	values := filepath.Join(repoRoot, "test/cluster/testdata/values.yaml")
	out, stderr, err := helm(t, bin, "template", "tether", chartDir, "-n", Namespace, "-f", values)
	if err != nil {
		t.Fatalf("helm template -f %s: %v: %s", values, err, stderr)
	}
	h, err := Decode([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	mine := renderT(t, Options{Values: Values{Files: []string{values}, Set: []string{"namespace.create=false"}}})
	if d := diff(canonical(t, h), canonical(t, mine)); d != "" {
		t.Errorf("helm template -f values.yaml (first) and tether install -f values.yaml --set namespace.create=false (second) differ:\n%s", d)
	}

	// helm fails where tether install fails, with the same reasons.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--set", "replica=3"}, "additional properties 'replica' not allowed"},
		{[]string{"--set", "ca.svidTTL=5 minutes"}, "/ca/svidTTL"},
		{[]string{"--namespace", "default"}, `namespace "default": Tether's control plane runs only in tether-system`},
	} {
		args := append([]string{"template", "tether", chartDir}, c.args...)
		if !strings.Contains(strings.Join(c.args, " "), "--namespace") {
			args = append(args, "--namespace", Namespace)
		}
		_, stderr, err := helm(t, bin, args...)
		if err == nil {
			t.Errorf("helm %s succeeded", strings.Join(args, " "))
			continue
		}
		if !strings.Contains(stderr, c.want) {
			t.Errorf("helm %s: %s, want %q", strings.Join(args, " "), stderr, c.want)
		}
	}
}
