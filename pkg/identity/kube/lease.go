package kube

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/tether-mesh/tether/pkg/identity"
)

// Leader election defaults, those of kube-controller-manager.
const (
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
)

// LeaderElectorConfig configures a LeaderElector. Zero values take the
// defaults.
type LeaderElectorConfig struct {
	// Client reaches Leases: kubernetes.Interface.CoordinationV1() fits.
	// The CA's ServiceAccount needs get, create and update on leases in
	// Namespace.
	Client    coordinationv1client.LeasesGetter
	Namespace string // default tether-system
	Name      string // default tether-ca
	// Identity names this replica in the Lease (default: the host name,
	// which is the Pod name in Kubernetes, plus a random suffix).
	Identity string
	// LeaseDuration is how long a lease lasts without renewal. The Lease
	// stores it in whole seconds, so it must be at least 1s (default 15s).
	LeaseDuration time.Duration
	// RenewDeadline is how long the leader keeps trying to renew before it
	// steps down (default 10s). It must be shorter than LeaseDuration.
	RenewDeadline time.Duration
	// RetryPeriod is the pause between attempts (default 2s).
	RetryPeriod time.Duration
	Clock       identity.Clock
	Logger      *slog.Logger
}

// LeaderElector takes part in the election of the CA replica that takes
// scheduled rotation steps, through a coordination.k8s.io Lease. Run
// contests the Lease until its context ends and then releases it; IsLeader,
// meant for identity.Config.IsLeader, is true while this replica holds it.
//
// Holding the Lease is an optimisation, not what keeps the CA state
// consistent: the store's compare-and-swap does that.
type LeaderElector struct {
	cfg LeaderElectorConfig
	log *slog.Logger

	mu   sync.Mutex
	gen  uint64          // counts the terms Run has contested
	term context.Context // while leading: the term, done when it ends

	renewed atomic.Int64 // unix nanoseconds of our last write of the Lease
}

// NewLeaderElector checks cfg and returns the elector. It does not contact
// the API server.
func NewLeaderElector(cfg LeaderElectorConfig) (*LeaderElector, error) {
	if cfg.Client == nil {
		return nil, errors.New("leader election: no Kubernetes client")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultNamespace
	}
	if cfg.Name == "" {
		cfg.Name = DefaultLeaseName
	}
	if cfg.Identity == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "tether-ca"
		}
		var b [4]byte
		_, _ = rand.Read(b[:])
		cfg.Identity = host + "_" + hex.EncodeToString(b[:])
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.LeaseDuration, DefaultLeaseDuration)
	def(&cfg.RenewDeadline, DefaultRenewDeadline)
	def(&cfg.RetryPeriod, DefaultRetryPeriod)
	if cfg.LeaseDuration < time.Second {
		return nil, fmt.Errorf("leader election: lease duration %s is shorter than a second, the Lease's unit", cfg.LeaseDuration)
	}
	cfg.Clock, cfg.Logger = clockAndLogger(cfg.Clock, cfg.Logger)
	l := &LeaderElector{cfg: cfg, log: cfg.Logger.With(
		slog.String("lease", cfg.Namespace+"/"+cfg.Name), slog.String("identity", cfg.Identity))}
	if _, err := l.elector(0); err != nil { // validates the durations
		return nil, err
	}
	return l, nil
}

// elector builds client-go's elector for term gen.
func (l *LeaderElector) elector(gen uint64) (*leaderelection.LeaderElector, error) {
	el, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: &renewTracker{
			Interface: &resourcelock.LeaseLock{
				LeaseMeta:  metav1.ObjectMeta{Namespace: l.cfg.Namespace, Name: l.cfg.Name},
				Client:     l.cfg.Client,
				LockConfig: resourcelock.ResourceLockConfig{Identity: l.cfg.Identity},
				Labels:     map[string]string{PartOfLabel: PartOfValue},
			},
			l: l,
		},
		LeaseDuration:   l.cfg.LeaseDuration,
		RenewDeadline:   l.cfg.RenewDeadline,
		RetryPeriod:     l.cfg.RetryPeriod,
		ReleaseOnCancel: true,
		Name:            l.cfg.Name,
		Callbacks: leaderelection.LeaderCallbacks{
			// client-go calls this in a goroutine of its own, so it may
			// run late: the term and generation checks drop a stale call.
			OnStartedLeading: func(term context.Context) {
				l.mu.Lock()
				defer l.mu.Unlock()
				if l.gen == gen && term.Err() == nil {
					l.term = term
					l.log.Info("became the CA leader")
				}
			},
			OnStoppedLeading: func() {},
			OnNewLeader: func(id string) {
				if id != l.cfg.Identity {
					l.log.Info("the CA leader is another replica", slog.String("leader", id))
				}
			},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("leader election: %w", err)
	}
	return el, nil
}

// Identity is this replica's name in the Lease.
func (l *LeaderElector) Identity() string { return l.cfg.Identity }

// IsLeader reports whether this replica holds the Lease now: it won it,
// its term has not ended, and it renewed it less than RenewDeadline ago
// (so no other replica can have taken it over).
func (l *LeaderElector) IsLeader() bool {
	l.mu.Lock()
	term := l.term
	l.mu.Unlock()
	if term == nil || term.Err() != nil {
		return false
	}
	last := time.Unix(0, l.renewed.Load())
	return l.cfg.Clock.Now().Sub(last) < l.cfg.RenewDeadline
}

// Run contests the Lease until ctx ends, then releases it if held. A
// replica that loses the Lease (for example because it could not reach the
// API server for RenewDeadline) stops leading at once and contests again.
// Run returns nil when ctx ends.
func (l *LeaderElector) Run(ctx context.Context) error {
	for {
		l.mu.Lock()
		gen := l.gen
		l.mu.Unlock()
		el, err := l.elector(gen)
		if err != nil {
			return err
		}
		el.Run(ctx)

		l.mu.Lock()
		led := l.term != nil
		l.term = nil
		l.gen++
		l.mu.Unlock()
		if led {
			l.log.Info("stopped being the CA leader")
		}
		if ctx.Err() != nil {
			return nil
		}
		l.log.Warn("lost the CA leader Lease; contesting it again")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(l.cfg.RetryPeriod):
		}
	}
}

// renewTracker notes when this replica last wrote the Lease as its holder.
type renewTracker struct {
	resourcelock.Interface
	l *LeaderElector
}

var _ resourcelock.Interface = (*renewTracker)(nil)

func (r *renewTracker) Create(ctx context.Context, rec resourcelock.LeaderElectionRecord) error {
	start := r.l.cfg.Clock.Now()
	return r.track(rec, start, r.Interface.Create(ctx, rec))
}

func (r *renewTracker) Update(ctx context.Context, rec resourcelock.LeaderElectionRecord) error {
	start := r.l.cfg.Clock.Now()
	return r.track(rec, start, r.Interface.Update(ctx, rec))
}

// track counts a successful write as a renewal from the moment it started.
func (r *renewTracker) track(rec resourcelock.LeaderElectionRecord, start time.Time, err error) error {
	if err == nil && rec.HolderIdentity == r.l.cfg.Identity {
		r.l.renewed.Store(start.UnixNano())
	}
	return err
}
