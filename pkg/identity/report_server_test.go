package identity_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// reporter is a workload with an SVID and an mTLS connection to the CA.
type reporter struct {
	svid   *x509svid.SVID
	client *identity.Client
}

func newReporter(t *testing.T, ca *identity.CA, addr, path string) *reporter {
	t.Helper()
	svid, _, err := dial(t, addr, ca, nil).FetchSVID(context.Background(), joinToken(t, ca, testutil.ID(path)))
	if err != nil {
		t.Fatal(err)
	}
	return &reporter{svid: svid, client: dial(t, addr, ca, svid)}
}

// request is the report a sidecar holding r.svid and ca's bundle sends.
func (r *reporter) request(ca *identity.CA, instance string) *cav1.ReportRequest {
	req := &cav1.ReportRequest{Instance: instance, Version: "v1.2.3", SvidSerial: r.svid.Certificates[0].SerialNumber.Text(16),
		BundleSequence: ca.Bundle().Sequence}
	for _, c := range ca.Bundle().Bundle.X509Authorities() {
		req.TrustedRootsSha256 = append(req.TrustedRootsSha256, identity.Fingerprint(c.Raw))
	}
	req.SvidRootSha256 = req.TrustedRootsSha256[0]
	return req
}

func reports(t *testing.T, ca *identity.CA) map[string]identity.SidecarReport {
	t.Helper()
	out := map[string]identity.SidecarReport{}
	for _, r := range ca.LocalReports().Reports {
		out[r.ID+" "+r.Instance] = r
	}
	return out
}

// TestReportIsTheTLSPeers: a report is recorded for the SPIFFE ID of the
// SVID presented on the connection (the message has no field for one), so
// two workloads sending the same message are two entries under their own
// IDs; without an SVID the CA refuses the report.
func TestReportIsTheTLSPeers(t *testing.T) {
	ctx := context.Background()
	ca := realCA(t)
	addr := serve(t, ca, nil)
	web, api := newReporter(t, ca, addr, "/ns/a/sa/web"), newReporter(t, ca, addr, "/ns/a/sa/api")
	req := web.request(ca, "pod-1")
	for _, r := range []*reporter{web, api} {
		interval, err := r.client.Report(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if interval != identity.DefaultReportInterval {
			t.Errorf("interval %s, want %s", interval, identity.DefaultReportInterval)
		}
	}
	got := reports(t, ca)
	if len(got) != 2 {
		t.Fatalf("reports %+v, want web and api", got)
	}
	for _, id := range []string{"spiffe://cluster.local/ns/a/sa/web pod-1", "spiffe://cluster.local/ns/a/sa/api pod-1"} {
		r, ok := got[id]
		if !ok {
			t.Errorf("no report for %s: %v", id, got)
			continue
		}
		if r.Holds != req.SvidRootSha256 || r.PeerIP != "127.0.0.1" || r.Version != "v1.2.3" {
			t.Errorf("report %+v: want it to hold the root, from 127.0.0.1, version v1.2.3", r)
		}
	}
	// api's report named web's serial: the CA does not compare claims about
	// an SVID it was not shown.
	if r := got["spiffe://cluster.local/ns/a/sa/api pod-1"]; r.ClaimMismatch || r.SVIDSerial != api.svid.Certificates[0].SerialNumber.Text(16) {
		t.Errorf("api's report %+v: want api's own serial from the TLS chain", r)
	}

	_, err := dial(t, addr, ca, nil).Report(ctx, req)
	wantCode(t, err, codes.Unauthenticated)
	if !strings.Contains(err.Error(), "only over mTLS") {
		t.Errorf("error %v does not say why", err)
	}
}

// TestReportClaimMismatch: a sidecar that names another root for the SVID
// it presents is recorded with the root its chain verifies against, and
// flagged.
func TestReportClaimMismatch(t *testing.T) {
	ca := realCA(t)
	addr := serve(t, ca, nil)
	web := newReporter(t, ca, addr, "/ns/a/sa/web")
	req := web.request(ca, "pod-1")
	truth := req.SvidRootSha256
	req.SvidRootSha256 = strings.Repeat("ab", 32)
	if _, err := web.client.Report(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	r := reports(t, ca)["spiffe://cluster.local/ns/a/sa/web pod-1"]
	if !r.ClaimMismatch || r.Holds != truth || r.Claimed != req.SvidRootSha256 {
		t.Errorf("report %+v: want holds = the verified root, the claim kept and flagged", r)
	}
}

// TestReportRefusesBadInput: every malformed field is refused with
// InvalidArgument and a message naming it.
func TestReportRefusesBadInput(t *testing.T) {
	ca := realCA(t)
	addr := serve(t, ca, nil)
	web := newReporter(t, ca, addr, "/ns/a/sa/web")
	fp := strings.Repeat("0f", 32)
	many := make([]string, 65)
	for i := range many {
		many[i] = fp
	}
	for name, tc := range map[string]struct {
		mod  func(*cav1.ReportRequest)
		want string
	}{
		"no roots":        {func(r *cav1.ReportRequest) { r.TrustedRootsSha256 = nil }, "0 trusted roots"},
		"too many roots":  {func(r *cav1.ReportRequest) { r.TrustedRootsSha256 = many }, "65 trusted roots"},
		"short root":      {func(r *cav1.ReportRequest) { r.TrustedRootsSha256 = []string{"abcd"} }, "not a lower-case hex SHA-256"},
		"upper-case root": {func(r *cav1.ReportRequest) { r.TrustedRootsSha256 = []string{strings.ToUpper(fp)} }, "not a lower-case hex SHA-256"},
		"bad svid root":   {func(r *cav1.ReportRequest) { r.SvidRootSha256 = "zz" }, "SVID root"},
		"bad serial":      {func(r *cav1.ReportRequest) { r.SvidSerial = "12:34" }, "SVID serial"},
		"control char":    {func(r *cav1.ReportRequest) { r.Instance = "pod\n1" }, "instance"},
		"long version":    {func(r *cav1.ReportRequest) { r.Version = strings.Repeat("v", 129) }, "version is 129 bytes"},
	} {
		t.Run(name, func(t *testing.T) {
			req := web.request(ca, "pod-1")
			tc.mod(req)
			_, err := web.client.Report(context.Background(), req)
			wantCode(t, err, codes.InvalidArgument)
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v does not say %q", err, tc.want)
			}
		})
	}
	if n := len(reports(t, ca)); n != 0 {
		t.Errorf("%d reports recorded from bad requests", n)
	}
}

// TestWatchWithoutReportIsListed: a connection that watches the bundle
// over mTLS and sends no report (an older sidecar) is listed as not
// reporting, until it reports.
func TestWatchWithoutReportIsListed(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ca := realCA(t)
	addr := serve(t, ca, nil)
	old := newReporter(t, ca, addr, "/ns/a/sa/old")
	got := make(chan struct{}, 1)
	go old.client.WatchBundle(ctx, func(*spiffebundle.Bundle) { got <- struct{}{} })
	<-got
	rs := ca.RotationStatus(ctx)
	if len(rs.NotReporting) != 1 || rs.NotReporting[0].ID != "spiffe://cluster.local/ns/a/sa/old" {
		t.Fatalf("not reporting %+v, want old", rs.NotReporting)
	}
	if _, err := old.client.Report(ctx, old.request(ca, "pod-1")); err != nil {
		t.Fatal(err)
	}
	if rs := ca.RotationStatus(ctx); len(rs.NotReporting) != 0 || rs.Reporting != 1 {
		t.Errorf("after a report over the same connection: not reporting %+v, reporting %d", rs.NotReporting, rs.Reporting)
	}
	cancel()
}

// TestActivateRefusalOverGRPC: the admin API's activate refuses naming the
// sidecar that does not trust the new root; --force takes the step and
// returns the refusal it overrode as a warning.
func TestActivateRefusalOverGRPC(t *testing.T) {
	ctx := context.Background()
	ca := testutil.NewCA(t, identity.RealClock, func(c *identity.Config) { c.PropagationDelay = time.Millisecond })
	addr := serve(t, ca, nil)
	web := newReporter(t, ca, addr, "/ns/a/sa/web")
	if _, err := web.client.Report(ctx, web.request(ca, "web-7d9f")); err != nil {
		t.Fatal(err)
	}
	admin := identity.NewAdminServer(ca, nil)
	if _, err := admin.Rotate(ctx, &cav1.RotateRequest{Step: "prepare"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond)
	_, err := admin.Rotate(ctx, &cav1.RotateRequest{Step: "activate"})
	wantCode(t, err, codes.FailedPrecondition)
	for _, want := range []string{"spiffe://cluster.local/ns/a/sa/web (instance web-7d9f, version v1.2.3", "--force"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %v does not say %q", err, want)
		}
	}
	st, err := admin.RotationStatus(ctx, &cav1.RotationStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.GetActivateLaggards()) != 1 || st.GetActivateBlocked() == "" || len(st.GetGenerations()) != 2 || st.GetGenerations()[1].GetTrusting() != 0 {
		t.Errorf("rotation status %v: want web as the one laggard, generation 2 trusted by none", st)
	}
	// A forced activate succeeds with the warning in the response.
	resp, err := admin.Rotate(ctx, &cav1.RotateRequest{Step: "activate", Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetWarnings()) != 1 || !strings.Contains(resp.GetWarnings()[0], "web-7d9f") {
		t.Errorf("warnings %q, want the overridden refusal naming web", resp.GetWarnings())
	}
}
