// Package check is tether check: it asks a cluster whether it can run
// Tether (Pre), whether an installed Tether works (Install), and whether
// the data plane of a namespace is healthy (Proxy). Each check is data: a
// name, a category, a result (ok, warn or fail), a message saying what was
// found and, unless it passed, a hint saying what to do. Checks read the
// cluster through the API server only (and the parts' admin ports through
// its pod proxy, as tether status does); they never change anything (the
// pods they create are server-side dry runs).
package check

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/tether-mesh/tether/internal/meshkube"
)

// Result is the outcome of one check.
type Result string

// Results. A warning does not make tether check fail.
const (
	OK   Result = "ok"
	Warn Result = "warn"
	Fail Result = "fail"
)

// Check is one check's outcome.
type Check struct {
	// Name identifies the check (stable, for scripts).
	Name string `json:"name"`
	// Category groups checks in the output.
	Category string `json:"category"`
	Result   Result `json:"result"`
	// Message says what was found.
	Message string `json:"message"`
	// Details list the objects concerned (pods, namespaces, generations),
	// one per line, with the command that fixes each where there is one.
	Details []string `json:"details,omitempty"`
	// Hint says what to do about a warning or failure.
	Hint string `json:"hint,omitempty"`
}

// Report is what tether check prints (-o json|yaml as is).
type Report struct {
	// Mode is "pre" (before install), "install" (after install) or
	// "proxy" (a namespace's data plane).
	Mode string `json:"mode"`
	// Where names the cluster.
	Where string    `json:"where,omitempty"`
	Time  time.Time `json:"time"`
	// Namespace is the namespace of --proxy.
	Namespace string  `json:"namespace,omitempty"`
	Checks    []Check `json:"checks"`
	OK        int     `json:"ok"`
	Warnings  int     `json:"warnings"`
	Failures  int     `json:"failures"`
}

// Failed reports whether any check failed.
func (r *Report) Failed() bool { return r.Failures > 0 }

func (r *Report) add(c Check) {
	if c.Result != OK && c.Hint == "" {
		panic("check " + c.Name + ": a warning or failure without a hint")
	}
	r.Checks = append(r.Checks, c)
	switch c.Result {
	case OK:
		r.OK++
	case Warn:
		r.Warnings++
	default:
		r.Failures++
	}
}

// Find returns the check named name, or nil.
func (r *Report) Find(name string) *Check {
	for i := range r.Checks {
		if r.Checks[i].Name == name {
			return &r.Checks[i]
		}
	}
	return nil
}

// ErrFailed is returned (wrapped) by the commands when a check failed: exit
// status 1 after the report is printed.
var ErrFailed = errors.New("a check failed")

// Options are tether check's settings.
type Options struct {
	// Config reaches the API server (its user is the caller whose
	// permissions --pre checks).
	Config *rest.Config
	// Where names the cluster in the report.
	Where string
	// Namespace is the control plane's namespace (tether-system).
	Namespace string
	// ExpiryWarning: a root expiring within it fails.
	ExpiryWarning time.Duration
	// IntermediateExpiryWarning: an intermediate expiring within it fails
	// (the CA renews its intermediate at 1/3 of its life left, 10 days of
	// the default 30, so the root's 30 days would always fail).
	IntermediateExpiryWarning time.Duration
	// Timeout bounds each request to the API server and each admin port.
	Timeout time.Duration
	// RedirectMode is the injector's redirect mode that --pre judges Pod
	// Security for: "" or init (tether-init), or cni. After install the
	// injector's own flag decides.
	RedirectMode string
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Defaults of tether check.
const (
	DefaultExpiryWarning             = 30 * 24 * time.Hour
	DefaultIntermediateExpiryWarning = 7 * 24 * time.Hour
	DefaultTimeout                   = 10 * time.Second
	// maxListed bounds the objects a check lists in its details.
	maxListed = 50
)

// runner holds the clients of one run.
type runner struct {
	o      Options
	cfg    *rest.Config
	client kubernetes.Interface
	dyn    dynamic.Interface
	now    time.Time
	rep    *Report
}

func newRunner(o Options, mode string) (*runner, error) {
	if o.Config == nil {
		return nil, errors.New("check: no client configuration")
	}
	if o.Namespace == "" {
		o.Namespace = meshkube.DefaultNamespace
	}
	if o.ExpiryWarning == 0 {
		o.ExpiryWarning = DefaultExpiryWarning
	}
	if o.IntermediateExpiryWarning == 0 {
		o.IntermediateExpiryWarning = DefaultIntermediateExpiryWarning
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	cfg := rest.CopyConfig(o.Config)
	if cfg.UserAgent == "" {
		cfg.UserAgent = "tether-check"
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	now := o.Now()
	return &runner{o: o, cfg: cfg, client: client, dyn: dyn, now: now,
		rep: &Report{Mode: mode, Where: o.Where, Time: now.UTC(), Checks: []Check{}}}, nil
}

// ctx bounds one request.
func (r *runner) ctx(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, r.o.Timeout)
}

// need is what tether check needs of RBAC, for API errors.
const need = "tether check needs to read the objects of its checks; docs/check.md lists them"

func apiError(what string, err error) error { return meshkube.APIError(what, err, need) }

// WriteText writes the report for people: one line per check, its
// details and hint indented under it, then a summary.
func WriteText(w io.Writer, r *Report) error {
	title := map[string]string{"pre": "Can this cluster run Tether?", "install": "Is Tether working?", "proxy": "Is the data plane of namespace " + r.Namespace + " healthy?"}[r.Mode]
	fmt.Fprintf(w, "tether check: %s", title)
	if r.Where != "" {
		fmt.Fprintf(w, " (%s)", r.Where)
	}
	fmt.Fprintln(w)
	category := ""
	for _, c := range r.Checks {
		if c.Category != category {
			category = c.Category
			fmt.Fprintf(w, "\n%s\n", category)
		}
		mark := map[Result]string{OK: "[ok]  ", Warn: "[warn]", Fail: "[FAIL]"}[c.Result]
		fmt.Fprintf(w, "  %s %s: %s\n", mark, c.Name, clean(c.Message))
		for _, d := range c.Details {
			fmt.Fprintf(w, "           %s\n", clean(d))
		}
		if c.Hint != "" {
			fmt.Fprintf(w, "           hint: %s\n", clean(c.Hint))
		}
	}
	status := "passed"
	if r.Failed() {
		status = "FAILED"
	}
	_, err := fmt.Fprintf(w, "\n%s: %d ok, %d warning(s), %d failure(s)\n", status, r.OK, r.Warnings, r.Failures)
	return err
}

// WriteJSON writes the report as indented JSON.
func WriteJSON(w io.Writer, r *Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteYAML writes the report as YAML (the JSON field names).
func WriteYAML(w io.Writer, r *Report) error {
	b, err := yaml.Marshal(r)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// clean makes text that came from the cluster safe for a terminal:
// control characters (escape sequences) are replaced.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, s)
}
