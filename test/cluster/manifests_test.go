package cluster_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/tether-mesh/tether/pkg/discovery/policy"
)

// TestManifests decodes every document of testdata/ strictly into its
// Kubernetes type (an unknown or misspelt field fails), and the
// AccessPolicy with the CRD's own validation, so that a typo shows here
// and not after ten minutes on the real node.
func TestManifests(t *testing.T) {
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata/*.yaml: %v", err)
	}
	kinds := map[string]int{}
	for _, f := range files {
		if filepath.Base(f) == "values.yaml" {
			continue // chart values, checked by internal/install's TestRenderValues
		}
		text := template(t, filepath.Base(f), "__NAMESPACE__", "story", "__MARKER__", "tether-marker-0")
		if strings.Contains(text, "__") {
			t.Errorf("%s: a placeholder is left after substitution", f)
		}
		for i, doc := range strings.Split(text, "\n---\n") {
			kind, err := decodeStrict(doc)
			if err != nil {
				t.Errorf("%s, document %d: %v", f, i+1, err)
			}
			kinds[kind]++
		}
	}
	want := map[string]int{"ServiceAccount": 3, "Service": 3, "Deployment": 4, "Job": 1, "Pod": 1, "AccessPolicy": 1}
	for k, n := range want {
		if kinds[k] != n {
			t.Errorf("%d documents of kind %s, want %d (all: %v)", kinds[k], k, n, kinds)
		}
	}
	if _, err := os.Stat("testdata/values.yaml"); err != nil {
		t.Error(err)
	}
}

// decodeStrict decodes one YAML document into the type of its kind.
func decodeStrict(doc string) (string, error) {
	var meta struct {
		Kind string `json:"kind"`
	}
	if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
		return "", err
	}
	var obj any
	switch meta.Kind {
	case "ServiceAccount":
		obj = &corev1.ServiceAccount{}
	case "Service":
		obj = &corev1.Service{}
	case "Pod":
		obj = &corev1.Pod{}
	case "Deployment":
		obj = &appsv1.Deployment{}
	case "Job":
		obj = &batchv1.Job{}
	case "AccessPolicy":
		p := &policy.AccessPolicy{}
		if err := yaml.UnmarshalStrict([]byte(doc), p); err != nil {
			return meta.Kind, err
		}
		return meta.Kind, p.Validate()
	default:
		return meta.Kind, fmt.Errorf("unexpected kind %q", meta.Kind)
	}
	return meta.Kind, yaml.UnmarshalStrict([]byte(doc), obj)
}
