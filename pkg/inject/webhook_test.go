package inject

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

func newWebhook(t testing.TB, maxBytes int64) (*Webhook, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	w, err := NewWebhook(testConfig(t), maxBytes, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return w, reg
}

// review builds an AdmissionReview for creating pod in ns.
func review(t testing.TB, pod *corev1.Pod, ns string, mod func(*admissionv1.AdmissionRequest)) []byte {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	req := &admissionv1.AdmissionRequest{
		UID:       "0c0ffee0-0000-4000-8000-000000000001",
		Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		Namespace: ns,
		Operation: admissionv1.Create,
		Object:    runtime.RawExtension{Raw: raw},
	}
	if mod != nil {
		mod(req)
	}
	b, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request:  req,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func post(t testing.TB, h http.Handler, body []byte, contentType string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/mutate", bytes.NewReader(body))
	r.Header.Set("Content-Type", contentType)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	return rec
}

func decodeResponse(t testing.TB, rec *httptest.ResponseRecorder) *admissionv1.AdmissionResponse {
	t.Helper()
	if rec.Code != http.StatusOK {
		t.Fatalf("HTTP %d: %s", rec.Code, rec.Body)
	}
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatal(err)
	}
	if out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" || out.Response == nil {
		t.Fatalf("response %s is not an AdmissionReview", rec.Body)
	}
	return out.Response
}

func TestWebhookInjects(t *testing.T) {
	w, reg := newWebhook(t, 0)
	pod := loadPod(t, "testdata/pods/probes.yaml")
	resp := decodeResponse(t, post(t, w, review(t, pod, "shop", nil), "application/json; charset=utf-8"))
	if !resp.Allowed || resp.UID != "0c0ffee0-0000-4000-8000-000000000001" || resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("response %+v", resp)
	}
	var patch Patch
	if err := json.Unmarshal(resp.Patch, &patch); err != nil {
		t.Fatal(err)
	}
	want := mustMutate(t, testConfig(t), loadPod(t, "testdata/pods/probes.yaml"))
	wb, _ := want.JSON()
	if !bytes.Equal(resp.Patch, wb) {
		t.Errorf("webhook patch differs from Mutate's")
	}
	checkInjected(t, pod, apply(t, pod, patch))
	if got := testutil.ToFloat64(w.results.WithLabelValues(ResultInjected)); got != 1 {
		t.Errorf("injected count %v, want 1", got)
	}
	if n, err := testutil.GatherAndCount(reg, "tether_injector_injections_total", "tether_injector_admission_duration_seconds"); err != nil || n < 2 {
		t.Errorf("metrics not registered: %d %v", n, err)
	}
}

// Dry-run requests get the same answer: the injector has no side effects.
func TestWebhookDryRun(t *testing.T) {
	w, _ := newWebhook(t, 0)
	pod := loadPod(t, "testdata/pods/minimal.yaml")
	normal := decodeResponse(t, post(t, w, review(t, pod, "shop", nil), "application/json"))
	dry := decodeResponse(t, post(t, w, review(t, pod, "shop", func(r *admissionv1.AdmissionRequest) {
		r.DryRun = new(bool)
		*r.DryRun = true
	}), "application/json"))
	if !bytes.Equal(normal.Patch, dry.Patch) || !dry.Allowed {
		t.Error("dry-run answer differs")
	}
}

func TestWebhookAnswers(t *testing.T) {
	w, _ := newWebhook(t, 0)
	pod := loadPod(t, "testdata/pods/minimal.yaml")
	tests := []struct {
		name    string
		body    []byte
		allowed bool
		patched bool
		msg     string
		warning string
		result  string
	}{
		{"bad annotation", review(t, withAnnotation(pod, AnnotationInboundMode, "open"), "shop", nil), false, false, "tether.dev/inbound-mode", "", ResultRejected},
		{"hostNetwork", review(t, withHostNetwork(pod), "shop", nil), true, false, "", "hostNetwork", ResultSkipped},
		{"update is ignored", review(t, pod, "shop", func(r *admissionv1.AdmissionRequest) { r.Operation = admissionv1.Update }), true, false, "", "", ResultIgnored},
		{"other resource", review(t, pod, "shop", func(r *admissionv1.AdmissionRequest) {
			r.Resource = metav1.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}
		}), true, false, "", "", ResultIgnored},
		{"subresource", review(t, pod, "shop", func(r *admissionv1.AdmissionRequest) { r.SubResource = "ephemeralcontainers" }), true, false, "", "", ResultIgnored},
		{"object is not a pod", review(t, pod, "shop", func(r *admissionv1.AdmissionRequest) { r.Object.Raw = []byte(`{"spec":{"containers":"nope"}}`) }), false, false, "cannot decode the pod", "", ResultError},
		{"no object", review(t, pod, "shop", func(r *admissionv1.AdmissionRequest) { r.Object.Raw = nil }), false, false, "no pod", "", ResultError},
		{"control plane namespace", review(t, pod, "tether-system", nil), true, false, "", "", ResultSkipped},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := testutil.ToFloat64(w.results.WithLabelValues(tt.result))
			resp := decodeResponse(t, post(t, w, tt.body, "application/json"))
			if resp.Allowed != tt.allowed || (len(resp.Patch) > 0) != tt.patched {
				t.Errorf("allowed %v patch %s, want %v and patched %v", resp.Allowed, resp.Patch, tt.allowed, tt.patched)
			}
			if tt.msg != "" && (resp.Result == nil || !strings.Contains(resp.Result.Message, tt.msg) || resp.Result.Code != 400) {
				t.Errorf("result %+v, want code 400 and a message with %q", resp.Result, tt.msg)
			}
			if tt.warning != "" && (len(resp.Warnings) == 0 || !strings.Contains(resp.Warnings[0], tt.warning)) {
				t.Errorf("warnings %q, want one with %q", resp.Warnings, tt.warning)
			}
			if got := testutil.ToFloat64(w.results.WithLabelValues(tt.result)); got != before+1 {
				t.Errorf("result %s counted %v times, want 1", tt.result, got-before)
			}
		})
	}
}

func withAnnotation(p *corev1.Pod, k, v string) *corev1.Pod {
	p = p.DeepCopy()
	p.Annotations = map[string]string{k: v}
	return p
}

func withHostNetwork(p *corev1.Pod) *corev1.Pod {
	p = p.DeepCopy()
	p.Spec.HostNetwork = true
	return p
}

func TestWebhookBadRequests(t *testing.T) {
	w, _ := newWebhook(t, 4096)
	good := review(t, loadPod(t, "testdata/pods/minimal.yaml"), "shop", nil)
	tests := []struct {
		name, method, ctype string
		body                []byte
		code                int
		msg                 string
	}{
		{"GET", http.MethodGet, "application/json", nil, http.StatusMethodNotAllowed, "POST"},
		{"no content type", http.MethodPost, "", good, http.StatusUnsupportedMediaType, "application/json"},
		{"yaml", http.MethodPost, "application/yaml", good, http.StatusUnsupportedMediaType, "application/json"},
		{"too large", http.MethodPost, "application/json", bytes.Repeat([]byte(" "), 5000), http.StatusRequestEntityTooLarge, "larger than 4096"},
		{"not JSON", http.MethodPost, "application/json", []byte("{"), http.StatusBadRequest, "malformed"},
		{"empty", http.MethodPost, "application/json", nil, http.StatusBadRequest, "malformed"},
		{"v1beta1", http.MethodPost, "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}`), http.StatusBadRequest, "want admission.k8s.io/v1"},
		{"no request", http.MethodPost, "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`), http.StatusBadRequest, "no request"},
		{"no uid", http.MethodPost, "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}`), http.StatusBadRequest, "no uid"},
		{"wrong types", http.MethodPost, "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":5}}`), http.StatusBadRequest, "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := testutil.ToFloat64(w.results.WithLabelValues(ResultError))
			r := httptest.NewRequest(tt.method, "/mutate", bytes.NewReader(tt.body))
			if tt.ctype != "" {
				r.Header.Set("Content-Type", tt.ctype)
			}
			rec := httptest.NewRecorder()
			w.ServeHTTP(rec, r)
			if rec.Code != tt.code || !strings.Contains(rec.Body.String(), tt.msg) {
				t.Errorf("HTTP %d %q, want %d with %q", rec.Code, rec.Body, tt.code, tt.msg)
			}
			if got := testutil.ToFloat64(w.results.WithLabelValues(ResultError)); got != before+1 {
				t.Errorf("error counted %v times", got-before)
			}
		})
	}
}

// BenchmarkReview is one admission of a typical pod, without the network:
// decode, mutate, encode.
func BenchmarkReview(b *testing.B) {
	w, _ := newWebhook(b, 0)
	body := review(b, loadPod(b, "testdata/pods/probes.yaml"), "shop", nil)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := w.Review(body); err != nil {
			b.Fatal(err)
		}
	}
}
