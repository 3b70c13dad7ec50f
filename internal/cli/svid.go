package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/caadmin"
	"github.com/tether-mesh/tether/pkg/identity"
)

// newSVIDCmd is the `tether svid` group.
func (a *App) newSVIDCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "svid",
		Short: "Get an X.509-SVID from tether-ca for a workload outside the mesh",
		Long: `Commands for workloads that run without a sidecar: a VM, a CI job, an
operator's machine. They present a credential (a join token from
"tether ca token create", or a Kubernetes ServiceAccount token) to tether-ca
and receive an X.509-SVID.`,
		Example: `  tether svid fetch --ca ca.example:8443 --bundle bundle.pem --join-token-file token --out ./svid`,
	}
	cmd.AddCommand(a.newSVIDFetchCmd())
	return cmd
}

// svidFetchOptions are the flags of `tether svid fetch`.
type svidFetchOptions struct {
	caAddr, bundlePath, token, tokenFile, k8sTokenFile, out, trustDomain string
	timeout                                                              time.Duration
}

// newSVIDFetchCmd is `tether svid fetch`.
func (a *App) newSVIDFetchCmd() *cobra.Command {
	var o svidFetchOptions
	cmd := &cobra.Command{
		Use:   "fetch",
		Short: "Attest to tether-ca with a credential and write the SVID, its key and the trust bundle",
		Long: `Presents exactly one credential to tether-ca at --ca, verifying the CA with
the roots in --bundle: a join token (--join-token-file, or --token) or a
projected Kubernetes ServiceAccount token (--k8s-token-file, audience
tether-ca). Writes svid.pem (leaf and intermediates), svid.key (PKCS#8, mode
0600) and bundle.pem into --out, each atomically, and prints the SPIFFE ID
and expiry.

The private key is written to --out: choose a directory only you can read,
and keep it out of version control.`,
		Example: `  # With a join token made by "tether ca token create --out token"
  tether svid fetch --ca ca.example:8443 --bundle bundle.pem --join-token-file token --out ./svid

  # The token from standard input
  tether ca token create --spiffe-id spiffe://cluster.local/vm/build | \
    tether svid fetch --ca ca.example:8443 --bundle bundle.pem --join-token-file - --out ./svid`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.svidFetch(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.caAddr, "ca", "", "tether-ca address, host:port")
	f.StringVar(&o.bundlePath, "bundle", "", "PEM trust bundle that verifies the CA")
	f.StringVar(&o.token, "token", "", "join token (visible to local users in /proc/PID/cmdline: prefer --join-token-file)")
	f.StringVar(&o.tokenFile, "join-token-file", "", "file holding the join token (- reads standard input)")
	f.StringVar(&o.k8sTokenFile, "k8s-token-file", "", "projected ServiceAccount token file (audience tether-ca)")
	f.StringVar(&o.out, "out", "", "directory to write svid.pem, svid.key and bundle.pem")
	f.StringVar(&o.trustDomain, "trust-domain", "", "trust domain (default: read from the bundle's root)")
	f.DurationVar(&o.timeout, "timeout", 30*time.Second, "give up after this long")
	for _, name := range []string{"ca", "bundle", "out"} {
		_ = cmd.MarkFlagRequired(name)
	}
	_ = cmd.MarkFlagFilename("bundle", "pem")
	_ = cmd.MarkFlagFilename("join-token-file")
	_ = cmd.MarkFlagFilename("k8s-token-file")
	_ = cmd.MarkFlagDirname("out")
	return cmd
}

func (a *App) svidFetch(ctx context.Context, o svidFetchOptions) error {
	if btoi(o.token != "")+btoi(o.tokenFile != "")+btoi(o.k8sTokenFile != "") != 1 {
		return usagef("give exactly one of --join-token-file, --token and --k8s-token-file")
	}
	if o.tokenFile != "" {
		t, err := identity.ReadJoinTokenFile(o.tokenFile, a.Stdin)
		if err != nil {
			return err
		}
		o.token = t
	}
	cred := &cav1.Credential{Kind: identity.KindJoinToken, Token: o.token}
	if o.k8sTokenFile != "" {
		b, err := os.ReadFile(o.k8sTokenFile)
		if err != nil {
			return fmt.Errorf("read token: %w", err)
		}
		cred = &cav1.Credential{Kind: identity.KindK8sSAT, Token: strings.TrimSpace(string(b))}
	}
	bundle, err := identity.LoadBundlePEM(o.bundlePath, o.trustDomain)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	client, err := identity.Dial(o.caAddr, bundle.TrustDomain(), bundle, nil)
	if err != nil {
		return err
	}
	defer client.Close()
	svid, newBundle, err := client.FetchSVID(ctx, cred)
	if err != nil {
		return caadmin.RPCError("fetch SVID from "+o.caAddr, err)
	}
	if err := WriteSVID(o.out, svid, newBundle.X509Bundle()); err != nil {
		return err
	}
	leaf := svid.Certificates[0]
	fmt.Fprintf(a.Stdout, "%s\nwrote %s, %s and %s; expires %s\n", svid.ID,
		filepath.Join(o.out, "svid.pem"), filepath.Join(o.out, "svid.key"), filepath.Join(o.out, "bundle.pem"),
		leaf.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// WriteSVID writes svid.pem (leaf, then intermediates), svid.key (PKCS#8,
// mode 0600) and bundle.pem into dir, each atomically.
func WriteSVID(dir string, svid *x509svid.SVID, bundle *x509bundle.Bundle) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	certs, key, err := svid.Marshal()
	if err != nil {
		return fmt.Errorf("encode SVID: %w", err)
	}
	roots, err := bundle.Marshal()
	if err != nil {
		return fmt.Errorf("encode bundle: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{{"svid.key", key, 0o600}, {"svid.pem", certs, 0o644}, {"bundle.pem", roots, 0o644}} {
		if err := identity.WriteFileAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("write %s: %w", f.name, err)
		}
	}
	return nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
