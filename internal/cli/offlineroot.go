package cli

import (
	"context"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/identity"
)

// Offline-root mode: the root key lives only where these commands run (an
// operator's machine, ideally offline); tether-ca gets an intermediate.

const defaultOfflineRootTTL = 5 * 365 * 24 * time.Hour

func (a *App) caOfflineRoot(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: ca offline-root needs a command: init or sign-intermediate", errUsage)
	}
	switch args[0] {
	case "init":
		return a.offlineRootInit(args[1:])
	case "sign-intermediate":
		return a.offlineRootSign(args[1:])
	default:
		return fmt.Errorf("%w: unknown command %q (want init or sign-intermediate)", errUsage, "ca offline-root "+args[0])
	}
}

func (a *App) offlineRootInit(args []string) error {
	fs := a.flags("ca offline-root init")
	dir := fs.String("dir", "", "directory for root.pem and root.key (required; keep it offline)")
	td := fs.String("trust-domain", "cluster.local", "SPIFFE trust domain of the mesh")
	ttl := fs.Duration("ttl", defaultOfflineRootTTL, "lifetime of the root")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("%w: --dir is required", errUsage)
	}
	trustDomain, err := spiffeid.TrustDomainFromString(*td)
	if err != nil {
		return fmt.Errorf("--trust-domain %q: %v", *td, err)
	}
	cert, key, err := identity.NewOfflineRoot(trustDomain, *ttl, time.Now())
	if err != nil {
		return err
	}
	if err := identity.WriteOfflineRoot(*dir, cert, key); err != nil {
		return err
	}
	c, _ := x509.ParseCertificate(cert)
	fmt.Fprintf(a.Stdout, "offline root for %s in %s (SHA-256 %s), valid until %s\n", trustDomain,
		filepath.Join(*dir, identity.OfflineRootCertFile), identity.Fingerprint(cert), c.NotAfter.UTC().Format(time.RFC3339))
	fmt.Fprintf(a.Stderr, "%s is the mesh's root key: keep it off the cluster; tether-ca never needs it\n", filepath.Join(*dir, identity.OfflineRootKeyFile))
	return nil
}

func (a *App) offlineRootSign(args []string) error {
	fs := a.flags("ca offline-root sign-intermediate")
	dir := fs.String("dir", "", "directory of the offline root (from `tether ca offline-root init`; required)")
	out := fs.String("out", "", "directory to write intermediate.pem, intermediate.key and root.pem for tether-ca --offline-intermediate (required)")
	ttl := fs.Duration("ttl", identity.DefaultIntermediateTTL, "lifetime of the intermediate (cut at the root's end)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *dir == "" || *out == "" {
		return fmt.Errorf("%w: --dir and --out are required", errUsage)
	}
	rootCert, rootKey, err := identity.LoadOfflineRoot(*dir)
	if err != nil {
		return err
	}
	o, err := identity.SignOfflineIntermediate(rootCert, rootKey, *ttl, time.Now())
	if err != nil {
		return err
	}
	if err := o.WriteFiles(*out); err != nil {
		return err
	}
	c, _ := x509.ParseCertificate(o.Chain[0])
	fmt.Fprintf(a.Stdout, "intermediate in %s, valid until %s; replace it before %s\n", *out,
		c.NotAfter.UTC().Format(time.RFC3339), c.NotAfter.Add(-c.NotAfter.Sub(c.NotBefore)/3).UTC().Format(time.RFC3339))
	return nil
}
