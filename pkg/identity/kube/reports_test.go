package kube

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// reportsSource makes a bare identity.Reports a ReportSource.
type reportsSource struct{ r *identity.Reports }

func (s reportsSource) LocalReports() identity.ReportSnapshot { return s.r.Snapshot() }
func (s reportsSource) LocalReportsChanged() <-chan struct{}  { return s.r.Changed() }
func (s reportsSource) ReportTTL() time.Duration              { return s.r.TTL() }

func startExchange(t *testing.T, cs kubernetes.Interface, replica string, src ReportSource, leader bool) *ReportExchange {
	t.Helper()
	ex, err := NewReportExchange(ReportExchangeConfig{Client: cs.CoreV1(), Namespace: DefaultNamespace, Replica: replica, Reports: src,
		IsLeader: func() bool { return leader }, MinInterval: 100 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Go(t, ex.Run)
	return ex
}

// TestReportExchangeGatesMeshWide: two replicas against a real API server.
// A sidecar connected to replica ca-1 that does not trust the prepared
// root makes activate on replica ca-0 refuse, naming it; once it reports
// the new root to ca-1, ca-0 activates. The leader removes the key of a
// replica gone for 10 TTLs; a key that does not decode makes the gates
// refuse.
func TestReportExchangeGatesMeshWide(t *testing.T) {
	env := kubetest.Start(t)
	env.EnsureNamespace(t, DefaultNamespace)
	cs := kubernetes.NewForConfigOrDie(env.Config)
	ctx := testContext(t, time.Minute)

	var ex0 *ReportExchange
	ca := testutil.NewCA(t, identity.RealClock, func(c *identity.Config) {
		// A 1s heartbeat: the TTL is 3s, and ca-0 writes every second.
		c.Replica, c.PropagationDelay, c.ReportInterval = "ca-0", time.Millisecond, time.Second
		c.PeerReports = func(ctx context.Context) ([]identity.ReportSnapshot, error) { return ex0.Peers(ctx) }
	})
	ex0 = startExchange(t, cs, "ca-0", ca, true)
	other := identity.NewReports(identity.ReportsConfig{Replica: "ca-1", Interval: 2 * time.Second})
	startExchange(t, cs, "ca-1", reportsSource{other}, false)

	fp := func(i int) string { return identity.Fingerprint(ca.Bundle().Bundle.X509Authorities()[i].Raw) }
	oldRoot := fp(0)
	db := identity.SidecarReport{ID: spiffeid.RequireFromPath(ca.TrustDomain(), "/ns/b/sa/db").String(), Instance: "db-0", Version: "v1",
		PeerIP: "10.0.1.5", Trusted: []string{oldRoot}, Holds: oldRoot, SVIDNotAfter: time.Now().Add(time.Hour)}
	if err := other.Record("10.0.1.5:4000", db); err != nil {
		t.Fatal(err)
	}
	// ca-1 publishes within its MinInterval (the staleness of the counts).
	eventually(t, 10*time.Second, "ca-0 to see db-0's report on ca-1", func() error {
		if rs := ca.RotationStatus(ctx); rs.Reporting != 1 || rs.PeersError != nil {
			return fmt.Errorf("reporting %d, peers error %v", rs.Reporting, rs.PeersError)
		}
		return nil
	})
	if err := ca.Rotate(ctx, identity.StepPrepare, false); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond) // the propagation delay
	err := ca.Rotate(ctx, identity.StepActivate, false)
	if err == nil || !strings.Contains(err.Error(), "db-0") || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("activate on ca-0 with db-0 on ca-1 lagging: %v, want a refusal naming db-0", err)
	}
	rs := ca.RotationStatus(ctx)
	if len(rs.Replicas) != 2 || rs.Reporting != 1 || len(rs.ActivateLaggards) != 1 || rs.ActivateLaggards[0].Replica != "ca-1" {
		t.Errorf("status: replicas %v, reporting %d, laggards %+v", rs.Replicas, rs.Reporting, rs.ActivateLaggards)
	}

	db.Trusted = []string{fp(0), fp(1)}
	if err := other.Record("10.0.1.5:4000", db); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "activate once db-0 trusts the new root", func() error {
		return ca.Rotate(ctx, identity.StepActivate, false)
	})

	// A replica gone long ago is removed by the leader; a garbage key
	// makes Peers fail, and the gates with it.
	cms := cs.CoreV1().ConfigMaps(DefaultNamespace)
	cm, err := cms.Get(ctx, DefaultReportsName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gone, err := encodeSnapshot(identity.ReportSnapshot{Replica: "ca-gone", PublishedAt: time.Now().Add(-time.Hour), TTL: 6 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cm.BinaryData["ca-gone.json.gz"] = gone
	cm.BinaryData["ca-bad.json.gz"] = []byte("not gzip")
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := ex0.Peers(ctx); err == nil || !strings.Contains(err.Error(), "ca-bad.json.gz") {
		t.Errorf("Peers with an undecodable key: %v", err)
	}
	eventually(t, 10*time.Second, "the leader to remove the gone and the bad key", func() error {
		cm, err := cms.Get(ctx, DefaultReportsName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		var keys []string
		for k := range cm.BinaryData {
			keys = append(keys, k)
		}
		if _, ok := cm.BinaryData["ca-gone.json.gz"]; ok {
			return fmt.Errorf("keys %v", keys)
		}
		if _, ok := cm.BinaryData["ca-bad.json.gz"]; ok {
			return fmt.Errorf("keys %v", keys)
		}
		return nil
	})
	if _, err := ex0.Peers(ctx); err != nil {
		t.Errorf("Peers after the cleanup: %v", err)
	}
}

// TestReportExchangeRefusesBadConfig: every missing or invalid setting is
// refused with a message naming it.
func TestReportExchangeRefusesBadConfig(t *testing.T) {
	src := reportsSource{identity.NewReports(identity.ReportsConfig{})}
	cs := kubernetes.NewForConfigOrDie(&rest.Config{Host: "https://127.0.0.1:1"})
	for name, tc := range map[string]struct {
		cfg  ReportExchangeConfig
		want string
	}{
		"no client":    {ReportExchangeConfig{Namespace: "x", Replica: "ca-0", Reports: src}, "no Kubernetes client"},
		"no namespace": {ReportExchangeConfig{Client: cs.CoreV1(), Replica: "ca-0", Reports: src}, "no namespace"},
		"no replica":   {ReportExchangeConfig{Client: cs.CoreV1(), Namespace: "x", Reports: src}, "replica name"},
		"bad replica":  {ReportExchangeConfig{Client: cs.CoreV1(), Namespace: "x", Replica: "ca 0", Reports: src}, "replica name \"ca 0\""},
		"no source":    {ReportExchangeConfig{Client: cs.CoreV1(), Namespace: "x", Replica: "ca-0"}, "no report source"},
	} {
		_, err := NewReportExchange(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
	if _, err := decodeSnapshot(mustEncode(t, identity.ReportSnapshot{})); err == nil {
		t.Error("a snapshot without replica decodes")
	}
	if _, err := decodeSnapshot(nil); err == nil {
		t.Error("an empty value decodes")
	}
}

func mustEncode(t *testing.T, s identity.ReportSnapshot) []byte {
	t.Helper()
	b, err := encodeSnapshot(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSnapshotSizeBound measures the encoded size of a replica holding
// MaxReportsKubernetes reports of realistic shape (random serials and pod
// name suffixes, two roots): two replicas at their bound must fit in the
// ConfigMap.
func TestSnapshotSizeBound(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	fps := []string{strings.Repeat("1f", 32), strings.Repeat("2e", 32)}
	s := identity.ReportSnapshot{Replica: "tether-ca-7d9f8b6c5-x2k4q", PublishedAt: time.Now(), TTL: 90 * time.Second}
	for i := range MaxReportsKubernetes {
		s.Reports = append(s.Reports, identity.SidecarReport{
			ID:       fmt.Sprintf("spiffe://cluster.local/ns/team-%d/sa/app-%d", i%50, i%400),
			Instance: fmt.Sprintf("app-%d-%08x-%05x", i%400, rnd.Uint32(), rnd.Uint32()&0xfffff), Version: "v0.14.0",
			PeerIP: fmt.Sprintf("10.%d.%d.%d", 244+i%3, rnd.IntN(256), rnd.IntN(256)), Trusted: fps, Holds: fps[0], Claimed: fps[0],
			BundleSequence: 7, SVIDSerial: fmt.Sprintf("%016x%016x", rnd.Uint64(), rnd.Uint64()),
			SVIDNotAfter: time.Now().Add(time.Duration(rnd.IntN(3600)) * time.Second), LastReport: time.Now().Add(-time.Duration(rnd.IntN(30)) * time.Second),
			Replica: s.Replica,
		})
	}
	b := mustEncode(t, s)
	t.Logf("%d reports encode to %d bytes (%.0f per report)", len(s.Reports), len(b), float64(len(b))/float64(len(s.Reports)))
	if 2*len(b) > maxReportsConfigMap {
		t.Errorf("two replicas at %d reports take %d bytes, more than the %d the ConfigMap may hold", MaxReportsKubernetes, 2*len(b), maxReportsConfigMap)
	}
}
