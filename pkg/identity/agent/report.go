package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/pkg/identity"
)

// errSVIDChanged ends a session whose connection presents an older SVID.
var errSVIDChanged = errors.New("the SVID changed")

// PodNameEnv, if set, names the instance in reports (the injector sets it
// from the downward API); otherwise the host name, which in a pod is the
// pod's name.
const PodNameEnv = "TETHER_POD_NAME"

// DefaultInstance names this process in reports: $TETHER_POD_NAME, else
// the host name inside Kubernetes, else host name and process ID.
func DefaultInstance() string {
	if n := os.Getenv(PodNameEnv); n != "" {
		return n
	}
	host, _ := os.Hostname()
	if os.Getenv("KUBERNETES_SERVICE_HOST") != "" && host != "" {
		return host
	}
	return host + ":" + strconv.Itoa(os.Getpid())
}

// session follows WatchBundle on client and reports to the CA over the same
// connection: at once, on every change of the bundle or SVID, and every
// interval the CA asks for. It returns errSVIDChanged when the SVID is no
// longer the one presented, the stream's error when it breaks, and nil when
// ctx ends (after telling the CA the agent leaves). A CA that does not know
// Report (an older version) gets no reports; the stream goes on.
func (a *Agent) session(ctx context.Context, client *identity.Client, presented *x509svid.SVID) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- client.WatchBundleSet(sctx, a.applyBundleSet) }()
	reporting, reported := presented != nil, false
	interval := identity.DefaultReportInterval
	var last *cav1.ReportRequest
	var lastAt time.Time
	for {
		changed := a.Changed()
		if cur := a.svid.Load(); cur != presented {
			cancel()
			<-errc
			return errSVIDChanged
		}
		if reporting {
			req := a.reportRequest()
			if req != nil && (!proto.Equal(req, last) || time.Since(lastAt) >= interval) {
				iv, err := client.Report(sctx, req)
				switch {
				case status.Code(errors.Unwrap(err)) == codes.Unimplemented:
					a.log.Info("tether-ca does not take reports (an older version): root rotations cannot wait for this sidecar", slog.Any("error", err))
					reporting = false
				case err != nil && sctx.Err() == nil:
					a.log.Warn("report to tether-ca failed; retrying at the next change or heartbeat", slog.Any("error", err))
					lastAt = time.Now()
				case err == nil:
					last, lastAt, reported = req, time.Now(), true
					if iv > 0 {
						interval = iv
					}
				}
			}
		}
		wait := interval // not reporting (an older CA): only changes wake the loop
		if reporting && !lastAt.IsZero() {
			wait = time.Until(lastAt.Add(interval))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			if reported {
				a.leave(client, last)
			}
			return nil
		case err := <-errc:
			t.Stop()
			if err == nil {
				err = errors.New("stream ended")
			}
			return err
		case <-changed:
		case <-t.C:
		}
		t.Stop()
	}
}

// leave tells the CA this instance is going away, so rotations stop
// waiting for it; best effort, for at most a second.
func (a *Agent) leave(client *identity.Client, last *cav1.ReportRequest) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req := proto.Clone(last).(*cav1.ReportRequest)
	req.Leaving = true
	if _, err := client.Report(ctx, req); err != nil {
		a.log.Debug("could not tell tether-ca that this sidecar leaves", slog.Any("error", err))
	}
}

// reportRequest describes what the agent holds now: the roots of its
// bundle, and the one its SVID chains to. Nil without an SVID.
func (a *Agent) reportRequest() *cav1.ReportRequest {
	svid, b := a.svid.Load(), a.bundle.Load()
	if svid == nil {
		return nil
	}
	seq, _ := b.SequenceNumber()
	req := &cav1.ReportRequest{BundleSequence: seq, SvidSerial: svid.Certificates[0].SerialNumber.Text(16),
		Version: a.cfg.Version, Instance: a.cfg.Instance}
	for _, r := range b.X509Authorities() {
		fp := identity.Fingerprint(r.Raw)
		req.TrustedRootsSha256 = append(req.TrustedRootsSha256, fp)
		if chainsTo(svid, b, r) {
			req.SvidRootSha256 = fp
		}
	}
	slices.Sort(req.TrustedRootsSha256)
	return req
}

// chainsTo reports whether svid verifies with root as the only anchor.
func chainsTo(svid *x509svid.SVID, b *spiffebundle.Bundle, root *x509.Certificate) bool {
	_, _, err := x509svid.Verify(svid.Certificates, x509bundle.FromX509Authorities(b.TrustDomain(), []*x509.Certificate{root}))
	return err == nil
}
