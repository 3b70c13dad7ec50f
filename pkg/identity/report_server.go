package identity

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"strings"
	"time"
	"unicode"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
)

// Limits on a report's fields.
const (
	maxReportRoots    = 64
	maxReportInstance = 253
	maxReportVersion  = 128
)

// Report implements cav1.CAServer: it records which roots the caller
// trusts and which root its SVID chains to. The report is recorded for the
// SPIFFE ID of the SVID the caller presents on this connection (the message
// names none), and the root that SVID chains to is verified here from the
// chain presented; only the trusted roots are the caller's word (a caller
// that claims to trust a root it does not only breaks its own connections
// once the root signs).
func (s *Server) Report(ctx context.Context, req *cav1.ReportRequest) (*cav1.ReportResponse, error) {
	leaf, id, ok := s.peerCert(ctx)
	if !ok {
		return nil, grpcError(fmt.Errorf("%w: reports are accepted only over mTLS with the caller's current SVID", ErrUnauthenticated))
	}
	if err := checkReport(req); err != nil {
		return nil, grpcError(err)
	}
	p, _ := peer.FromContext(ctx)
	chain := p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates
	rep := SidecarReport{
		ID: id.String(), Instance: req.GetInstance(), Version: req.GetVersion(), PeerIP: peerIP(p),
		Trusted: req.GetTrustedRootsSha256(), BundleSequence: req.GetBundleSequence(),
		Holds: s.ca.anchorOf(chain), Claimed: req.GetSvidRootSha256(), SVIDSerial: leaf.SerialNumber.Text(16), SVIDNotAfter: leaf.NotAfter,
	}
	if req.GetSvidSerial() == rep.SVIDSerial && rep.Claimed != rep.Holds {
		rep.ClaimMismatch = true
		s.log.Warn("a sidecar's report names another root for its SVID than the chain it presents; counting the presented chain",
			"spiffe_id", rep.ID, "instance", rep.Instance, "claimed", rep.Claimed, "verified", rep.Holds)
	}
	conn := p.Addr.String()
	if req.GetLeaving() {
		s.ca.reports.Leave(conn, rep)
		return &cav1.ReportResponse{IntervalSeconds: int64(s.ca.reports.Interval() / time.Second)}, nil
	}
	if err := s.ca.reports.Record(conn, rep); err != nil {
		s.ca.metrics.reportsRefused.Inc()
		return nil, grpcError(err)
	}
	return &cav1.ReportResponse{IntervalSeconds: int64(s.ca.reports.Interval() / time.Second)}, nil
}

// checkReport refuses malformed reports.
func checkReport(req *cav1.ReportRequest) error {
	if n := len(req.GetTrustedRootsSha256()); n == 0 || n > maxReportRoots {
		return fmt.Errorf("%w: report: %d trusted roots, want 1 to %d", ErrConfig, n, maxReportRoots)
	}
	for _, fp := range req.GetTrustedRootsSha256() {
		if !isSHA256Hex(fp) {
			return fmt.Errorf("%w: report: trusted root %q is not a lower-case hex SHA-256", ErrConfig, truncate(fp))
		}
	}
	if fp := req.GetSvidRootSha256(); fp != "" && !isSHA256Hex(fp) {
		return fmt.Errorf("%w: report: SVID root %q is not a lower-case hex SHA-256", ErrConfig, truncate(fp))
	}
	if sn := req.GetSvidSerial(); len(sn) > 64 || strings.Trim(sn, "0123456789abcdef") != "" {
		return fmt.Errorf("%w: report: SVID serial %q is not lower-case hex", ErrConfig, truncate(sn))
	}
	if err := printableField("instance", req.GetInstance(), maxReportInstance); err != nil {
		return err
	}
	return printableField("version", req.GetVersion(), maxReportVersion)
}

func isSHA256Hex(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == 32 && strings.ToLower(s) == s
}

func printableField(name, v string, max int) error {
	if len(v) > max {
		return fmt.Errorf("%w: report: %s is %d bytes long, at most %d", ErrConfig, name, len(v), max)
	}
	for _, r := range v {
		if !unicode.IsPrint(r) || r == unicode.ReplacementChar {
			return fmt.Errorf("%w: report: %s %q holds a character that is not printable", ErrConfig, name, truncate(v))
		}
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

func peerIP(p *peer.Peer) string {
	if p == nil || p.Addr == nil {
		return ""
	}
	if host, _, err := net.SplitHostPort(p.Addr.String()); err == nil {
		return host
	}
	return p.Addr.String()
}
