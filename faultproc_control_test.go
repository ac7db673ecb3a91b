package queue

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// The fault workload's scheduled tasks and cancels: a producer adds a
// share of its tasks with a due time (roleConfig.ScheduleShare) and
// cancels a share of those it added (roleConfig.CancelShare), logging
// each Cancel call and its answer for the checker
// (checker_control_test.go).

// dueTime returns when an add is to fall due: zero (at once) or, for a
// share of adds, up to most ahead.
func pickDueTime(share float64, most time.Duration) time.Time {
	if share <= 0 || rand.Float64() >= share {
		return time.Time{}
	}
	return time.Now().Add(rand.N(max(most, time.Millisecond)))
}

// addLogged adds task (order, seq) with payload p, due at at (zero: at
// once), and logs the add and its outcome; it returns the task's ID and
// the error.
func addLogged(ctx context.Context, q *Queue, log func(faultEvent), order uint64, seq int, at time.Time, p []byte) (string, error) {
	ev := faultEvent{Ev: evAdd, Order: order, Seq: seq}
	if !at.IsZero() {
		ev.Due = dueMS(at)
	}
	log(ev)
	var id string
	var err error
	if at.IsZero() {
		id, err = q.AddTask(ctx, order, p)
	} else {
		id, err = q.AddTaskAt(ctx, order, at, p)
	}
	ev.Ev, ev.ID, ev.Result = evAdded, id, "ok"
	if err != nil {
		ev.Result, ev.Err, ev.Kind = "error", err.Error(), errKind(err)
	}
	log(ev)
	return id, err
}

// cancelLogged cancels task id of (order, seq) and logs each call and its
// answer, calling again after 5ms while a call fails, for 10s at most:
// a call whose answer was lost may have taken or not, and the next one
// tells where the task is.
func cancelLogged(ctx context.Context, q *Queue, log func(faultEvent), order uint64, seq int, id string) {
	for deadline := time.Now().Add(10 * time.Second); ; {
		ev := faultEvent{Ev: evCancel, Order: order, Seq: seq, ID: id}
		log(ev)
		st, err := q.Cancel(ctx, order, id)
		ev.Ev, ev.Result = evCancelled, st.String()
		if err != nil {
			ev.Result, ev.Err, ev.Kind = "error", err.Error(), errKind(err)
		}
		log(ev)
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// canceller cancels a share of a producer's tasks, each after a delay
// drawn up to most, and every slow task, up to slowMost after an analyser
// claimed it (so that most of those cancels meet their task running),
// from goroutines of its own; wait waits for them all.
type canceller struct {
	q              *Queue
	log            func(faultEvent)
	share          float64
	most, slowMost time.Duration
	wg             sync.WaitGroup
}

// maybe cancels task id of (order, seq), which was just added, or not.
func (c *canceller) maybe(ctx context.Context, order uint64, seq int, id string, slow bool) {
	most := c.slowMost
	if !slow {
		if c.share <= 0 || rand.Float64() >= c.share {
			return
		}
		most = c.most
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if slow {
			c.waitClaimed(ctx, order, id)
		}
		time.Sleep(rand.N(max(most, time.Millisecond)))
		cancelLogged(ctx, c.q, c.log, order, seq, id)
	}()
}

// waitClaimed waits, for 10s at most, until task id is pending: an
// analyser claimed it.
func (c *canceller) waitClaimed(ctx context.Context, order uint64, id string) {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if st, err := c.q.Status(ctx, order, id); err == nil && (st.State == StatePending || st.State == StateRetrying) {
			return
		}
	}
}

func (c *canceller) wait() { c.wg.Wait() }
