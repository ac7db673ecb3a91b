package queue

import (
	"context"
	"errors"
	"math"
	"time"

	"github.com/gomodule/redigo/redis"
)

// A store's idle waits: a pool's wait for work and a standby's wait for
// the lease. With the partition's waiter (waiter.go) they cost a read on
// its shared connection; without it, or when the server refuses
// tracking, each blocks a connection of its own.

// idleWaitMax bounds a pool's wait for work through the waiter.
const idleWaitMax = time.Minute

// wait blocks until the ready list may have a task, or for about d,
// without taking anything, and reports whether a task may be ready.
// Through the waiter it waits until the list changes or a read shows a
// task: the waiter's reads every second (waiterRecheck) stand for the
// caller's own look every d, and end the wait when one goes unanswered;
// idleWaitMax bounds it all the same.
func (s *store) wait(ctx context.Context, d time.Duration) (bool, error) {
	if s.paused.Load() {
		// The last claim found the queue paused: its ready tasks are not
		// to be claimed, and reporting them would have the caller claim
		// again at once. Look again after pauseRecheck, as a pool does.
		return false, sleep(ctx, min(d, pauseRecheck))
	}
	// A scheduled task falls due: the wait ends then, when the next claim
	// moves it to the ready list.
	due := time.Time{}
	if next := s.nextDue.Load(); next >= 0 {
		due = time.UnixMilli(next)
		if left := time.Until(due); left <= 0 {
			return true, nil
		} else if left < d {
			d = left
		}
	}
	if s.waiter != nil {
		until := time.Now().Add(max(d, idleWaitMax))
		if !due.IsZero() && due.Before(until) {
			until = due
		}
		if ready, err := s.waitTracked(ctx, until, due); !errors.Is(err, errNoTracking) {
			return ready, redisErr(s.what("wait on"), err)
		}
	}
	wctx, cancel := blockCtx(ctx, d, replyGrace)
	defer cancel()
	r, err := onPartition(wctx, s.part, s.what("wait on"), func(conn redis.Conn) (any, error) {
		// Moving the right end onto itself changes nothing; it only blocks
		// until there is an element to move.
		return doContext(conn, wctx, "BLMOVE", s.keys.ready, s.keys.ready, "RIGHT", "RIGHT", blockSeconds(d))
	})
	if err != nil {
		if blockOver(ctx, wctx, err) {
			return false, nil
		}
		return false, err
	}
	return r != nil, nil
}

// schedSettle is how long a pool's wait, woken by a change of the
// scheduled set that brings no task due sooner, lets further changes of
// the set settle (it only notes them, and reads the set again at the
// end) before it watches the set again: a producer scheduling a stream
// of tasks far ahead costs the idle owner a read every schedSettle, not
// one per task.
const schedSettle = 50 * time.Millisecond

// waitTracked is wait through the waiter, until until (the due time due,
// when not zero, or later). The scheduled set is watched too: a task
// scheduled to fall due before until ends the wait, to wait for it
// instead. A change of the set wakes the wait, which then reads the set's
// head (its size and first due time) and goes on waiting unless a task
// falls due sooner; the next watch of the set ends at once when its size
// is not the one read, so that a task scheduled between the read and the
// watch is not missed. A change during the settle (schedSettle) has the
// set read again after it: a task rescheduled sooner then (a Cancel and
// an add, which leave the size as it was) is not missed. (A task
// scheduled sooner while another leaves the set, in the moment between
// a read and the next watch, is: it is found at the next change, or at
// until.) It returns errNoTracking when the caller must wait on its own.
func (s *store) waitTracked(ctx context.Context, until, due time.Time) (bool, error) {
	hasTask := func(n int64) bool { return n > 0 }
	sizeNot := func(card int64) func(int64) bool {
		return func(n int64) bool { return card >= 0 && n != card }
	}
	changed := false // the set changed during the settle: read it again
	for {
		if !changed {
			end, err := s.waiter.await2(ctx, "LLEN", s.keys.ready, until, hasTask,
				"ZCARD", s.keys.sched, sizeNot(s.schedCard.Load()))
			if err != nil || end != awokeSecond {
				return err == nil && end != awokeTimeout || !due.IsZero() && !time.Now().Before(due), err
			}
		}
		next, err := s.readSchedHead(ctx)
		if err != nil {
			return false, err
		}
		if next >= 0 {
			at := time.UnixMilli(next)
			if !time.Now().Before(at) {
				return true, nil
			}
			if at.Before(until) {
				until, due = at, at
			}
		}
		// Let a stream of changes settle: note the first, then watch the
		// ready list alone.
		settled := minTime(until, time.Now().Add(schedSettle))
		end, err := s.waiter.await2(ctx, "LLEN", s.keys.ready, settled, hasTask,
			"ZCARD", s.keys.sched, sizeNot(s.schedCard.Load()))
		changed = end == awokeSecond
		if changed && err == nil {
			end, err = s.waiter.await(ctx, "LLEN", s.keys.ready, settled, hasTask)
		}
		if err != nil || end != awokeTimeout {
			return err == nil, err
		}
		if !time.Now().Before(until) {
			return !due.IsZero(), nil
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// readSchedHead reads the number of scheduled tasks and the due time of
// the first (its size first, so that a task scheduled between the two
// reads is in the second, and makes the next watch of the size end at
// once), records them, and returns the due time (ms; -1: none). Costs
// one round trip.
func (s *store) readSchedHead(ctx context.Context) (int64, error) {
	type head struct{ next, n int64 }
	h, err := onPartition(ctx, s.part, s.what("read scheduled tasks of"), func(c redis.Conn) (head, error) {
		c.Send("ZCARD", s.keys.sched)
		c.Send("ZRANGE", s.keys.sched, 0, 0, "WITHSCORES")
		r, err := receiveN(ctx, c, 2, 2)
		if err != nil {
			return head{}, err
		}
		h := head{next: -1}
		h.n, _ = redis.Int64(r[0], nil)
		if z, _ := redis.Values(r[1], nil); len(z) == 2 {
			if ms, err := redis.Float64(z[1], nil); err == nil {
				h.next = int64(math.Ceil(ms)) // as the claim's nextDue()
			}
		}
		return h, nil
	})
	if err != nil {
		return -1, err
	}
	s.setSchedHead(h.next, h.n)
	return h.next, nil
}

// setSchedHead records the due time (ms; -1: none) of the next scheduled
// task and the number of scheduled tasks (-1: unknown).
func (s *store) setSchedHead(next, n int64) {
	s.nextDue.Store(next)
	s.schedCard.Store(n)
}

// waitLease blocks until the lease is released or expires, or until
// passes. The waiter wakes it when the lease key changes: a release
// deletes it, a renewal (every third of the TTL) only extends it and
// costs a read, and an expiry may reach it up to ~100ms late on an idle
// server (Redis expires an untouched key in a background cycle), so
// until, the lease's time left, stays the bound. Without the waiter it
// waits for the wake-up signal that a release pushes.
func (s *store) waitLease(ctx context.Context, until time.Time) error {
	for s.waiter != nil {
		end, err := s.waiter.await(ctx, "PTTL", s.keys.lease, until, func(ms int64) bool { return ms == -2 }) // -2: no key
		if errors.Is(err, errNoTracking) {
			break
		}
		if err != nil || end != awokeChanged {
			return redisErr(s.what("wait for lease of"), err)
		}
	}
	d := time.Until(until)
	if d <= 0 {
		return nil
	}
	wctx, cancel := blockCtx(ctx, d, replyGrace)
	defer cancel()
	_, err := onPartition(wctx, s.part, s.what("wait for lease of"), func(conn redis.Conn) (any, error) {
		return doContext(conn, wctx, "BLPOP", s.keys.wake, blockSeconds(d))
	})
	if err != nil && !blockOver(ctx, wctx, err) {
		return err
	}
	return nil
}
