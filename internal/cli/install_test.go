package cli_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/tether-mesh/tether/internal/install"
	"github.com/tether-mesh/tether/internal/version"
)

// TestInstallCommand: tether install and uninstall print the objects of
// internal/install (exit 0), read -f - from standard input, and exit 2 on
// bad values with the command's usage hint.
func TestInstallCommand(t *testing.T) {
	out, errOut, code := run(t, "install")
	if code != 0 || errOut != "" {
		t.Fatalf("install: code %d, stderr %s", code, errOut)
	}
	objs, err := install.Decode([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if objs[0].GetKind() != "Namespace" || objs[len(objs)-1].GetKind() != "MutatingWebhookConfiguration" {
		t.Errorf("install prints %s first and %s last", objs[0].GetKind(), objs[len(objs)-1].GetKind())
	}
	if !strings.Contains(out, "image: tether:"+version.Version+"\n") {
		t.Errorf("install does not default the image to tether:%s", version.Version)
	}

	out, _, code = run(t, "install", "--crds")
	crds, err := install.Decode([]byte(out))
	want := []string{"accesspolicies.tether.dev", "remoteservices.tether.dev", "trustdomainfederations.tether.dev"}
	var names []string
	for _, o := range crds {
		names = append(names, o.GetName())
	}
	slices.Sort(names)
	if code != 0 || err != nil || !slices.Equal(names, want) {
		t.Errorf("install --crds: code %d, %v, CRDs %v, want %v", code, err, names, want)
	}
	for _, o := range crds {
		if o.GetKind() != "CustomResourceDefinition" {
			t.Errorf("install --crds prints a %s %s", o.GetKind(), o.GetName())
		}
	}

	out, _, code = runStdin(t, "ca: {replicas: 5}\n", "install", "-f", "-", "--set", "discovery.replicas=4")
	if code != 0 || !strings.Contains(out, "replicas: 5") || !strings.Contains(out, "replicas: 4") {
		t.Errorf("install -f - --set: code %d", code)
	}

	out, _, code = run(t, "install", "--redirect-mode", "cni")
	if code != 0 || !strings.Contains(out, "# DaemonSet kube-system/tether-cni-node\n") || !strings.Contains(out, "- --redirect-mode=cni\n") {
		t.Errorf("install --redirect-mode cni: code %d, no DaemonSet tether-cni-node or injector flag", code)
	}
	if out, _, _ = run(t, "install", "--redirect-mode", "cni", "--set", "injector.redirectMode=init"); strings.Contains(out, "tether-cni-node") {
		t.Error("a --set of injector.redirectMode does not win over --redirect-mode")
	}
	if out, _, _ = run(t, "uninstall", "--redirect-mode", "cni"); !strings.Contains(out, "# DaemonSet kube-system/tether-cni-node\n") {
		t.Error("uninstall --redirect-mode cni does not list the node agent")
	}

	out, _, code = run(t, "uninstall")
	objs, err = install.Decode([]byte(out))
	if code != 0 || err != nil || objs[0].GetKind() != "MutatingWebhookConfiguration" || objs[len(objs)-1].GetKind() != "Namespace" {
		t.Errorf("uninstall: code %d, %v, order %v", code, err, objs)
	}
	for _, o := range objs {
		if o.GetKind() == "CustomResourceDefinition" {
			t.Error("uninstall without --crds lists the CRD")
		}
	}
	out, _, _ = run(t, "uninstall", "--crds")
	if !strings.Contains(out, "# CustomResourceDefinition accesspolicies.tether.dev") {
		t.Error("uninstall --crds does not list the CRD")
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"install", "--set", "replica=3"}, "additional properties 'replica' not allowed"},
		{[]string{"install", "--set", "ca.replicas"}, `--set "ca.replicas"`},
		{[]string{"install", "-f", "/nonexistent/values.yaml"}, "values file /nonexistent/values.yaml: no such file or directory"},
		{[]string{"install", "--namespace", "mesh"}, `namespace "mesh"`},
		{[]string{"uninstall", "--set", "ca.svidTTL=soon"}, "/ca/svidTTL"},
		{[]string{"install", "--sett", "a=b"}, "unknown flag: --sett"},
		{[]string{"install", "extra"}, "extra"},
		{[]string{"install", "--redirect-mode", "ebpf"}, `--redirect-mode "ebpf"`},
	} {
		out, errOut, code := run(t, c.args...)
		if code != 2 || out != "" || !strings.Contains(errOut, c.want) || !strings.HasSuffix(errOut, "Run 'tether "+c.args[0]+" --help' for usage.\n") {
			t.Errorf("tether %s: code %d, stdout %q, stderr %q; want exit 2 naming %q", strings.Join(c.args, " "), code, out, errOut, c.want)
		}
	}
}
