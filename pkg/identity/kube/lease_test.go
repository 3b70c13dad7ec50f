package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/tether-mesh/tether/internal/kubetest"
)

// TestLeaderElector runs replicas against a real API server: exactly one
// leads; when it stops another takes over; a leader cut off from the API
// server stops claiming to lead before another can take over.
func TestLeaderElector(t *testing.T) {
	env := kubetest.Start(t)
	env.EnsureNamespace(t, DefaultNamespace)

	type replica struct {
		el          *LeaderElector
		cancel      context.CancelFunc
		done        chan error
		partitioned atomic.Bool
	}
	var replicas []*replica
	start := func(name string) *replica {
		r := &replica{done: make(chan error, 1)}
		cfg := rest.CopyConfig(env.Config)
		cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
			return roundTripFunc(func(req *http.Request) (*http.Response, error) {
				if r.partitioned.Load() {
					return nil, errors.New("partitioned by the test")
				}
				return rt.RoundTrip(req)
			})
		}
		el, err := NewLeaderElector(LeaderElectorConfig{
			Client:        kubernetes.NewForConfigOrDie(cfg).CoordinationV1(),
			Identity:      name,
			LeaseDuration: 2 * time.Second,
			RenewDeadline: time.Second,
			RetryPeriod:   100 * time.Millisecond,
			Logger:        testLogger(t).With(slog.String("replica", name)),
		})
		if err != nil {
			t.Fatal(err)
		}
		r.el = el
		ctx, cancel := context.WithCancel(context.Background())
		r.cancel = cancel
		var wg sync.WaitGroup
		wg.Go(func() { r.done <- el.Run(ctx) })
		t.Cleanup(func() { cancel(); wg.Wait() })
		replicas = append(replicas, r)
		return r
	}
	// leader returns the one replica that leads, failing the test if
	// several do.
	leader := func(t *testing.T) (*replica, error) {
		var l *replica
		for _, r := range replicas {
			if r.el.IsLeader() {
				if l != nil {
					t.Fatalf("%s and %s both lead", l.el.Identity(), r.el.Identity())
				}
				l = r
			}
		}
		if l == nil {
			return nil, errors.New("no leader")
		}
		return l, nil
	}
	waitLeader := func(t *testing.T, what string, want func(*replica) bool) *replica {
		t.Helper()
		var l *replica
		eventually(t, 10*time.Second, what, func() (err error) {
			l, err = leader(t)
			if err == nil && !want(l) {
				err = fmt.Errorf("%s leads", l.el.Identity())
			}
			return err
		})
		return l
	}
	a, b := start("replica-a"), start("replica-b")
	first := waitLeader(t, "a leader is elected", func(*replica) bool { return true })
	for range 30 { // stays put over several renewals
		if l, err := leader(t); err != nil || l != first {
			t.Fatalf("leadership moved without cause: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	lease, err := env.Client.CoordinationV1().Leases(DefaultNamespace).Get(context.Background(), DefaultLeaseName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *lease.Spec.HolderIdentity != first.el.Identity() || lease.Labels[PartOfLabel] != PartOfValue {
		t.Fatalf("Lease holder %q, labels %v; want %q", *lease.Spec.HolderIdentity, lease.Labels, first.el.Identity())
	}

	t.Run("the leader stops", func(t *testing.T) {
		second := a
		if first == a {
			second = b
		}
		stopped := time.Now()
		first.cancel()
		select {
		case err := <-first.done:
			if err != nil {
				t.Fatalf("Run returned %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Run did not return after its context ended")
		}
		if first.el.IsLeader() {
			t.Fatal("the stopped replica still claims to lead")
		}
		waitLeader(t, "the other replica takes over", func(l *replica) bool { return l == second })
		t.Logf("takeover after %v", time.Since(stopped).Round(time.Millisecond))
	})

	t.Run("the leader loses the API server", func(t *testing.T) {
		old, _ := leader(t)
		start("replica-c")
		cut := time.Now()
		old.partitioned.Store(true)
		eventually(t, 5*time.Second, "the cut-off leader steps down", func() error {
			_, _ = leader(t) // fails the test if two replicas claim to lead
			if old.el.IsLeader() {
				return errors.New("still leads")
			}
			return nil
		})
		// It must step down within the renew deadline (1s) of its last
		// renewal, well before the lease (2s) lets another replica in.
		if d := time.Since(cut); d >= 2*time.Second {
			t.Errorf("stepped down after %v, not before its lease expired", d)
		}
		waitLeader(t, "another replica takes over", func(l *replica) bool { return l != old })
		old.partitioned.Store(false)
		time.Sleep(500 * time.Millisecond)
		if _, err := leader(t); err != nil {
			t.Fatal(err)
		}
	})
}

func TestLeaderElectorConfig(t *testing.T) {
	// A client that is never used: NewLeaderElector does not call the API.
	client := kubernetes.NewForConfigOrDie(&rest.Config{Host: "https://127.0.0.1:1"}).CoordinationV1()
	tests := []struct {
		name string
		cfg  LeaderElectorConfig
		ok   bool
	}{
		{"defaults", LeaderElectorConfig{Client: client}, true},
		{"no client", LeaderElectorConfig{}, false},
		{"sub-second lease", LeaderElectorConfig{Client: client, LeaseDuration: 500 * time.Millisecond, RenewDeadline: 100 * time.Millisecond, RetryPeriod: 10 * time.Millisecond}, false},
		{"renew deadline past the lease", LeaderElectorConfig{Client: client, LeaseDuration: 2 * time.Second, RenewDeadline: 3 * time.Second}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			el, err := NewLeaderElector(tt.cfg)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v", err)
			}
			if err == nil && (el.Identity() == "" || el.IsLeader()) {
				t.Fatalf("identity %q, leader %v before Run", el.Identity(), el.IsLeader())
			}
		})
	}
}
