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
	nextFirst   atomic.Int64           // the first seq of the next claim, as far as this store knows (see seqReply)
	idsLater    bool                   // its claims leave their task IDs to the caller's acks (idsLater): a pool's store
	native      atomic.Bool            // its claims let Redis move the entries (a pool's store, until SORT is refused)
	exactNext   atomic.Bool            // the next claim counts the bytes in the script (the last moved one passed its budget)
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

// taskRef names a pending task for the scripts that finish or change one:
// its claim record and place there (claimrec.go), or, with record "", its
// field in the pending hash of earlier releases.
type taskRef struct {
	record string
	place  int32
	field  string // the task's ID (or "bad:<seq>"): its field in the dead-letter store
}

// ref returns t's taskRef.
func (t *claimed) ref() taskRef {
	if t.claim == nil {
		return taskRef{field: t.field}
	}
	return taskRef{record: t.claim.record, place: t.place, field: t.field}
}

// args appends the script arguments of r: record, place, field.
func (r taskRef) args(dst []any) []any { return append(dst, r.record, r.place, r.field) }

// luaTake defines take(i): it finishes the task whose taskRef is ARGV[i]
// to ARGV[i+2] (see taskRef.args), and reports whether it was pending.
// It needs luaClaimRec and luaIncr, and the script's pending hash, meta
// hash and claim-sequence hash as pendingKey, metaKey and claimsKey.
const luaTake = `
local function take(i)
  if ARGV[i] == '' then return redis.call('HDEL', pendingKey, ARGV[i + 2]) == 1 end
  return takePlace(claimsKey, metaKey, ARGV[i], tonumber(ARGV[i + 1])) ~= nil
end
`

// ackScript finishes acknowledged tasks: for each claim record, it ORs a
// bitmap of the places acknowledged into the claim's done bitmap (see
// luaClaimRec's setDone), which deletes the record once every place is
// set. When the queue holds retry records or cancel marks, those of the
// tasks at the places acknowledged go too (a cancel that came too late:
// the task is done, not cancelled; a cancels hash of another type is left
// alone, as the claim script leaves it). With a history expiry, it keeps
// the status records of the tasks that were pending (history.go; an
// empty record keeps none; none in a bucket of another type, see
// luaHistory).
//
//	KEYS[1] = claim-sequence hash, KEYS[2] = lease, KEYS[3] = meta hash, KEYS[4] = retries hash,
//	KEYS[5] = history bucket, KEYS[6] = cancels hash
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3] = number of claims m,
//	ARGV[4] = history expiry (ms since the epoch; 0: keep none), ARGV[5] = retention ms,
//	ARGV[6 .. 5+3m] = claim (its first seq), bitmap of places, the claim's task IDs
//	back to back when its record does not hold them yet ("" otherwise), ...,
//	then, with a history expiry, claim, place, packed task ID, status record, ...
//
// Returns the number of tasks it finished (also added to processed).
// With a history expiry, it records the retention in the meta hash, for
// readers whose own Config does not say it (see Status). A claim record
// whose IDs are not written yet ("#<first>/<n>", see idsLater) and that
// is not finished is given the IDs: "#<first>:<IDs>".
var ackScript = newScript("ack", -1, fenced(2, typeCheck(hashAt(1), hashAt(3), hashAt(4)), luaIncr+luaHistory+luaClaimRec+`
local m = tonumber(ARGV[3])
local last = 5 + 3 * m
local bad = claimTypes(KEYS[1], 6, last, 3)
if bad then return bad end
if ARGV[4] ~= '0' and last < #ARGV and history(KEYS[5]) then
  local kept = false
  for i = last + 1, #ARGV, 4 do
    local l, d = claimKeys(KEYS[1], ARGV[i])
    if ARGV[i + 3] ~= '' and redis.call('TYPE', l).ok == 'list' and bitsOK(d) and redis.call('GETBIT', d, ARGV[i + 1]) == 0 then
      redis.call('HSET', KEYS[5], ARGV[i + 2], ARGV[i + 3])
      kept = true
    end
  end
  if kept then
    redis.call('PEXPIREAT', KEYS[5], ARGV[4])
    redis.call('HSET', KEYS[3], 'retention', ARGV[5])
  end
end
local marks = redis.call('EXISTS', KEYS[6]) == 1
if marks or redis.call('EXISTS', KEYS[4]) == 1 then
  -- The IDs at the places acknowledged, from the claim-sequence records,
  -- or those given, or else the claim's list.
  local ids = {}
  for i = 6, last, 3 do
    local v, bits = redis.call('HGET', KEYS[1], ARGV[i]), ARGV[i + 1]
    local base = v and string.byte(v, 1) == $claimedMark and string.find(v, ':', 2, true)
    if not base and ARGV[i + 2] ~= '' then v, base = ARGV[i + 2], 0 end
    local l = claimKeys(KEYS[1], ARGV[i])
    local list = not base and v and string.byte(v, 1) == $claimedMark and redis.call('TYPE', l).ok == 'list'
    for j = 1, #bits do
      local b = string.byte(bits, j)
      local k = 0
      while b > 0 do
        if b >= 128 then
          local place = (j - 1) * 8 + k
          if base then
            local at = base + 1 + place * $idLen
            ids[#ids + 1] = string.sub(v, at, at + $idLen - 1)
          elseif list then
            local e = redis.call('LINDEX', l, place)
            if e and string.byte(e, 1) == $accountedByte then e = string.sub(e, 2) end
            if e and #e >= $entryHeader then ids[#ids + 1] = string.sub(e, 2, $entryHeader) end
          end
        end
        b, k = (b % 128) * 2, k + 1
      end
    end
  end
  for i = 1, #ids, $scriptChunk do
    local part = {unpack(ids, i, math.min(i + $scriptChunk - 1, #ids))}
    redis.call('HDEL', KEYS[4], unpack(part))
    if marks then redis.pcall('HDEL', KEYS[6], unpack(part)) end
  end
end
local n = 0
for i = 6, last, 3 do n = n + setDone(KEYS[1], KEYS[3], ARGV[i], ARGV[i + 1]) end
if n > 0 then incr(KEYS[3], 'processed', n) end
for i = 6, last, 3 do
  local f, ids = ARGV[i], ARGV[i + 2]
  if ids ~= '' and #ids % $idLen == 0 then
    local mark = string.char($claimedMark) .. f
    if redis.call('HGET', KEYS[1], f) == mark .. '$idsLater' .. string.format('%d', #ids / $idLen) then
      redis.call('HSET', KEYS[1], f, mark .. ':' .. ids)
    end
  end
end
return n
`))

// dropScript deletes claim records whatever they hold (a claim-sequence
// record of the pending hash's format, or a claim record none of whose
// tasks is pending any more but that was not deleted), counting the
// places of those not set as no longer pending. With ARGV[3] = 1, it
// then counts the tasks of the claim records it is given to keep whose
// place is not set, and sets the meta hash's count of tasks in claim
// records to that: the last drop of a recovery, which keeps only the
// records of tasks in the caller's hands, so that a count someone
// overwrote is right again.
//
//	KEYS[1] = claim-sequence hash, KEYS[2] = lease, KEYS[3] = meta hash,
//	then the claim list and done bitmap of each claim below
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3] = 1 to recount,
//	ARGV[4] = the number d of claims to delete, ARGV[5 .. 4+d] = those claims (first
//	seqs, or whatever their fields hold), then the claims kept
//
// Returns the number of records deleted.
var dropScript = newScript("drop", -1, fenced(2, typeCheck(hashAt(1), hashAt(3)), luaIncr+luaClaimRec+`
local n, last = 0, 4 + tonumber(ARGV[4])
for i = 5, last do
  if ARGV[i] ~= '' then
    local l, d = claimKeys(KEYS[1], ARGV[i])
    if redis.call('TYPE', l).ok == 'list' and bitsOK(d) then
      local k = redis.call('LLEN', l) - redis.call('BITCOUNT', d)
      if k > 0 then incr(KEYS[3], 'pending', -k) end
    end
    redis.call('DEL', l, d)
  end
  n = n + redis.call('HDEL', KEYS[1], ARGV[i])
end
if ARGV[3] == '1' then
  local left = 0
  for i = last + 1, #ARGV do
    local l, d = claimKeys(KEYS[1], ARGV[i])
    if redis.call('TYPE', l).ok == 'list' and bitsOK(d) then
      left = left + math.max(redis.call('LLEN', l) - redis.call('BITCOUNT', d), 0)
    end
  end
  redis.call('HSET', KEYS[3], 'pending', left)
end
return n
`))

// ackRef is an acknowledged task as ack takes it: its claim record, its
// place there, and its ID (for its status record).
type ackRef struct {
	claim *claimBatch
	place int32
	id    string
}

// ack finishes the tasks ts, acknowledged, as ackScript does, maxClaim
// tasks to a round trip. With a retention, recs holds the status records
// of ts (history.go); a nil recs keeps none.
func (s *store) ack(ctx context.Context, ts []ackRef, recs []historyRecord) (int, error) {
	done := 0
	keep := s.retention > 0 && len(recs) == len(ts)
	var bits map[*claimBatch][]byte
	var order []*claimBatch
	for len(ts) > 0 {
		n := min(len(ts), maxClaim)
		bucket, expiry, start := s.historyBucket(time.Now())
		if !keep {
			expiry = 0
		}
		// One bitmap per claim, in the order the claims first come.
		clear(bits)
		if bits == nil {
			bits = make(map[*claimBatch][]byte)
		}
		order = order[:0]
		for _, t := range ts[:n] {
			b, ok := bits[t.claim]
			if !ok {
				order = append(order, t.claim)
			}
			bits[t.claim] = placeBitmap(b, t.place)
		}
		records := make([]string, len(order))
		args := make([]any, 0, 5+3*len(order))
		args = append(args, s.value(), s.ttlMS, len(order), expiry, s.retention.Milliseconds())
		for i, b := range order {
			records[i] = b.record
			args = append(args, b.record, bits[b], b.ids)
		}
		if expiry != 0 {
			for i, r := range recs[:n] {
				rec := ""
				if !r.finished.IsZero() {
					rec = r.encode(start)
				}
				args = append(args, ts[i].claim.record, ts[i].place, packID(ts[i].id), rec)
			}
			recs = recs[n:]
		}
		ts = ts[n:]
		call := s.claimCall([]any{s.keys.claims, s.keys.lease, s.keys.meta, s.keys.retries, bucket, s.keys.cancels}, records, true, args...)
		k, err := redis.Int(s.script(ctx, "ack on", ackScript, call...))
		done += k
		if err != nil {
			return done, err
		}
		for _, b := range order {
			if b.ids != "" {
				b.ids = "" // written, or the claim is finished
			}
		}
	}
	return done, nil
}

// dropClaims deletes claim records that serve no more (see dropScript),
// and, when kept is not nil, has the script that deletes the last of them
// (one of its own when there are none) recount the tasks of the records
// kept.
func (s *store) dropClaims(ctx context.Context, claims, kept []string) error {
	for {
		n := min(len(claims), scriptChunk)
		last := n == len(claims)
		if n == 0 && kept == nil {
			return nil
		}
		flag, records := "0", claims[:n]
		args := []any{s.value(), s.ttlMS, flag, n}
		for _, c := range claims[:n] {
			args = append(args, c)
		}
		if last && kept != nil {
			args[2] = "1"
			records = append(records[:n:n], kept...)
			for _, c := range kept {
				args = append(args, c)
			}
		}
		call := s.claimCall([]any{s.keys.claims, s.keys.lease, s.keys.meta}, records, false, args...)
		if _, err := s.script(ctx, "drop claims on", dropScript, call...); err != nil {
			return err
		}
		if claims = claims[n:]; last {
			return nil
		}
	}
}

// recordDelivery records in t's pending record that delivery t.Attempt is
// made, so that recovery after a crash counts it, once. Recovery counts an
// interrupted delivery only with this record, so that tasks claimed with
// one that crashes its owner, and never started, lose no attempt: the
// pool records the delivery of every task delivered before and of every
// task recovery marked (see entryRecovered), so that a task that crashes
// its owner is counted from its second crash on. Costs one round trip.
func (s *store) recordDelivery(ctx context.Context, t claimed) error {
	r := t.ref()
	_, err := s.script(ctx, "record delivery on", retryScript, s.claimCall([]any{s.keys.claims, s.keys.lease, s.keys.meta},
		[]string{r.record}, false, s.value(), s.ttlMS, r.record, r.place, accountedRecord(t.Task, t.Attempt))...)
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

// luaRewrite defines rewrite(first, place, record): it replaces the entry
// at place in the claim list of first with record, and reports whether
// the task there was pending. A task that names no claim (first "": one
// its caller no longer holds) is not pending, and no key is read for it.
// It needs luaClaimRec and the claim-sequence hash as claimsKey.
const luaRewrite = `
local function rewrite(first, place, record)
  if first == '' then return false end
  local l, d = claimKeys(claimsKey, first)
  if redis.call('TYPE', l).ok ~= 'list' or not bitsOK(d) or redis.call('GETBIT', d, place) == 1 then return false end
  if not redis.call('LINDEX', l, place) then return false end
  redis.call('LSET', l, place, record)
  return true
end
`

// retryScript replaces a pending record with ARGV[5]: the task encoded
// with the deliveries it has had, counting the current one (one about to
// start, or the retry that follows a failure), behind a '+' that marks the
// count as accounted, so that recovery after a crash does not count the
// current delivery again.
//
//	KEYS[1] = claim-sequence hash, KEYS[2] = lease, KEYS[3] = meta hash
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3] = claim, ARGV[4] = place,
//	ARGV[5] = "+" encoded task
//
// Returns 1, or 0 when the task is no longer pending.
var retryScript = newScript("retry", -1, fenced(2, typeCheck(hashAt(1)), "local claimsKey = KEYS[1]\n"+luaIncr+luaClaimRec+luaRewrite+"\n"+luaCheckClaims(3, "3", 1)+`
if not rewrite(ARGV[3], tonumber(ARGV[4]), ARGV[5]) then return 0 end
return 1
`))

// fail records a failed delivery of t (as claimed, with its Attempt). When
// t has had maxAttempts deliveries it moves to the dead-letter store with
// cause and fail reports dead; otherwise the failure, and the retry that
// follows (at retryAt; zero: when its holder says), are recorded in the
// pending record and in the retries hash (for Status), so that a crash
// counts them. Costs one round trip.
func (s *store) fail(ctx context.Context, t claimed, cause error, retryAt time.Time) (dead bool, err error) {
	msg := "<nil>"
	if cause != nil {
		msg = cause.Error()
	}
	if t.Attempt >= s.maxAttempts {
		entry := encodeTask(t.Task, t.Attempt)
		return true, s.bury(ctx, []burial{{t.ref(), encodeDead(entry, t.Attempt, msg)}})
	}
	r := t.ref()
	_, err = s.script(ctx, "record failure on", failScript, s.claimCall([]any{s.keys.claims, s.keys.lease, s.keys.meta, s.keys.retries},
		[]string{r.record}, false, s.value(), s.ttlMS, r.record, r.place, accountedRecord(t.Task, t.Attempt+1), t.ID, retryRecord(time.Now(), retryAt, msg))...)
	return false, err
}

// failScript is retryScript that also records the failure in the retries
// hash (KEYS[4], under the task ID ARGV[6], ARGV[7]).
var failScript = newScript("fail", -1, fenced(2, typeCheck(hashAt(1), hashAt(4)), "local claimsKey = KEYS[1]\n"+luaIncr+luaClaimRec+luaRewrite+"\n"+luaCheckClaims(3, "3", 1)+`
if not rewrite(ARGV[3], tonumber(ARGV[4]), ARGV[5]) then return 0 end
redis.call('HSET', KEYS[4], ARGV[6], ARGV[7])
return 1
`))

// burial is a pending task to move to the dead-letter store, and its dead
// record.
type burial struct {
	ref taskRef
	rec []byte
}

// buryScript moves pending tasks to the dead-letter store, and drops their
// retry records. The cancel mark of a task it moves goes too: Cancel
// leaves dead letters alone, and a replay runs the task again (a cancels
// hash of another type is left alone, as the claim script leaves it).
//
//	KEYS[1] = pending hash, KEYS[2] = dead hash, KEYS[3] = lease, KEYS[4] = meta hash,
//	KEYS[5] = retries hash, KEYS[6] = cancels hash, KEYS[7] = claim-sequence hash
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms,
//	ARGV[3...] = claim, place, field (see taskRef), dead record, ...
//
// Returns the number moved (also added to failed); a task no longer
// pending is skipped. A record never replaces another one under the same
// field (garbage written under a dead task's ID, say): a quarantined
// malformed record (0 attempts: its second byte is 0) takes the first
// free field of "<field>#2", "<field>#3", ..., and a task's record moves
// what was under its ID there.
var buryScript = newScript("bury", -1, fenced(3, typeCheck(hashAt(1), hashAt(2), hashAt(4), hashAt(5), hashAt(7)),
	"local pendingKey, metaKey, claimsKey = KEYS[1], KEYS[4], KEYS[7]\n"+luaIncr+luaClaimRec+luaTake+"\n"+luaCheckClaims(3, "#ARGV", 4)+`
local n = 0
for i = 3, #ARGV, 4 do
  if take(i) then
    local f, rec = ARGV[i + 2], ARGV[i + 3]
    redis.call('HDEL', KEYS[5], f)
    redis.pcall('HDEL', KEYS[6], f)
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
//	KEYS[1] = ready list, KEYS[2] = pending hash, KEYS[3] = lease, KEYS[4] = meta hash,
//	KEYS[5] = claim-sequence hash
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3] = 1 to count as redeliveries,
//	ARGV[4...] = claim, place, field (see taskRef), encoded task, ... in push order
//
// Returns the number pushed; a task no longer pending is skipped.
var requeueScript = newScript("requeue", -1, fenced(3, typeCheck(listAt(1), hashAt(2), hashAt(4), hashAt(5)),
	"local pendingKey, metaKey, claimsKey = KEYS[2], KEYS[4], KEYS[5]\n"+luaIncr+luaClaimRec+luaTake+"\n"+luaCheckClaims(4, "#ARGV", 4)+`
local n = 0
for i = 4, #ARGV, 4 do
  if take(i) then
    redis.call('RPUSH', KEYS[1], ARGV[i + 3])
    n = n + 1
  end
end
if n > 0 and ARGV[3] == '1' then incr(KEYS[4], 'redelivered', n) end
return n
`))

// bury moves pending tasks to the dead-letter store.
func (s *store) bury(ctx context.Context, items []burial) error {
	for len(items) > 0 {
		n := buryChunk(items)
		a := []any{s.value(), s.ttlMS}
		records := make([]string, n)
		for i, b := range items[:n] {
			a = append(b.ref.args(a), b.rec)
			records[i] = b.ref.record
		}
		call := s.claimCall([]any{s.keys.pending, s.keys.dead, s.keys.lease, s.keys.meta, s.keys.retries, s.keys.cancels, s.keys.claims},
			records, false, a...)
		if _, err := s.script(ctx, "dead-letter on", buryScript, call...); err != nil {
			return err
		}
		items = items[n:]
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
		args := []any{s.value(), s.ttlMS, flag}
		var records []string
		for i := end - 1; i >= start; i-- {
			t := tasks[i]
			r := t.ref()
			args = append(r.args(args), encodeClaimed(t))
			records = append(records, r.record)
		}
		call := s.claimCall([]any{s.keys.ready, s.keys.pending, s.keys.lease, s.keys.meta, s.keys.claims}, records, false, args...)
		if _, err := s.script(ctx, "requeue on", requeueScript, call...); err != nil {
			return err
		}
		end = start
	}
	return nil
}
