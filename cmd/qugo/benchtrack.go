package main

import (
	"encoding/binary"
	"slices"
	"sync"
	"time"

	"github.com/qugo/queue"
)

// tracker records what the drain handled. It is safe for concurrent use.
type tracker struct {
	want    int64 // tasks to handle before done closes; 0: never closes
	partial bool  // an OrderID counts from the first task seen to the last (verify -partial)
	done    chan struct{}
	mu      sync.Mutex
	order   map[uint64]*orderSeen
	counts  orderCheck
	unique  int64
	lats    []time.Duration
	last    time.Time
	nLeft   int64    // tasks left for not being bench's
	left    []string // the first foreignNamed of them (nameTask)
}

// orderSeen is what the drain saw of one OrderID.
type orderSeen struct {
	seen []bool // by place - 1
	last uint32 // the highest place started
	low  uint32 // the lowest place started
	n    int64  // distinct tasks handled
}

func newTracker(want int64, keepLatency, partial bool) *tracker {
	t := &tracker{done: make(chan struct{}), order: map[uint64]*orderSeen{}, partial: partial}
	if keepLatency {
		t.want = want
		t.lats = make([]time.Duration, 0, want)
	}
	return t
}

// handle records the start of one delivery, and reports whether its
// task is bench's (isBenchTask). One that is not is counted as foreign,
// and not handled: the caller must leave it (see leave).
func (t *tracker) handle(orderID uint64, payload []byte, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !isBenchTask(payload) {
		t.counts.Foreign++
		return false
	}
	t.counts.Handled++
	t.last = now
	total := binary.BigEndian.Uint32(payload[len(benchMagic):])
	place := binary.BigEndian.Uint32(payload[len(benchMagic)+4:])
	sent := int64(binary.BigEndian.Uint64(payload[len(benchMagic)+8:]))
	o := t.order[orderID]
	if o == nil {
		o = &orderSeen{seen: make([]bool, total), low: 1}
		if t.partial {
			// The OrderID's tasks before the first one seen ran before
			// it started (an earlier verify, the caller's analysers);
			// from it on, every one must come, in order.
			o.last, o.low = place-1, place
		}
		t.order[orderID] = o
	}
	if int(place) > len(o.seen) {
		// Bench's, but its count disagrees with an earlier task's (of a
		// bench of another -n): not of the run the check is of.
		t.counts.Foreign++
		return true
	}
	if o.seen[place-1] {
		t.counts.Duplicates++
		return true
	}
	o.seen[place-1] = true
	o.n++
	if place != o.last+1 {
		t.counts.OutOfOrder++
	}
	o.last, o.low = max(o.last, place), min(o.low, place)
	if t.lats != nil {
		t.lats = append(t.lats, now.Sub(time.Unix(0, sent)))
	}
	t.unique++
	if t.unique == t.want {
		close(t.done)
	}
	return true
}

// leave records task, which handle found is not bench's, as left in the
// queue.
func (t *tracker) leave(task queue.Task) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.nLeft++
	if len(t.left) < foreignNamed {
		t.left = append(t.left, nameTask(task))
	}
}

// foreignLeft returns how many tasks were left (see leave), and the first
// of them.
func (t *tracker) foreignLeft() (int64, []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.nLeft, slices.Clone(t.left)
}

// check returns the verdict: in bench mode tasks not handled count as
// missing; in verify mode those of the OrderIDs seen (with -partial, only
// those between the lowest and the highest place seen: the tasks before
// were handled earlier, those after may never have been added).
func (t *tracker) check() orderCheck {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.counts
	if t.want > 0 {
		c.Missing = t.want - t.unique
	} else {
		for _, o := range t.order {
			high := len(o.seen)
			if t.partial {
				high = int(o.last)
			}
			c.Missing += int64(high-int(o.low)+1) - o.n
		}
	}
	c.OK = c.Missing == 0 && c.OutOfOrder == 0 && c.Foreign == 0 && c.Handled > 0
	return c
}

// handledOnce returns how many distinct tasks of the run were handled.
func (t *tracker) handledOnce() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.unique
}

func (t *tracker) lastAt() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.last
}

func (t *tracker) orderCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.order)
}

// latency returns the percentiles of the recorded latencies, nil when none.
func (t *tracker) latency() *latencyDoc {
	t.mu.Lock()
	lats := slices.Clone(t.lats)
	t.mu.Unlock()
	if len(lats) == 0 {
		return nil
	}
	slices.Sort(lats)
	at := func(p float64) float64 {
		return float64(lats[int(p*float64(len(lats)-1))]) / float64(time.Millisecond)
	}
	return &latencyDoc{P50: at(0.50), P90: at(0.90), P99: at(0.99), P999: at(0.999), Max: at(1)}
}
