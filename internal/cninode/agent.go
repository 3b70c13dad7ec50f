// Package cninode is tether-cni-node, the node agent of Tether's CNI mode
// (docs/cni.md): it installs the tether-cni plugin binary, its chained
// entry in the node's first conflist and the plugin's kubeconfig, keeps
// them in place (another installer may rewrite the conflist at any time),
// renews the kubeconfig's short-lived token, and removes all three on
// uninstall. It is ready only while the chain entry is in place.
package cninode

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tether-mesh/tether/internal/cni"
)

// KubeconfigName is the plugin's kubeconfig file in the CNI conf dir (no
// configuration extension, so no runtime loads it as a network).
const KubeconfigName = "tether-cni.kubeconfig"

// MinTokenTTL is the shortest token the API server issues.
const MinTokenTTL = 10 * time.Minute

// Config is what the agent needs.
type Config struct {
	// BinDir and ConfDir are the node's CNI folders as the agent sees them;
	// HostConfDir is ConfDir as the runtime on the node sees it.
	BinDir, ConfDir, HostConfDir string
	// PluginBinary is the tether-cni binary to copy into BinDir.
	PluginBinary string
	// Client requests the tokens; Server and CAData (PEM) are the API
	// server as the plugin reaches it.
	Client kubernetes.Interface
	Server string
	CAData []byte
	// Namespace and ServiceAccount name the agent's own ServiceAccount;
	// PodName, if set, binds each token to that pod.
	Namespace, ServiceAccount, PodName string
	// DaemonSet is the agent's own DaemonSet (in Namespace): on exit with
	// uninstall, what the agent installed is removed only when it is
	// deleted or being deleted, or when that cannot be learnt. Empty
	// means always remove.
	DaemonSet string
	// NodeName is the node's name, written into the entry for the
	// plugin's error messages.
	NodeName string
	// TokenTTL is the plugin token's lifetime; it is renewed after 80%.
	TokenTTL time.Duration
	// ExcludeNamespaces go into the entry.
	ExcludeNamespaces []string
	// RepairInterval is how often Run checks and repairs.
	RepairInterval time.Duration
	// Clock is time.Now unless a test sets it.
	Clock  func() time.Time
	Logger *slog.Logger
}

// Validate checks cfg and fills in defaults.
func (c *Config) Validate() error {
	switch {
	case c.BinDir == "" || c.ConfDir == "" || c.HostConfDir == "":
		return errors.New("--cni-bin-dir, --cni-conf-dir and --host-cni-conf-dir are required")
	case !filepath.IsAbs(c.HostConfDir):
		return fmt.Errorf("--host-cni-conf-dir %q: want an absolute path (the runtime runs the plugin on the node)", c.HostConfDir)
	case c.PluginBinary == "":
		return errors.New("--plugin-binary is required")
	case c.Client == nil || c.Server == "" || len(c.CAData) == 0:
		return errors.New("an API client, the API server URL and its CA are required")
	case c.Namespace == "" || c.ServiceAccount == "":
		return errors.New("--namespace and --service-account are required (the agent's own ServiceAccount, whose tokens the plugin uses)")
	case c.TokenTTL < MinTokenTTL:
		return fmt.Errorf("--token-ttl %v: the API server issues no token shorter than %v", c.TokenTTL, MinTokenTTL)
	}
	if c.RepairInterval <= 0 {
		c.RepairInterval = 2 * time.Second
	}
	if c.ExcludeNamespaces == nil {
		c.ExcludeNamespaces = cni.DefaultExcludeNamespaces
	}
	if !slices.Contains(c.ExcludeNamespaces, c.Namespace) {
		// The agent's own pods must never wait on the plugin's token,
		// which only a running agent renews.
		c.ExcludeNamespaces = append(slices.Clone(c.ExcludeNamespaces), c.Namespace)
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Agent installs and keeps tether-cni in place on one node.
type Agent struct {
	cfg      Config
	entry    json.RawMessage
	registry *prometheus.Registry

	mu          sync.Mutex
	kubeconfig  []byte
	tokenRenew  time.Time // when to ask for the next token
	tokenExp    time.Time // when the current one stops working
	ready       prometheus.Gauge
	repairs     *prometheus.CounterVec
	renewals    *prometheus.CounterVec
	tokenExpiry prometheus.Gauge
	errs        prometheus.Counter
}

// New builds the agent; it changes nothing yet.
func New(cfg Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	e, err := entry(filepath.Join(cfg.HostConfDir, KubeconfigName), cfg.ExcludeNamespaces, cfg.NodeName)
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, entry: e, registry: prometheus.NewRegistry()}
	a.ready = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "tether_cni_node_ready",
		Help: "1 while tether-cni's chain entry, binary and kubeconfig are in place on this node, else 0.",
	})
	a.repairs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tether_cni_node_repairs_total",
		Help: "Writes of what was missing or changed, by object: binary, entry, kubeconfig (the first install counts).",
	}, []string{"object"})
	a.renewals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tether_cni_node_token_renewals_total",
		Help: "Token requests for the plugin's kubeconfig, by result: ok, error.",
	}, []string{"result"})
	a.tokenExpiry = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "tether_cni_node_token_expiry_timestamp_seconds",
		Help: "Expiry of the token in the plugin's kubeconfig, as a Unix time.",
	})
	a.errs = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tether_cni_node_reconcile_errors_total",
		Help: "Passes that could not put everything in place.",
	})
	a.registry.MustRegister(a.ready, a.repairs, a.renewals, a.tokenExpiry, a.errs,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return a, nil
}

// Registry holds the agent's metrics.
func (a *Agent) Registry() *prometheus.Registry { return a.registry }

// Ready is nil while the chain entry is in place (read from the conf dir
// now), the binary and the kubeconfig too; else why not.
func (a *Agent) Ready() error {
	if err := entryInPlace(a.cfg.ConfDir, a.entry); err != nil {
		return err
	}
	for _, p := range []string{filepath.Join(a.cfg.BinDir, cni.PluginType), filepath.Join(a.cfg.ConfDir, KubeconfigName)} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("missing: %w", err)
		}
	}
	return nil
}

// Reconcile makes one pass: the binary, the kubeconfig (renewing the
// token when due), then the entry, each written only when missing or
// different. It returns what could not be put in place.
func (a *Agent) Reconcile(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	err := errors.Join(a.installBinary(), a.installKubeconfig(ctx))
	if err == nil {
		// The entry last: the runtime must not call a plugin that is not there yet.
		err = a.installEntry()
	}
	if err != nil {
		a.errs.Inc()
	}
	if a.Ready() == nil {
		a.ready.Set(1)
	} else {
		a.ready.Set(0)
	}
	return err
}

func (a *Agent) installBinary() error {
	dst := filepath.Join(a.cfg.BinDir, cni.PluginType)
	want, err := fileSum(a.cfg.PluginBinary)
	if err != nil {
		return fmt.Errorf("read the plugin binary: %w", err)
	}
	if got, err := fileSum(dst); err == nil && got == want {
		return nil
	}
	b, err := os.ReadFile(a.cfg.PluginBinary)
	if err != nil {
		return fmt.Errorf("read the plugin binary: %w", err)
	}
	if err := writeAtomic(dst, b, 0o755); err != nil {
		return err
	}
	a.repairs.WithLabelValues("binary").Inc()
	a.cfg.Logger.Info("installed the plugin binary", "path", dst)
	return nil
}

func fileSum(path string) ([32]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return [32]byte{}, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return [32]byte{}, err
	}
	return [32]byte(h.Sum(nil)), nil
}

func (a *Agent) installKubeconfig(ctx context.Context) error {
	path := filepath.Join(a.cfg.ConfDir, KubeconfigName)
	if now := a.cfg.Clock(); a.kubeconfig == nil || !now.Before(a.tokenRenew) {
		if err := a.renewToken(ctx); err != nil {
			a.renewals.WithLabelValues("error").Inc()
			if a.kubeconfig == nil || !now.Before(a.tokenExp) {
				return err
			}
			// The current token is still valid: keep it in place (and the
			// entry) and try again on the next pass.
			a.cfg.Logger.Warn("could not renew the plugin's token; the current one is still valid", "expires", a.tokenExp, "error", err)
		} else {
			a.renewals.WithLabelValues("ok").Inc()
		}
	}
	if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, a.kubeconfig) {
		if fi, err := os.Stat(path); err == nil && fi.Mode().Perm() == 0o600 {
			return nil
		}
	}
	if err := writeAtomic(path, a.kubeconfig, 0o600); err != nil {
		return err
	}
	a.repairs.WithLabelValues("kubeconfig").Inc()
	return nil
}

// renewToken asks for a token of the agent's ServiceAccount (bound to its
// pod when PodName is set) and renders the plugin's kubeconfig with it.
func (a *Agent) renewToken(ctx context.Context) error {
	secs := int64(a.cfg.TokenTTL / time.Second)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &secs}}
	if a.cfg.PodName != "" {
		pod, err := a.cfg.Client.CoreV1().Pods(a.cfg.Namespace).Get(ctx, a.cfg.PodName, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("read the agent's own pod %s/%s to bind the plugin's token to it: %w", a.cfg.Namespace, a.cfg.PodName, err)
		}
		req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	resp, err := a.cfg.Client.CoreV1().ServiceAccounts(a.cfg.Namespace).CreateToken(ctx, a.cfg.ServiceAccount, req, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("request a token of ServiceAccount %s/%s for the plugin (needs create on serviceaccounts/token): %w",
			a.cfg.Namespace, a.cfg.ServiceAccount, err)
	}
	kc, err := cni.Kubeconfig(a.cfg.Server, a.cfg.CAData, resp.Status.Token)
	if err != nil {
		return err
	}
	now := a.cfg.Clock()
	// Renew after 80% of the lifetime asked for (the API server may grant
	// a longer one; never rely on more than asked).
	expiry := resp.Status.ExpirationTimestamp.Time
	if limit := now.Add(a.cfg.TokenTTL); expiry.IsZero() || expiry.After(limit) {
		expiry = limit
	}
	a.kubeconfig, a.tokenRenew, a.tokenExp = kc, now.Add(expiry.Sub(now)*4/5), expiry
	a.tokenExpiry.Set(float64(resp.Status.ExpirationTimestamp.Unix()))
	a.cfg.Logger.Info("renewed the plugin's token", "expires", resp.Status.ExpirationTimestamp.Time, "renew_at", a.tokenRenew)
	return nil
}

func (a *Agent) installEntry() error {
	path, err := firstConf(a.cfg.ConfDir)
	if err != nil {
		return err
	}
	wrote, err := editConflist(path, a.entry)
	if err != nil {
		return err
	}
	if wrote {
		a.repairs.WithLabelValues("entry").Inc()
		a.cfg.Logger.Info("put tether-cni's entry at the end of the chain", "conflist", path)
	}
	return nil
}

// Uninstall removes tether-cni's entries from every conflist of confDir,
// then the kubeconfig and the binary. Missing pieces are not an error.
func Uninstall(binDir, confDir string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	changed, err := removeEntries(confDir)
	for _, p := range changed {
		log.Info("removed tether-cni's entry", "conflist", p)
	}
	for _, p := range []string{filepath.Join(confDir, KubeconfigName), filepath.Join(binDir, cni.PluginType)} {
		if rerr := os.Remove(p); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	return err
}

// Handler serves /readyz and /metrics.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := a.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{}))
	return mux
}

// ExitCheckTimeout bounds the question Run asks the API server on exit
// (well within the DaemonSet's terminationGracePeriodSeconds).
const ExitCheckTimeout = 4 * time.Second

// Run serves the handler on l, reconciles every RepairInterval until ctx
// ends, then, with uninstall, removes what it installed if the agent is
// being uninstalled (RemoveOnExit).
func (a *Agent) Run(ctx context.Context, l net.Listener, uninstall bool) error {
	srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	defer srv.Close()
	t := time.NewTicker(a.cfg.RepairInterval)
	defer t.Stop()
	var last string
	for {
		err := a.Reconcile(ctx)
		if msg := fmt.Sprint(err); err != nil && msg != last {
			a.cfg.Logger.Warn("tether-cni is not fully in place; retrying", "error", err)
		}
		last = fmt.Sprint(err)
		select {
		case <-ctx.Done():
			if !uninstall {
				return nil
			}
			qctx, cancel := context.WithTimeout(context.Background(), ExitCheckTimeout)
			defer cancel()
			remove, why := a.RemoveOnExit(qctx)
			if !remove {
				a.cfg.Logger.Info("exiting; tether-cni stays on the node", "reason", why)
				return nil
			}
			a.cfg.Logger.Info("exiting; removing tether-cni from the node", "reason", why)
			a.mu.Lock()
			defer a.mu.Unlock()
			return Uninstall(a.cfg.BinDir, a.cfg.ConfDir, a.cfg.Logger)
		case <-t.C:
		}
	}
}

// RemoveOnExit decides, as the agent exits, whether to remove what it
// installed, and says why. It keeps everything while the agent's
// DaemonSet exists and is not being deleted (a restart, an upgrade, an
// eviction, a node no longer selected): pods created until the next agent
// runs wait for it (their network fails until it writes a fresh token)
// instead of getting no redirection. It removes when the DaemonSet is
// gone or being deleted, and when the API server cannot say (an error, a
// refusal because uninstall deleted the agent's RBAC too): an entry left
// behind with a token that no longer works would fail every new pod's
// network on the node.
func (a *Agent) RemoveOnExit(ctx context.Context) (bool, string) {
	if a.cfg.DaemonSet == "" {
		return true, "no DaemonSet given (--daemonset): always removed on exit"
	}
	ref := a.cfg.Namespace + "/" + a.cfg.DaemonSet
	ds, err := a.cfg.Client.AppsV1().DaemonSets(a.cfg.Namespace).Get(ctx, a.cfg.DaemonSet, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return true, fmt.Sprintf("DaemonSet %s is deleted: uninstall", ref)
	case err != nil:
		return true, fmt.Sprintf("cannot tell whether DaemonSet %s is being deleted (%v): removing, since an entry whose token may no longer work would fail every new pod's network on this node", ref, err)
	case ds.DeletionTimestamp != nil:
		return true, fmt.Sprintf("DaemonSet %s is being deleted (since %s): uninstall", ref, ds.DeletionTimestamp.UTC().Format(time.RFC3339))
	}
	return false, fmt.Sprintf("DaemonSet %s exists and is not being deleted (a restart, an upgrade, an eviction or a node it no longer selects): new pods on this node wait until an agent runs here again", ref)
}
