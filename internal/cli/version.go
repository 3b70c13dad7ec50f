package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tether-mesh/tether/internal/meshkube"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"

	"github.com/tether-mesh/tether/internal/admin"
	"github.com/tether-mesh/tether/internal/version"
)

// injectorAppLabel is tether-injector's app.kubernetes.io/name.
const injectorAppLabel = "tether-injector"

// maxVersionBody bounds an admin server's /version answer.
const maxVersionBody = 4 << 10

// versionReport is what `tether version` prints (-o json|yaml as is).
type versionReport struct {
	Client admin.VersionInfo `json:"client"`
	// Server is the control plane's pods and their versions; nil with
	// --client or when no pod could be asked (ServerError says why).
	Server      *serverVersions `json:"server,omitempty"`
	ServerError string          `json:"server_error,omitempty"`
}

// serverVersions are the versions of the control plane's pods.
type serverVersions struct {
	// Where is the Kubernetes context and server; Namespace the control
	// plane's namespace.
	Where      string             `json:"where"`
	Namespace  string             `json:"namespace"`
	Components []componentVersion `json:"components"`
}

// componentVersion is one pod's version, or why it is not known.
type componentVersion struct {
	Component string `json:"component"`
	Pod       string `json:"pod,omitempty"`
	Version   string `json:"version,omitempty"`
	Revision  string `json:"revision,omitempty"`
	Error     string `json:"error,omitempty"`
}

// versionOptions are the flags of `tether version`.
type versionOptions struct {
	client                      bool
	kubeconfig, kubeContext, ns string
	timeout                     time.Duration
	out                         Output
}

// newVersionCmd is `tether version`.
func (a *App) newVersionCmd() *cobra.Command {
	var o versionOptions
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version of tether and of the control plane it can reach",
		Long: `Prints this tether's version and VCS revision and, unless --client, the
version of every running control plane pod (tether-ca, tether-discovery,
tether-injector in --namespace), read from GET /version on each pod's admin
port through the API server's pod proxy, in the cluster of --kubeconfig and
--context (default: $KUBECONFIG, else ~/.kube/config, else in-cluster), as
"tether status" does.

When the control plane cannot be reached, it prints the client's version and
why the server part is missing, and still exits 0. It needs list on pods and
get on pods/proxy in --namespace.`,
		Example: `  tether version
  tether version --client
  tether version --context prod -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.version(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.client, "client", false, "print only this tether's version; do not ask the cluster")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster)")
	f.StringVar(&o.kubeContext, "context", "", "kubeconfig context (default: the kubeconfig's current context)")
	f.StringVarP(&o.ns, "namespace", "n", "tether-system", "the control plane's namespace")
	f.DurationVar(&o.timeout, "timeout", defaultStatusTimeout, "how long to wait for the API server and each pod")
	_ = cmd.MarkFlagFilename("kubeconfig")
	o.out.AddFlag(cmd)
	return cmd
}

func (a *App) version(ctx context.Context, o versionOptions) error {
	if o.timeout <= 0 {
		return usagef("--timeout must be positive")
	}
	rep := versionReport{Client: admin.VersionInfo{Version: version.Version, Revision: version.Revision()}}
	if !o.client {
		rep.Server, rep.ServerError = serverVersionsOf(ctx, o, a.Stderr)
	}
	return o.out.Print(a.Stdout, rep, func(w io.Writer) error {
		printVersion(w, rep, o.client)
		return nil
	})
}

// serverVersionsOf asks every running control plane pod for its version.
// The string says why none could be asked.
func serverVersionsOf(ctx context.Context, o versionOptions, stderr io.Writer) (*serverVersions, string) {
	k, err := newKubeTargets(statusOptions{kubeconfig: o.kubeconfig, kubeContext: o.kubeContext, namespace: o.ns, timeout: o.timeout}, stderr)
	if err != nil {
		if isUsage(err) {
			return nil, "no cluster to ask: there is no kubeconfig ($KUBECONFIG, ~/.kube/config) and this is not a pod of a cluster; give --kubeconfig or --context"
		}
		return nil, err.Error()
	}
	sv := &serverVersions{Where: k.where, Namespace: o.ns, Components: []componentVersion{}}
	for _, app := range []string{caAppLabel, discoveryAppLabel, injectorAppLabel} {
		pods, err := k.controlPods(ctx, app)
		var none *meshkube.NoPodsError
		switch {
		case errors.As(err, &none):
			sv.Components = append(sv.Components, componentVersion{Component: app, Error: err.Error()})
			continue
		case err != nil:
			// The API server does not answer, or does not let us list
			// pods: the same for every component.
			return nil, err.Error()
		}
		for i := range pods {
			sv.Components = append(sv.Components, podVersion(ctx, k, app, &pods[i], o.timeout))
		}
	}
	if !anyVersion(sv.Components) {
		var errs []string
		for _, c := range sv.Components {
			errs = append(errs, c.Error)
		}
		return nil, "no control plane pod answered: " + strings.Join(errs, "; ")
	}
	return sv, ""
}

// podVersion asks one control plane pod for its version.
func podVersion(ctx context.Context, k *kubeTargets, app string, p *corev1.Pod, timeout time.Duration) componentVersion {
	c := componentVersion{Component: app, Pod: p.Name}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var v admin.VersionInfo
	err := k.proxyGet(ctx, p, adminPort(p), "/version", maxVersionBody, func(r io.Reader) error {
		return decodeBody(r, maxVersionBody, &v)
	})
	switch {
	case err != nil:
		c.Error = err.Error()
	case v.Version == "":
		c.Error = "GET /version answered no version"
	default:
		c.Version, c.Revision = v.Version, v.Revision
	}
	return c
}

func anyVersion(cs []componentVersion) bool {
	for _, c := range cs {
		if c.Version != "" {
			return true
		}
	}
	return false
}

// printVersion writes the report for people.
func printVersion(w io.Writer, r versionReport, clientOnly bool) {
	fmt.Fprintf(w, "Client: %s\n", versionText(r.Client.Version, r.Client.Revision))
	if clientOnly {
		return
	}
	if r.ServerError != "" {
		fmt.Fprintf(w, "Control plane: unknown: %s\n", r.ServerError)
		return
	}
	fmt.Fprintf(w, "Control plane (%s, namespace %s):\n", r.Server.Where, r.Server.Namespace)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range r.Server.Components {
		if c.Error != "" {
			fmt.Fprintf(tw, "  %s\t%s\tunknown: %s\n", c.Component, cmp.Or(c.Pod, "-"), clean(c.Error))
			continue
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", c.Component, c.Pod, clean(versionText(c.Version, c.Revision)))
	}
	tw.Flush()
}

// versionText is "VERSION (revision REV)", or VERSION when the revision
// is not known.
func versionText(v, rev string) string {
	if rev == "" {
		return v
	}
	return v + " (revision " + rev + ")"
}
