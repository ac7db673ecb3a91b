package queue

import (
	"context"
	"errors"
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
		t := time.NewTimer(min(d, pauseRecheck))
		defer t.Stop()
		select {
		case <-t.C:
			return false, nil
		case <-ctx.Done():
			return false, ctx.Err()
		}
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
		// The scheduled set is watched too: a task scheduled to fall due
		// before until ends the wait, to wait for it instead.
		end, err := s.waiter.await2(ctx, "LLEN", s.keys.ready, until, func(n int64) bool { return n > 0 }, "ZCARD", s.keys.sched)
		if !errors.Is(err, errNoTracking) {
			return err == nil && end != awokeTimeout || !due.IsZero() && !time.Now().Before(due), redisErr(s.what("wait on"), err)
		}
	}
	r, err := onPartition(ctx, s.part, s.what("wait on"), func(conn redis.Conn) (any, error) {
		// Moving the right end onto itself changes nothing; it only blocks
		// until there is an element to move.
		return redis.DoContext(conn, ctx, "BLMOVE", s.keys.ready, s.keys.ready, "RIGHT", "RIGHT", blockSeconds(d))
	})
	if err != nil {
		if isTimeout(err) && ctx.Err() == nil {
			return false, nil
		}
		return false, err
	}
	return r != nil, nil
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
	_, err := onPartition(ctx, s.part, s.what("wait for lease of"), func(conn redis.Conn) (any, error) {
		return redis.DoContext(conn, ctx, "BLPOP", s.keys.wake, blockSeconds(d))
	})
	if err != nil && (ctx.Err() != nil || !isTimeout(err)) {
		return err
	}
	return nil
}
