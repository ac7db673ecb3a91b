package queue

import (
	"sync"
	"time"
)

// deathClock stamps the deaths of a Queue's tasks (DeadTask.DiedAt), in
// milliseconds since the epoch: the time, or a millisecond past the last
// stamp of an OrderID of the same slot, whichever is later. Two tasks of
// one OrderID that die in one millisecond (a burst of failures, a recovery
// that buries many at once) so keep their order in DiedAt, which Replay
// follows; task IDs, its tie-break, follow add order only per producer.
// A stamp runs ahead of the clock by a millisecond per such death.
type deathClock struct {
	mu   sync.Mutex
	last [deathSlots]int64
}

// deathSlots is how many OrderID slots a deathClock keeps: OrderIDs that
// share one only push each other's stamps on, within a millisecond.
const deathSlots = 256

// stamp returns the death time of a task of orderID, dying now.
func (c *deathClock) stamp(orderID uint64) int64 {
	now := time.Now().UnixMilli()
	if c == nil {
		return now
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	last := &c.last[orderID%deathSlots]
	if now <= *last {
		now = *last + 1
	}
	*last = now
	return now
}
