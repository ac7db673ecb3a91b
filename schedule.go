package queue

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Scheduled tasks wait in two keys of their queue: the scheduled set
// (task ID by due time, in ms since the epoch) and the scheduled tasks
// hash (task ID -> encoded task). The claim script of the queue's owner
// moves each due one to the consuming end of the ready list when its turn
// comes, fenced, once and atomically (see claimScript and luaScheduled),
// so a scheduled task joins its OrderID's sequence at its due time,
// whenever the owner gets to it: the tasks of its OrderID added before
// then run before it, those added after run after it. Due times and the
// times tasks were added are the producers' clocks, and due is judged by
// the owner's: keep the clocks in sync (NTP), as leases already need
// Redis's clock for their TTL.

// luaScheduled is the part of claimScript that moves due scheduled tasks
// to the ready list, each in its place by time, and stops a paused queue.
//
// A scheduled task joins its OrderID's sequence at its due time however
// late the owner gets to it (no one held the lease then, or the owner was
// paused or busy): it goes to the consuming end once every ready task
// added before its due time has been claimed, ahead of those added after.
// The ready list holds tasks in the order they were added and each entry
// says when (AddedAt), so this is a merge of two ordered sequences that
// reads only their heads: the due tasks earlier than the next ready task
// move ahead of it, and a claim stops before the first ready task added
// after the due time of a due task that still waits. A ready task added
// in the very millisecond another falls due goes first. Nothing moves
// while the queue is paused; a paused queue with nothing ready or due
// reads as empty, so that ExitOnEmpty ends. A claim moves at most
// ARGV[3] due tasks and scriptBytes of their entries (at least one
// however large), so that no claim holds Redis for long: the rest wait
// for the next claims, and meanwhile no ready task added after them is
// claimed.
//
// It defines now, nextDue() (the next due time, rounded up; -1: none),
// addedAt(entry) (nil when the entry does not read) and waiting (the
// score of a due task that waits for ready tasks added before it; nil:
// none). It counts the large entries it moves (large.go: addLarge, with
// the meta hash at KEYS[4]).
const luaScheduled = `
local now = tonumber(ARGV[7])
local function nextDue()
  local z = redis.call('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')
  if z[2] then return math.ceil(tonumber(z[2])) end
  return -1
end
if m4[2] == '1' then
  local nd = nextDue()
  if nd >= 0 and nd <= now or redis.call('LLEN', KEYS[1]) > 0 then return {-2, nd, redis.call('ZCARD', KEYS[6])} end
  return {0, nd, redis.call('ZCARD', KEYS[6])}
end
local function addedAt(e)
  if not e or #e < $entryHeader then return nil end
  local v = string.byte(e, 1)
  if v > $entryFlags or v % 2 ~= $entryTask then return nil end
  local i = $entryHeader + 1
  repeat -- past the OrderID
    v = string.byte(e, i)
    if not v then return nil end
    i = i + 1
  until v < 128
  local ms, mul = 0, 1
  while true do
    v = string.byte(e, i)
    if not v then return nil end
    if v < 128 then return ms + v * mul end
    ms, mul, i = ms + (v - 128) * mul, mul * 128, i + 1
  end
end
local waiting, promoted = nil, 0
local z = redis.call('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')
if z[2] and tonumber(z[2]) <= now then
  local upto = ARGV[7]
  local head = addedAt(redis.call('LINDEX', KEYS[1], -1))
  if head and head <= now then upto = '(' .. string.format('%d', head) end
  local due = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', upto, 'LIMIT', 0, tonumber(ARGV[3]))
  if #due > 0 then
    -- Up to scriptBytes of entries, at least one however large.
    local take, size = 0, 0
    for i = 1, #due do
      local n = redis.call('HSTRLEN', KEYS[7], due[i])
      if take > 0 and size + n > $scriptBytes then break end
      take, size = i, size + n
    end
    local es = redis.call('HMGET', KEYS[7], unpack(due, 1, take))
    local large = 0
    for i = take, 1, -1 do
      if es[i] then
        redis.call('RPUSH', KEYS[1], es[i])
        promoted = promoted + 1
        if #es[i] > $largeEntry then large = large + 1 end
      end
    end
    addLarge(KEYS[4], KEYS[1], large)
    redis.call('ZREM', KEYS[6], unpack(due, 1, take))
    redis.call('HDEL', KEYS[7], unpack(due, 1, take))
    z = redis.call('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')
  end
  if z[2] and tonumber(z[2]) <= now then waiting = tonumber(z[2]) end
end
`

// scheduleStep orders the tasks scheduled for one millisecond: each takes
// the score of the one scheduled last for that millisecond plus
// scheduleStep, so that they fall due in the order Redis accepted them. A
// sorted set orders equal scores by member, here the task ID, which is no
// order at all across producers. A millisecond holds 1024 steps; past
// that, ties go by ID. The sum is exact in a double while due times are
// below scheduleExact, 2^43 ms (the year 2248); a due time is its score
// rounded down. Later due times take no step (ties go by ID), so that a
// rounded sum never reaches the next millisecond.
const (
	scheduleStep  = 1.0 / 1024
	scheduleExact = 1 << 43
)

// scheduleScript adds scheduled tasks.
//
//	KEYS[1] = scheduled set, KEYS[2] = scheduled tasks hash
//	ARGV[1...] = due ms, task ID, encoded task, ...
//
// Returns the number added. (A score goes out as a string of 17 digits: a
// Lua number would go out with 14, and lose the step.)
var scheduleScript = newScript("schedule", 2, typeCheck(keyType{1, "zset"}, hashAt(2))+`
local n = 0
for i = 1, #ARGV, 3 do
  local due = tonumber(ARGV[i])
  local score = due
  local last = redis.call('ZREVRANGEBYSCORE', KEYS[1], '(' .. string.format('%d', due + 1), ARGV[i], 'WITHSCORES', 'LIMIT', 0, 1)
  if last[2] and due < $scheduleExact then score = math.min(tonumber(last[2]) + $scheduleStep, due + 1 - $scheduleStep) end
  redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
  redis.call('ZADD', KEYS[1], string.format('%.17g', score), ARGV[i + 1])
  n = n + 1
end
return n
`)

// maxDue is the latest due time a task may have: its millisecond count
// is exact as a sorted set's score (a float64), and far from wrapping
// (past year 292,277,026 a time's UnixMilli wraps to 0 or below, which
// would make the task due at once).
var maxDue = time.UnixMilli(1 << 53)

// dueMS returns the millisecond count a task due at at is kept under:
// at, rounded up, so that the task never starts before at (a count
// rounded down would let it start up to a millisecond early).
func dueMS(at time.Time) int64 {
	ms := at.UnixMilli()
	if at.After(time.UnixMilli(ms)) {
		ms++
	}
	return ms
}

// checkDue refuses a due time after maxDue.
func checkDue(at time.Time) error {
	if at.After(maxDue) {
		return fmt.Errorf("%w: due time %v after %v", ErrBadConfig, at, maxDue)
	}
	return nil
}

// scheduleChunk returns how many of args (due, ID, entry triples) one
// schedule script takes: at most scriptChunk tasks and scriptBytes of
// entries, and one task however large, so that no script holds Redis for
// long.
func scheduleChunk(args []any) int { return argsChunk(args, 3) }

// AddTaskAt enqueues payload for orderID to run at or after at, and
// returns the new task's ID. The task joins its OrderID's sequence when
// it falls due, even if no analyser holds its queue then, or the one
// that does is paused or busy: tasks of its OrderID added before then run
// before it, tasks added after run after it (by the time they were
// added: one added in the very millisecond it falls due goes first);
// tasks of one queue scheduled for the same millisecond fall due in the
// order Redis accepted them, whichever process added them. A time not in
// the future adds the task at once, as AddTask; one past 2^53 ms after
// 1970 (in the year 287,396: a millisecond count a sorted set's score no
// longer holds exactly) is refused with ErrBadConfig. The due time is kept to the millisecond,
// rounded up: the task never starts before at. Until then it counts in
// Stats as Scheduled, and
// Cancel removes it for good. When it returns nil the task is in Redis;
// the queue's owner moves it to the ready list within a few milliseconds
// of its due time, even when idle (on a server that refuses key
// tracking, such as a proxy, an idle pool learns of a task scheduled
// during its wait within a second). It is safe for concurrent use and
// costs one round trip.
func (q *Queue) AddTaskAt(ctx context.Context, orderID uint64, at time.Time, payload []byte, opts ...AddOption) (string, error) {
	return q.AddTask(ctx, orderID, payload, append(opts[:len(opts):len(opts)], At(at))...)
}

// At schedules the task added with AddTask: it is AddTaskAt. AddTaskOnce
// refuses it.
func At(t time.Time) AddOption { return func(o *addOptions) { o.at = t } }

// schedule writes the scheduled task a.
func (q *Queue) schedule(ctx context.Context, a addition) error {
	k := newQueueKeys(q.cfg.Prefix, a.pi, a.qi)
	_, err := onPartition(ctx, a.p, fmt.Sprintf("schedule task on partition %d queue %d", a.pi, a.qi), func(c redis.Conn) (any, error) {
		return runScript(ctx, scheduleScript, c, k.sched, k.later, dueMS(a.due), a.id, a.entry)
	})
	return err
}

// AddTaskAfter is AddTaskAt(ctx, orderID, time.Now().Add(d), payload, opts...).
func (q *Queue) AddTaskAfter(ctx context.Context, orderID uint64, d time.Duration, payload []byte, opts ...AddOption) (string, error) {
	return q.AddTaskAt(ctx, orderID, time.Now().Add(d), payload, opts...)
}

// ScheduledTask is a task waiting for its due time.
type ScheduledTask struct {
	Task
	Due time.Time // when it is due, by the producer's clock, to the millisecond
}

// Scheduled returns up to limit scheduled tasks of analyser's queue,
// earliest due first, skipping the first offset (a negative offset is
// ErrBadConfig). It is safe for concurrent use and costs two round trips
// (the due times, then the tasks).
func (q *Queue) Scheduled(ctx context.Context, analyser, offset, limit int) ([]ScheduledTask, error) {
	p, k, err := q.analyserKeys(analyser)
	if err != nil {
		return nil, err
	}
	if offset < 0 {
		return nil, fmt.Errorf("%w: offset %d is negative", ErrBadConfig, offset)
	}
	if limit <= 0 {
		return nil, nil
	}
	if err := q.verifyLayout(ctx, p); err != nil {
		return nil, err
	}
	last := -1 // the end of the set, for a limit that reaches past an int
	if limit-1 <= math.MaxInt-offset {
		last = offset + limit - 1
	}
	return onPartition(ctx, p, fmt.Sprintf("list scheduled tasks of analyser %d", analyser), func(c redis.Conn) ([]ScheduledTask, error) {
		r, err := redis.Values(doContext(c, ctx, "ZRANGE", k.sched, offset, last, "WITHSCORES"))
		if err != nil || len(r) == 0 {
			return nil, err
		}
		args := []any{k.later}
		for i := 0; i+1 < len(r); i += 2 {
			args = append(args, r[i])
		}
		entries, err := redis.ByteSlices(doContext(c, ctx, "HMGET", args...))
		if err != nil {
			return nil, err
		}
		var out []ScheduledTask
		for i, e := range entries {
			if e == nil {
				continue // moved to the ready list meanwhile
			}
			t, _, err := decodeEntry(e)
			if err != nil {
				t = Task{}
				t.ID, _ = redis.String(r[2*i], nil)
			}
			score, _ := redis.Float64(r[2*i+1], nil)
			out = append(out, ScheduledTask{Task: t, Due: dueTime(score)})
		}
		return out, nil
	})
}

// dueTime is the due time of a scheduled set's score (see scheduleStep).
// A score no add writes (one set by hand past maxDue either way, or NaN)
// reads as maxDue's bound on its side rather than wrapping around.
func dueTime(score float64) time.Time {
	switch limit := float64(maxDue.UnixMilli()); {
	case score > limit:
		return maxDue
	case score < -limit:
		return time.UnixMilli(-maxDue.UnixMilli())
	case score != score: // NaN
		return maxDue
	}
	return time.UnixMilli(int64(math.Floor(score)))
}
