package cli

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tether-mesh/tether/internal/caadmin"
)

// defaultWorkloadSocket is where the sidecar serves the Workload API in a pod.
const defaultWorkloadSocket = "unix:///run/tether/workload.sock"

// identityInfo is what `tether identity` shows, also as JSON.
type identityInfo struct {
	SPIFFEID         string       `json:"spiffe_id"`
	Serial           string       `json:"serial"`
	NotBefore        time.Time    `json:"not_before"`
	NotAfter         time.Time    `json:"not_after"`
	ExpiresInSeconds int64        `json:"expires_in_seconds"`
	Chain            []certInfo   `json:"chain"`
	Bundles          []bundleInfo `json:"bundles"`
	Written          []string     `json:"written,omitempty"`
}

type certInfo struct {
	Subject   string    `json:"subject"`
	Issuer    string    `json:"issuer"`
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	SHA256    string    `json:"sha256"`
}

type bundleInfo struct {
	TrustDomain string     `json:"trust_domain"`
	Roots       []certInfo `json:"roots"`
}

// newIdentityCmd is `tether identity`.
func (a *App) newIdentityCmd() *cobra.Command {
	var (
		socket, dir string
		timeout     time.Duration
		out         Output
	)
	cmd := &cobra.Command{
		Use:   "identity",
		Short: "Show this workload's SPIFFE identity, from its sidecar's Workload API",
		Long: `Shows the X.509-SVID the sidecar issues to this workload over the SPIFFE
Workload API: its SPIFFE ID, serial, validity and chain, and the trust
bundles. With --write, also saves svid.pem, svid.key (mode 0600) and
bundle.pem in a directory, for tools that read certificate files.

Run it in the workload's pod (kubectl exec), or where the sidecar's
Workload API socket is reachable.`,
		Example: `  # In a pod with a sidecar
  kubectl exec deploy/web -c app -- tether identity

  # As JSON, for scripts
  tether identity -o json

  # Save the SVID and bundle as files
  tether identity --write ./svid`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.identity(cmd.Context(), socket, dir, timeout, &out)
		},
	}
	def := os.Getenv(workloadapi.SocketEnv)
	if def == "" {
		def = defaultWorkloadSocket
	}
	f := cmd.Flags()
	f.StringVar(&socket, "socket", def, "the Workload API address, unix:///PATH or a path (env "+workloadapi.SocketEnv+")")
	f.StringVar(&dir, "write", "", "also save svid.pem, svid.key (0600) and bundle.pem in this directory")
	f.DurationVar(&timeout, "timeout", 5*time.Second, "give up after this long")
	out.AddFlag(cmd)
	out.AddJSONAlias(cmd)
	return cmd
}

func (a *App) identity(ctx context.Context, socket, dir string, timeout time.Duration, out *Output) error {
	addr, err := workloadAddr(socket)
	if err != nil {
		return err
	}
	fctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	x, err := workloadapi.FetchX509Context(fctx, workloadapi.WithAddr(addr))
	if err != nil {
		return workloadError(addr, timeout, err)
	}
	svid := x.DefaultSVID()
	bundle, err := x.Bundles.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
	if err != nil {
		return fmt.Errorf("the Workload API at %s sent no trust bundle for %s", addr, svid.ID.TrustDomain())
	}
	info := describeSVID(svid, x, time.Now())
	if dir != "" {
		if err := WriteSVID(dir, svid, bundle); err != nil {
			return err
		}
		for _, f := range []string{"svid.pem", "svid.key", "bundle.pem"} {
			info.Written = append(info.Written, filepath.Join(dir, f))
		}
	}
	return out.Print(a.Stdout, info, func(w io.Writer) error {
		printIdentity(w, info)
		return nil
	})
}

// workloadAddr turns --socket into a Workload API address and, for a unix
// socket, checks that it exists.
func workloadAddr(socket string) (string, error) {
	if !strings.Contains(socket, "://") && socket != "" {
		// A plain path, absolute or relative to the working directory.
		abs, err := filepath.Abs(socket)
		if err != nil {
			return "", usagef("--socket %q: %v", socket, err)
		}
		socket = "unix://" + abs
	}
	if err := workloadapi.ValidateAddress(socket); err != nil {
		return "", usagef("--socket %q: %v", socket, err)
	}
	u, _ := url.Parse(socket)
	if u.Scheme == "unix" {
		path := u.Host + u.Path
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("no Workload API socket at %s: is the sidecar running? set %s or --socket", path, workloadapi.SocketEnv)
		}
	}
	return socket, nil
}

// workloadError explains a failed fetch in the user's terms.
func workloadError(addr string, timeout time.Duration, err error) error {
	switch status.Code(err) {
	case codes.DeadlineExceeded:
		return fmt.Errorf("the sidecar has no identity yet: the Workload API at %s sent no SVID within %s "+
			"(is the sidecar ready? its logs say whether it can reach tether-ca; retry with a longer --timeout)", addr, timeout)
	case codes.Unavailable:
		return fmt.Errorf("cannot reach the Workload API at %s: is the sidecar running? (%s)", addr, status.Convert(err).Message())
	case codes.PermissionDenied:
		return fmt.Errorf("the Workload API at %s issues no identity to this process: %s", addr, status.Convert(err).Message())
	}
	return caadmin.RPCError("fetch identity from the Workload API at "+addr, err)
}

func describeSVID(svid *x509svid.SVID, x *workloadapi.X509Context, now time.Time) identityInfo {
	leaf := svid.Certificates[0]
	info := identityInfo{
		SPIFFEID: svid.ID.String(), Serial: serial(leaf),
		NotBefore: leaf.NotBefore.UTC(), NotAfter: leaf.NotAfter.UTC(),
		ExpiresInSeconds: int64(leaf.NotAfter.Sub(now).Seconds()),
	}
	for _, c := range svid.Certificates {
		info.Chain = append(info.Chain, describeCert(c))
	}
	for _, b := range x.Bundles.Bundles() {
		bi := bundleInfo{TrustDomain: b.TrustDomain().Name()}
		for _, c := range b.X509Authorities() {
			bi.Roots = append(bi.Roots, describeCert(c))
		}
		info.Bundles = append(info.Bundles, bi)
	}
	return info
}

func describeCert(c *x509.Certificate) certInfo {
	sum := sha256.Sum256(c.Raw)
	hexes := make([]string, len(sum))
	for i, b := range sum {
		hexes[i] = fmt.Sprintf("%02X", b)
	}
	return certInfo{
		Subject: c.Subject.String(), Issuer: c.Issuer.String(), Serial: serial(c),
		NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC(), SHA256: strings.Join(hexes, ":"),
	}
}

func serial(c *x509.Certificate) string { return c.SerialNumber.Text(16) }

func printIdentity(out io.Writer, info identityInfo) {
	left := time.Duration(info.ExpiresInSeconds) * time.Second
	leftText := left.String() + " left"
	if left <= 0 {
		leftText = "EXPIRED " + (-left).String() + " ago"
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "SPIFFE ID:\t%s\n", info.SPIFFEID)
	fmt.Fprintf(w, "Serial:\t%s\n", info.Serial)
	fmt.Fprintf(w, "Not before:\t%s\n", info.NotBefore.Format(time.RFC3339))
	fmt.Fprintf(w, "Not after:\t%s (%s)\n", info.NotAfter.Format(time.RFC3339), leftText)
	w.Flush()
	fmt.Fprintln(out, "Chain:")
	for i, c := range info.Chain {
		fmt.Fprintf(out, "  [%d] subject %q\n      issuer  %q\n", i, orEmpty(c.Subject), orEmpty(c.Issuer))
	}
	for _, b := range info.Bundles {
		plural := "s"
		if len(b.Roots) == 1 {
			plural = ""
		}
		fmt.Fprintf(out, "Trust bundle for %s (%d root%s):\n", b.TrustDomain, len(b.Roots), plural)
		for _, r := range b.Roots {
			fmt.Fprintf(out, "  %q, expires %s\n    SHA-256 %s\n", orEmpty(r.Subject), r.NotAfter.Format(time.RFC3339), r.SHA256)
		}
	}
	if len(info.Written) > 0 {
		fmt.Fprintf(out, "wrote %s\n", strings.Join(info.Written, ", "))
	}
}

func orEmpty(s string) string {
	if s == "" {
		return "(empty)"
	}
	return s
}
