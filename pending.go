package queue

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
)

// store is the Redis side of one queue for the process that owns (or waits
// to own) its lease: the queue's keys, the lease value, and every script
// that changes pending work. Every Redis write of a task's life after
// AddTask is made by its methods (claim.go and claimread.go: claims;
// ack.go: acks; deliveries.go: recorded deliveries and failures; this
// file: dead letters, hand-backs; recover.go; cancelwatch.go: cancels
// seen and finished) or in lease.go. The pool and the Consumer only
// decide when to call it. Its methods are safe for concurrent use: the
// lease value is read atomically.
type store struct {
	part        *partition
	tapChunk    int                      // the chunks a tapped claim's entries are read into (replyTap.chunk); 0: an allocation each
	spare       atomic.Pointer[[][]byte] // a claim's entry list, emptied, for the next tapped claim (entryList)
	pi, qi      int
	analyser    uint64 // the analyser whose queue this is: it serves OrderID id when id % analysers == analyser
	analysers   uint64 // R * Q
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
	entrySize   atomic.Int64           // the mean entry size of the last claim that took entries; 0: none yet (see entryGuess)
	maxEntry    int64                  // the largest entry a task makes: MaxPayload and maxEntryOver
	nextDue     atomic.Int64           // the due time (ms) of the next scheduled task, as the last empty claim (or idle wait) saw it; -1: none
	nextFirst   atomic.Int64           // the first seq of the next claim, as far as this store knows (see seqReply)
	idsLater    bool                   // its claims leave their task IDs to the caller's acks (idsLater): a pool's store
	idsAfter    time.Duration          // how old such a claim is when an ack writes its IDs (idsAfter; tests set less)
	idsNow      atomic.Bool            // the last ack found retry records or cancel marks: acks write the IDs at once
	native      atomic.Bool            // its claims are made in place where they can be (a pool's store: claimend.go)
	exactNext   atomic.Bool            // the next claim counts the bytes in the script (the last one in place passed its budget)
	declined    atomic.Bool            // a claim to be made in place or not at all was not (see withRead): claims go alone until one is made in place
	ahead       atomic.Int64           // the entries past the claimed end that the last claim's read found, none large; or aheadLarge, aheadUnknown (see withRead)
	endMu       sync.Mutex             // guards ends and endOpened
	ends        []endClaim             // its claims in place, oldest first, as far as it knows (claimend.go)
	endMade     atomic.Int64           // the claims in place it made
	endOpened   int64                  // endMade as of its last opening of the end
	schedCard   atomic.Int64           // the number of scheduled tasks, as nextDue's read saw it; -1: unknown
	paused      atomic.Bool            // the last claim found the queue paused
	asked       atomic.Int64           // the tasks the last claim asked for, after claimOnce's own bounds
	claimCap    atomic.Int64           // a pool's: the most tasks a claim asks for after one was cut short (0: no cap; see session.fetch), kept across its tenures
	waiter      *waiter                // the partition's shared waiter, for a pool's idle waits (nil: own connections)
	closed      *atomic.Bool           // the Queue's: a Consumer's calls after Close return ErrClosed
	deaths      *deathClock            // the Queue's: stamps the deaths of its tasks
	deathFloor  atomic.Int64           // the latest death the queue's dead-letter store had recorded when this store last took the lease (ms): its own are stamped past it
	ownPools    bool                   // the Queue's pools are Dial's: Close closes them
}

// poolsClosed reports whether the Queue is closed and its connections
// with it (Dial's pools; those given to New stay open).
func (s *store) poolsClosed() bool { return s.closed != nil && s.closed.Load() && s.ownPools }

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
		analyser: uint64(analyser), analysers: uint64(len(q.parts) * q.cfg.Queues),
		owner: owner, ttl: ttl, ttlMS: ttl.Milliseconds(), maxAttempts: maxAttempts,
		leaseLock: make(chan struct{}, 1), retention: q.cfg.Retention, idsAfter: idsAfter,
		closed:   &q.closed,
		ownPools: q.ownPools,
		deaths:   &q.deaths,
		maxEntry: int64(maxEntryOver + q.cfg.MaxPayload),
	}
	s.setSchedHead(-1, -1)
	s.ahead.Store(aheadUnknown)
	return s, nil
}

func (s *store) what(op string) string {
	return fmt.Sprintf("%s partition %d queue %d", op, s.pi, s.qi)
}

// script runs one script on the store's partition.
func (s *store) script(ctx context.Context, op string, sc *redis.Script, keysAndArgs ...any) (any, error) {
	return onPartition(ctx, s.part, s.what(op), func(conn redis.Conn) (any, error) { return runScript(ctx, sc, conn, keysAndArgs...) })
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
// to ARGV[i+2] (see taskRef.args), and reports whether it was pending;
// and takesDone(), which a script that took calls once its takes are
// made, before it returns: it counts them, and deletes the claims they
// finished. A claim's keys are looked at once per script (a recovery
// puts thousands of tasks of one claim back in one call): a key's type
// does not change between takes, as nothing else the script does
// deletes or writes a claim list. It needs luaClaimRec and luaIncr, and
// the script's pending hash, meta hash and claim-sequence hash as
// pendingKey, metaKey and claimsKey.
const luaTake = `
local takes, takeOrder = {}, {}
local function take(i)
  if ARGV[i] == '' then return redis.call('HDEL', pendingKey, ARGV[i + 2]) == 1 end
  local first = ARGV[i]
  local c = takes[first]
  if c == nil then
    local l, d = claimKeys(claimsKey, first)
    c = false
    if redis.call('TYPE', l).ok == 'list' and bitsOK(d) then
      c = {l = l, d = d, k = 0}
      takeOrder[#takeOrder + 1] = first
    end
    takes[first] = c
  end
  if not c then return false end
  local place = tonumber(ARGV[i + 1])
  -- SETBIT answers the bit as it was: set, the place was taken already.
  if not redis.call('LINDEX', c.l, place) or redis.call('SETBIT', c.d, place, 1) == 1 then return false end
  c.k = c.k + 1
  return true
end
local function takesDone()
  for _, first in ipairs(takeOrder) do
    local c = takes[first]
    if c.k > 0 then finished(claimsKey, metaKey, first, c.l, c.d, c.k) end
  end
  takes, takeOrder = {}, {}
end
`

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
// With ARGV[4] = 1, a task whose cancel was asked stays pending instead
// (recovery's tasks whose deliveries ran out: Cancel promised to finish
// them as cancelled, see putBack).
//
//	KEYS[1] = pending hash, KEYS[2] = dead hash, KEYS[3] = lease, KEYS[4] = meta hash,
//	KEYS[5] = retries hash, KEYS[6] = cancels hash, KEYS[7] = claim-sequence hash
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3] = the latest death stamp of the records,
//	ARGV[4] = 1 to leave tasks with a cancel mark pending, else 0,
//	ARGV[5...] = claim, place, field (see taskRef), dead record, ...
//
// Returns the number moved (also added to failed); a task no longer
// pending, or left pending for its cancel mark, is skipped. The meta
// hash's lastDeathField keeps the latest death stamp it was given, for
// the next owner (see deathClock); one this
// package did not write (not a count, or a day ahead of ARGV[3]) is
// replaced. A record never replaces another one under the same
// field (garbage written under a dead task's ID, say): a quarantined
// malformed record (0 attempts: its second byte is 0) takes the first
// free field of "<field>#2", "<field>#3", ..., and a task's record moves
// what was under its ID there.
var buryScript = newScript("bury", -1, fenced(3, typeCheck(hashAt(1), hashAt(2), hashAt(4), hashAt(5), hashAt(7)),
	"local pendingKey, metaKey, claimsKey = KEYS[1], KEYS[4], KEYS[7]\n"+luaIncr+luaClaimRec+luaTake+"\n"+luaCheckClaims(5, "#ARGV", 4)+`
local n = 0
local function asked(f)
  return ARGV[4] == '1' and redis.pcall('HEXISTS', KEYS[6], f) == 1
end
for i = 5, #ARGV, 4 do
  if not asked(ARGV[i + 2]) and take(i) then
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
takesDone()
if n > 0 then
  incr(KEYS[4], 'failed', n)
  local last, died = redis.call('HGET', KEYS[4], '$lastDeathField'), tonumber(ARGV[3])
  last = last and #last <= 15 and string.match(last, '^%d+$') and tonumber(last)
  if not last or last < died or last > died + $maxDeathsAheadMS then
    redis.call('HSET', KEYS[4], '$lastDeathField', ARGV[3])
  end
end
return n
`))

// requeueScript puts pending tasks back at the consuming (right) end of the
// ready list: the last one pushed is the next one claimed. A task put
// back waits out no backoff (its next delivery starts when it is claimed
// again): its retry record (retryRecord's "failed:retry:message") keeps
// the failure but is due at once (the failure's own time), so that Status
// does not report it retrying later while it is queued or running, and
// still shows its last error.
//
//	KEYS[1] = ready list, KEYS[2] = pending hash, KEYS[3] = lease, KEYS[4] = meta hash,
//	KEYS[5] = claim-sequence hash, KEYS[6] = retries hash, KEYS[7] = cancels hash
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3] = 1 to count as redeliveries,
//	ARGV[4...] = claim, place, field (see taskRef), encoded task, ... in push order
//
// Returns the number pushed; a task no longer pending is skipped. It
// counts the large entries it pushes (large.go).
var requeueScript = newScript("requeue", -1, fenced(3, typeCheck(listAt(1), hashAt(2), hashAt(4), hashAt(5), hashAt(6), hashAt(7)),
	"local pendingKey, metaKey, claimsKey = KEYS[2], KEYS[4], KEYS[5]\n"+luaIncr+luaLarge+luaClaimRec+luaTake+luaMarkBound+"\n"+luaCheckClaims(4, "#ARGV", 4)+`
local n, large, push = 0, 0, {}
local retries = redis.call('EXISTS', KEYS[6]) == 1
for i = 4, #ARGV, 4 do
  if take(i) then
    -- Pushed in order, many at a time.
    push[#push + 1] = ARGV[i + 3]
    if #push == 512 then
      redis.call('RPUSH', KEYS[1], unpack(push))
      push = {}
    end
    if #ARGV[i + 3] > $largeEntry then large = large + 1 end
    local r = retries and redis.call('HGET', KEYS[6], ARGV[i + 2])
    if r then
      local failed, msg = string.match(r, '^(%-?%d+):%-?%d+:(.*)$')
      if failed then
        redis.call('HSET', KEYS[6], ARGV[i + 2], failed .. ':' .. failed .. ':' .. msg)
      else
        redis.call('HDEL', KEYS[6], ARGV[i + 2])
      end
    end
    n = n + 1
  end
end
if #push > 0 then redis.call('RPUSH', KEYS[1], unpack(push)) end
takesDone()
addLarge(KEYS[4], KEYS[1], large)
if n > 0 and ARGV[3] == '1' then incr(KEYS[4], 'redelivered', n) end
if n > 0 and redis.call('EXISTS', KEYS[7]) == 1 then
  -- Put back ahead of the rest: a marked task among them is taken
  -- before the cancel marks' bound comes (see luaMarkBound).
  markTaken(KEYS[4], -n)
  raiseMarkBound(KEYS[4], KEYS[1])
end
return n
`))

// bury moves pending tasks to the dead-letter store, and returns how many
// it moved (a task no longer pending is skipped).
func (s *store) bury(ctx context.Context, items []burial) (int, error) {
	return s.buryIf(ctx, items, false)
}

// buryIf is bury; with uncancelled, a task whose cancel was asked stays
// pending and is not counted.
func (s *store) buryIf(ctx context.Context, items []burial, uncancelled bool) (int, error) {
	if len(items) == 0 {
		return 0, nil
	}
	if err := s.listsFirst(ctx); err != nil {
		return 0, err
	}
	// A call that a failed connection cut short is made again with half
	// as many records, as requeue's are: the script skips tasks no
	// longer pending, so one that ran before its reply was lost moves
	// nothing twice.
	moved, lim := 0, fullScript
	var cut cutRetry
	for len(items) > 0 {
		n := buryChunk(items, lim)
		latest := int64(0)
		for _, b := range items[:n] {
			latest = max(latest, deadStamp(b.rec))
		}
		leave := 0
		if uncancelled {
			leave = 1
		}
		a := []any{s.value(), s.ttlMS, latest, leave}
		records := make([]string, n)
		for i, b := range items[:n] {
			a = append(b.ref.args(a), b.rec)
			records[i] = b.ref.record
		}
		call := s.claimCall([]any{s.keys.pending, s.keys.dead, s.keys.lease, s.keys.meta, s.keys.retries, s.keys.cancels, s.keys.claims},
			records, false, a...)
		k, err := redis.Int(s.script(ctx, "dead-letter on", buryScript, call...))
		moved += k
		if err != nil {
			if cut.again(ctx, err) {
				lim = lim.halve()
				continue
			}
			return moved, err
		}
		cut.fails = 0
		items = items[n:]
	}
	return moved, nil
}

// requeueCall returns the keys and args of a requeue script of the
// tasks of records, args its ARGV.
func (s *store) requeueCall(records []string, args ...any) []any {
	return s.claimCall([]any{s.keys.ready, s.keys.pending, s.keys.lease, s.keys.meta, s.keys.claims, s.keys.retries, s.keys.cancels}, records, false, args...)
}

// requeue pushes tasks back at the consuming end, first given first
// claimed, each with t.Attempt as its delivery count.
func (s *store) requeue(ctx context.Context, tasks []claimed, redelivery bool) error {
	if len(tasks) == 0 {
		return nil
	}
	if err := s.listsFirst(ctx); err != nil {
		return err
	}
	s.ahead.Store(aheadUnknown) // ahead of what the last claim's read found (withRead)
	flag := "0"
	if redelivery {
		flag = "1"
	}
	// The last pushed is claimed first: push in reverse, in chunks that
	// keep that order across calls. Should a call fail after earlier ones
	// went through, the tasks left pending are the first ones, and
	// recovery puts them back ahead of those pushed: the order holds.
	//
	// A call that a failed connection cut short is made again on another
	// connection, with half as many tasks (a link that drops long
	// exchanges would otherwise cut it each time, and recovery would start
	// over for ever). Whether or not it ran, that keeps the order: the
	// script skips tasks no longer pending, and a call that ran late, after
	// a smaller one, pushes the tasks before those, as it would have.
	lim := fullScript
	var cut cutRetry
	for end := len(tasks); end > 0; {
		start := requeueChunk(tasks, end, lim)
		args := []any{s.value(), s.ttlMS, flag}
		var records []string
		for i := end - 1; i >= start; i-- {
			t := tasks[i]
			r := t.ref()
			args = append(r.args(args), encodeClaimed(t))
			records = append(records, r.record)
		}
		if _, err := s.script(ctx, "requeue on", requeueScript, s.requeueCall(records, args...)...); err != nil {
			if cut.again(ctx, err) {
				lim = lim.halve()
				continue
			}
			return err
		}
		cut.fails = 0
		end = start
	}
	return nil
}
