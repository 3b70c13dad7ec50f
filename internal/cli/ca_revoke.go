package cli

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/caadmin"
	"github.com/tether-mesh/tether/pkg/identity"
)

// caRevoke is `tether ca revoke`.
func (a *App) caRevoke(ctx context.Context, args []string) error {
	fs := a.flags("ca revoke")
	var socket string
	socketFlag(fs, &socket)
	id := fs.String("spiffe-id", "", "revoke every SVID of this SPIFFE ID issued until now and, by default, refuse to attest it until `tether ca unrevoke`")
	serial := fs.String("serial", "", "revoke the one SVID with this serial number (hex, as `tether identity` shows it)")
	tokenFile := fs.String("join-token-file", "", "revoke the join token in this file (- reads standard input)")
	tokenHash := fs.String("join-token-hash", "", "revoke the join token whose hash starts with this (as `tether ca token list` shows it)")
	reattest := fs.Bool("allow-reattest", false, "with --spiffe-id: refuse only the SVIDs issued until every replica has the revocation (2 x tether-ca --tick); after that a fresh credential may attest the ID")
	blockFor := fs.Duration("block-for", 0, "with --spiffe-id: refuse attestation for this long instead of until `tether ca unrevoke`")
	keepSVIDs := fs.Bool("keep-svids", false, "with a join token: delete only the token; keep renewing the SVIDs of its SPIFFE ID")
	reason := fs.String("reason", "", "why, recorded with the revocation and shown by `tether ca status`")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *blockFor < 0 || (*blockFor > 0 && *blockFor < time.Second) {
		return fmt.Errorf("%w: --block-for %s: give at least 1s (or leave it out to block until `tether ca unrevoke`)", errUsage, *blockFor)
	}
	req := &cav1.RevokeRequest{AllowReattest: *reattest, BlockSeconds: int64(blockFor.Seconds()), KeepSvids: *keepSVIDs, Reason: *reason}
	n := 0
	for _, v := range []string{*id, *serial, *tokenFile, *tokenHash} {
		if v != "" {
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("%w: give exactly one of --spiffe-id, --serial, --join-token-file and --join-token-hash", errUsage)
	}
	switch {
	case *id != "":
		req.Target = &cav1.RevokeRequest_SpiffeId{SpiffeId: *id}
	case *serial != "":
		req.Target = &cav1.RevokeRequest_Serial{Serial: *serial}
	case *tokenHash != "":
		req.Target = &cav1.RevokeRequest_JoinTokenHash{JoinTokenHash: *tokenHash}
	default:
		tok, err := identity.ReadJoinTokenFile(*tokenFile, a.Stdin)
		if err != nil {
			return err
		}
		req.Target = &cav1.RevokeRequest_JoinToken{JoinToken: tok}
	}
	api, done, err := caadmin.Dial(socket)
	if err != nil {
		return err
	}
	defer done()
	resp, err := api.Revoke(ctx, req)
	if err != nil {
		return caadmin.RPCError("revoke", err)
	}
	for _, r := range resp.GetRevocations() {
		fmt.Fprintln(a.Stdout, describeRevocation(r))
	}
	fmt.Fprintln(a.Stdout, "Every CA replica refuses from its next store reload (tether-ca --tick, default 10s). SVIDs already issued stay valid until they expire (at most the SVID lifetime).")
	return nil
}

// caUnrevoke is `tether ca unrevoke`.
func (a *App) caUnrevoke(ctx context.Context, args []string) error {
	fs := a.flags("ca unrevoke")
	var socket string
	socketFlag(fs, &socket)
	id := fs.String("spiffe-id", "", "the revoked SPIFFE ID to let attest again (required)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *id == "" {
		return fmt.Errorf("%w: --spiffe-id is required", errUsage)
	}
	api, done, err := caadmin.Dial(socket)
	if err != nil {
		return err
	}
	defer done()
	resp, err := api.Unrevoke(ctx, &cav1.UnrevokeRequest{SpiffeId: *id})
	if err != nil {
		return caadmin.RPCError("unrevoke", err)
	}
	for _, r := range resp.GetRevocations() {
		fmt.Fprintf(a.Stdout, "%s may be attested again; its SVIDs issued before %s stay refused (entry dropped after %s)\n",
			r.GetValue(), unixTime(r.GetUntilUnix()), unixTime(r.GetPruneAfterUnix()))
	}
	return nil
}

// caTokenList is `tether ca token list`.
func (a *App) caTokenList(ctx context.Context, args []string) error {
	api, done, err := a.dialAdminCmd("ca token list", args)
	if err != nil {
		return err
	}
	defer done()
	resp, err := api.ListJoinTokens(ctx, &cav1.ListJoinTokensRequest{})
	if err != nil {
		return caadmin.RPCError("list join tokens", err)
	}
	tw := tabwriter.NewWriter(a.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HASH\tSPIFFE ID\tEXPIRES\tUSE")
	for _, t := range resp.GetTokens() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", shortHash(t.GetHash()), t.GetSpiffeId(), unixTime(t.GetExpiresAtUnix()),
			map[bool]string{true: "reusable", false: "single use"}[t.GetReusable()])
	}
	tw.Flush()
	fmt.Fprintf(a.Stderr, "%d live join token(s); revoke one with `tether ca revoke --join-token-hash HASH`\n", len(resp.GetTokens()))
	return nil
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
func (a *App) printRevocations(rs []*cav1.Revocation) {
	fmt.Fprintf(a.Stdout, "\nrevocations: %d\n", len(rs))
	if len(rs) == 0 {
		return
	}
	tw := tabwriter.NewWriter(a.Stdout, 0, 4, 2, ' ', 0)
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
