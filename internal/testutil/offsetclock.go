package testutil

import (
	"sync/atomic"
	"time"
)

// OffsetClock is the wall clock moved by an offset. A test makes a CA "in
// the past" with a negative offset, then sets it to 0: the CA's roots and
// intermediates then end at chosen wall times, and the SVIDs it issues are
// checked by TLS (which uses the wall clock) as in production.
type OffsetClock struct{ off atomic.Int64 }

// NewOffsetClock is the wall clock moved by off.
func NewOffsetClock(off time.Duration) *OffsetClock {
	c := &OffsetClock{}
	c.Set(off)
	return c
}

// Now implements identity.Clock.
func (c *OffsetClock) Now() time.Time { return time.Now().Add(time.Duration(c.off.Load())) }

// Set changes the offset.
func (c *OffsetClock) Set(off time.Duration) { c.off.Store(int64(off)) }
