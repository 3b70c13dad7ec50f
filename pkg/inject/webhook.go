package inject

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DefaultMaxRequestBytes bounds an AdmissionReview body. A pod is at most
// about 1.5 MiB (etcd's object limit); a CREATE review carries one.
const DefaultMaxRequestBytes = 3 << 20

// Results counted by tether_injector_injections_total.
const (
	ResultInjected = "injected"
	ResultSkipped  = "skipped"
	ResultRejected = "rejected" // bad annotation: the pod is refused
	ResultIgnored  = "ignored"  // not a pod CREATE: allowed unchanged
	ResultError    = "error"    // malformed request
)

// ErrBadReview is wrapped by every error about a malformed AdmissionReview.
var ErrBadReview = errors.New("malformed AdmissionReview")

// Webhook serves the mutating admission webhook.
type Webhook struct {
	cfg      Config
	maxBytes int64
	log      *slog.Logger
	results  *prometheus.CounterVec
	duration prometheus.Histogram
	// required: the namespaces this handler is called for are labelled
	// tether.dev/inject=required (MutateRequired).
	required bool
}

// Required returns the handler for namespaces labelled
// tether.dev/inject=required: the same webhook, which refuses pods that
// opt out (Config.MutateRequired). It shares the metrics.
func (w *Webhook) Required() *Webhook {
	r := *w
	r.required = true
	return &r
}

// NewWebhook returns the webhook for a validated cfg. maxBytes ≤ 0 means
// DefaultMaxRequestBytes. Its metrics are registered with reg.
func NewWebhook(cfg Config, maxBytes int64, reg prometheus.Registerer, log *slog.Logger) (*Webhook, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if maxBytes <= 0 {
		maxBytes = DefaultMaxRequestBytes
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &Webhook{
		cfg: cfg, maxBytes: maxBytes, log: log,
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_injector_injections_total",
			Help: "Admission requests by result: injected, skipped, rejected, ignored, error.",
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tether_injector_admission_duration_seconds",
			Help:    "Time to answer one admission request, from the body read to the response written.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1},
		}),
	}
	for _, r := range []string{ResultInjected, ResultSkipped, ResultRejected, ResultIgnored, ResultError} {
		w.results.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{w.results, w.duration} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register metrics: %w", err)
			}
		}
	}
	return w, nil
}

// ServeHTTP answers POSTed AdmissionReviews. A body that is not a usable
// AdmissionReview gets HTTP 400 (413 when too large) and a message; the API
// server then applies the webhook's failurePolicy.
func (w *Webhook) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	start := time.Now()
	defer func() { w.duration.Observe(time.Since(start).Seconds()) }()
	if r.Method != http.MethodPost {
		rw.Header().Set("Allow", http.MethodPost)
		w.fail(rw, http.StatusMethodNotAllowed, "POST an AdmissionReview")
		return
	}
	if ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || ct != "application/json" {
		w.fail(rw, http.StatusUnsupportedMediaType, "Content-Type must be application/json")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(rw, r.Body, w.maxBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			w.fail(rw, http.StatusRequestEntityTooLarge, fmt.Sprintf("AdmissionReview larger than %d bytes", w.maxBytes))
			return
		}
		w.fail(rw, http.StatusBadRequest, "reading body: "+err.Error())
		return
	}
	out, result, err := w.Review(body)
	if err != nil {
		w.fail(rw, http.StatusBadRequest, err.Error())
		return
	}
	w.results.WithLabelValues(result).Inc()
	rw.Header().Set("Content-Type", "application/json")
	rw.Write(out)
}

func (w *Webhook) fail(rw http.ResponseWriter, code int, msg string) {
	w.results.WithLabelValues(ResultError).Inc()
	w.log.Warn("bad admission request", slog.Int("status", code), slog.String("error", msg))
	http.Error(rw, msg, code)
}

// Review answers one AdmissionReview (the request body) with the encoded
// response AdmissionReview and the result for the metrics. A body that is
// not an admission.k8s.io/v1 AdmissionReview with a request and a uid is an
// error wrapping ErrBadReview. Dry-run requests are answered exactly like
// others: injection has no side effects.
func (w *Webhook) Review(body []byte) ([]byte, string, error) {
	var in admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &in); err != nil {
		return nil, ResultError, fmt.Errorf("%w: %v", ErrBadReview, err)
	}
	if in.APIVersion != "admission.k8s.io/v1" || in.Kind != "AdmissionReview" {
		return nil, ResultError, fmt.Errorf("%w: apiVersion %q kind %q, want admission.k8s.io/v1 AdmissionReview", ErrBadReview, clip(in.APIVersion), clip(in.Kind))
	}
	req := in.Request
	if req == nil {
		return nil, ResultError, fmt.Errorf("%w: no request", ErrBadReview)
	}
	if req.UID == "" {
		return nil, ResultError, fmt.Errorf("%w: request has no uid", ErrBadReview)
	}
	resp, result := w.admit(req)
	resp.UID = req.UID
	out, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Response: resp,
	})
	if err != nil {
		return nil, ResultError, fmt.Errorf("encode response: %w", err)
	}
	return out, result, nil
}

var podResource = metav1.GroupVersionResource{Version: "v1", Resource: "pods"}

func (w *Webhook) admit(req *admissionv1.AdmissionRequest) (*admissionv1.AdmissionResponse, string) {
	allow := &admissionv1.AdmissionResponse{Allowed: true}
	if req.Resource != podResource || req.SubResource != "" || req.Operation != admissionv1.Create {
		return allow, ResultIgnored
	}
	var pod corev1.Pod
	if len(req.Object.Raw) == 0 {
		return deny(http.StatusBadRequest, "tether-injector: the request carries no pod"), ResultError
	}
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return deny(http.StatusBadRequest, "tether-injector: cannot decode the pod: "+err.Error()), ResultError
	}
	name := pod.Name
	if name == "" {
		name = pod.GenerateName + "*"
	}
	log := w.log.With(slog.String("uid", string(req.UID)), slog.String("namespace", req.Namespace),
		slog.String("pod", name), slog.Bool("dry_run", req.DryRun != nil && *req.DryRun))
	mutate := w.cfg.Mutate
	if w.required {
		mutate = w.cfg.MutateRequired
	}
	res, err := mutate(&pod, req.Namespace)
	if err != nil {
		log.Info("pod refused", slog.Any("error", err))
		return deny(http.StatusBadRequest, "tether-injector: "+err.Error()), ResultRejected
	}
	allow.Warnings = res.Warnings
	if res.Patch.Empty() {
		log.Debug("pod not injected", slog.String("reason", res.Skipped))
		return allow, ResultSkipped
	}
	patch, err := res.Patch.JSON()
	if err != nil {
		return deny(http.StatusInternalServerError, "tether-injector: encode patch: "+err.Error()), ResultError
	}
	pt := admissionv1.PatchTypeJSONPatch
	allow.Patch, allow.PatchType = patch, &pt
	log.Debug("pod injected", slog.Int("patch_ops", len(res.Patch)))
	return allow, ResultInjected
}

func deny(code int32, msg string) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{Allowed: false, Result: &metav1.Status{
		Status: metav1.StatusFailure, Code: code, Message: msg, Reason: metav1.StatusReasonBadRequest,
	}}
}
