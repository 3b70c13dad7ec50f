package cli

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/tether-mesh/tether/internal/install"
)

func init() { register("", (*App).newInstallCmd) }

// valuesFlags are the chart-value flags install and uninstall share.
type valuesFlags struct {
	files, set, setString []string
	namespace             string
	crds                  bool
	redirectMode          string
}

// add declares the flags on cmd.
func (v *valuesFlags) add(cmd *cobra.Command, crdsHelp string) {
	f := cmd.Flags()
	f.StringArrayVar(&v.set, "set", nil, "set a chart value: key=value[,key=value] (repeatable; later wins; as helm's --set)")
	f.StringArrayVar(&v.setString, "set-string", nil, "set a chart value as a string: key=value[,key=value] (repeatable; applied after every --set)")
	f.StringArrayVarP(&v.files, "values", "f", nil, "a YAML file of chart values, or - for standard input (repeatable; later files win; --set wins over files)")
	f.StringVarP(&v.namespace, "namespace", "n", install.Namespace, "the control plane's namespace (only tether-system is supported)")
	f.BoolVar(&v.crds, "crds", false, crdsHelp)
	f.StringVar(&v.redirectMode, "redirect-mode", "", "init or cni: the chart value injector.redirectMode (cni adds the tether-cni-node DaemonSet; docs/install.md, \"CNI mode\"); a --set of it wins")
}

// options are the install package's options from the flags.
func (v *valuesFlags) options(a *App) (install.Options, error) {
	set := v.set
	switch v.redirectMode {
	case "":
	case "init", "cni":
		// Before the user's --set, which wins, as later values do.
		set = append([]string{"injector.redirectMode=" + v.redirectMode}, set...)
	default:
		return install.Options{}, usagef("--redirect-mode %q: want init (the tether-init container, which needs NET_ADMIN) or cni (the Tether CNI plugin on every node)", v.redirectMode)
	}
	return install.Options{
		Values:    install.Values{Files: v.files, Set: set, SetString: v.setString, Stdin: a.Stdin},
		Namespace: v.namespace,
		CRDs:      v.crds,
	}, nil
}

// installErr makes bad values a usage error (exit 2).
func installErr(err error) error {
	var ie *install.InputError
	if errors.As(err, &ie) {
		return usagef("%v", err)
	}
	return err
}

// newInstallCmd is `tether install`.
func (a *App) newInstallCmd() *cobra.Command {
	var v valuesFlags
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Print Tether's control plane as YAML for kubectl apply",
		Long: `Renders Tether's Helm chart (charts/tether, built into this binary; no helm
needed) and prints the objects as YAML documents for "kubectl apply -f -",
in install order: the Namespace tether-system, ServiceAccounts, RBAC,
Services, the Deployments of tether-ca, tether-discovery and tether-injector,
then the injector's MutatingWebhookConfiguration. With --crds it prints only
the CRDs (AccessPolicy); apply them first. It talks to no cluster.

Values are the chart's (docs/install.md, "Values"), taken as helm takes
them: the chart's defaults, then this command's (the Namespace object is
included, and the image is tether:<this CLI's version>), then each -f file
in order, then every --set, then every --set-string. Values the chart's
schema refuses, a malformed --set, an unreadable -f file or a namespace
other than tether-system are usage errors (exit 2); nothing is printed then.
The same values print the same bytes.`,
		Example: `  tether install --crds | kubectl apply -f -
  tether install | kubectl apply --server-side -f -
  tether install --set certManager.enabled=true | kubectl apply --server-side -f -
  tether install --redirect-mode cni | kubectl apply --server-side -f -
  tether install -f values.yaml --set ca.replicas=3 --set-string image.tag=0.1.0 > tether.yaml`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o, err := v.options(a)
			if err != nil {
				return err
			}
			objs, err := install.Render(o)
			if err != nil {
				return installErr(err)
			}
			return install.Write(a.Stdout, objs)
		},
	}
	v.add(cmd, "print only the CRDs (apply them before the rest)")
	return cmd
}
