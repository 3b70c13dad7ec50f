package cli

import (
	"crypto/x509"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/identity"
)

// Offline-root mode: the root key lives only where these commands run (an
// operator's machine, ideally offline); tether-ca gets an intermediate.

const defaultOfflineRootTTL = 5 * 365 * 24 * time.Hour

// newCAOfflineRootCmd is the `tether ca offline-root` group.
func (a *App) newCAOfflineRootCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "offline-root",
		Short: "Keep the mesh's root key offline and sign intermediates for tether-ca",
		Long: `Offline-root mode: the root key lives only where these commands run (an
operator's machine, ideally offline). "init" makes the root; each
"sign-intermediate" signs an intermediate that tether-ca signs SVIDs with
(tether-ca --offline-intermediate DIR). tether-ca then cannot rotate the root
nor renew its intermediate itself: sign a new one before it expires.`,
		Example: `  tether ca offline-root init --dir /media/usb/tether-root --trust-domain example.org
  tether ca offline-root sign-intermediate --dir /media/usb/tether-root --out ./intermediate --ttl 720h`,
	}
	cmd.AddCommand(a.newOfflineRootInitCmd(), a.newOfflineRootSignCmd())
	return cmd
}

// newOfflineRootInitCmd is `tether ca offline-root init`.
func (a *App) newOfflineRootInitCmd() *cobra.Command {
	var (
		dir, td string
		ttl     time.Duration
	)
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Make the offline root: root.pem and root.key in a directory",
		Long: `Makes a new root for the trust domain and writes root.pem and root.key
(mode 0600) into --dir. It refuses to overwrite a root key. Keep the
directory off the cluster: tether-ca never needs the key.`,
		Example: `  tether ca offline-root init --dir /media/usb/tether-root --trust-domain example.org --ttl 43800h`,
		Args:    noArgs,
		RunE: func(*cobra.Command, []string) error {
			return a.offlineRootInit(dir, td, ttl)
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "directory for root.pem and root.key (keep it offline)")
	f.StringVar(&td, "trust-domain", "cluster.local", "SPIFFE trust domain of the mesh")
	f.DurationVar(&ttl, "ttl", defaultOfflineRootTTL, "lifetime of the root")
	_ = cmd.MarkFlagRequired("dir")
	_ = cmd.MarkFlagDirname("dir")
	return cmd
}

// newOfflineRootSignCmd is `tether ca offline-root sign-intermediate`.
func (a *App) newOfflineRootSignCmd() *cobra.Command {
	var (
		dir, out string
		ttl      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "sign-intermediate",
		Short: "Sign an intermediate for tether-ca --offline-intermediate",
		Long: `Signs a new intermediate with the offline root in --dir and writes
intermediate.pem, intermediate.key and root.pem into --out, for
tether-ca --offline-intermediate. Its lifetime is --ttl, cut at the root's
end; replace it (sign another, restart tether-ca with it) before two thirds
of it have passed.`,
		Example: `  tether ca offline-root sign-intermediate --dir /media/usb/tether-root --out ./intermediate --ttl 720h`,
		Args:    noArgs,
		RunE: func(*cobra.Command, []string) error {
			return a.offlineRootSign(dir, out, ttl)
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "directory of the offline root (from `tether ca offline-root init`)")
	f.StringVar(&out, "out", "", "directory to write intermediate.pem, intermediate.key and root.pem for tether-ca --offline-intermediate")
	f.DurationVar(&ttl, "ttl", identity.DefaultIntermediateTTL, "lifetime of the intermediate (cut at the root's end)")
	_ = cmd.MarkFlagRequired("dir")
	_ = cmd.MarkFlagRequired("out")
	_ = cmd.MarkFlagDirname("dir")
	_ = cmd.MarkFlagDirname("out")
	return cmd
}

func (a *App) offlineRootInit(dir, td string, ttl time.Duration) error {
	trustDomain, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return fmt.Errorf("--trust-domain %q: %v", td, err)
	}
	cert, key, err := identity.NewOfflineRoot(trustDomain, ttl, time.Now())
	if err != nil {
		return err
	}
	if err := identity.WriteOfflineRoot(dir, cert, key); err != nil {
		return err
	}
	c, _ := x509.ParseCertificate(cert)
	fmt.Fprintf(a.Stdout, "offline root for %s in %s (SHA-256 %s), valid until %s\n", trustDomain,
		filepath.Join(dir, identity.OfflineRootCertFile), identity.Fingerprint(cert), c.NotAfter.UTC().Format(time.RFC3339))
	fmt.Fprintf(a.Stderr, "%s is the mesh's root key: keep it off the cluster; tether-ca never needs it\n", filepath.Join(dir, identity.OfflineRootKeyFile))
	return nil
}

func (a *App) offlineRootSign(dir, out string, ttl time.Duration) error {
	rootCert, rootKey, err := identity.LoadOfflineRoot(dir)
	if err != nil {
		return err
	}
	o, err := identity.SignOfflineIntermediate(rootCert, rootKey, ttl, time.Now())
	if err != nil {
		return err
	}
	if err := o.WriteFiles(out); err != nil {
		return err
	}
	c, _ := x509.ParseCertificate(o.Chain[0])
	fmt.Fprintf(a.Stdout, "intermediate in %s, valid until %s; replace it before %s\n", out,
		c.NotAfter.UTC().Format(time.RFC3339), c.NotAfter.Add(-c.NotAfter.Sub(c.NotBefore)/3).UTC().Format(time.RFC3339))
	return nil
}
