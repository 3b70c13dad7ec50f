package cli

import (
	"github.com/spf13/cobra"

	"github.com/tether-mesh/tether/internal/install"
)

func init() { register("", (*App).newUninstallCmd) }

// newUninstallCmd is `tether uninstall`.
func (a *App) newUninstallCmd() *cobra.Command {
	var v valuesFlags
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Print Tether's control plane as YAML for kubectl delete, in a safe order",
		Long: `Prints the objects "tether install" creates, in the order to delete them,
for "kubectl delete -f -": the MutatingWebhookConfiguration first, so that
no pod creation fails on an injector that is going away, then the
Deployments, Services, RBAC and ServiceAccounts, and the Namespace
tether-system last (with it the CA's Secret: back it up first if you may
come back). The CRD, and with it every AccessPolicy in the cluster, is
deleted only with --crds, after the Namespace. Give the values you
installed with (--set, -f) so that the same objects are listed. It talks
to no cluster.

Running pods keep their sidecars: they serve their last SVID until it
expires (tether-ca's --svid-ttl, 1h by default) and then turn NotReady.
Take namespaces out of the mesh and restart their workloads first
(docs/install.md, "Uninstall").`,
		Example: `  tether uninstall | kubectl delete -f -
  tether uninstall --set certManager.enabled=true | kubectl delete -f -
  tether uninstall --crds | kubectl delete --ignore-not-found -f -`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o, err := v.options(a)
			if err != nil {
				return err
			}
			objs, err := install.Uninstall(o)
			if err != nil {
				return installErr(err)
			}
			return install.Write(a.Stdout, objs)
		},
	}
	v.add(cmd, "also delete the CRDs, and so every AccessPolicy (last)")
	return cmd
}
