package xds

import (
	"context"
	"slices"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// slotQueue hands out the MaxConcurrentSyncs sync slots fairly between
// identities: an identity holds at most perID slots at once, and when a
// slot frees, the identities with waiting streams take turns (round
// robin), each serving its own streams in order. So the streams of one
// identity (however many it opens, and whether or not they ever answer)
// cannot keep another identity's first sync waiting for more than the
// time it takes a slot to free, and never while that identity holds fewer
// than perID slots and a slot is free.
type slotQueue struct {
	mu    sync.Mutex
	free  int
	perID int
	held  map[string]int         // identity → slots held
	queue map[string][]*slotWait // identity → its waiting streams, in order
	order []string               // identities with waiting streams, next first
	wait  int                    // waiting streams
}

type slotWait struct {
	ready   chan struct{} // closed when granted
	granted bool          // under slotQueue.mu
}

func newSlotQueue(slots, perID int) *slotQueue {
	return &slotQueue{free: slots, perID: perID, held: map[string]int{}, queue: map[string][]*slotWait{}}
}

// acquire waits for a slot for identity id until ctx ends, and returns
// the function that frees it (safe to call more than once).
func (q *slotQueue) acquire(ctx context.Context, id string) (release func(), err error) {
	q.mu.Lock()
	if q.free > 0 && q.held[id] < q.perID && len(q.queue[id]) == 0 {
		q.grantLocked(id)
		q.mu.Unlock()
		return q.releaser(id), nil
	}
	w := &slotWait{ready: make(chan struct{})}
	if len(q.queue[id]) == 0 {
		q.order = append(q.order, id)
	}
	q.queue[id] = append(q.queue[id], w)
	q.wait++
	q.mu.Unlock()
	select {
	case <-w.ready:
		return q.releaser(id), nil
	case <-ctx.Done():
	}
	q.mu.Lock()
	if w.granted { // granted as the stream ended: give it back
		q.mu.Unlock()
		q.releaser(id)()
	} else {
		ws := q.queue[id]
		if i := slices.Index(ws, w); i >= 0 {
			q.queue[id] = slices.Delete(ws, i, i+1)
			q.wait--
		}
		if len(q.queue[id]) == 0 {
			delete(q.queue, id)
			q.order = slices.DeleteFunc(q.order, func(o string) bool { return o == id })
		}
		q.mu.Unlock()
	}
	return nil, status.Error(codes.Canceled, "stream ended while waiting to be served")
}

func (q *slotQueue) grantLocked(id string) {
	q.free--
	q.held[id]++
}

func (q *slotQueue) releaser(id string) func() {
	return sync.OnceFunc(func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		q.free++
		if q.held[id]--; q.held[id] <= 0 {
			delete(q.held, id)
		}
		q.dispatchLocked()
	})
}

// dispatchLocked grants free slots to waiting streams, one identity's
// turn after another's, skipping identities at their perID limit.
func (q *slotQueue) dispatchLocked() {
	for q.free > 0 {
		i := slices.IndexFunc(q.order, func(id string) bool { return q.held[id] < q.perID })
		if i < 0 {
			return
		}
		id := q.order[i]
		ws := q.queue[id]
		w := ws[0]
		q.queue[id] = ws[1:]
		q.order = slices.Delete(q.order, i, i+1)
		if len(q.queue[id]) > 0 {
			q.order = append(q.order, id) // its next stream waits for its next turn
		} else {
			delete(q.queue, id)
		}
		q.wait--
		q.grantLocked(id)
		w.granted = true
		close(w.ready)
	}
}

// stats reports the slots held and the streams waiting.
func (q *slotQueue) stats(slots int) (syncing, waiting int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return slots - q.free, q.wait
}
