package queue

import (
	"strconv"
	"sync"
	"time"
)

// deathClock stamps the deaths of a Queue's tasks (DeadTask.DiedAt), in
// milliseconds since the epoch: the time, or a millisecond past the last
// stamp of an OrderID of the same slot, or a millisecond past the floor of
// the store that stamps it, whichever is latest. Two tasks of one OrderID
// that die in one millisecond (a burst of failures, a recovery that
// buries many at once) so keep their order in DiedAt, which Replay
// follows; task IDs, its tie-break, follow add order only per producer.
// A stamp runs ahead of the clock by a millisecond per such death.
//
// The floor carries that order from one owner of a queue to the next: it
// is the latest death the queue's dead-letter store had recorded when the
// store took the lease (lastDeathField), so a standby that takes over from
// an owner whose stamps ran ahead (a burst, a clock ahead of its own)
// stamps its deaths after that owner's, ties included. It costs nothing
// per death: the acquisition reads it, and each dead-letter script keeps
// it.
type deathClock struct {
	mu   sync.Mutex
	last [deathSlots]int64
}

// deathSlots is how many OrderID slots a deathClock keeps: OrderIDs that
// share one only push each other's stamps on, within a millisecond.
const deathSlots = 256

// stamp returns the death time of a task of orderID, dying now, past
// floor.
func (c *deathClock) stamp(orderID uint64, floor int64) int64 {
	now := max(time.Now().UnixMilli(), floor+1)
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

// lastDeathField is the meta hash field that holds the latest death stamp
// (ms) the queue's dead-letter store was given: buryScript keeps it, and
// acquireScript returns it to the new owner, whose deaths are stamped
// past it (see deathClock). A store written by an earlier release has
// none until its first death under this one.
const lastDeathField = "lastdeath"

// maxDeathsAhead bounds how far ahead of the clock a death stamp can be:
// a lastDeathField further ahead was not written by this package (no
// burst of deaths runs stamps a day ahead), and is read as none, and
// replaced by the next death, rather than push every later stamp on.
const maxDeathsAhead = 24 * time.Hour

// deathFloor returns the floor an acquisition's lastDeathField value v
// gives, at now (ms): v, or 0 for a value this package did not write.
func deathFloor(v string, now int64) int64 {
	if len(v) > 15 { // as buryScript reads it: past 15 digits, not a stamp
		return 0
	}
	ms, err := strconv.ParseUint(v, 10, 63)
	if err != nil || int64(ms) > now+maxDeathsAhead.Milliseconds() {
		return 0
	}
	return int64(ms)
}

// deadStamp returns the death stamp of dead record b, as encodeDead wrote
// it: 0 when it holds none.
func deadStamp(b []byte) int64 {
	if len(b) == 0 || b[0] != deadVersion {
		return 0
	}
	_, n := uvarint(b[1:]) // attempts
	if n <= 0 {
		return 0
	}
	ms, m := uvarint(b[1+n:])
	if m <= 0 || ms > 1<<53 {
		return 0
	}
	return int64(ms)
}

// diedNow returns the death stamp of a task of orderID that the store
// moves to the dead-letter store now.
func (s *store) diedNow(orderID uint64) int64 {
	return s.deaths.stamp(orderID, s.deathFloor.Load())
}

// quarantinedNow returns the death stamp of a malformed record the store
// moves to the dead-letter store now: it has no OrderID, so no slot, but
// it comes after the last owner's deaths all the same.
func (s *store) quarantinedNow() int64 {
	return max(time.Now().UnixMilli(), s.deathFloor.Load()+1)
}
