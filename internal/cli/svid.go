package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/caadmin"
	"github.com/tether-mesh/tether/pkg/identity"
)

func (a *App) svidFetch(ctx context.Context, args []string) error {
	fs := a.flags("svid fetch")
	caAddr := fs.String("ca", "", "tether-ca address, host:port (required)")
	bundlePath := fs.String("bundle", "", "PEM trust bundle that verifies the CA (required)")
	token := fs.String("token", "", "join token (visible to local users in /proc/PID/cmdline: prefer --join-token-file)")
	tokenFile := fs.String("join-token-file", "", "file holding the join token (- reads standard input)")
	k8sTokenFile := fs.String("k8s-token-file", "", "projected ServiceAccount token file (audience tether-ca)")
	out := fs.String("out", "", "directory to write svid.pem, svid.key and bundle.pem (required)")
	tdFlag := fs.String("trust-domain", "", "trust domain (default: read from the bundle's root)")
	timeout := fs.Duration("timeout", 30*time.Second, "give up after this long")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	switch {
	case *caAddr == "" || *bundlePath == "" || *out == "":
		return fmt.Errorf("%w: --ca, --bundle and --out are required", errUsage)
	case btoi(*token != "")+btoi(*tokenFile != "")+btoi(*k8sTokenFile != "") != 1:
		return fmt.Errorf("%w: give exactly one of --join-token-file, --token and --k8s-token-file", errUsage)
	}
	if *tokenFile != "" {
		t, err := identity.ReadJoinTokenFile(*tokenFile, a.Stdin)
		if err != nil {
			return err
		}
		*token = t
	}
	cred := &cav1.Credential{Kind: identity.KindJoinToken, Token: *token}
	if *k8sTokenFile != "" {
		b, err := os.ReadFile(*k8sTokenFile)
		if err != nil {
			return fmt.Errorf("read token: %w", err)
		}
		cred = &cav1.Credential{Kind: identity.KindK8sSAT, Token: strings.TrimSpace(string(b))}
	}
	bundle, err := identity.LoadBundlePEM(*bundlePath, *tdFlag)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	client, err := identity.Dial(*caAddr, bundle.TrustDomain(), bundle, nil)
	if err != nil {
		return err
	}
	defer client.Close()
	svid, newBundle, err := client.FetchSVID(ctx, cred)
	if err != nil {
		return caadmin.RPCError("fetch SVID from "+*caAddr, err)
	}
	if err := WriteSVID(*out, svid, newBundle.X509Bundle()); err != nil {
		return err
	}
	leaf := svid.Certificates[0]
	fmt.Fprintf(a.Stdout, "%s\nwrote %s, %s and %s; expires %s\n", svid.ID,
		filepath.Join(*out, "svid.pem"), filepath.Join(*out, "svid.key"), filepath.Join(*out, "bundle.pem"),
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
