package identity

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestScheduledActivateWaitsForBundleEndpoint: an automatic activate waits
// (logged, not an error) until the bundle endpoint has served the prepared
// root for its refresh hint plus the margin.
func TestScheduledActivateWaitsForBundleEndpoint(t *testing.T) {
	g := newGateCA(t, func(c *Config) {
		c.AutoRotate, c.RootTTL, c.BundleEndpointRefreshHint = true, 60*24*time.Hour, 20*time.Second
	})
	ctx := context.Background()
	g.clock.Add(31 * 24 * time.Hour) // half the root's life: prepare
	if err := g.ca.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if g.ca.state.find(Prepared) == nil {
		t.Fatal("no prepared generation at half the root's life")
	}
	g.clock.Add(20 * 24 * time.Hour) // 1/6 left: activate is due
	if err := g.ca.Tick(ctx); err != nil {
		t.Fatalf("a waiting step is not an error: %v", err)
	}
	if g.ca.state.find(Superseded) != nil {
		t.Fatal("scheduled activate taken before the bundle endpoint served the prepared root")
	}
	if !strings.Contains(g.log.String(), "scheduled rotation step waits for federated trust domains") {
		t.Errorf("the wait is not logged:\n%s", g.log.String())
	}
	g.ca.endpointServed(ctx, g.ca.Bundle(), 20*time.Second) // what the handler does after answering a fetch
	g.clock.Add(39 * time.Second)
	if err := g.ca.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if g.ca.state.find(Superseded) != nil {
		t.Fatal("scheduled activate taken 39s after the first fetch, before the hint (20s) and margin (20s)")
	}
	g.clock.Add(2 * time.Second)
	if err := g.ca.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if g.ca.state.find(Superseded) == nil {
		t.Fatal("scheduled activate not taken 41s after the first fetch")
	}
}
