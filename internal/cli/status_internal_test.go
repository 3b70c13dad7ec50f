package cli

import (
	"strings"
	"testing"
	"time"
)

// TestCAFromMetrics reads the CA's state from its /metrics text, as
// cluster mode does through the pod proxy.
func TestCAFromMetrics(t *testing.T) {
	text := `# HELP tether_ca_bundle_sequence Sequence number of the current trust bundle.
# TYPE tether_ca_bundle_sequence gauge
tether_ca_bundle_sequence 3
# TYPE tether_ca_root_expiry_timestamp_seconds gauge
tether_ca_root_expiry_timestamp_seconds{generation="1",state="active"} 1.8e+09
tether_ca_root_expiry_timestamp_seconds{generation="2",state="prepared"} 1.9e+09
# TYPE tether_ca_intermediate_expiry_timestamp_seconds gauge
tether_ca_intermediate_expiry_timestamp_seconds{generation="2",state="prepared"} 1.85e+09
tether_ca_intermediate_expiry_timestamp_seconds{generation="1",state="active"} 1.75e+09
# TYPE go_goroutines gauge
go_goroutines 12
`
	c, err := caFromMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if c.BundleSequence != 3 || len(c.Generations) != 2 {
		t.Fatalf("%+v", c)
	}
	g1, g2 := c.Generations[0], c.Generations[1]
	if g1.ID != 1 || g1.State != "active" || g1.RootExpires.Unix() != 1.8e9 || g1.IntermediateExpires.Unix() != 1.75e9 ||
		g2.ID != 2 || g2.State != "prepared" || g2.RootExpires.Unix() != 1.9e9 || g2.IntermediateExpires.Unix() != 1.85e9 {
		t.Errorf("generations %+v", c.Generations)
	}
	if _, err := caFromMetrics(strings.NewReader("go_goroutines 12\n")); err == nil || !strings.Contains(err.Error(), "is this tether-ca?") {
		t.Errorf("metrics without the CA's: %v", err)
	}
	if _, err := caFromMetrics(strings.NewReader("<html>not metrics")); err == nil {
		t.Error("HTML read as metrics")
	}
}

func TestStatusHelpers(t *testing.T) {
	if got := clean("rule\x1b[31m red\r\n\u009b"); got != "rule?[31m red???" {
		t.Errorf("clean = %q", got)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for d, want := range map[time.Duration]string{
		30 * time.Second: "in 30s", 9 * time.Minute: "in 9m", 5*time.Hour + 7*time.Minute: "in 5h07m",
		30 * 24 * time.Hour: "in 30d", -3 * time.Minute: "3m ago",
	} {
		if got := when(now.Add(d), now); !strings.HasSuffix(got, "("+want+")") {
			t.Errorf("when(%v) = %q, want (%s)", d, got, want)
		}
	}
	if got := idPath("spiffe://cluster.local/ns/a/sa/b"); got != "ns/a/sa/b" {
		t.Errorf("idPath = %q", got)
	}
	older, newer := now.Add(-time.Minute), now
	got := dedupeSidecars([]sidecarStatus{
		{SpiffeID: "spiffe://td/ns/a/sa/x", AdminAddr: "10.0.0.1:15020", Peer: "10.0.0.1:4000", ConnectedSince: older},
		{SpiffeID: "spiffe://td/ns/a/sa/x", AdminAddr: "10.0.0.1:15020", Peer: "10.0.0.1:4001", ConnectedSince: newer}, // reconnecting
		{SpiffeID: "spiffe://td/ns/a/sa/x", AdminAddr: "10.0.0.2:15020", Peer: "10.0.0.2:4000", ConnectedSince: older}, // another replica
	})
	if len(got) != 2 || !got[0].ConnectedSince.Equal(newer) || got[1].AdminAddr != "10.0.0.2:15020" {
		t.Errorf("dedupe: %+v", got)
	}
	for _, tc := range []struct{ in, want string }{
		{"127.0.0.1:15014", "http://127.0.0.1:15014"}, {"http://h:1/", "http://h:1"}, {"https://h:1", "https://h:1"},
	} {
		if got, err := adminURL(tc.in); err != nil || got != tc.want {
			t.Errorf("adminURL(%q) = %q, %v", tc.in, got, err)
		}
	}
}
