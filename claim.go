package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/gomodule/redigo/redis"
)

// The claim: the script that claims tasks of the ready list (and moves
// due scheduled tasks into it), and the tasks it hands out.

// claimScript moves up to ARGV[3] tasks, and while their entries total at
// most ARGV[4] bytes (at least one task all the same), from the consuming
// (right) end of the ready list into a claim record (claimrec.go): a list
// of the claim's own holding the entries as they were popped, in claim
// order, and a claim-sequence record of their IDs. It pops ARGV[5]
// entries at first, then twice as many each time, so that a claim of
// small entries is one RPOP and one of large entries copies little more
// than its budget; an entry over the budget goes back where it was, with
// those popped after it.
//
// Before it claims, it moves the scheduled tasks due by ARGV[7] whose turn
// has come to the consuming end of the ready list, and it claims no ready
// task added after the due time of a due task that waits (see
// luaScheduled): a scheduled task joins its OrderID's sequence at its due
// time, and the move is fenced, once and atomic. A paused queue (meta
// field paused) moves and claims nothing.
//
//	KEYS[1] = ready list, KEYS[2] = pending hash (of earlier releases), KEYS[3] = lease,
//	KEYS[4] = meta hash, KEYS[5] = claim-sequence hash, KEYS[6] = scheduled set,
//	KEYS[7] = scheduled tasks hash, KEYS[8] = cancels hash,
//	KEYS[9] = claim list of ARGV[8], KEYS[10] = its done bitmap,
//	KEYS[11...] = the list and done bitmap of each of the caller's claims in place, oldest first (below)
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3] = most tasks to claim,
//	ARGV[4] = most bytes to claim, ARGV[5] = entries to pop at first,
//	ARGV[6] = 1 when even the first task must fit the bytes (the caller holds others),
//	ARGV[7] = now, ms since the epoch, ARGV[8] = the claim's first seq, proposed,
//	ARGV[9] = 1 to write the claimed task IDs in the claim's record, 0 when the caller
//	writes them (with an ack: see idsLater),
//	ARGV[10] = 1 to claim in place (below), ARGV[11] = the most entries the claimed end
//	may hold after a claim in place (0: open it first), ARGV[12] = the most claims in
//	place to trim, ARGV[13...] = the firsts of KEYS[11...]
//
// With ARGV[10] = 1 or 2, no cancel mark in the cancels hash, no scheduled task
// due, no large entry counted in the meta hash (large.go) and the queue
// not paused, the claim is made in place (claimend.go),
// with no entry passing through Lua and none copied: the finished claims
// in place at the very end of the ready list leave it first (those of
// KEYS[11...] that are the oldest in turn, up to ARGV[12]), then the next ARGV[5] entries
// past the claimed end become a claim in place, whose record holds its
// count; the script returns {-3, n, first, off, endFirst}, off being the
// entries of older claims in place between it and the consuming end, and
// the caller reads the entries (readInPlace) and keeps to its byte budget
// itself (it hands back what does not fit; it asks for no more entries
// than the budget holds at largeEntry each). A claim that must look at
// the entries (a cancel mark, a due scheduled task, a large entry counted,
// ARGV[10] = 0), or
// finds the queue paused, nothing past the end or the end at ARGV[11]
// entries, while the end is claimed in place, first opens the end (as
// endScript does) when the claims of ARGV[13...] are those in place
// after the trims; else it returns {-4} (after those trims, before any
// other write): the caller opens the end (endScript) and claims again.
// With ARGV[10] = 2 a claim that is not made in place is not made while
// entries are past the end or a scheduled task is due: the script returns
// {-5, endFirst, endSize} after the trims, before any other write (the
// caller reads entries with the claim: see withRead); with neither, it
// goes on as with 1 (it finds the queue empty or paused).
//
// It refuses, before any write, with seqReply and the first seq to
// propose instead, a proposal below the meta hash's claim count or one a
// claim record, list or done bitmap holds (see luaClaimAfter); and with
// badValueReply a claim that could count past maxClaimSeq.
//
// The script's own loop takes the large entries it claims off the count
// (takeLarge), and the due scheduled tasks it moves count as any entry
// put into the ready list (addLarge).
//
// A claim that finds the ready list empty, or that takes the last entry
// that was ready when the marks were set (the marks' bound: cancel.go),
// drops the cancel marks of tasks that are not pending either (they are
// nowhere any more), up to scriptChunk of them, so that however many
// marks a queue holds no claim holds Redis for long (and a cancels hash
// of another type is left alone).
//
// Otherwise it returns {entry..., k cancelled indexes..., k, flags, first}: the i-th entry
// (1-based) has claim seq first+i and place i-1 in the claim list of
// first, and the k indexes name the entries whose cancel was asked
// (their tasks are finished as cancelled, never run); {0, next, n} when
// the ready list is empty, next being the due time of the next scheduled
// task (-1: none) and n the number of scheduled tasks; {-1} when the
// first task does not fit and must; {-2, next, n} when the queue is
// paused (and not empty). The claim-sequence record, under first, holds
// claimedMark, first, ':' and the entries' IDs back to back (a malformed
// entry's as seqFiller); or, with ARGV[9] = 0, claimedMark, first,
// idsLater and the number of entries, when the cancels hash holds no mark
// (a mark's task must be found among the entries, by ID, and a Cancel
// must find it in the record: see cancelScript). In flags, 1 says that
// the record holds the IDs (else the caller is to write them), 2 that
// SORT was refused.
// (The loop indexes its tables rather than asking for their length, and
// first goes last rather than shifting the reply.)
var claimScript = newScript("claim", -1, fenced(3, typeCheck(hashAt(2), hashAt(4), hashAt(5))+luaIncr+luaLarge+luaEnd+luaClaimKeys+luaOpenEnd+luaNamed+luaClaimAfter+luaMarkBound+`
local m4 = redis.call('HMGET', KEYS[4], 'seq', 'paused', '$largeField')
local last = m4[1]
if last and not (string.match(last, '^%d+$') and #last <= 15) then
  return redis.error_reply('$badValueReply ' .. KEYS[4] .. ' field seq holds ' .. string.format('%q', string.sub(last, 1, 40)) .. ', not a claim count')
end
local seq0 = tonumber(last or '0')
if tonumber(ARGV[8]) < seq0 then return redis.error_reply('$seqReply ' .. string.format('%d', seq0)) end
if redis.call('EXISTS', KEYS[9], KEYS[10]) > 0 or redis.call('HEXISTS', KEYS[5], ARGV[8]) == 1 then
  return redis.error_reply('$seqReply ' .. string.format('%d', claimAfter(KEYS[5], tonumber(ARGV[8]))))
end
if tonumber(ARGV[8]) + tonumber(ARGV[3]) > $maxClaimSeq then
  return redis.error_reply('$badValueReply ' .. KEYS[4] .. ' field seq: a claim of ' .. ARGV[3] .. ' tasks from ' .. ARGV[8] .. ' would count past $maxClaimSeq')
end
`, `local due0 = redis.call('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')
-- The caller's claims in place, oldest first (ARGV from 13 on, their
-- lists and done bitmaps from KEYS[11] on), from the first not trimmed.
local given, trims = 13, tonumber(ARGV[12])
local function inPlace(ask)
  -- The finished claims at the very end leave it, oldest first, up to
  -- ARGV[12] of them.
  local f, size = claimedEnd(KEYS[4])
  local f0, t = f, given
  while size > 0 and t < 13 + trims and ARGV[t] == string.format('%d', f) do
    local d = KEYS[2 * t - 14]
    local n = recordCount(redis.call('HGET', KEYS[5], ARGV[t]))
    if not n or n > size or not bitsOK(d) or redis.call('BITPOS', d, 0) < n then break end
    redis.call('LTRIM', KEYS[1], 0, -n - 1)
    redis.call('DEL', d)
    redis.call('HDEL', KEYS[5], ARGV[t])
    f, size, t = f + n, size - n, t + 1
  end
  given = t
  local first = tonumber(ARGV[8])
  local n = math.min(ask, redis.call('LLEN', KEYS[1]) - size)
  if n <= 0 or size > 0 and f + size ~= first or size + n > tonumber(ARGV[11]) then
    if f ~= f0 then setClaimedEnd(KEYS[4], f, size) end
    return nil
  end
  if size == 0 then f = first end
  setClaimedEnd(KEYS[4], f, size + n)
  redis.call('HSET', KEYS[4], 'seq', string.format('%d', first + n))
  redis.call('HSET', KEYS[5], ARGV[8], string.char($claimedMark) .. ARGV[8] .. '$idsLater' .. string.format('%d', n))
  incr(KEYS[4], 'pending', n)
  return {-3, n, first, size, f}
end
local fast = ARGV[10] ~= '0' and (not m4[3] or m4[3] == '0') and redis.call('EXISTS', KEYS[8]) == 0
if fast and m4[2] ~= '1' and not (due0[2] and tonumber(due0[2]) <= tonumber(ARGV[7])) then
  local r = inPlace(math.min(tonumber(ARGV[5]), tonumber(ARGV[3])))
  if r then return r end
end
if ARGV[10] == '2' then
  local f, size = claimedEnd(KEYS[4])
  if due0[2] and tonumber(due0[2]) <= tonumber(ARGV[7]) or redis.call('LLEN', KEYS[1]) > size then
    return {-5, f, size}
  end
end
local _, held = claimedEnd(KEYS[4])
if held > 0 then
  -- Opened here when the caller named every claim in place.
  local firsts, lists, bits = {}, {}, {}
  for t = given, #ARGV do
    firsts[#firsts + 1], lists[#lists + 1], bits[#bits + 1] = ARGV[t], KEYS[2 * t - 15], KEYS[2 * t - 14]
  end
  if not openEnd(KEYS[1], KEYS[4], KEYS[5], firsts, lists, bits) then return {-4} end
end
`+luaScheduled+`if promoted > 0 and redis.call('EXISTS', KEYS[8]) == 1 then
  -- Put at the consuming end: see luaMarkBound.
  markTaken(KEYS[4], -promoted)
  raiseMarkBound(KEYS[4], KEYS[1])
end
local want, budget, ask = tonumber(ARGV[3]), tonumber(ARGV[4]), math.min(tonumber(ARGV[5]), tonumber(ARGV[3]))
local strict = ARGV[6] == '1'
if fast and not waiting and not addedLarge then
  local r = inPlace(ask)
  if r then return r end
end
-- Each entry passes through Lua below: at most $maxClaim of them.
want, ask = math.min(want, $maxClaim), math.min(ask, $maxClaim)
-- While large entries are counted, the entries popped at a time are those
-- the bytes left hold at largeEntry each: fewer go back.
local n, bytes = 0, 0
local guard = addedLarge or m4[3] and m4[3] ~= '0'
local function room()
  if not guard then return want end
  return math.max(1, math.floor((budget - bytes) / $largeEntry))
end
ask = math.min(ask, room())
-- Drops the cancel marks whose task no record names: up to $scriptChunk
-- of them, drawn at random when there are more. Called when no task a
-- mark names can be in the ready list any more.
local function dropStray()
  local ids = redis.pcall('HRANDFIELD', KEYS[8], $scriptChunk)
  if type(ids) == 'table' and not ids.err then
    for _, id in ipairs(ids) do
      if not named(KEYS[5], KEYS[2], id) then redis.call('HDEL', KEYS[8], id) end
    end
  end
end
local items = redis.call('RPOP', KEYS[1], ask)
if not items then
  if m4[3] then redis.call('HDEL', KEYS[4], '$largeField') end
  if redis.call('EXISTS', KEYS[8]) == 1 then
    -- Nothing is ready: a cancel mark whose task is not pending either
    -- names a task that is nowhere any more.
    dropStray()
  end
  return {0, nextDue(), redis.call('ZCARD', KEYS[6])}
end
local sub, byte = string.sub, string.byte
local seq = {}
local marks = redis.call('EXISTS', KEYS[8]) == 1
local ids = ARGV[9] == '1' or marks
local got, large = items, 0
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
    if size > $largeEntry then large = large + 1 end
    if got ~= items then items[n] = e end
    if ids then
      local v = byte(e, 1)
      if size >= $entryHeader and v <= $entryFlags and v % 2 == $entryTask then
        seq[n] = sub(e, 2, $entryHeader)
      else
        seq[n] = '$seqFiller'
      end
    end
  end
  if n >= want or m < ask then break end
  ask = math.min(ask * 2, want - n, room())
  got = redis.call('RPOP', KEYS[1], ask)
  if not got then break end
end
if n == 0 then return {-1} end
if large > 0 or m4[3] then takeLarge(KEYS[4], KEYS[1], large) end
local first, f, l = tonumber(ARGV[8]), ARGV[8], KEYS[9]
redis.call('HSET', KEYS[4], 'seq', string.format('%d', first + n))
for i = 1, n, $scriptChunk do
  redis.call('RPUSH', l, unpack(items, i, math.min(i + $scriptChunk - 1, n)))
end
if ids then
  redis.call('HSET', KEYS[5], f, string.char($claimedMark) .. f .. ':' .. table.concat(seq))
else
  redis.call('HSET', KEYS[5], f, string.char($claimedMark) .. f .. '$idsLater' .. string.format('%d', n))
end
incr(KEYS[4], 'pending', n)
local k = 0
if marks then
  -- One HMGET for every claimed ID (at most $maxClaim), not a call each.
  local got = redis.pcall('HMGET', KEYS[8], unpack(seq, 1, n))
  if type(got) == 'table' and not got.err then
    for i = 1, n do
      if got[i] then
        k = k + 1
        items[n + k] = i
      end
    end
  end
  -- Past the marks' bound, a mark no record names (this claim's record
  -- names the tasks it found) is stray: up to $scriptChunk are dropped,
  -- and the bound is raised for those left (also one not set, its
  -- fields lost). Where more are left, the next bound drops more: one
  -- claim a backlog pays for a drop. Where none is left, the bound goes,
  -- so that a mark set without raising it (by an earlier release's
  -- Cancel) finds none, and the next claim sets one past it.
  local taken, bound = markTaken(KEYS[4], n), markBound(KEYS[4])
  if bound and taken >= bound then dropStray() end
  if redis.call('EXISTS', KEYS[8]) == 0 then
    redis.call('HDEL', KEYS[4], '$markBoundField')
  elseif not bound or taken >= bound then
    raiseMarkBound(KEYS[4], KEYS[1])
  end
end
items[n + k + 1] = k
items[n + k + 2] = ids and 1 or 0
items[n + k + 3] = first
return items
`))

// seqFiller stands in a claim-sequence record for a malformed entry, which
// has no task ID: 20 bytes no task ID has.
const seqFiller = "--------------------"

// claimed is a task in this process's hands, with its claim and place in
// it, and claim seq.
type claimed struct {
	Task
	field     string      // its ID, or "bad:<seq>"; in the pending hash of earlier releases (claim nil), its field there
	seq       int64       // claim seq
	claim     *claimBatch // its claim record; nil: a record of the pending hash
	place     int32       // its place in the claim record
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

// errNoRoom is claim's answer, in strict mode, when the next task does not
// fit the bytes left.
var errNoRoom = errors.New("queue: the next task does not fit the bytes left")

// maxClaim bounds the tasks one claim takes through the claim script's
// own loop, each entry passing through Lua, and maxMoved those of a claim
// in place (no entry passes through Lua or is copied; the read of its
// entries costs Redis the most: see docs/performance.md). Either keeps one claim's script well under a
// millisecond of Redis's time for small entries.
const (
	maxClaim = 1000
	maxMoved = 4000
)

// firstClaim bounds the claims of a store that claims in place until one
// took entries. Until then the entry size is unknown and guessed as large
// as MaxPayload allows (entryGuess): a claim in place, which reads its
// entries after, takes as few as that guess fits, or none, and then the
// script's own loop claims, each entry through Lua. A small claim returns
// in a fraction of the time maxClaim's would take, and a pool's workers
// start on it while the next claim, sized by it, is made in place.
const firstClaim = 128

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
	maxBytes = max(maxBytes, 1)
	strictArg := 0
	if strict {
		strictArg = 1
	}
	idsArg, nativeArg := 1, 0
	if s.idsLater {
		idsArg = 0
	}
	native := s.native.Load() && !s.exactNext.Swap(false)
	if native {
		nativeArg = 1
		n = min(n, maxMoved)
		if s.entrySize.Load() == 0 {
			n = min(n, firstClaim)
		}
	} else {
		n = min(n, maxClaim)
	}
	// Pop as many at first as fit the budget at the entry size seen so
	// far: one RPOP for small entries, a few for large ones.
	pop := int(min(int64(n), max(1, maxBytes/s.entryGuess())))
	read := 0
	if native {
		// A claim in place takes pop entries unseen, none of them large
		// (large.go): their read stays within the budget.
		pop = min(pop, int(max(1, maxBytes/largeEntry)))
	}
	n0, pop0 := n, pop
	if native {
		if read = s.withRead(n, pop, maxBytes); read > 0 {
			n, pop, nativeArg = read, read, 2 // in place, or not at all
		}
	}
	var r []any
	var got *endRead
	var err error
	made := s.endMade.Load()
	for try := 0; ; try++ {
		s.asked.Store(int64(n))
		first := strconv.FormatInt(s.nextFirst.Load(), 10)
		keys := []any{s.keys.ready, s.keys.pending, s.keys.lease, s.keys.meta, s.keys.claims, s.keys.sched, s.keys.later, s.keys.cancels,
			claimListKey(s.keys, first), claimDoneKey(s.keys, first)}
		ends, trims, off := s.endClaims()
		args := []any{s.value(), s.ttlMS, n, maxBytes, pop, strictArg, time.Now().UnixMilli(), first, idsArg, nativeArg, s.endRoom(len(ends)), trims}
		for _, f := range ends {
			keys = append(keys, claimListKey(s.keys, f), claimDoneKey(s.keys, f))
			args = append(args, f)
		}
		call := append(append([]any{len(keys)}, keys...), args...)
		if native {
			// The claim trims only the claims whose acks Redis confirmed
			// (certain to be finished), so where its entries will be is
			// known: they are read in the same round trip
			// (claimThenRead), as many as withRead lets.
			r, got, err = s.claimThenRead(ctx, call, off, read)
		} else {
			r, err = redis.Values(s.script(ctx, "claim from", claimScript, call...))
		}
		if err == nil && len(r) == 3 {
			if code, _ := r[0].(int64); code == -5 {
				// Not to be made in place: claimed again, alone.
				f, size := parseEnd(r[1], r[2])
				s.trimmedTo(f, size)
				s.declined.Store(true)
				nativeArg, read, n, pop = 1, 0, n0, pop0
				continue
			}
		}
		if err == nil && len(r) == 1 {
			if code, _ := r[0].(int64); code == -4 {
				// The end is claimed in place, and this claim must look
				// at its entries: open it, and claim again.
				if err = s.openEnd(ctx); err != nil || try == seqTries-1 {
					break
				}
				continue
			}
		}
		next, refused := seqRefusal(err)
		if !refused {
			break
		}
		s.nextFirst.Store(next) // kept when the tries run out: the next claim goes on from there
		if try == seqTries-1 {
			break
		}
	}
	if err != nil {
		return dst[:0], false, err
	}
	if len(r) == 1 {
		if code, _ := r[0].(int64); code == -4 {
			return dst[:0], false, redisErr(s.what("claim from"), fmt.Errorf("the claimed end was claimed again each of %d times it was opened", seqTries))
		}
	}
	if len(r) > 0 {
		if code, ok := r[0].(int64); ok { // no entry: a code
			switch {
			case code == -1:
				s.openedEnd(made) // the script's own loop: no end claimed
				err = errNoRoom
			case code == -3 && len(r) == 5:
				return s.claimMoved(ctx, r, got, maxBytes, strict, dst)
			case len(r) == 3 && (code == 0 || code == -2):
				s.openedEnd(made) // the script left no end claimed
				next, _ := redis.Int64(r[1], nil)
				n, err := redis.Int64(r[2], nil)
				if err != nil {
					n = -1
				}
				s.setSchedHead(next, n)
				s.paused.Store(code == -2)
			default:
				err = redisErr(s.what("claim from"), fmt.Errorf("%w: unexpected claim reply %v", ErrMalformed, r))
			}
			return dst[:0], false, err
		}
	}
	s.paused.Store(false)
	s.openedEnd(made) // the script's own loop: no end claimed
	if len(r) < 4 {
		return dst[:0], false, redisErr(s.what("claim from"), fmt.Errorf("%w: short claim reply", ErrMalformed))
	}
	first, err := redis.Int64(r[len(r)-1], nil)
	if err != nil {
		return dst[:0], false, redisErr(s.what("claim from"), err)
	}
	flags, err := redis.Int(r[len(r)-2], nil)
	if err != nil {
		return dst[:0], false, redisErr(s.what("claim from"), err)
	}
	written := flags & 1
	k, err := redis.Int(r[len(r)-3], nil)
	if err != nil || k < 0 || k > len(r)-4 {
		return dst[:0], false, redisErr(s.what("claim from"), fmt.Errorf("%w: bad cancel count in claim reply", ErrMalformed))
	}
	marks := r[len(r)-3-k : len(r)-3]
	return s.takeClaimed(ctx, bytesOf(r[:len(r)-3-k]), first, written == 1, marks, dst, nil)
}

// entryGuess returns the size to expect of the next entries: the mean of
// the last claim's, or before any, the largest an entry may be.
func (s *store) entryGuess() int64 {
	if n := s.entrySize.Load(); n > 0 {
		return n
	}
	return max(s.maxEntry, 1)
}

// pendingField is the field a claimed entry goes under in the dead-letter
// store: its ID, or "bad:<seq>" when it has no readable header.
func pendingField(entry []byte, seq int64) string {
	if len(entry) >= entryHeader && isEntryStart(entry[0]) {
		return string(entry[1:entryHeader])
	}
	return "bad:" + strconv.FormatInt(seq, 10)
}
