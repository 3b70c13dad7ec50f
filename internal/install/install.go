// Package install renders Tether's Helm chart (charts/tether, embedded) in
// process, with Helm's own library and exactly as `helm template` does, into
// the objects `tether install` prints for `kubectl apply -f -` and those
// `tether uninstall` prints, in a safe order, for `kubectl delete -f -`.
//
// The chart is the one source of the manifests: manifests/ is generated from
// it (Generate, `make manifests`), and a test checks that helm template,
// this package and kustomize build of manifests/ give the same objects.
package install

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/loader/archive"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	"helm.sh/helm/v4/pkg/strvals"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/tether-mesh/tether/charts"
	"github.com/tether-mesh/tether/internal/version"
)

const (
	// Namespace is the only namespace the control plane runs in: tether-ca
	// reserves its identities, the injector never injects it, and the
	// sidecars' defaults dial tether-ca and tether-discovery there.
	Namespace = "tether-system"
	// ReleaseName is the Helm release name the chart is rendered with (it
	// names no object: the chart's objects have fixed names).
	ReleaseName = "tether"

	kindCRD       = "CustomResourceDefinition"
	kindNamespace = "Namespace"
	kindWebhook   = "MutatingWebhookConfiguration"
)

// Values are the chart values an install takes, with Helm's meaning and
// precedence: the chart's values.yaml, then the CLI's defaults (Defaults),
// then each Files entry in order, then every Set, then every SetString (as
// `helm template -f ... --set ... --set-string ...`).
type Values struct {
	Files     []string // -f FILE (a path, or "-" for standard input)
	Set       []string // --set k=v[,k=v]
	SetString []string // --set-string k=v[,k=v]
	// Stdin is what `-f -` reads (nil: os.Stdin).
	Stdin io.Reader
}

// Options say what to render.
type Options struct {
	Values Values
	// Namespace must be tether-system ("" means tether-system); any other
	// fails with an error that says why.
	Namespace string
	// CRDs: Render returns only the CRDs (`tether install --crds`), Uninstall
	// adds them, last (`tether uninstall --crds`).
	CRDs bool
}

// InputError is an error caused by the values or options given (a
// malformed --set, an unreadable -f file, values the schema refuses, another
// namespace): the caller's to fix, a usage error for the CLI.
type InputError struct{ Err error }

func (e *InputError) Error() string { return e.Err.Error() }
func (e *InputError) Unwrap() error { return e.Err }

// Defaults are the values `tether install` layers over the chart's
// values.yaml (under the user's): the Namespace object is rendered, so the
// output is complete for `kubectl apply -f -` (the chart leaves it to
// `helm install --create-namespace`), and the image tag is this CLI's
// version.
func Defaults() map[string]any {
	return map[string]any{
		"namespace": map[string]any{"create": true},
		"image":     map[string]any{"tag": version.Version},
	}
}

// Chart loads the embedded chart.
func Chart() (*chart.Chart, error) {
	var files []*archive.BufferedFile
	err := fs.WalkDir(charts.FS, charts.Tether, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := charts.FS.ReadFile(p)
		if err != nil {
			return err
		}
		files = append(files, &archive.BufferedFile{Name: strings.TrimPrefix(p, charts.Tether+"/"), Data: data})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the embedded chart: %w", err)
	}
	c, err := loader.LoadFiles(files)
	if err != nil {
		return nil, fmt.Errorf("loading the embedded chart: %w", err)
	}
	return c, nil
}

// MergeValues reads the user's values as Helm's `-f`, `--set` and
// `--set-string` do, in Helm's order (every file in order, then every --set,
// then every --set-string), and layers them over Defaults.
func MergeValues(v Values) (map[string]any, error) {
	user := map[string]any{}
	for _, f := range v.Files {
		data, err := readValuesFile(f, v.Stdin)
		if err != nil {
			return nil, err
		}
		m, err := loader.LoadValues(bytes.NewReader(data))
		if err != nil {
			return nil, &InputError{fmt.Errorf("values file %s: not a YAML map of values: %w", f, err)}
		}
		user = loader.MergeMaps(user, m)
	}
	for _, s := range v.Set {
		if err := strvals.ParseInto(s, user); err != nil {
			return nil, &InputError{fmt.Errorf("--set %q: %w (want key=value[,key=value], e.g. --set ca.replicas=3)", s, err)}
		}
	}
	for _, s := range v.SetString {
		if err := strvals.ParseIntoString(s, user); err != nil {
			return nil, &InputError{fmt.Errorf("--set-string %q: %w (want key=value[,key=value], e.g. --set-string image.tag=0.1.0)", s, err)}
		}
	}
	return loader.MergeMaps(Defaults(), user), nil
}

// readValuesFile reads a -f argument: a local file, or "-" for standard
// input (never a URL).
func readValuesFile(f string, stdin io.Reader) ([]byte, error) {
	if strings.TrimSpace(f) == "-" {
		if stdin == nil {
			stdin = os.Stdin
		}
		data, err := io.ReadAll(stdin)
		if err != nil {
			return nil, &InputError{fmt.Errorf("reading values from standard input: %w", err)}
		}
		return data, nil
	}
	data, err := os.ReadFile(f)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, &InputError{fmt.Errorf("values file %s: %w", f, err)}
	}
	return data, nil
}

// Template renders the chart with vals as `helm template tether
// charts/tether --namespace NS [--include-crds]` does (Helm's engine,
// default capabilities, schema validation, install order, CRDs first) and
// returns the objects in the order Helm prints them.
func Template(vals map[string]any, namespace string, includeCRDs bool) ([]*unstructured.Unstructured, error) {
	if namespace == "" {
		namespace = Namespace
	}
	if namespace != Namespace {
		return nil, &InputError{fmt.Errorf("namespace %q: Tether's control plane runs only in %s (tether-ca, the injector and the sidecars name it); leave --namespace out or give %s", namespace, Namespace, Namespace)}
	}
	ch, err := Chart()
	if err != nil {
		return nil, err
	}
	manifest, err := render(ch, vals, namespace, includeCRDs)
	if err != nil {
		// The chart is fixed and tested: what fails to render is the values.
		return nil, &InputError{fmt.Errorf("rendering the chart: %w", err)}
	}
	return Decode(manifest)
}

// render is what Helm's install action does for `helm template`, less
// the kubeVersion check.
func render(ch *chart.Chart, vals map[string]any, namespace string, includeCRDs bool) ([]byte, error) {
	// Helm checks the chart's kubeVersion against the version it was built
	// for; rendering here talks to no cluster, so the check is the
	// cluster's: `helm install` makes it, and `tether check --pre`.
	caps := common.DefaultCapabilities.Copy()
	opts := common.ReleaseOptions{Name: ReleaseName, Namespace: namespace, Revision: 1, IsInstall: true}
	top, err := util.ToRenderValuesWithSchemaValidation(ch, vals, opts, caps, false)
	if err != nil {
		return nil, explain(err)
	}
	files, err := new(engine.Engine).Render(ch, top)
	if err != nil {
		return nil, err
	}
	for name := range files {
		if strings.HasSuffix(name, "NOTES.txt") {
			delete(files, name)
		}
	}
	hooks, manifests, err := releaseutil.SortManifests(files, nil, releaseutil.InstallOrder)
	if err != nil {
		return nil, err
	}
	if len(hooks) > 0 {
		return nil, fmt.Errorf("the chart has hooks (%s), which kubectl apply would not run", hooks[0].Path)
	}
	var b bytes.Buffer
	if includeCRDs {
		for _, crd := range ch.CRDObjects() {
			fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", crd.Filename, crd.File.Data)
		}
	}
	for _, m := range manifests {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.Name, m.Content)
	}
	return b.Bytes(), nil
}

// explain adds where to look to Helm's schema errors.
func explain(err error) error {
	if strings.Contains(err.Error(), "schema") {
		return fmt.Errorf("%w\n(values are checked against charts/tether/values.schema.json; docs/install.md, \"Values\", lists every key)", err)
	}
	return err
}

// Decode splits a YAML stream into objects, skipping empty documents.
func Decode(data []byte) ([]*unstructured.Unstructured, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []*unstructured.Unstructured
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading rendered YAML: %w", err)
		}
		m := map[string]any{}
		if err := yaml.Unmarshal(doc, &m); err != nil {
			return nil, fmt.Errorf("decoding rendered YAML: %w", err)
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
}

// Render returns the objects `tether install` prints: without CRDs, every
// object of the control plane in install order; with CRDs, only the CRDs.
func Render(o Options) ([]*unstructured.Unstructured, error) {
	vals, err := MergeValues(o.Values)
	if err != nil {
		return nil, err
	}
	objs, err := Template(vals, o.Namespace, o.CRDs)
	if err != nil {
		return nil, err
	}
	if o.CRDs {
		objs = slices.DeleteFunc(objs, func(u *unstructured.Unstructured) bool { return u.GetKind() != kindCRD })
	}
	sortObjects(objs, installRank)
	return objs, nil
}

// Uninstall returns the objects `tether uninstall` prints, in the order to
// delete them: the MutatingWebhookConfiguration first (so no pod creation
// fails on an injector that is going away), then the rest in Helm's
// uninstall order, the Namespace last, and with CRDs the CRDs after it
// (deleting a CRD deletes every AccessPolicy).
func Uninstall(o Options) ([]*unstructured.Unstructured, error) {
	vals, err := MergeValues(o.Values)
	if err != nil {
		return nil, err
	}
	objs, err := Template(vals, o.Namespace, o.CRDs)
	if err != nil {
		return nil, err
	}
	sortObjects(objs, uninstallRank)
	return objs, nil
}

// installRank orders by Helm's install order (Namespace and CRDs first,
// webhook configurations after the Deployments); kinds Helm does not know
// (cert-manager's) come last.
func installRank(kind string) int {
	if i := slices.Index(releaseutil.InstallOrder, kind); i >= 0 {
		return i
	}
	return len(releaseutil.InstallOrder)
}

// uninstallRank: the webhook configuration first, Helm's uninstall order,
// kinds Helm does not know before the Namespace, CRDs last.
func uninstallRank(kind string) int {
	order := releaseutil.UninstallOrder
	switch kind {
	case kindWebhook:
		return -1
	case kindNamespace:
		return len(order) + 1
	case kindCRD:
		return len(order) + 2
	}
	if i := slices.Index(order, kind); i >= 0 {
		return i
	}
	return len(order)
}

// sortObjects sorts by rank of kind, then kind, namespace and name, so the
// output is the same for the same values.
func sortObjects(objs []*unstructured.Unstructured, rank func(string) int) {
	slices.SortStableFunc(objs, func(a, b *unstructured.Unstructured) int {
		if d := rank(a.GetKind()) - rank(b.GetKind()); d != 0 {
			return d
		}
		for _, c := range [][2]string{{a.GetKind(), b.GetKind()}, {a.GetNamespace(), b.GetNamespace()}, {a.GetName(), b.GetName()}} {
			if d := strings.Compare(c[0], c[1]); d != 0 {
				return d
			}
		}
		return 0
	})
}

// Write prints objs as a YAML stream, each document preceded by "---" and
// a comment naming it, keys sorted: the same values give the same bytes.
func Write(w io.Writer, objs []*unstructured.Unstructured) error {
	var b bytes.Buffer
	for _, o := range objs {
		data, err := yaml.Marshal(o.Object)
		if err != nil {
			return fmt.Errorf("encoding %s %s: %w", o.GetKind(), o.GetName(), err)
		}
		fmt.Fprintf(&b, "---\n# %s %s\n%s", o.GetKind(), path.Join(o.GetNamespace(), o.GetName()), data)
	}
	_, err := w.Write(b.Bytes())
	return err
}
