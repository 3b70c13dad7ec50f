package kubesource

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"

	tetherv1alpha1 "github.com/tether-mesh/tether/api/tether/v1alpha1"
	"github.com/tether-mesh/tether/pkg/discovery"
)

// DefaultStatusRewrite is KubeSource.StatusRewrite when it is zero.
const DefaultStatusRewrite = 10 * time.Second

// maxConditionMessage is the CRD's bound on a condition's message
// (metav1.Condition).
const maxConditionMessage = 32768

// verdict is what discovery made of one RemoteService object at one
// generation of its spec: the content of its status, without times.
type verdict struct {
	generation int64
	accepted   bool
	reason     string
	message    string
	addresses  []string
}

func (v verdict) equal(o verdict) bool {
	return v.generation == o.generation && v.accepted == o.accepted && v.reason == o.reason &&
		v.message == o.message && slices.Equal(v.addresses, o.addresses)
}

// verdicts returns the verdict of snap on each RemoteService object of
// gens (its generation when the State was built): Accepted with the
// addresses the snapshot serves it at, or refused with the refusal's
// cause and reason. It depends on nothing but snap and gens, so every
// discovery replica that sees the same objects writes the same status.
func verdicts(snap *discovery.Snapshot, gens map[discovery.ServiceKey]int64) map[discovery.ServiceKey]verdict {
	out := make(map[discovery.ServiceKey]verdict, len(gens))
	refused := make(map[discovery.ServiceKey]discovery.Refusal)
	for _, f := range snap.RefusedRemoteServices() {
		refused[f.Key] = f
	}
	for key, gen := range gens {
		if f, ok := refused[key]; ok {
			msg := f.Reason
			if len(msg) > maxConditionMessage {
				// Cut on a character: invalid UTF-8 is stored as U+FFFD,
				// which would never equal the verdict (a rewrite forever).
				cut := maxConditionMessage - 3
				for cut > 0 && !utf8.RuneStart(msg[cut]) {
					cut--
				}
				msg = msg[:cut] + "..."
			}
			out[key] = verdict{generation: gen, reason: f.Cause, message: msg}
			continue
		}
		svc, ok := snap.Service(key)
		if !ok || svc.Remote.IsZero() {
			continue
		}
		v := verdict{generation: gen, accepted: true, reason: tetherv1alpha1.RemoteServiceReasonAccepted}
		for _, a := range svc.ClusterIPs {
			v.addresses = append(v.addresses, a.String())
		}
		v.message = fmt.Sprintf("served: callers of the mesh reach %s of trust domain %s at %v", key, svc.Remote.Name(), v.addresses)
		out[key] = v
	}
	return out
}

// status returns the status v stands for, keeping the last transition
// time of cur's Accepted condition when its status does not change.
// Discovery owns the status: other conditions are dropped.
func (v verdict) status(cur *tetherv1alpha1.RemoteServiceStatus, now time.Time) tetherv1alpha1.RemoteServiceStatus {
	c := metav1.Condition{
		Type: tetherv1alpha1.RemoteServiceAccepted, Status: metav1.ConditionFalse, ObservedGeneration: v.generation,
		LastTransitionTime: metav1.NewTime(now), Reason: v.reason, Message: v.message,
	}
	if v.accepted {
		c.Status = metav1.ConditionTrue
	}
	if old := meta.FindStatusCondition(cur.Conditions, c.Type); old != nil && old.Status == c.Status {
		c.LastTransitionTime = old.LastTransitionTime
	}
	return tetherv1alpha1.RemoteServiceStatus{ObservedGeneration: v.generation, Addresses: v.addresses, Conditions: []metav1.Condition{c}}
}

// sameStatus compares two statuses, leaving out the transition times.
func sameStatus(a, b *tetherv1alpha1.RemoteServiceStatus) bool {
	if a.ObservedGeneration != b.ObservedGeneration || !slices.Equal(a.Addresses, b.Addresses) || len(a.Conditions) != len(b.Conditions) {
		return false
	}
	for i := range a.Conditions {
		x, y := a.Conditions[i], b.Conditions[i]
		if x.Type != y.Type || x.Status != y.Status || x.Reason != y.Reason || x.Message != y.Message || x.ObservedGeneration != y.ObservedGeneration {
			return false
		}
	}
	return true
}

// statusWriter writes the verdicts of the latest snapshot into the
// RemoteService objects' status subresource, and only where the object's
// status (as the informer cache holds it) differs. It never reads a
// status as input to serving: the registry is built from specs alone, and
// a status someone else wrote is only compared with the verdict, to be
// overwritten.
//
// Several discovery replicas each run one, without leader election: their
// verdicts are the same content for the same objects (deterministic
// addresses, no replica names, transition times kept), so the first write
// satisfies the others. Each write carries the cached resourceVersion; a
// replica whose cache is behind gets a conflict and writes nothing. While
// caches disagree (an update still reaching one replica, or two versions
// of discovery during a rollout) the replicas may overwrite each other:
// each rewrites an unchanged verdict of its own at most once per
// StatusRewrite per object, which also bounds what a user rewriting the
// status in a loop can make discovery write.
type statusWriter struct {
	api     dynamic.NamespaceableResourceInterface
	lister  cache.GenericLister
	log     *slog.Logger
	rewrite time.Duration

	mu   sync.Mutex
	want map[discovery.ServiceKey]verdict
	kick chan struct{}

	// Owned by run.
	last map[discovery.ServiceKey]lastWrite
}

// lastWrite is this replica's last write of an object's status.
type lastWrite struct {
	v      verdict
	at     time.Time
	failed string // the error of that write, logged once
}

func newStatusWriter(api dynamic.NamespaceableResourceInterface, lister cache.GenericLister, log *slog.Logger, rewrite time.Duration) *statusWriter {
	if rewrite <= 0 {
		rewrite = DefaultStatusRewrite
	}
	return &statusWriter{api: api, lister: lister, log: log, rewrite: rewrite,
		kick: make(chan struct{}, 1), last: make(map[discovery.ServiceKey]lastWrite)}
}

// set replaces the verdicts and wakes the writer.
func (w *statusWriter) set(want map[discovery.ServiceKey]verdict) {
	w.mu.Lock()
	w.want = want
	w.mu.Unlock()
	w.poke()
}

// poke wakes the writer: the verdicts or an object's status changed.
func (w *statusWriter) poke() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// run writes statuses until ctx ends.
func (w *statusWriter) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.kick:
		case <-timer.C:
		}
		if wait := w.pass(ctx); wait > 0 {
			timer.Reset(wait)
		}
	}
}

// pass writes every status that differs from its verdict, and returns how
// long until a deferred rewrite is due (0: none).
func (w *statusWriter) pass(ctx context.Context) time.Duration {
	w.mu.Lock()
	want := w.want
	w.mu.Unlock()
	var wait time.Duration
	for key := range w.last {
		if _, ok := want[key]; !ok {
			delete(w.last, key)
		}
	}
	for key, v := range want {
		if ctx.Err() != nil {
			return 0
		}
		if d := w.write(ctx, key, v); d > 0 && (wait == 0 || d < wait) {
			wait = d
		}
	}
	return wait
}

// write brings one object's status to v, unless the cached object is of
// another generation (a newer spec: its verdict is on the way), already
// says v, or this replica wrote v less than rewrite ago (then it returns
// the time left).
func (w *statusWriter) write(ctx context.Context, key discovery.ServiceKey, v verdict) time.Duration {
	obj, err := w.lister.ByNamespace(key.Namespace).Get(key.Name)
	if err != nil {
		return 0
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok || u.GetGeneration() != v.generation {
		return 0
	}
	var cur tetherv1alpha1.RemoteServiceStatus
	if m, ok := u.Object["status"].(map[string]any); ok {
		// A status that does not decode is simply replaced.
		_ = runtime.DefaultUnstructuredConverter.FromUnstructured(m, &cur)
	}
	now := time.Now()
	next := v.status(&cur, now)
	if sameStatus(&cur, &next) {
		return 0
	}
	lw, wrote := w.last[key]
	if wrote && lw.v.equal(v) {
		if left := lw.at.Add(w.rewrite).Sub(now); left > 0 {
			return left
		}
	}
	st, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&next)
	if err != nil {
		w.log.Error("encoding RemoteService status", slog.String("remote_service", key.String()), slog.Any("error", err))
		return 0
	}
	u = u.DeepCopy()
	u.Object["status"] = st
	_, err = w.api.Namespace(key.Namespace).UpdateStatus(ctx, u, metav1.UpdateOptions{})
	switch {
	case err == nil:
		w.last[key] = lastWrite{v: v, at: now}
		w.log.Debug("RemoteService status written", slog.String("remote_service", key.String()),
			slog.Bool("accepted", v.accepted), slog.String("reason", v.reason))
	case apierrors.IsConflict(err) || apierrors.IsNotFound(err) && w.gone(ctx, key):
		// Our cache is behind (another replica wrote, the spec changed,
		// the object went): the informer's event brings the next pass.
	default:
		if !wrote || lw.failed != err.Error() {
			w.log.Warn("cannot write RemoteService status (is the CRD current, with its status subresource, and may discovery update remoteservices/status?)",
				slog.String("remote_service", key.String()), slog.Any("error", err))
		}
		w.last[key] = lastWrite{v: v, at: now, failed: err.Error()}
		return w.rewrite
	}
	return 0
}

// gone says whether the object is deleted, after a "not found" for its
// status: a CRD without the status subresource answers that too, for an
// object that is there.
func (w *statusWriter) gone(ctx context.Context, key discovery.ServiceKey) bool {
	_, err := w.api.Namespace(key.Namespace).Get(ctx, key.Name, metav1.GetOptions{})
	return apierrors.IsNotFound(err)
}
