//go:build linux

package mesh

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/pkg/inject"
)

// Two meshes, each with its own kube-apiserver (internal/kubetest): each
// one's tether-ca keeps its state in its API server (--store=kubernetes)
// and federates through TrustDomainFederation objects there, each one's
// tether-discovery reads Services, AccessPolicies and RemoteServices from
// it (--registry=kube); the sidecars run on loopback in explicit mode.

// kubeDomain is a mesh whose control plane reads its own API server.
type kubeDomain struct {
	*fedDomain
	env        *kubetest.Env
	kubeconfig string
	dyn        dynamic.Interface
}

// kubeCRDs are the CustomResourceDefinitions each API server gets, from
// manifests/crds.
var kubeCRDs = []string{"accesspolicies.tether.dev.yaml", "trustdomainfederations.tether.dev.yaml"}

// startKubeDomain starts an API server, installs the CRDs (kubeCRDs and
// extraCRDs, files of manifests/crds), labels the
// default namespace for injection (so tether-ca publishes its trust
// bundle ConfigMap there) and starts tether-ca on it with the bundle
// endpoint on.
func startKubeDomain(t *testing.T, name string, extraCRDs ...string) *kubeDomain {
	t.Helper()
	env := kubetest.Start(t)
	d := &kubeDomain{fedDomain: &fedDomain{endpoint: loopback(t)}, env: env, kubeconfig: env.Kubeconfig(t)}
	var err error
	if d.dyn, err = dynamic.NewForConfig(env.Config); err != nil {
		t.Fatal(err)
	}
	for _, crd := range slices.Concat(kubeCRDs, extraCRDs) {
		env.InstallCRD(t, filepath.Join("..", "..", "manifests", "crds", crd))
	}
	env.EnsureNamespace(t, "tether-system")
	ns := env.EnsureNamespace(t, "default")
	ns.Labels = map[string]string{inject.InjectLabel: "enabled"}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := env.Client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	dir := procDir(t)
	c := &caProc{td: mustTD(name), dir: filepath.Join(dir, "ca"), addr: loopback(t), admin: loopback(t), logPath: filepath.Join(dir, "tether-ca.log")}
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	c.socket, c.bundle = filepath.Join(c.dir, "admin.sock"), filepath.Join(c.dir, "bundle.pem")
	c.args = slices.Concat([]string{"--store", "kubernetes", "--kubeconfig", d.kubeconfig, "--namespace", "tether-system", "--replica-name", "ca-0",
		"--trust-domain", name, "--listen", c.addr, "--admin-listen", c.admin, "--admin-socket", c.socket, "--bundle-file", c.bundle,
		"--svid-ttl", "1m", "--backdate", "1s", "--tick", "1s", "--auto-rotate=false", "--bundle-endpoint-listen", d.endpoint}, fedCAFlags)
	c.start(t)
	dumpOnFailure(t, func() *proc { return c.p })
	d.ca = c
	return d
}

// startDiscovery starts tether-discovery on the domain's API server.
func (d *kubeDomain) startDiscovery(t *testing.T) {
	t.Helper()
	dir := procDir(t)
	disc := &discoveryProc{addr: loopback(t), admin: loopback(t), logPath: filepath.Join(dir, "tether-discovery.log")}
	disc.args = []string{"--registry", "kube", "--kubeconfig", d.kubeconfig, "--listen", disc.addr, "--admin-listen", disc.admin,
		"--ca", d.ca.addr, "--bundle", d.ca.bundle, "--join-token", d.ca.token(t, "tether-system", "tether-discovery"),
		"--trust-domain", d.td().Name(), "--default-policy", "deny"}
	disc.start(t)
	dumpOnFailure(t, func() *proc { return disc.p })
	d.disc = disc
}

// gvrs are the resources apply knows, by kind.
var gvrs = map[string]schema.GroupVersionResource{
	"TrustDomainFederation": {Group: "tether.dev", Version: "v1alpha1", Resource: "trustdomainfederations"},
	"AccessPolicy":          {Group: "tether.dev", Version: "v1alpha1", Resource: "accesspolicies"},
	"RemoteService":         {Group: "tether.dev", Version: "v1alpha1", Resource: "remoteservices"},
	"Service":               {Version: "v1", Resource: "services"},
	"EndpointSlice":         {Group: "discovery.k8s.io", Version: "v1", Resource: "endpointslices"},
}

// apply creates the objects of a YAML stream (documents separated by
// ---) in the domain's API server, as kubectl create -f does.
func (d *kubeDomain) apply(t *testing.T, manifest string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, doc := range strings.Split(manifest, "\n---\n") {
		obj := map[string]any{}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("manifest: %v\n%s", err, doc)
		}
		u := &unstructured.Unstructured{Object: obj}
		gvr, ok := gvrs[u.GetKind()]
		if !ok {
			t.Fatalf("apply: unknown kind %q", u.GetKind())
		}
		var ri dynamic.ResourceInterface = d.dyn.Resource(gvr)
		if u.GetNamespace() != "" {
			ri = d.dyn.Resource(gvr).Namespace(u.GetNamespace())
		}
		if _, err := ri.Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("%s: create %s %s/%s: %v", d.td().Name(), u.GetKind(), u.GetNamespace(), u.GetName(), err)
		}
	}
}

// federateWith declares other's domain in d's API server with a
// TrustDomainFederation, its initial bundle being other's bundle file, and
// waits until d's CA reports the fetched sequence in the object's status.
func (d *kubeDomain) federateWith(t *testing.T, other *kubeDomain) {
	t.Helper()
	pem, err := os.ReadFile(other.ca.bundle)
	if err != nil {
		t.Fatal(err)
	}
	name := strings.ReplaceAll(other.td().Name(), ".", "-")
	d.apply(t, fmt.Sprintf(`apiVersion: tether.dev/v1alpha1
kind: TrustDomainFederation
metadata: {name: %s}
spec:
  trustDomain: %s
  bundleEndpointURL: https://%s
  endpointSPIFFEID: spiffe://%s/tether/bundle-endpoint
  initialBundle: |
%s`, name, other.td().Name(), other.endpoint, other.td().Name(), indentLines(string(pem), "    ")))
	eventually(t, d.td().Name()+"'s CA to write the fetched sequence into TrustDomainFederation "+name, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		u, err := d.dyn.Resource(gvrs["TrustDomainFederation"]).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		seq, _, _ := unstructured.NestedInt64(u.Object, "status", "sequence")
		lastErr, _, _ := unstructured.NestedString(u.Object, "status", "lastError")
		if seq < 1 || lastErr != "" {
			return fmt.Errorf("status sequence %d, lastError %q", seq, lastErr)
		}
		return nil
	})
}

// publishedFederated returns the trust domains in the federated-bundles.json
// of the tether-trust-bundle ConfigMap of namespace default.
func (d *kubeDomain) publishedFederated() ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cm, err := d.env.Client.CoreV1().ConfigMaps("default").Get(ctx, "tether-trust-bundle", metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	var set map[string]json.RawMessage
	if err := json.Unmarshal([]byte(cm.Data["federated-bundles.json"]), &set); err != nil {
		return nil, fmt.Errorf("federated-bundles.json: %w", err)
	}
	var tds []string
	for td := range set {
		tds = append(tds, td)
	}
	slices.Sort(tds)
	return tds, nil
}

func indentLines(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i := range lines {
		lines[i] = prefix + lines[i]
	}
	return strings.Join(lines, "\n") + "\n"
}

// TestTwoClustersFederate: two API servers, one mesh on each.
// TrustDomainFederation objects make each tether-ca follow the other's
// bundle endpoint; the foreign bundle reaches the tether-trust-bundle
// ConfigMap and the Workload API of a sidecar whose discovery reads the
// same API server.
func TestTwoClustersFederate(t *testing.T) {
	needMesh(t)
	t.Parallel()
	a := startKubeDomain(t, "a.example")
	b := startKubeDomain(t, "b.example")
	a.federateWith(t, b)
	b.federateWith(t, a)
	for _, c := range []struct{ d, other *kubeDomain }{{a, b}, {b, a}} {
		eventually(t, c.d.td().Name()+"'s tether-trust-bundle ConfigMap to carry "+c.other.td().Name(), 20*time.Second, func() error {
			tds, err := c.d.publishedFederated()
			if err != nil {
				return err
			}
			if !slices.Equal(tds, []string{c.other.td().Name()}) {
				return fmt.Errorf("federated-bundles.json holds %v", tds)
			}
			return nil
		})
		c.d.startDiscovery(t)
	}
	for _, c := range []struct{ d, other *kubeDomain }{{a, b}, {b, a}} {
		app := startApp(t, "api@"+c.d.td().Name())
		s := startSidecar(t, c.d.ca, c.d.disc, sidecarSpec{sa: "api", inbound: loopback(t), app: app.addr})
		want := c.other.ca.rootFingerprints(t)
		eventually(t, s.name+" ("+c.d.td().Name()+") to give its app "+c.other.td().Name()+"'s roots", 20*time.Second, func() error {
			got, err := s.federatedRoots(c.other.td())
			if err != nil {
				return err
			}
			if !slices.Equal(got, want) {
				return fmt.Errorf("roots %v, want %v", got, want)
			}
			return nil
		})
	}
}
