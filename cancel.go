package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Cancelling a task: a scheduled task is removed at once. Any other task
// gets a mark in its queue's cancels hash (task ID -> time asked), which
// costs no scan of the ready list: the claim script reports the marked
// tasks it claims, and the pool finishes them as cancelled without
// running them; the queue's owner reads the marks every cancelPoll and
// cancels the ctx of a marked task that runs, which is then finished as
// cancelled (not retried) unless it returned nil. Either way its OrderID
// goes on with its next task. A mark whose task is neither ready nor
// pending any more (it finished, or never was) is dropped when a claim
// finds the ready list empty.

// cancelPoll is how often a pool reads its queue's cancel marks.
const cancelPoll = 500 * time.Millisecond

// cancelScript cancels a task or marks it to be cancelled.
//
//	KEYS[1] = scheduled set, KEYS[2] = scheduled tasks hash, KEYS[3] = pending hash,
//	KEYS[4] = dead hash, KEYS[5] = cancels hash, KEYS[6] = meta hash
//	ARGV[1] = task ID, ARGV[2] = now ms
//
// Returns {"scheduled", entry} when it removed a scheduled task, {"dead"}
// when the task is a dead letter (not cancelled), {"pending"} when it
// marked a pending task, {"marked"} when it marked a task found nowhere
// else (ready, or unknown).
var cancelScript = newScript("cancel", 6, typeCheck(hashAt(5), hashAt(6))+luaIncr+`
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  local e = redis.call('HGET', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  incr(KEYS[6], 'cancelled', 1)
  return {'scheduled', e or ''}
end
if redis.call('HEXISTS', KEYS[4], ARGV[1]) == 1 then return {'dead'} end
redis.call('HSET', KEYS[5], ARGV[1], ARGV[2])
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return {'pending'} end
return {'marked'}
`)

// Cancel cancels the task id of orderID, and returns where it found it:
//
//   - StateScheduled: the task was scheduled; it is removed and will
//     never run.
//   - StatePending: an analyser holds it. Its owner learns of the
//     cancel when it next reads the marks, within half a second
//     (cancelPoll): a task not started by then never starts; one running then
//     has its ctx cancelled, and unless it then returns nil it is
//     finished as cancelled, not retried. A held task whose turn comes
//     before that read (the task before it in its OrderID ends at once)
//     does start, and is cancelled as a running one: nothing short of a
//     round trip per task start could tell it sooner.
//   - StateUnknown: the task is in no record but the ready list's, or
//     finished, or never was. It is marked: if it is queued, it is
//     finished as cancelled, never run, when an analyser claims it.
//   - StateDead: the task is a dead letter, and Cancel leaves it (replay
//     or purge it instead).
//   - StateDone or StateCancelled: with Config.Retention, the task is
//     known to have finished; nothing is changed.
//
// A cancelled task counts in Stats as Cancelled and, with
// Config.Retention, is kept as StateCancelled in its status. Its OrderID
// goes on with its next task. Cancel costs one round trip (two with
// Retention) whatever the length of the queue, and is safe for concurrent
// use.
func (q *Queue) Cancel(ctx context.Context, orderID uint64, id string) (TaskState, error) {
	if q.closed.Load() {
		return StateUnknown, ErrClosed
	}
	if !validID(id) {
		return StateUnknown, fmt.Errorf("%w: %q is not a task ID", ErrBadConfig, id)
	}
	pi, qi, p, err := q.routeChecked(ctx, orderID)
	if err != nil {
		return StateUnknown, err
	}
	k := newQueueKeys(q.cfg.Prefix, pi, qi)
	if q.cfg.Retention > 0 {
		if st, err := q.Status(ctx, orderID, id); err != nil {
			return StateUnknown, err
		} else if st.State == StateDone || st.State == StateCancelled || st.State == StateDead {
			return st.State, nil
		}
	}
	what := fmt.Sprintf("cancel task %s", id)
	r, err := onPartition(ctx, p, what, func(c redis.Conn) ([]any, error) {
		return redis.Values(cancelScript.DoContext(ctx, c, k.sched, k.later, k.pending, k.dead, k.cancels, k.meta, id, time.Now().UnixMilli()))
	})
	if err != nil {
		return StateUnknown, err
	}
	where, _ := redis.String(r[0], nil)
	switch where {
	case "scheduled":
		if q.cfg.Retention > 0 && len(r) == 2 {
			if e, _ := redis.Bytes(r[1], nil); len(e) > 0 {
				if t, _, err := decodeEntry(e); err == nil {
					rec := historyRecord{state: StateCancelled, added: t.AddedAt, finished: time.Now()}
					err := q.recordHistory(ctx, p, k, id, rec)
					if err != nil {
						return StateScheduled, err
					}
				}
			}
		}
		return StateScheduled, nil
	case "dead":
		return StateDead, nil
	case "pending":
		return StatePending, nil
	case "marked":
		return StateUnknown, nil
	}
	return StateUnknown, redisErr(what, fmt.Errorf("%w: unexpected reply %v", ErrMalformed, r))
}

// validID reports whether id has the form of a task ID.
func validID(id string) bool {
	if len(id) != idLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if !isIDChar(id[i]) {
			return false
		}
	}
	return true
}

// finishCancelledScript finishes pending tasks as cancelled.
//
//	KEYS[1] = pending hash, KEYS[2] = lease, KEYS[3] = meta hash, KEYS[4] = cancels hash,
//	KEYS[5] = retries hash, KEYS[6] = history bucket
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3] = history expiry (ms since the
//	epoch; 0: keep none), ARGV[4...] = task ID, history record, ...
//
// Returns the number finished; a task no longer pending is skipped.
var finishCancelledScript = newScript("finish-cancelled", 6, fenced(2, typeCheck(hashAt(3), hashAt(4), hashAt(5), hashAt(6)), luaIncr+`
local n = 0
for i = 4, #ARGV, 2 do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    n = n + 1
    if ARGV[3] ~= '0' then redis.call('HSET', KEYS[6], ARGV[i], ARGV[i + 1]) end
  end
  redis.call('HDEL', KEYS[4], ARGV[i])
  redis.call('HDEL', KEYS[5], ARGV[i])
end
if n > 0 then
  incr(KEYS[3], 'cancelled', n)
  if ARGV[3] ~= '0' then redis.call('PEXPIREAT', KEYS[6], ARGV[3]) end
end
return n
`))

// finishCancelled finishes t, pending, as cancelled; started is when the
// delivery its cancel ended started (zero: it was not running, and its
// status keeps the start of its last delivery, t.started, if any).
func (s *store) finishCancelled(ctx context.Context, t claimed, started time.Time) error {
	now := time.Now()
	bucket, expiry := s.historyBucket(now)
	rec := historyRecord{state: StateCancelled, added: t.AddedAt, started: started, finished: now, attempts: t.Attempt}
	if started.IsZero() {
		rec.attempts, rec.started = t.Attempt-1, t.started
	}
	_, err := s.script(ctx, "finish cancelled task on", finishCancelledScript,
		s.keys.pending, s.keys.lease, s.keys.meta, s.keys.cancels, s.keys.retries, bucket,
		s.value(), s.ttlMS, expiry, t.field, rec.encode())
	return err
}

// readCancels returns the task IDs marked to be cancelled in the store's
// queue (nil when none).
func (s *store) readCancels(ctx context.Context) (map[string]struct{}, error) {
	ids, err := onPartition(ctx, s.part, s.what("read cancels of"), func(c redis.Conn) ([]string, error) {
		return redis.Strings(doContext(c, ctx, "HKEYS", s.keys.cancels))
	})
	if err != nil || len(ids) == 0 {
		return nil, err
	}
	m := make(map[string]struct{}, len(ids))
	for _, id := range ids {
		m[id] = struct{}{}
	}
	return m, nil
}

// watchCancels reads the queue's cancel marks every cancelPoll until ctx
// ends, for workers to see (isMarked), cancels the ctx of a marked task
// that runs, and hurries marked tasks that wait out a backoff.
func (s *session) watchCancels(ctx context.Context) {
	t := time.NewTicker(cancelPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.halt:
			return
		case <-t.C:
		}
		m, err := s.st.readCancels(ctx)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, context.Canceled) {
				s.cfg.OnError(err)
			}
			continue
		}
		if m == nil {
			s.marks.Store(nil)
			continue
		}
		s.marks.Store(&m)
		s.mapMu.Lock()
		workers := s.workers
		s.mapMu.Unlock()
		sets := map[*lineSet]bool{}
		for _, w := range workers {
			if tc := w.cur.Load(); tc != nil {
				if _, ok := m[tc.id]; ok {
					tc.abort()
				}
			}
			sets[w.set] = true
		}
		for ls := range sets {
			ls.hurry(m)
		}
	}
}

// isMarked reports whether the cancel of task id was asked, as the last
// read of the marks saw it.
func (s *session) isMarked(id string) bool {
	m := s.marks.Load()
	if m == nil {
		return false
	}
	_, ok := (*m)[id]
	return ok
}
