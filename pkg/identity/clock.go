package identity

import "time"

// Clock tells the time. The CA never calls time.Now directly, so tests can
// drive every timing rule with a fake clock.
type Clock interface {
	Now() time.Time
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// RealClock is the wall clock.
var RealClock Clock = realClock{}
