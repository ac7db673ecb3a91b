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
// pending any more (it finished, or never was) is dropped by the claim
// that takes the last entry ready when it was set, or one that finds the
// ready list empty (below).

// cancelPoll is how often a pool that holds tasks reads its queue's
// cancel marks.
const cancelPoll = 200 * time.Millisecond

// cancelWait bounds how long Cancel waits for the owner of a pending
// task to see its mark.
const cancelWait = 5 * cancelPoll

// A cancel mark whose task is nowhere (a finished task with no history,
// a wrong ID) would otherwise stay until a claim finds the ready list
// empty, and every claim while a mark waits reads each entry's ID in Lua
// rather than being made in place: under a backlog that never empties,
// one stray Cancel would slow the queue for good. The meta hash bounds
// where a marked task can still be. Its taken field counts the entries
// claims take from the consuming end of the ready list while a mark
// waits, less those put back there; its markbound field is a value of
// taken by which every entry of the ready list when it was set has been
// taken: taken then plus the list's unclaimed length. Each entry put
// back at the consuming end takes one from taken and so keeps its place
// in that count, and the bound is raised past every entry in the list
// whenever a mark is set or entries are put back. A claim that takes
// the entry of a marked task finds the mark (every claim reads the IDs
// of what it takes while one waits), so once taken reaches markbound a
// mark whose task no record names is stray, and the claim drops it.
// Values someone else wrote are read as unset: taken starts again from
// zero without a bound, and the next claim sets one.
const (
	markTakenField = "marktaken"
	markBoundField = "markbound"
)

// luaMarkBound, which needs luaEnd, defines markTaken(meta, n), which
// counts n entries taken from the ready list (put back: negative) and
// returns the count, markBound(meta), the bound (nil: not set), and
// raiseMarkBound(meta, ready, fresh), which raises the bound past every
// entry now in the ready list (fresh: sets it there, when no other mark
// waits for the bound before).
const luaMarkBound = `
local function markTaken(meta, n)
  local p = tonumber(redis.call('HGET', meta, '$markTakenField') or '')
  if not p or p % 1 ~= 0 or math.abs(p) > $maxClaimSeq then
    -- Counted again from zero: a bound set from the count that is gone
    -- goes with it.
    p = 0
    redis.call('HDEL', meta, '$markBoundField')
  end
  p = p + n
  redis.call('HSET', meta, '$markTakenField', string.format('%d', p))
  return p
end
local function markBound(meta)
  local b = tonumber(redis.call('HGET', meta, '$markBoundField') or '')
  if b and b % 1 == 0 and math.abs(b) <= $maxClaimSeq then return b end
  return nil
end
local function raiseMarkBound(meta, ready, fresh)
  local _, held = claimedEnd(meta)
  local len = redis.call('LLEN', ready)
  if held > len then held = 0 end
  local b = markTaken(meta, 0) + len - held
  local old = not fresh and markBound(meta)
  if not old or old < b then redis.call('HSET', meta, '$markBoundField', string.format('%d', b)) end
end
`

// cancelScript cancels a task or marks it to be cancelled.
//
//	KEYS[1] = scheduled set, KEYS[2] = scheduled tasks hash, KEYS[3] = pending hash,
//	KEYS[4] = dead hash, KEYS[5] = cancels hash, KEYS[6] = meta hash, KEYS[7] = claim-sequence hash,
//	KEYS[8] = ready list, then the claim list and done bitmap of each place below
//	ARGV[1] = task ID, ARGV[2] = now ms, ARGV[3] = the number p of places,
//	ARGV[4 .. 3+2p] = claim, place, ...: where claim records named the task when the
//	caller read them (claimPlaces, with the IDs of records that hold none yet read
//	from their lists: findScript), then the fields of every claim record the caller read
//
// Returns {"scheduled", entry} when it removed a scheduled task, {"dead"}
// when the task is a dead letter (not cancelled), {"pending"} when it
// marked a pending task, {"marked"} when it marked a task found nowhere
// else (ready, or unknown). A claim record that names the task at a place
// not given was made since the caller read the records: the task is
// pending (its done bitmap, not given, is not read). A record whose IDs
// are not written yet that the caller did not read was made since too,
// and may hold the task: the script marks the task and returns
// {"recheck"}, and the caller reads the records again and calls again.
// Every claim made while a mark is in the cancels hash writes its IDs
// (the claim script reads them to find the marked tasks), so the second
// call has read every record that has none.
var cancelScript = newScript("cancel", -1, typeCheck(hashAt(2), hashAt(3), hashAt(4), hashAt(5), hashAt(6), hashAt(7), listAt(8))+luaIncr+luaEnd+luaClaimKeys+luaMarkBound+`
local function pending()
  if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return true end
  local given, read = {}, {}
  local p = tonumber(ARGV[3])
  for i = 4, 3 + 2 * p, 2 do given[ARGV[i] .. ':' .. ARGV[i + 1]] = true end
  for i = 4 + 2 * p, #ARGV do read[ARGV[i]] = true end
  local all = redis.call('HGETALL', KEYS[7])
  for i = 1, #all, 2 do
    local v = all[i + 1]
    if idsLater(v) then
      if not read[all[i]] then return 'recheck' end
      -- Its places the caller found in its list.
      local _, d = claimKeys(KEYS[7], all[i])
      for j = 4, 3 + 2 * p, 2 do
        if ARGV[j] == all[i] and bitsOK(d) and redis.call('GETBIT', d, ARGV[j + 1]) == 0 then return true end
      end
    end
    local base = string.byte(v, 1) == $claimedMark and string.find(v, ':', 2, true)
    local from = base and base + 1
    while from do
      local at = string.find(v, ARGV[1], from, true)
      if not at then break end
      if (at - base - 1) % $idLen == 0 then
        local place = string.format('%d', (at - base - 1) / $idLen)
        -- A place the caller did not read was claimed since: pending.
        if not given[all[i] .. ':' .. place] then return true end
        local _, d = claimKeys(KEYS[7], all[i])
        if bitsOK(d) and redis.call('GETBIT', d, place) == 0 then return true end
      end
      from = at + 1
    end
  end
  return false
end
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  local e = redis.call('HGET', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  incr(KEYS[6], 'cancelled', 1)
  return {'scheduled', e or ''}
end
if redis.call('HEXISTS', KEYS[4], ARGV[1]) == 1 then return {'dead'} end
-- The first mark waits for no bound set before it.
local fresh = redis.call('EXISTS', KEYS[5]) == 0
redis.call('HSET', KEYS[5], ARGV[1], ARGV[2])
-- Before the mark may be left for a second call (recheck): claims made
-- in between may pass a bound set before it.
raiseMarkBound(KEYS[6], KEYS[8], fresh)
local found = pending()
if found == 'recheck' then return {'recheck'} end
if found then return {'pending'} end
return {'marked'}
`)

// Cancel cancels the task id of orderID, and returns where it found it.
// orderID routes the call to the task's queue, where the task is found by
// its ID alone: a task of another OrderID that shares the queue is
// cancelled all the same. Pass the OrderID the task was added with (a
// caller that takes both from a client checks that they belong together
// first, as qugo's cancel does).
//
//   - StateScheduled: the task was scheduled; it is removed and will
//     never run. (Where the queue keeps a history, its status record is
//     written next; should that fail, Cancel returns StateScheduled with
//     the error: the task is cancelled all the same, and Status reads it
//     as unknown.)
//   - StatePending: an analyser holds it. Cancel waits (about 200ms at
//     most, a second at worst) until the queue's owner has seen the
//     cancel: a task that had not started by then never starts, and one
//     running (a graceful stop's ShutdownTimeout included) has its ctx
//     cancelled (its context.Cause is [ErrCancelled]), and unless it then
//     returns nil it
//     is finished as cancelled, not retried. A task held by a Consumer,
//     or by an owner that does not answer within that second, is
//     finished as cancelled when it is claimed again (after a
//     takeover); an owner that answers later (a stalled process) may
//     start it first. Should ctx end, or the mark's read fail, before
//     the owner is seen to take the mark, Cancel returns StatePending
//     with that error: the mark is set, and the task may still start.
//     Should the task's last delivery fail before its owner sees the
//     mark, the task is dead-lettered, and Cancel returns StateDead
//     (replay or purge it, as below).
//   - StateUnknown: the task is in no record but the ready list's, or
//     finished, or never was. It is marked: if it is queued, it is
//     finished as cancelled, never run, when an analyser claims it. A
//     mark whose task is nowhere stays until every task that was queued
//     when it was set has been claimed (or a claim finds the ready list
//     empty), and while any mark waits each claim looks at its entries
//     in the script (docs/performance.md, "Cancel marks"): those claims
//     cost about twice as much. Cancel a task only while it may still
//     run: where the queue keeps a history (Config.Retention), Cancel of
//     a finished task sets no mark.
//   - StateDead: the task is a dead letter, and Cancel leaves it (replay
//     or purge it instead).
//   - StateDone or StateCancelled: where the queue keeps a history, the
//     task is known to have finished; nothing is changed.
//
// StateUnknown with an error (Redis failed, or ctx ended, before the
// mark's reply was read) says nothing of the task: the mark may be set,
// as a write whose reply was lost may have been made.
//
// The queue keeps a history with Config.Retention, or where its owner
// recorded one (a pool or Consumer of a Queue with Retention): Cancel
// reads it as Status does, so a tool without the owner's Config (qugo)
// finds finished tasks too. A cancelled task counts in Stats as
// Cancelled and, where a history is kept, as StateCancelled in its
// status. Its OrderID goes on with its next task. Cancel costs three
// round trips (one more when the history is kept with another retention
// than this Queue's, one more when a pool's latest claims are not
// recorded by task ID yet, one more to record a scheduled task
// cancelled, and a few more while it waits for a pending task's owner)
// whatever the length of the queue, and is safe for concurrent use.
func (q *Queue) Cancel(ctx context.Context, orderID uint64, id string) (TaskState, error) {
	if q.closed.Load() {
		return StateUnknown, ErrClosed
	}
	if !ValidTaskID(id) {
		return StateUnknown, fmt.Errorf("%w: %q is not a task ID", ErrBadConfig, id)
	}
	pi, qi, p, err := q.routeChecked(ctx, orderID)
	if err != nil {
		return StateUnknown, err
	}
	k := newQueueKeys(q.cfg.Prefix, pi, qi)
	// Finished already? Status reads the history with this Queue's
	// retention or the one the queue's owner recorded.
	if st, err := q.Status(ctx, orderID, id); err != nil {
		return StateUnknown, err
	} else if st.State == StateDone || st.State == StateCancelled || st.State == StateDead {
		return st.State, nil
	}
	what := fmt.Sprintf("cancel task %s", id)
	var r []any
	for try := 0; ; try++ {
		r, err = onPartition(ctx, p, what, func(c redis.Conn) ([]any, error) { return cancelOnce(ctx, c, k, id) })
		if err != nil {
			return StateUnknown, err
		}
		if where, _ := redis.String(r[0], nil); where != "recheck" || try == 1 {
			break
		}
	}
	where, _ := redis.String(r[0], nil)
	switch where {
	case "scheduled":
		if len(r) == 2 { // recorded where a history is kept (see recordHistory)
			if e, _ := redis.Bytes(r[1], nil); len(e) > 0 {
				if t, _, err := decodeEntry(e); err == nil {
					rec := historyRecord{state: StateCancelled, added: t.AddedAt, finished: time.Now()}
					err := q.recordHistory(ctx, p, k, id, rec)
					if err != nil {
						return StateScheduled, fmt.Errorf("queue: task %s is cancelled (it was scheduled and is removed), but its status record was not written: %w", id, err)
					}
				}
			}
		}
		return StateScheduled, nil
	case "dead":
		return StateDead, nil
	case "pending", "recheck":
		// recheck: not after a second read (see cancelScript): a record
		// made since may hold it. The mark is set, and the owner
		// finishes it as cancelled should it hold it.
		gone, err := q.awaitSeen(ctx, p, k, id)
		if err != nil || !gone {
			return StatePending, err
		}
		// The mark went with the task: it finished as cancelled, or
		// before its owner saw the mark, acknowledged (as a task that
		// returns nil after its cancel is) or dead-lettered: that one
		// is no more to be finished as cancelled, and is said so.
		if st, err := q.State(ctx, orderID, id); err == nil && st == StateDead {
			return StateDead, nil
		}
		return StatePending, nil
	case "marked":
		return StateUnknown, nil
	}
	return StateUnknown, redisErr(what, fmt.Errorf("%w: unexpected reply %v", ErrMalformed, r))
}

// awaitSeen waits, up to cancelWait, until the owner of the queue of k
// has seen the cancel mark of task id, or the task finished (gone: the
// mark went with it): from then on the task does not start if it has
// not. A mark nobody answers (the task is a Consumer's, or its owner is
// stalled) ends the wait at cancelWait; the claim that takes the task
// again, after a takeover, sees the mark. It returns an error when the
// wait ended before either (ctx ended, or the mark could not be read):
// the task may still start.
func (q *Queue) awaitSeen(ctx context.Context, p *partition, k queueKeys, id string) (gone bool, err error) {
	deadline := time.Now().Add(cancelWait)
	t := time.NewTimer(0)
	defer t.Stop()
	unseen := func(err error) error {
		return fmt.Errorf("queue: task %s is marked to be cancelled, but its owner was not seen to take the mark, and it may still start: %w", id, err)
	}
	for {
		v, err := onPartition(ctx, p, "read cancel of task "+id, func(c redis.Conn) (string, error) {
			return redis.String(doContext(c, ctx, "HGET", k.cancels, id))
		})
		switch {
		case errors.Is(err, redis.ErrNil):
			return true, nil
		case err == nil && (v == cancelSeen || !time.Now().Before(deadline)):
			return false, nil
		case err != nil:
			return false, unseen(err)
		}
		t.Reset(5 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			return false, unseen(ctx.Err())
		}
	}
}

// ValidTaskID reports whether id has the form of a task ID: 20 characters
// of 0-9 and a-v.
func ValidTaskID(id string) bool {
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

// cancelOnce reads the claim records (and, for those whose IDs are not
// written yet, their lists) to find where they name id, and runs
// cancelScript with the keys of those places: two round trips, three when
// a record's IDs are not written yet.
func cancelOnce(ctx context.Context, c redis.Conn, k queueKeys, id string) ([]any, error) {
	records, err := redis.StringMap(doContext(c, ctx, "HGETALL", k.claims))
	if err != nil {
		return nil, err
	}
	// Every field read, not only those of records read as lazy ones: a
	// record the script takes for one (its shape) but this side does not
	// (garbage with a count no claim has) was read all the same, and
	// names no task; it must not read as one made since.
	read := make([]any, 0, len(records))
	for f := range records {
		read = append(read, f)
	}
	all := claimPlaces(records, id)
	var places []claimPlace
	for _, p := range all {
		if p.at >= 0 {
			places = append(places, p)
		}
	}
	if args := findArgs(k, all, id); args != nil {
		// Claims whose records hold no IDs yet: where their lists hold
		// the task, one more round trip.
		r, err := redis.Values(runScript(ctx, findScript, c, args...))
		if err != nil {
			return nil, err
		}
		found, err := parseFound(r, all)
		if err != nil {
			return nil, err
		}
		for _, f := range found {
			places = append(places, f.claimPlace)
		}
	}
	keys := []any{k.sched, k.later, k.pending, k.dead, k.cancels, k.meta, k.claims, k.ready}
	args := []any{id, time.Now().UnixMilli(), len(places)}
	for _, p := range places {
		keys = append(keys, claimListKey(k, p.first), claimDoneKey(k, p.first))
		args = append(args, p.first, p.at)
	}
	args = append(args, read...)
	return redis.Values(runScript(ctx, cancelScript, c, append(append([]any{len(keys)}, keys...), args...)...))
}
