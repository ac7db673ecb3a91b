package queue

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
)

// store is the Redis side of one queue for the process that owns (or waits
// to own) its lease: the queue's keys, the lease value, and every script
// that changes pending work. Every Redis write of a task's life after
// AddTask is made here (claim, ack, a recorded delivery or failure, dead
// letters, hand-backs and recovery) or in lease.go. The pool and the
// Consumer only decide when to call it. Its methods are safe for
// concurrent use: the lease value is read atomically.
type store struct {
	part        *partition
	pi, qi      int
	keys        queueKeys
	owner       string
	ttl         time.Duration
	ttlMS       int64
	maxAttempts int
	retention   time.Duration          // Config.Retention
	lease       atomic.Pointer[string] // the lease value, once acquired
	leaseLock   chan struct{}          // one slot: held by renew and refence (lockLease)
	refencing   string                 // the nonce of a refence not answered yet (under leaseLock)
	unanswered  string                 // the nonce of acquisition tries whose reply was lost, until one is answered; "" when none
	acquired    time.Time              // when the try that took the lease was sent: Redis's TTL runs from then at the latest
	entrySize   atomic.Int64           // the mean entry size of the last claim (at first, MaxPayload)
	nextDue     atomic.Int64           // the due time (ms) of the next scheduled task, as the last empty claim (or idle wait) saw it; -1: none
	schedCard   atomic.Int64           // the number of scheduled tasks, as nextDue's read saw it; -1: unknown
	paused      atomic.Bool            // the last claim found the queue paused
	waiter      *waiter                // the partition's shared waiter, for a pool's idle waits (nil: own connections)
}

// newStore returns the store of analyser's queue, with the layout of its
// partition verified (recorded on first use).
func (q *Queue) newStore(ctx context.Context, analyser int, ttl time.Duration, maxAttempts int, owner string) (*store, error) {
	if q.closed.Load() {
		return nil, ErrClosed
	}
	pi, qi, err := q.Layout().Serves(analyser)
	if err != nil {
		return nil, err
	}
	ttl, maxAttempts, owner, err = leaseDefaults(ttl, maxAttempts, owner)
	if err != nil {
		return nil, err
	}
	if err := q.checkLayout(ctx, q.parts[pi]); err != nil {
		return nil, err
	}
	s := &store{
		part: q.parts[pi], pi: pi, qi: qi, keys: newQueueKeys(q.cfg.Prefix, pi, qi),
		owner: owner, ttl: ttl, ttlMS: ttl.Milliseconds(), maxAttempts: maxAttempts,
		leaseLock: make(chan struct{}, 1), retention: q.cfg.Retention,
	}
	s.entrySize.Store(int64(entryHeader + q.cfg.MaxPayload))
	s.setSchedHead(-1, -1)
	return s, nil
}

func (s *store) what(op string) string {
	return fmt.Sprintf("%s partition %d queue %d", op, s.pi, s.qi)
}

// script runs one script on the store's partition.
func (s *store) script(ctx context.Context, op string, sc *redis.Script, keysAndArgs ...any) (any, error) {
	return onPartition(ctx, s.part, s.what(op), func(conn redis.Conn) (any, error) { return sc.DoContext(ctx, conn, keysAndArgs...) })
}

// ackScript deletes finished tasks from the pending hash, and the
// claim-sequence records of claims none of whose tasks is pending any more;
// with a history expiry, it keeps the status records of the tasks that
// were pending (history.go; an empty record keeps none; none in a bucket
// of another type, see luaHistory). The cancel mark of a task it finishes
// goes too (its cancel came too late, and the task is done, not
// cancelled); a cancels hash of another type is left alone, as the claim
// script leaves it.
//
//	KEYS[1] = pending hash, KEYS[2] = lease, KEYS[3] = meta hash, KEYS[4] = claim-sequence hash,
//	KEYS[5] = retries hash, KEYS[6] = history bucket, KEYS[7] = cancels hash
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3] = number of task IDs k,
//	ARGV[4] = history expiry (ms since the epoch; 0: keep none), ARGV[5] = retention ms,
//	ARGV[6 .. 5+k] = task IDs, then, with a history expiry, k pairs of packed task ID
//	and status record ("" for none; one is written only for a task that was pending),
//	then claim-sequence records (claim firsts)
//
// Returns the number of pending records deleted (also added to processed).
// With a history expiry, it records the retention in the meta hash, for
// readers whose own Config does not say it (see Status).
var ackScript = newScript("ack", 7, fenced(2, typeCheck(hashAt(3), hashAt(4), hashAt(5)), luaIncr+luaHistory+`
local n, k = 0, tonumber(ARGV[3])
local last = 5 + k
if k > 0 and redis.call('EXISTS', KEYS[7]) == 1 then
  for i = 6, last do
    if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then redis.pcall('HDEL', KEYS[7], ARGV[i]) end
  end
end
if ARGV[4] == '0' or not history(KEYS[6]) then
  for i = 6, last, $scriptChunk do
    n = n + redis.call('HDEL', KEYS[1], unpack(ARGV, i, math.min(i + $scriptChunk - 1, last)))
  end
else
  -- A status record for each task that was pending (and has one).
  for i = 6, last do
    if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
      n = n + 1
      local j = last + 2 * (i - 6) + 1
      if ARGV[j + 1] ~= '' then redis.call('HSET', KEYS[6], ARGV[j], ARGV[j + 1]) end
    end
  end
  if n > 0 then
    redis.call('PEXPIREAT', KEYS[6], ARGV[4])
    redis.call('HSET', KEYS[3], 'retention', ARGV[5])
  end
end
if k > 0 and redis.call('EXISTS', KEYS[5]) == 1 then
  for i = 6, last, $scriptChunk do
    redis.call('HDEL', KEYS[5], unpack(ARGV, i, math.min(i + $scriptChunk - 1, last)))
  end
end
if ARGV[4] ~= '0' then last = last + 2 * k end
for i = last + 1, #ARGV, $scriptChunk do
  redis.call('HDEL', KEYS[4], unpack(ARGV, i, math.min(i + $scriptChunk - 1, #ARGV)))
end
if n > 0 then incr(KEYS[3], 'processed', n) end
return n
`))

// retryScript replaces a pending record with ARGV[4]: the task encoded
// with the deliveries it has had, counting the current one (one about to
// start, or the retry that follows a failure), behind a '+' that marks the
// count as accounted, so that recovery after a crash does not count the
// current delivery again.
//
//	KEYS[1] = pending hash, KEYS[2] = lease, KEYS[3] = meta hash
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3] = task ID, ARGV[4] = "+" encoded task
//
// Returns 1, or 0 when the task is no longer pending.
var retryScript = newScript("retry", 3, fenced(2, "", `
if redis.call('HEXISTS', KEYS[1], ARGV[3]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
return 1
`))

// buryScript moves pending tasks to the dead-letter store, and drops their
// retry records. The cancel mark of a task it moves goes too: Cancel
// leaves dead letters alone, and a replay runs the task again (a cancels
// hash of another type is left alone, as the claim script leaves it).
//
//	KEYS[1] = pending hash, KEYS[2] = dead hash, KEYS[3] = lease, KEYS[4] = meta hash,
//	KEYS[5] = retries hash, KEYS[6] = cancels hash
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3...] = task ID, dead record, ...
//
// Returns the number moved (also added to failed); a task no longer
// pending is skipped. A record never replaces another one under the same
// field (garbage written into a pending hash under a dead task's ID, say):
// a quarantined malformed record (0 attempts: its second byte is 0) takes
// the first free field of "<field>#2", "<field>#3", ..., and a task's
// record moves what was under its ID there.
var buryScript = newScript("bury", 6, fenced(3, typeCheck(hashAt(2), hashAt(4), hashAt(5)), luaIncr+`
local n = 0
for i = 3, #ARGV, 2 do
  redis.call('HDEL', KEYS[5], ARGV[i])
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.pcall('HDEL', KEYS[6], ARGV[i])
    local f, rec = ARGV[i], ARGV[i + 1]
    local old = redis.call('HGET', KEYS[2], f)
    if old then
      local k, g = 2, f .. '#2'
      while redis.call('HEXISTS', KEYS[2], g) == 1 do
        k = k + 1
        g = f .. '#' .. k
      end
      if string.byte(rec, 2) == 0 then f = g else redis.call('HSET', KEYS[2], g, old) end
    end
    redis.call('HSET', KEYS[2], f, rec)
    n = n + 1
  end
end
if n > 0 then incr(KEYS[4], 'failed', n) end
return n
`))

// requeueScript puts pending tasks back at the consuming (right) end of the
// ready list: the last one pushed is the next one claimed.
//
//	KEYS[1] = ready list, KEYS[2] = pending hash, KEYS[3] = lease, KEYS[4] = meta hash
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3] = 1 to count as redeliveries,
//	ARGV[4...] = task ID, encoded task, ... in push order
//
// Returns the number pushed; a task no longer pending is skipped.
var requeueScript = newScript("requeue", 4, fenced(3, typeCheck(listAt(1), hashAt(4)), luaIncr+`
local n = 0
for i = 4, #ARGV, 2 do
  if redis.call('HDEL', KEYS[2], ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[1], ARGV[i + 1])
    n = n + 1
  end
end
if n > 0 and ARGV[3] == '1' then incr(KEYS[4], 'redelivered', n) end
return n
`))

// ack deletes the pending records of ids, maxClaim to a round trip, and
// with the last of them the claim-sequence records named by claims. With
// a retention, recs holds the status records of ids (history.go); a nil
// recs keeps none.
func (s *store) ack(ctx context.Context, ids []string, recs []historyRecord, claims []string) (int, error) {
	done := 0
	keep := s.retention > 0 && len(recs) == len(ids) && len(ids) > 0
	for len(ids) > 0 || len(claims) > 0 {
		n := min(len(ids), maxClaim)
		bucket, expiry, start := s.historyBucket(time.Now())
		if !keep {
			expiry = 0
		}
		args := make([]any, 0, 12+2*n+len(claims))
		args = append(args, s.keys.pending, s.keys.lease, s.keys.meta, s.keys.claims, s.keys.retries, bucket, s.keys.cancels,
			s.value(), s.ttlMS, n, expiry, s.retention.Milliseconds())
		for _, id := range ids[:n] {
			args = append(args, id)
		}
		if expiry != 0 {
			for i, r := range recs[:n] {
				rec := ""
				if !r.finished.IsZero() {
					rec = r.encode(start)
				}
				args = append(args, packID(ids[i]), rec)
			}
			recs = recs[n:]
		}
		ids = ids[n:]
		if len(ids) == 0 {
			for _, c := range claims {
				args = append(args, c)
			}
			claims = nil
		}
		k, err := redis.Int(s.script(ctx, "ack on", ackScript, args...))
		done += k
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// dropClaims deletes the claim-sequence records of claims finished by a
// call that could not take them along.
func (s *store) dropClaims(ctx context.Context, claims []string) error {
	_, err := s.ack(ctx, nil, nil, claims)
	return err
}

// recordDelivery records in t's pending record that delivery t.Attempt is
// made, so that recovery after a crash counts it, once. Recovery counts an
// interrupted delivery only with this record, so that tasks claimed with
// one that crashes its owner, and never started, lose no attempt: the
// pool records the delivery of every task delivered before and of every
// task recovery marked (see entryRecovered), so that a task that crashes
// its owner is counted from its second crash on. Costs one round trip.
func (s *store) recordDelivery(ctx context.Context, t claimed) error {
	_, err := s.script(ctx, "record delivery on", retryScript, s.keys.pending, s.keys.lease, s.keys.meta,
		s.value(), s.ttlMS, t.field, accountedRecord(t.Task, t.Attempt))
	return err
}

// accountedRecord is the pending record of t after a recorded delivery:
// the entry with deliveries as its count (not marked recovered: the
// delivery is recorded), behind a '+'.
func accountedRecord(t Task, deliveries int) []byte {
	h, _ := headersSize(t.Headers) // a claimed task's headers are within the limits
	buf := make([]byte, 1, 1+entryCap(h, len(t.Payload)))
	buf[0] = accountedMark
	return appendEntry(buf, 0, t.ID, t.OrderID, t.AddedAt.UnixMilli(), deliveries, t.Headers, t.Payload)
}

// accountedMark starts a pending record whose count includes the current
// delivery; an entry starts with its flags byte (see isEntryStart).
const accountedMark = '+'

// fail records a failed delivery of t (as claimed, with its Attempt). When
// t has had maxAttempts deliveries it moves to the dead-letter store with
// cause and fail reports dead; otherwise the failure, and the retry that
// follows (at retryAt; zero: when its holder says), are recorded in the
// pending record and in the retries hash (for Status), so that a crash
// counts them. Costs one round trip.
func (s *store) fail(ctx context.Context, t Task, cause error, retryAt time.Time) (dead bool, err error) {
	msg := "<nil>"
	if cause != nil {
		msg = cause.Error()
	}
	if t.Attempt >= s.maxAttempts {
		entry := encodeTask(t, t.Attempt)
		return true, s.bury(ctx, []any{t.ID, encodeDead(entry, t.Attempt, msg)})
	}
	_, err = s.script(ctx, "record failure on", failScript, s.keys.pending, s.keys.lease, s.keys.meta, s.keys.retries,
		s.value(), s.ttlMS, t.ID, accountedRecord(t, t.Attempt+1), retryRecord(time.Now(), retryAt, msg))
	return false, err
}

// failScript is retryScript that also records the failure in the retries
// hash (KEYS[4], under the task ID, ARGV[5]).
var failScript = newScript("fail", 4, fenced(2, typeCheck(hashAt(4)), `
if redis.call('HEXISTS', KEYS[1], ARGV[3]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
redis.call('HSET', KEYS[4], ARGV[3], ARGV[5])
return 1
`))

// bury moves pending records to the dead-letter store: args are field,
// dead record pairs.
func (s *store) bury(ctx context.Context, args []any) error {
	for len(args) > 0 {
		n := buryChunk(args)
		a := append([]any{s.keys.pending, s.keys.dead, s.keys.lease, s.keys.meta, s.keys.retries, s.keys.cancels, s.value(), s.ttlMS}, args[:n]...)
		if _, err := s.script(ctx, "dead-letter on", buryScript, a...); err != nil {
			return err
		}
		args = args[n:]
	}
	return nil
}

// requeue pushes tasks back at the consuming end, first given first
// claimed, each with t.Attempt as its delivery count.
func (s *store) requeue(ctx context.Context, tasks []claimed, redelivery bool) error {
	flag := "0"
	if redelivery {
		flag = "1"
	}
	// The last pushed is claimed first: push in reverse, in chunks that
	// keep that order across calls. Should a call fail after earlier ones
	// went through, the tasks left pending are the first ones, and
	// recovery puts them back ahead of those pushed: the order holds.
	for end := len(tasks); end > 0; {
		start := requeueChunk(tasks, end)
		args := []any{s.keys.ready, s.keys.pending, s.keys.lease, s.keys.meta, s.value(), s.ttlMS, flag}
		for i := end - 1; i >= start; i-- {
			t := tasks[i]
			args = append(args, t.field, encodeClaimed(t))
		}
		if _, err := s.script(ctx, "requeue on", requeueScript, args...); err != nil {
			return err
		}
		end = start
	}
	return nil
}
