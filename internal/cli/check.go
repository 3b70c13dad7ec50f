package cli

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tether-mesh/tether/internal/check"
)

func init() { register("", (*App).newCheckCmd) }

const checkLong = `Checks a cluster, as Linkerd's check does: each check prints what it found
and, when it fails or warns, a hint saying what to do. docs/check.md lists
every check, what it reads and what its failure means.

  tether check --pre          before tether install: the Kubernetes version
                              (native sidecars), the caller's permissions for
                              what install creates, the Pod Security level of
                              labelled namespaces, an existing install
  tether check                after install: CRDs, the control plane's
                              deployments, discovery's endpoints, root and
                              intermediate expiry, the webhook's caBundle and
                              a dry-run pod it must inject, Pod Security,
                              every sidecar's SVID, pods running without a
                              sidecar (with the command that restarts them),
                              sidecars older than the control plane
  tether check --proxy -n NS  the data plane of one namespace: every pod
                              injected, sidecars ready, SVIDs valid,
                              identities matching the ServiceAccounts,
                              versions

It reads the cluster through the API server (the parts' admin ports through
its pod proxy, discovery's list of sidecars through a port-forward) and
changes nothing: the pods it creates are server-side dry runs.

Exit status: 0 when no check failed (warnings allowed), 1 when one did
(--expiry-warning makes an expiring root a failure, for CI and cron),
2 usage error.`

// checkOptions are tether check's flags.
type checkOptions struct {
	pre, proxy                  bool
	namespace, controlPlane     string
	kubeconfig, kubeContext     string
	expiryWarning, intermediate days
	timeout                     time.Duration
	redirectMode                string
	out                         Output
}

// newCheckCmd is `tether check`.
func (a *App) newCheckCmd() *cobra.Command {
	o := checkOptions{expiryWarning: days(check.DefaultExpiryWarning), intermediate: days(check.DefaultIntermediateExpiryWarning)}
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check that a cluster can run Tether, that Tether works, or a namespace's data plane",
		Long:  checkLong,
		Example: `  # Before installing
  tether check --pre
  tether check --pre --redirect-mode cni   # meshed namespaces enforcing restricted

  # After installing, in CI: fail when a root expires within 60 days
  tether check --expiry-warning 60d -o json

  # The sidecars of one namespace
  tether check --proxy -n shop`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.check(cmd, o)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.pre, "pre", false, "check that the cluster can run Tether, before tether install")
	f.BoolVar(&o.proxy, "proxy", false, "check the data plane of the namespace -n names")
	f.StringVarP(&o.namespace, "namespace", "n", "", "with --proxy: the namespace to check")
	f.StringVar(&o.controlPlane, "control-plane-namespace", "tether-system", "the control plane's namespace")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster)")
	f.StringVar(&o.kubeContext, "context", "", "kubeconfig context (default: the kubeconfig's current context)")
	f.Var(&o.expiryWarning, "expiry-warning", "fail when a root of the trust bundle expires within this long (e.g. 30d, 12h)")
	f.Var(&o.intermediate, "intermediate-expiry-warning", "fail when a signing intermediate expires within this long (the CA renews it at 1/3 of its life)")
	f.DurationVar(&o.timeout, "timeout", check.DefaultTimeout, "how long to wait for each answer of the API server and of each admin port")
	f.StringVar(&o.redirectMode, "redirect-mode", "init", "with --pre: the redirect mode you will install (init or cni) whose injected pod Pod Security judges; after install the injector's own is read")
	_ = cmd.MarkFlagFilename("kubeconfig")
	o.out.AddFlag(cmd)
	return cmd
}

func (a *App) check(cmd *cobra.Command, o checkOptions) error {
	switch {
	case o.pre && o.proxy:
		return usagef("--pre checks a cluster before install, --proxy a namespace's data plane: give one or the other")
	case o.proxy && o.namespace == "":
		return usagef("--proxy needs the namespace to check: -n NAMESPACE")
	case !o.proxy && o.namespace != "":
		return usagef("-n names the namespace of --proxy; the control plane's namespace is --control-plane-namespace")
	case o.timeout <= 0:
		return usagef("--timeout must be positive")
	case o.expiryWarning < 0 || o.intermediate < 0:
		return usagef("--expiry-warning and --intermediate-expiry-warning must not be negative")
	case o.redirectMode != "init" && o.redirectMode != "cni":
		return usagef("--redirect-mode %q: want init or cni", o.redirectMode)
	case !o.pre && cmd.Flags().Changed("redirect-mode"):
		return usagef("--redirect-mode goes with --pre; after install tether check reads the injector's own mode")
	}
	src := &policySource{kubeconfig: o.kubeconfig, kubeContext: o.kubeContext}
	cfg, where, err := src.restConfig(&lockedWriter{w: a.Stderr})
	if err != nil {
		if isUsage(err) {
			return usagef("no cluster to check: give --kubeconfig PATH or --context NAME (there is no kubeconfig, and this is not a pod of a cluster)")
		}
		return err
	}
	cfg.UserAgent = "tether-check"
	cfg.Timeout = o.timeout
	opts := check.Options{Config: cfg, Where: where, Namespace: o.controlPlane, ExpiryWarning: time.Duration(o.expiryWarning),
		IntermediateExpiryWarning: time.Duration(o.intermediate), Timeout: o.timeout, RedirectMode: o.redirectMode}
	ctx := cmd.Context()
	var rep *check.Report
	switch {
	case o.pre:
		rep, err = check.Pre(ctx, opts)
	case o.proxy:
		rep, err = check.Proxy(ctx, opts, o.namespace)
	default:
		rep, err = check.Install(ctx, opts)
	}
	if err != nil {
		return err
	}
	if err := o.out.Print(a.Stdout, rep, func(w io.Writer) error { return check.WriteText(w, rep) }); err != nil {
		return err
	}
	if rep.Failed() {
		return fmt.Errorf("%w: %d of %d checks failed (see their hints above)", check.ErrFailed, rep.Failures, len(rep.Checks))
	}
	return nil
}

// days is a duration flag that also takes days: "30d", "1d12h", "90m".
type days time.Duration

func (d *days) String() string {
	v := time.Duration(*d)
	if v%(24*time.Hour) == 0 && v != 0 {
		return strconv.FormatInt(int64(v/(24*time.Hour)), 10) + "d"
	}
	return v.String()
}

func (d *days) Type() string { return "duration" }

func (d *days) Set(s string) error {
	var total time.Duration
	rest := s
	if i := strings.IndexByte(s, 'd'); i >= 0 {
		n, err := strconv.ParseUint(s[:i], 10, 32)
		if err != nil {
			return fmt.Errorf("%q: want a duration such as 30d, 12h or 1d12h", s)
		}
		total, rest = time.Duration(n)*24*time.Hour, s[i+1:]
	}
	if rest != "" {
		v, err := time.ParseDuration(rest)
		if err != nil || v < 0 {
			return fmt.Errorf("%q: want a duration such as 30d, 12h or 1d12h", s)
		}
		total += v
	}
	*d = days(total)
	return nil
}
