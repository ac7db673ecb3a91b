package queue

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"
)

// The owner's side of a cancel: reading the marks of the tasks it holds,
// telling Cancel it saw them, and finishing those tasks as cancelled.

// finishCancelledScript finishes pending tasks as cancelled, keeping
// their status records with a history expiry (not in a bucket of another
// type, see luaHistory).
//
//	KEYS[1] = pending hash, KEYS[2] = lease, KEYS[3] = meta hash, KEYS[4] = cancels hash,
//	KEYS[5] = retries hash, KEYS[6] = history bucket, KEYS[7] = claim-sequence hash
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3] = history expiry (ms since the
//	epoch; 0: keep none), ARGV[4] = retention ms, ARGV[5...] = claim, place, task ID (see
//	taskRef), packed task ID, status record, ...
//
// Returns the number finished; a task no longer pending is skipped.
var finishCancelledScript = newScript("finish-cancelled", -1, fenced(2, typeCheck(hashAt(1), hashAt(3), hashAt(4), hashAt(5), hashAt(7)),
	"local pendingKey, metaKey, claimsKey = KEYS[1], KEYS[3], KEYS[7]\n"+luaIncr+luaHistory+luaClaimRec+luaTake+"\n"+luaCheckClaims(5, "#ARGV", 5)+`
local keep = ARGV[3] ~= '0' and history(KEYS[6])
local n = 0
for i = 5, #ARGV, 5 do
  if take(i) then
    n = n + 1
    if keep then redis.call('HSET', KEYS[6], ARGV[i + 3], ARGV[i + 4]) end
  end
  redis.call('HDEL', KEYS[4], ARGV[i + 2])
  redis.call('HDEL', KEYS[5], ARGV[i + 2])
end
takesDone()
if n > 0 then
  incr(KEYS[3], 'cancelled', n)
  if keep then
    redis.call('PEXPIREAT', KEYS[6], ARGV[3])
    redis.call('HSET', KEYS[3], 'retention', ARGV[4])
  end
end
return n
`))

// finishCancelled finishes t, pending, as cancelled; started is when the
// delivery its cancel ended started (zero: it was not running, and its
// status keeps the start of its last delivery, t.started, if any).
func (s *store) finishCancelled(ctx context.Context, t claimed, started time.Time) error {
	if err := s.listsFirst(ctx); err != nil {
		return err
	}
	now := time.Now()
	bucket, expiry, start := s.historyBucket(now)
	rec := historyRecord{state: StateCancelled, added: t.AddedAt, started: started, finished: now, attempts: t.Attempt}
	if started.IsZero() {
		rec.attempts, rec.started = t.Attempt-1, t.started
	}
	r := t.ref()
	args := append(r.args([]any{s.value(), s.ttlMS, expiry, s.retention.Milliseconds()}), packID(t.ID), rec.encode(start))
	_, err := s.script(ctx, "finish cancelled task on", finishCancelledScript, s.claimCall(
		[]any{s.keys.pending, s.keys.lease, s.keys.meta, s.keys.cancels, s.keys.retries, bucket, s.keys.claims}, []string{r.record}, false, args...)...)
	return err
}

// readCancels returns the cancel marks of the tasks the pool holds (nil
// when none), and those of them its owner has not said it saw; held is
// how many tasks it holds, heldIDs their IDs. A queue with no more marks
// than that is read whole (HLEN, then HGETALL); one with more has only
// the held tasks looked up (HMGET, scriptChunk IDs a command, pipelined),
// so that a backlog of marks (a bulk cancel of queued tasks) costs each
// read no more than what the pool holds. Two round trips when the queue
// has marks, one when it has none.
func (s *store) readCancels(ctx context.Context, held int64, heldIDs func() []string) (marks map[string]struct{}, unseen []any, err error) {
	type read struct {
		marks  map[string]struct{}
		unseen []any
	}
	r, err := onPartition(ctx, s.part, s.what("read cancels of"), func(c redis.Conn) (read, error) {
		var r read
		add := func(id, v string) {
			if r.marks == nil {
				r.marks = map[string]struct{}{}
			}
			r.marks[id] = struct{}{}
			if v != cancelSeen {
				r.unseen = append(r.unseen, id)
			}
		}
		n, err := redis.Int64(doContext(c, ctx, "HLEN", s.keys.cancels))
		if err != nil || n == 0 {
			return r, err
		}
		if n <= held {
			kv, err := redis.Strings(doContext(c, ctx, "HGETALL", s.keys.cancels))
			for i := 0; i+1 < len(kv); i += 2 {
				add(kv[i], kv[i+1])
			}
			return r, err
		}
		ids := heldIDs()
		sent := 0
		for i := 0; i < len(ids); i += scriptChunk {
			args := []any{s.keys.cancels}
			for _, id := range ids[i:min(i+scriptChunk, len(ids))] {
				args = append(args, id)
			}
			if err := c.Send("HMGET", args...); err != nil {
				return r, err
			}
			sent++
		}
		replies, err := receiveN(ctx, c, sent, sent)
		if err != nil {
			return read{}, err
		}
		for i, reply := range replies {
			vs, err := redis.Strings(reply, nil)
			if err != nil {
				return read{}, err
			}
			for j, v := range vs {
				if v != "" { // a mark's value is never empty
					add(ids[i*scriptChunk+j], v)
				}
			}
		}
		return r, nil
	})
	return r.marks, r.unseen, err
}

// cancelSeen is the value of a cancel mark once the queue's owner has it
// in hand: no task it holds starts any more without seeing it.
const cancelSeen = "seen"

// seenScript tells Cancel that the queue's owner saw the cancel marks
// ARGV (those still there).
//
//	KEYS[1] = cancels hash
var seenScript = newScript("seen", 1, `
for i = 1, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then redis.call('HSET', KEYS[1], ARGV[i], '$cancelSeen') end
end
return #ARGV
`)

// sawCancels tells Cancel that the owner has the marks ids in hand.
func (s *store) sawCancels(ctx context.Context, ids []any) error {
	_, err := s.script(ctx, "answer cancels of", seenScript, append([]any{s.keys.cancels}, ids...)...)
	return err
}

// watchCancels reads the cancel marks of the tasks the pool holds every
// cancelPoll until ctx ends or no worker runs any more (s.idle: through
// a graceful stop's ShutdownTimeout too), while it holds some, for workers to see
// (isMarked), cancels the ctx of a marked task that runs, wakes a worker
// that waits for the rate limit to start a marked task, and hurries marked tasks
// that wait out a backoff.
func (s *session) watchCancels(ctx context.Context) {
	t := time.NewTicker(cancelPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.idle:
			return
		case <-t.C:
		}
		if s.held.Load() == 0 {
			// Nothing in hand: a mark of a task claimed later comes
			// with its claim. An idle pool reads nothing.
			s.marks.Store(nil)
			continue
		}
		m, unseen, err := s.st.readCancels(ctx, s.held.Load(), s.heldIDs)
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
		// The workers see the marks, and a marked task that runs has its
		// ctx ended, before Cancel is told: from then on no held task
		// starts without seeing its own.
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
			if id := w.held.Load(); id != nil {
				if _, ok := m[*id]; ok {
					notify(w.wake) // it waits for the rate limit to start a cancelled task
				}
			}
			sets[w.set] = true
		}
		now := time.Now()
		for ls := range sets {
			ls.hurry(now, func(o *orderLine) bool { _, ok := m[o.tasks[o.head].ID]; return ok })
		}
		if len(unseen) > 0 {
			if err := s.st.sawCancels(ctx, unseen); err != nil && ctx.Err() == nil {
				s.cfg.OnError(err)
			}
		}
	}
}

// heldIDs returns the IDs of the tasks the workers' sets hold: running,
// waiting to start, or waiting out a backoff. (Tasks claimed and not yet
// dispatched are missed; the claim reported their marks, and the next
// read sees them.)
func (s *session) heldIDs() []string {
	s.mapMu.Lock()
	workers := s.workers
	s.mapMu.Unlock()
	ids := make([]string, 0, s.held.Load())
	sets := map[*lineSet]bool{}
	for _, w := range workers {
		if !sets[w.set] {
			sets[w.set] = true
			ids = w.set.appendIDs(ids)
		}
	}
	return ids
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

// hurry makes the delayed OrderIDs that match due at now: those whose
// next task's cancel was asked, finished as cancelled without waiting
// out their backoff, or those set aside for the record gate once it frees.
func (ls *lineSet) hurry(now time.Time, match func(*orderLine) bool) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	hurried := false
	for _, o := range ls.delayed {
		if o.notBefore.After(now) && match(o) {
			o.notBefore, hurried = now, true
		}
	}
	if hurried {
		switch {
		case ls.timed != nil:
			ls.wake(ls.timed)
		case len(ls.idle) > 0:
			ls.wakeOne()
		}
	}
}

// appendIDs appends to dst the IDs of the tasks the set holds: running,
// waiting to start, or waiting out a backoff.
func (ls *lineSet) appendIDs(dst []string) []string {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for _, o := range ls.orders {
		for _, t := range o.tasks[o.head:] {
			dst = append(dst, t.ID)
		}
	}
	return dst
}

// cancelAsked returns which of the tasks ids have a cancel mark: one
// round trip per scriptChunk IDs. A cancels hash of another type holds
// none (as the claim script reads it).
func (s *store) cancelAsked(ctx context.Context, ids []string) (map[string]bool, error) {
	asked := map[string]bool{}
	for len(ids) > 0 {
		n := min(len(ids), scriptChunk)
		args := make([]any, 0, n+1)
		args = append(args, s.keys.cancels)
		for _, id := range ids[:n] {
			args = append(args, id)
		}
		vs, err := onPartition(ctx, s.part, s.what("read cancels of"), func(c redis.Conn) ([]any, error) {
			vs, err := redis.Values(doContext(c, ctx, "HMGET", args...))
			if reply, ok := err.(redis.Error); ok && strings.HasPrefix(string(reply), "WRONGTYPE") {
				return nil, nil
			}
			return vs, err
		})
		if err != nil {
			return nil, err
		}
		for i, v := range vs {
			if v != nil {
				asked[ids[i]] = true
			}
		}
		ids = ids[n:]
	}
	return asked, nil
}
