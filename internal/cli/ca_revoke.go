package cli

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/caadmin"
	"github.com/tether-mesh/tether/pkg/identity"
)

// caRevokeOptions are the flags of `tether ca revoke`.
type caRevokeOptions struct {
	socket, id, serial, tokenFile, tokenHash, reason string
	reattest, keepSVIDs                              bool
	blockFor                                         time.Duration
}

// newCARevokeCmd is `tether ca revoke`.
func (a *App) newCARevokeCmd() *cobra.Command {
	var o caRevokeOptions
	cmd := &cobra.Command{
		Use:   "revoke",
		Short: "Revoke a SPIFFE ID, one SVID or a join token",
		Long: `Revokes exactly one of: every SVID of a SPIFFE ID issued until now
(--spiffe-id; by default the ID may not attest again until
"tether ca unrevoke"), the SVID with a serial number (--serial), or a join
token (--join-token-file or --join-token-hash; by default the SVIDs of its
SPIFFE ID are revoked too, unless --keep-svids).

Revoked SVIDs are refused renewal from each CA replica's next store reload
(tether-ca --tick); SVIDs already issued stay valid until they expire, at
most the SVID lifetime.

` + caSocketHelp,
		Example: `  # A compromised workload: refuse its SVIDs and block it until unrevoked
  tether ca revoke --spiffe-id spiffe://cluster.local/ns/shop/sa/api --reason "key leaked"

  # Block it for two hours only
  tether ca revoke --spiffe-id spiffe://cluster.local/ns/shop/sa/api --block-for 2h

  # One SVID, by the serial "tether identity" shows
  tether ca revoke --serial 5f3a9c

  # A join token, by the hash "tether ca token list" shows
  tether ca revoke --join-token-hash 1f2e3d4c5b6a7980`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.caRevoke(cmd.Context(), o)
		},
	}
	addSocketFlag(cmd, &o.socket)
	f := cmd.Flags()
	f.StringVar(&o.id, "spiffe-id", "", "revoke every SVID of this SPIFFE ID issued until now and, by default, refuse to attest it until `tether ca unrevoke`")
	f.StringVar(&o.serial, "serial", "", "revoke the one SVID with this serial number (hex, as `tether identity` shows it)")
	f.StringVar(&o.tokenFile, "join-token-file", "", "revoke the join token in this file (- reads standard input)")
	f.StringVar(&o.tokenHash, "join-token-hash", "", "revoke the join token whose hash starts with this (as `tether ca token list` shows it)")
	f.BoolVar(&o.reattest, "allow-reattest", false, "with --spiffe-id: refuse only the SVIDs issued until every replica has the revocation (2 x tether-ca --tick); after that a fresh credential may attest the ID")
	f.DurationVar(&o.blockFor, "block-for", 0, "with --spiffe-id: refuse attestation for this long instead of until `tether ca unrevoke`")
	f.BoolVar(&o.keepSVIDs, "keep-svids", false, "with a join token: delete only the token; keep renewing the SVIDs of its SPIFFE ID")
	f.StringVar(&o.reason, "reason", "", "why, recorded with the revocation and shown by `tether ca status`")
	_ = cmd.MarkFlagFilename("join-token-file")
	return cmd
}

func (a *App) caRevoke(ctx context.Context, o caRevokeOptions) error {
	if o.blockFor < 0 || (o.blockFor > 0 && o.blockFor < time.Second) {
		return usagef("--block-for %s: give at least 1s (or leave it out to block until `tether ca unrevoke`)", o.blockFor)
	}
	req := &cav1.RevokeRequest{AllowReattest: o.reattest, BlockSeconds: int64(o.blockFor.Seconds()), KeepSvids: o.keepSVIDs, Reason: o.reason}
	n := 0
	for _, v := range []string{o.id, o.serial, o.tokenFile, o.tokenHash} {
		if v != "" {
			n++
		}
	}
	if n != 1 {
		return usagef("give exactly one of --spiffe-id, --serial, --join-token-file and --join-token-hash")
	}
	switch {
	case o.id != "":
		req.Target = &cav1.RevokeRequest_SpiffeId{SpiffeId: o.id}
	case o.serial != "":
		req.Target = &cav1.RevokeRequest_Serial{Serial: o.serial}
	case o.tokenHash != "":
		req.Target = &cav1.RevokeRequest_JoinTokenHash{JoinTokenHash: o.tokenHash}
	default:
		tok, err := identity.ReadJoinTokenFile(o.tokenFile, a.Stdin)
		if err != nil {
			return err
		}
		req.Target = &cav1.RevokeRequest_JoinToken{JoinToken: tok}
	}
	resp, err := caadmin.Call(ctx, o.socket, "revoke", func(ctx context.Context, api cav1.AdminClient) (*cav1.RevokeResponse, error) {
		return api.Revoke(ctx, req)
	})
	if err != nil {
		return err
	}
	for _, r := range resp.GetRevocations() {
		fmt.Fprintln(a.Stdout, describeRevocation(r))
	}
	fmt.Fprintln(a.Stdout, "Every CA replica refuses from its next store reload (tether-ca --tick, default 10s). SVIDs already issued stay valid until they expire (at most the SVID lifetime).")
	return nil
}

// newCAUnrevokeCmd is `tether ca unrevoke`.
func (a *App) newCAUnrevokeCmd() *cobra.Command {
	var socket, id string
	cmd := &cobra.Command{
		Use:   "unrevoke",
		Short: "Let a revoked SPIFFE ID attest again",
		Long: `Lifts the attestation block of a SPIFFE ID revoked with
"tether ca revoke --spiffe-id": a fresh credential may attest it again. Its
SVIDs issued before the revocation stay refused.

` + caSocketHelp,
		Example: `  tether ca unrevoke --spiffe-id spiffe://cluster.local/ns/shop/sa/api`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := caadmin.Call(cmd.Context(), socket, "unrevoke", func(ctx context.Context, api cav1.AdminClient) (*cav1.RevokeResponse, error) {
				return api.Unrevoke(ctx, &cav1.UnrevokeRequest{SpiffeId: id})
			})
			if err != nil {
				return err
			}
			for _, r := range resp.GetRevocations() {
				fmt.Fprintf(a.Stdout, "%s may be attested again; its SVIDs issued before %s stay refused (entry dropped after %s)\n",
					r.GetValue(), unixTime(r.GetUntilUnix()), unixTime(r.GetPruneAfterUnix()))
			}
			return nil
		},
	}
	addSocketFlag(cmd, &socket)
	cmd.Flags().StringVar(&id, "spiffe-id", "", "the revoked SPIFFE ID to let attest again")
	_ = cmd.MarkFlagRequired("spiffe-id")
	return cmd
}

// joinTokenInfo is one token of `tether ca token list -o json|yaml`.
type joinTokenInfo struct {
	Hash      string    `json:"hash"`
	SPIFFEID  string    `json:"spiffe_id"`
	ExpiresAt time.Time `json:"expires_at"`
	Reusable  bool      `json:"reusable"`
}

// newCATokenListCmd is `tether ca token list`.
func (a *App) newCATokenListCmd() *cobra.Command {
	var (
		socket string
		out    Output
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the live join tokens",
		Long: `Lists the join tokens tether-ca still accepts: the start of each token's
hash (its name for "tether ca revoke --join-token-hash"; the token itself is
never stored), its SPIFFE ID, expiry and whether it is reusable.

` + caSocketHelp,
		Example: `  tether ca token list
  tether ca token list -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := caadmin.Call(cmd.Context(), socket, "list join tokens", func(ctx context.Context, api cav1.AdminClient) (*cav1.ListJoinTokensResponse, error) {
				return api.ListJoinTokens(ctx, &cav1.ListJoinTokensRequest{})
			})
			if err != nil {
				return err
			}
			tokens := []joinTokenInfo{}
			for _, t := range resp.GetTokens() {
				tokens = append(tokens, joinTokenInfo{Hash: t.GetHash(), SPIFFEID: t.GetSpiffeId(), ExpiresAt: unix(t.GetExpiresAtUnix()), Reusable: t.GetReusable()})
			}
			if err := out.Print(a.Stdout, tokens, func(w io.Writer) error { return printTokens(w, tokens) }); err != nil {
				return err
			}
			fmt.Fprintf(a.Stderr, "%d live join token(s); revoke one with `tether ca revoke --join-token-hash HASH`\n", len(tokens))
			return nil
		},
	}
	addSocketFlag(cmd, &socket)
	out.AddFlag(cmd)
	return cmd
}

// printTokens writes the join tokens as a table.
func printTokens(w io.Writer, tokens []joinTokenInfo) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HASH\tSPIFFE ID\tEXPIRES\tUSE")
	for _, t := range tokens {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", shortHash(t.Hash), t.SPIFFEID, timeOrDash(t.ExpiresAt),
			map[bool]string{true: "reusable", false: "single use"}[t.Reusable])
	}
	return tw.Flush()
}

// timeOrDash is t in RFC 3339, or "-" for the zero time.
func timeOrDash(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// revocationInfo is one revocation of `tether ca status -o json|yaml`.
type revocationInfo struct {
	Kind       string    `json:"kind"`
	Value      string    `json:"value"`
	SPIFFEID   string    `json:"spiffe_id,omitempty"`
	RevokedAt  time.Time `json:"revoked_at,omitzero"`
	Until      time.Time `json:"until,omitzero"`
	Blocking   bool      `json:"blocking"`
	PruneAfter time.Time `json:"prune_after,omitzero"`
	Reason     string    `json:"reason,omitempty"`
}

// describeRevocations is rs for -o json|yaml.
func describeRevocations(rs []*cav1.Revocation) []revocationInfo {
	out := []revocationInfo{}
	for _, r := range rs {
		out = append(out, revocationInfo{Kind: r.GetKind(), Value: r.GetValue(), SPIFFEID: r.GetSpiffeId(),
			RevokedAt: unix(r.GetRevokedAtUnix()), Until: unix(r.GetUntilUnix()), Blocking: r.GetBlocking(),
			PruneAfter: unix(r.GetPruneAfterUnix()), Reason: r.GetReason()})
	}
	return out
}

func shortHash(h string) string { return h[:min(len(h), 16)] }

func describeRevocation(r *cav1.Revocation) string {
	switch r.GetKind() {
	case "spiffe_id":
		switch {
		case r.GetBlocking() && r.GetUntilUnix() == 0:
			return fmt.Sprintf("revoked %s: its SVIDs are refused renewal, and it blocks attestation until `tether ca unrevoke --spiffe-id %s`", r.GetValue(), r.GetValue())
		case r.GetBlocking():
			return fmt.Sprintf("revoked %s: its SVIDs issued before %s are refused renewal, and it blocks attestation until then", r.GetValue(), unixTime(r.GetUntilUnix()))
		default:
			return fmt.Sprintf("revoked %s: its SVIDs issued before %s are refused renewal; a fresh credential may attest it from then", r.GetValue(), unixTime(r.GetUntilUnix()))
		}
	case "serial":
		return fmt.Sprintf("revoked the SVID with serial %s: refused renewal (entry dropped after %s)", r.GetValue(), unixTime(r.GetPruneAfterUnix()))
	default:
		return fmt.Sprintf("revoked join token %s for %s: deleted, no replica accepts it", shortHash(r.GetValue()), r.GetSpiffeId())
	}
}

// printRevocations is the revocation part of `tether ca status`.
func printRevocations(w io.Writer, rs []*cav1.Revocation) {
	fmt.Fprintf(w, "\nrevocations: %d\n", len(rs))
	if len(rs) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tREVOKED\tVALUE\tSPIFFE ID\tREFUSES\tDROPPED AFTER\tREASON")
	for _, r := range rs {
		v, id, refuses := r.GetValue(), r.GetSpiffeId(), ""
		switch r.GetKind() {
		case "spiffe_id":
			v, id = "-", r.GetValue()
			switch {
			case r.GetBlocking() && r.GetUntilUnix() == 0:
				refuses = "all, until unrevoked"
			case r.GetBlocking():
				refuses = "all, until " + unixTime(r.GetUntilUnix())
			default:
				refuses = "SVIDs issued before " + unixTime(r.GetUntilUnix())
			}
		case "serial":
			refuses = "this SVID"
		case "join_token":
			v, refuses = shortHash(v), "this token"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.GetKind(), unixTime(r.GetRevokedAtUnix()), v, orDash(id), refuses, unixTime(r.GetPruneAfterUnix()), orDash(r.GetReason()))
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
