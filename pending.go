package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
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
	entrySize   atomic.Int64           // the mean entry size of the last claim (at first, MaxPayload)
	nextDue     atomic.Int64           // the due time (ms) of the next scheduled task, as the last empty claim saw it; -1: none
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
	s.nextDue.Store(-1)
	return s, nil
}

func (s *store) what(op string) string {
	return fmt.Sprintf("%s partition %d queue %d", op, s.pi, s.qi)
}

// script runs one script on the store's partition.
func (s *store) script(ctx context.Context, op string, sc *redis.Script, keysAndArgs ...any) (any, error) {
	return onPartition(ctx, s.part, s.what(op), func(conn redis.Conn) (any, error) { return sc.DoContext(ctx, conn, keysAndArgs...) })
}

// claimScript moves up to ARGV[3] tasks, and while their entries total at
// most ARGV[4] bytes (at least one task all the same), from the consuming
// (right) end of the ready list into the pending hash, and records their
// claim sequence. It pops ARGV[5] entries at first, then twice as many
// each time, so that a claim of small entries is one RPOP and one of large
// entries copies little more than its budget; an entry over the budget
// goes back where it was, with those popped after it.
//
// Before it claims, it moves the scheduled tasks due by ARGV[7] whose turn
// has come to the consuming end of the ready list, and it claims no ready
// task added after the due time of a due task that waits (see
// luaScheduled): a scheduled task joins its OrderID's sequence at its due
// time, and the move is fenced, once and atomic. A paused queue (meta
// field paused) moves and claims nothing.
//
//	KEYS[1] = ready list, KEYS[2] = pending hash, KEYS[3] = lease, KEYS[4] = meta hash,
//	KEYS[5] = claim-sequence hash, KEYS[6] = scheduled set, KEYS[7] = scheduled tasks hash,
//	KEYS[8] = cancels hash
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3] = most tasks to claim,
//	ARGV[4] = most bytes to claim, ARGV[5] = entries to pop at first,
//	ARGV[6] = 1 when even the first task must fit the bytes (the caller holds others),
//	ARGV[7] = now, ms since the epoch
//
// Returns {entry..., k cancelled indexes..., k, first}: the i-th entry
// (1-based) has claim seq first+i and pending field pendingField(entry,
// first+i), and the k indexes name the entries whose cancel was asked
// (their tasks are finished as cancelled, never run); {0, next} when the
// ready list is empty, next being the due time of the next scheduled
// task (-1: none); {-1} when the first task does not fit and must; {-2,
// next} when the queue is paused (and not empty). Each pending record holds the entry as
// it was popped, under its task ID; the claim's sequence goes into one
// record, under first, holding the n fields' first 20 bytes back to back
// (a malformed entry's as seqFiller). Building a "<seq>:<entry>" string
// per task instead cost about 40 % more Redis time per claim. (The loop
// indexes its tables rather than asking for their length, and first goes
// last rather than shifting the reply.)
var claimScript = newScript("claim", 8, fenced(3, typeCheck(hashAt(2), hashAt(4), hashAt(5))+`
local m4 = redis.call('HMGET', KEYS[4], 'seq', 'paused')
local last = m4[1]
if last and not (string.match(last, '^%d+$') and #last <= 15) then
  return redis.error_reply('$badValueReply ' .. KEYS[4] .. ' field seq holds ' .. string.format('%q', string.sub(last, 1, 40)) .. ', not a claim count')
end
`, luaScheduled+`local want, budget, ask = tonumber(ARGV[3]), tonumber(ARGV[4]), math.min(tonumber(ARGV[5]), tonumber(ARGV[3]))
local strict = ARGV[6] == '1'
local items = redis.call('RPOP', KEYS[1], ask)
if not items then
  if redis.call('EXISTS', KEYS[8]) == 1 then
    -- Nothing is ready: a cancel mark whose task is not pending either
    -- names a task that is nowhere any more.
    for _, id in ipairs(redis.call('HKEYS', KEYS[8])) do
      if redis.call('HEXISTS', KEYS[2], id) == 0 then redis.call('HDEL', KEYS[8], id) end
    end
  end
  return {0, nextDue()}
end
local sub, byte = string.sub, string.byte
local args, seq, bad = {}, {}, nil
local n, bytes, got = 0, 0, items
while true do
  local m = #got
  for i = 1, m do
    local e = got[i]
    local size = #e
    if bytes + size > budget and (n > 0 or strict) or waiting and n > 0 and (addedAt(e) or 0) > waiting then
      for j = m, i, -1 do
        redis.call('RPUSH', KEYS[1], got[j])
        if got == items then items[j] = nil end
      end
      want = n
      break
    end
    n, bytes = n + 1, bytes + size
    if got ~= items then items[n] = e end
    local v = byte(e, 1)
    if size >= $entryHeader and v <= $entryFlags and v % 2 == $entryTask then
      local f = sub(e, 2, $entryHeader)
      seq[n] = f
      args[2 * n - 1] = f
    else
      seq[n] = '$seqFiller'
      bad = bad or {}
      bad[#bad + 1] = n
    end
    args[2 * n] = e
  end
  if n >= want or m < ask then break end
  ask = math.min(ask * 2, want - n)
  got = redis.call('RPOP', KEYS[1], ask)
  if not got then break end
end
if n == 0 then return {-1} end
local first = redis.call('HINCRBY', KEYS[4], 'seq', n) - n
if bad then
  for _, i in ipairs(bad) do args[2 * i - 1] = string.format('bad:%d', first + i) end
end
for i = 1, 2 * n, $scriptChunk do
  redis.call('HSET', KEYS[2], unpack(args, i, math.min(i + $scriptChunk - 1, 2 * n)))
end
redis.call('HSET', KEYS[5], string.format('%d', first), table.concat(seq))
local k = 0
if redis.call('EXISTS', KEYS[8]) == 1 then
  for i = 1, n do
    if redis.pcall('HEXISTS', KEYS[8], seq[i]) == 1 then
      k = k + 1
      items[n + k] = i
    end
  end
end
items[n + k + 1] = k
items[n + k + 2] = first
return items
`))

// seqFiller stands in a claim-sequence record for a malformed entry, which
// has no task ID: 20 bytes no task ID has.
const seqFiller = "--------------------"

// ackScript deletes finished tasks from the pending hash, and the
// claim-sequence records of claims none of whose tasks is pending any more;
// with a history expiry, it keeps the status records of the tasks that
// were pending (history.go; an empty record keeps none).
//
//	KEYS[1] = pending hash, KEYS[2] = lease, KEYS[3] = meta hash, KEYS[4] = claim-sequence hash,
//	KEYS[5] = retries hash, KEYS[6] = history bucket
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3] = number of task IDs k,
//	ARGV[4] = history expiry (ms since the epoch; 0: keep none), ARGV[5] = retention ms,
//	ARGV[6 .. 5+k] = task IDs, then, with a history expiry, k pairs of packed task ID
//	and status record ("" for none; one is written only for a task that was pending),
//	then claim-sequence records (claim firsts)
//
// Returns the number of pending records deleted (also added to processed).
// With a history expiry, it records the retention in the meta hash, for
// readers whose own Config does not say it (see Status).
var ackScript = newScript("ack", 6, fenced(2, typeCheck(hashAt(3), hashAt(4), hashAt(5), hashAt(6)), luaIncr+`
local n, k = 0, tonumber(ARGV[3])
local last = 5 + k
if ARGV[4] == '0' then
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
// retry records.
//
//	KEYS[1] = pending hash, KEYS[2] = dead hash, KEYS[3] = lease, KEYS[4] = meta hash,
//	KEYS[5] = retries hash
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3...] = task ID, dead record, ...
//
// Returns the number moved (also added to failed); a task no longer
// pending is skipped. A record never replaces another one under the same
// field (garbage written into a pending hash under a dead task's ID, say):
// a quarantined malformed record (0 attempts: its second byte is 0) takes
// the first free field of "<field>#2", "<field>#3", ..., and a task's
// record moves what was under its ID there.
var buryScript = newScript("bury", 5, fenced(3, typeCheck(hashAt(2), hashAt(4), hashAt(5)), luaIncr+`
local n = 0
for i = 3, #ARGV, 2 do
  redis.call('HDEL', KEYS[5], ARGV[i])
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('HDEL', KEYS[5], ARGV[i])
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

// claimed is a task in this process's hands, with its pending field and
// claim seq.
type claimed struct {
	Task
	field     string      // the pending hash field (the task ID, or "bad:<seq>")
	seq       int64       // claim seq
	claim     *claimBatch // its claim, nil when none is tracked (recovery)
	recovered bool        // its entry is marked entryRecovered: record its delivery before it starts
	cancelled bool        // its cancel was asked: it is finished as cancelled, never run
	started   time.Time   // when its last delivery by this process started, once one ended in a retry (zero: none)
}

// size is what a held task counts against PoolConfig.MaxHeldBytes: its
// encoded size, near enough.
func (t *claimed) size() int64 {
	h, _ := headersSize(t.Headers)
	return int64(entryHeader + 12 + h + len(t.Payload))
}

// claimBatch tracks one claim until none of its tasks is pending, when its
// claim-sequence record can go.
type claimBatch struct {
	record string       // the field of the claim's claim-sequence record
	left   atomic.Int64 // its tasks still pending (in this process's view)
}

// finish counts n tasks of b as no longer pending, and reports whether
// that was the last of them: the caller then deletes b's claim-sequence
// record (after the tasks' own records, or in the same call).
func (b *claimBatch) finish(n int) bool {
	return b != nil && n > 0 && b.left.Add(int64(-n)) == 0
}

// errNoRoom is claim's answer, in strict mode, when the next task does not
// fit the bytes left.
var errNoRoom = errors.New("queue: the next task does not fit the bytes left")

// maxClaim bounds the tasks one claim takes.
const maxClaim = 1000

// claim claims up to n tasks whose entries total at most maxBytes (at
// least one task all the same, unless strict: then it returns errNoRoom
// when the first task does not fit), appending them to dst[:0] (nil, or a
// buffer the caller reuses once it is done with the tasks). When every
// record it took was malformed (and so dead-lettered), it claims again: an
// empty result always means an empty queue.
func (s *store) claim(ctx context.Context, n int, maxBytes int64, strict bool, dst []claimed) ([]claimed, error) {
	for {
		out, buried, err := s.claimOnce(ctx, n, maxBytes, strict, dst)
		if err != nil || len(out) > 0 || !buried {
			return out, err
		}
	}
}

func (s *store) claimOnce(ctx context.Context, n int, maxBytes int64, strict bool, dst []claimed) ([]claimed, bool, error) {
	if n <= 0 {
		return dst[:0], false, nil
	}
	n = min(n, maxClaim)
	maxBytes = max(maxBytes, 1)
	// Pop as many at first as fit the budget at the entry size seen so
	// far: one RPOP for small entries, a few for large ones.
	pop := int(min(int64(n), max(1, maxBytes/max(s.entrySize.Load(), 1))))
	strictArg := 0
	if strict {
		strictArg = 1
	}
	r, err := redis.Values(s.script(ctx, "claim from", claimScript,
		s.keys.ready, s.keys.pending, s.keys.lease, s.keys.meta, s.keys.claims, s.keys.sched, s.keys.later, s.keys.cancels,
		s.value(), s.ttlMS, n, maxBytes, pop, strictArg, time.Now().UnixMilli()))
	if err != nil {
		return dst[:0], false, err
	}
	if len(r) > 0 {
		if code, ok := r[0].(int64); ok { // no entry: a code
			switch {
			case code == -1:
				err = errNoRoom
			case len(r) == 2 && (code == 0 || code == -2):
				next, _ := redis.Int64(r[1], nil)
				s.nextDue.Store(next)
				s.paused.Store(code == -2)
			default:
				err = redisErr(s.what("claim from"), fmt.Errorf("%w: unexpected claim reply %v", ErrMalformed, r))
			}
			return dst[:0], false, err
		}
	}
	s.paused.Store(false)
	if len(r) < 3 {
		return dst[:0], false, redisErr(s.what("claim from"), fmt.Errorf("%w: short claim reply", ErrMalformed))
	}
	first, err := redis.Int64(r[len(r)-1], nil)
	if err != nil {
		return dst[:0], false, redisErr(s.what("claim from"), err)
	}
	k, err := redis.Int(r[len(r)-2], nil)
	if err != nil || k < 0 || k > len(r)-3 {
		return dst[:0], false, redisErr(s.what("claim from"), fmt.Errorf("%w: bad cancel count in claim reply", ErrMalformed))
	}
	marks := r[len(r)-2-k : len(r)-2]
	r = r[:len(r)-2-k+1] // the entries, then one slot (read as first below)
	out := dst[:0]
	if cap(out) < len(r)-1 {
		out = make([]claimed, 0, len(r)-1)
	}
	batch := &claimBatch{record: strconv.FormatInt(first, 10)}
	batch.left.Store(int64(len(r) - 1))
	var bad []any
	// The reply's buffers are the claimer's own: payloads keep pointing
	// into them, and the IDs share one string.
	ids := make([]byte, 0, idLen*(len(r)-1))
	size := 0
	for i, v := range r[:len(r)-1] {
		raw, _ := v.([]byte)
		size += len(raw)
		seq := first + int64(i) + 1
		t, deliveries, err := parseEntry(raw)
		if err != nil {
			bad = append(bad, pendingField(raw, seq), encodeDead(raw, 0, "claim: "+err.Error()))
			continue
		}
		ids = append(ids, raw[1:entryHeader]...)
		t.Attempt = deliveries + 1
		c := claimed{Task: t, seq: seq, claim: batch, recovered: raw[0]&entryRecovered != 0}
		if len(marks) > 0 {
			if at, _ := redis.Int(marks[0], nil); at == i+1 {
				c.cancelled, marks = true, marks[1:]
			}
		}
		out = append(out, c)
	}
	s.entrySize.Store(int64(max(size/(len(r)-1), 1)))
	all := string(ids)
	for i := range out {
		out[i].ID = all[i*idLen : (i+1)*idLen]
		out[i].field = out[i].ID
	}
	if len(bad) > 0 {
		if err := s.bury(ctx, bad); err != nil {
			return out, true, err
		}
		if batch.finish(len(bad) / 2) {
			if err := s.dropClaims(ctx, []string{batch.record}); err != nil {
				return out, true, err
			}
		}
	}
	return out, len(bad) > 0, nil
}

// pendingField is the pending hash field the claim script gives an entry:
// its ID, or "bad:<seq>" when it has no readable header.
func pendingField(entry []byte, seq int64) string {
	if len(entry) >= entryHeader && isEntryStart(entry[0]) {
		return string(entry[1:entryHeader])
	}
	return "bad:" + strconv.FormatInt(seq, 10)
}

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
		args := make([]any, 0, 11+2*n+len(claims))
		args = append(args, s.keys.pending, s.keys.lease, s.keys.meta, s.keys.claims, s.keys.retries, bucket, s.value(), s.ttlMS, n, expiry, s.retention.Milliseconds())
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
		a := append([]any{s.keys.pending, s.keys.dead, s.keys.lease, s.keys.meta, s.keys.retries, s.value(), s.ttlMS}, args[:n]...)
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
