package queue

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Acknowledging claimed tasks, and dropping the claim records that serve
// no more: the scripts that finish tasks by their places in their
// claims' done bitmaps (see claimrec.go).

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
//	KEYS[5] = history bucket, KEYS[6] = cancels hash, KEYS[7] = ready list (claims in place)
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3] = number of claims m,
//	ARGV[4] = history expiry (ms since the epoch; 0: keep none), ARGV[5] = retention ms,
//	ARGV[6 .. 5+3m] = claim (its first seq), bitmap of places, the claim's task IDs
//	back to back when its record does not hold them yet ("" otherwise), ...,
//	then, with a history expiry, claim, place, packed task ID, status record, ...
//
// Returns {the number of tasks it finished (also added to processed), 1
// when the queue holds retry records or cancel marks (the IDs of the
// tasks finished were needed), else 0}.
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
    local held = redis.call('TYPE', l).ok == 'list' or inEnd(KEYS[3], ARGV[i])
    if ARGV[i + 3] ~= '' and held and bitsOK(d) and redis.call('GETBIT', d, ARGV[i + 1]) == 0 then
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
local byID = marks or redis.call('EXISTS', KEYS[4]) == 1
if byID then
  -- The IDs at the places acknowledged, from the claim-sequence records,
  -- or those given, or else the claim's list.
  local ids = {}
  for i = 6, last, 3 do
    local v, bits = redis.call('HGET', KEYS[1], ARGV[i]), ARGV[i + 1]
    local base = v and string.byte(v, 1) == $claimedMark and string.find(v, ':', 2, true)
    if not base and ARGV[i + 2] ~= '' then v, base = ARGV[i + 2], 0 end
    local l = claimKeys(KEYS[1], ARGV[i])
    local list = not base and v and string.byte(v, 1) == $claimedMark and redis.call('TYPE', l).ok == 'list'
    local off = not base and not list and v and string.byte(v, 1) == $claimedMark and inEnd(KEYS[3], ARGV[i])
    local places = {}
    for j = 1, #bits do
      local b = string.byte(bits, j)
      local k = 0
      while b > 0 do
        if b >= 128 then places[#places + 1] = (j - 1) * 8 + k end
        b, k = (b % 128) * 2, k + 1
      end
    end
    if base then
      for _, place in ipairs(places) do
        local at = base + 1 + place * $idLen
        ids[#ids + 1] = string.sub(v, at, at + $idLen - 1)
      end
    elseif (list or off) and #places > 0 then
      -- One LRANGE over the places' span, or a LINDEX each for a few
      -- (each walks the list to its place); a claim in place's entries
      -- are in the ready list, its place p at -(off+p+1).
      local from, to, span = places[1], places[#places], nil
      if #places > 16 then
        if list then span = redis.call('LRANGE', l, from, to) else span = redis.call('LRANGE', KEYS[7], -(off + to + 1), -(off + from + 1)) end
      end
      for _, place in ipairs(places) do
        local e
        if span and list then e = span[place - from + 1]
        elseif span then e = span[to - place + 1]
        elseif list then e = redis.call('LINDEX', l, place)
        else e = redis.call('LINDEX', KEYS[7], -(off + place + 1)) end
        if e and string.byte(e, 1) == $accountedByte then e = string.sub(e, 2) end
        if e and #e >= $entryHeader then ids[#ids + 1] = string.sub(e, 2, $entryHeader) end
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
return {n, byID and 1 or 0}
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
      local k = openPlaces(l, d)
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
      left = left + openPlaces(l, d)
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

// ack finishes the tasks ts, acknowledged, as ackScript does, ackChunk
// tasks to a round trip. With a retention, recs holds the status records
// of ts (history.go); a nil recs keeps none.
func (s *store) ack(ctx context.Context, ts []ackRef, recs []historyRecord) (int, error) {
	done := 0
	keep := s.retention > 0 && len(recs) == len(ts)
	var bits map[*claimBatch][]byte
	var order, sent []*claimBatch
	for len(ts) > 0 {
		n := min(len(ts), s.ackChunk())
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
		sent = sent[:0]
		for i, b := range order {
			records[i] = b.record
			ids := ""
			if b.ids != "" && (s.idsNow.Load() || time.Since(b.at) >= s.idsAfter) {
				ids = b.ids
				sent = append(sent, b)
			}
			args = append(args, b.record, bits[b], ids)
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
		call := s.claimCall([]any{s.keys.claims, s.keys.lease, s.keys.meta, s.keys.retries, bucket, s.keys.cancels, s.keys.ready}, records, true, args...)
		k, byID, err := ackReply(s.script(ctx, "ack on", ackScript, call...))
		done += k
		if err != nil {
			return done, err
		}
		s.idsNow.Store(byID)
		for _, b := range sent {
			b.ids = "" // written, or the claim is finished
		}
		for _, b := range order {
			b.acked.Add(int32(onesCount(bits[b])))
		}
	}
	return done, nil
}

// onesCount counts the places set in bitmap b.
func onesCount(b []byte) int {
	n := 0
	for _, x := range b {
		n += bits.OnesCount8(x)
	}
	return n
}

// ackChunk is how many tasks one ack script finishes at most: maxMoved
// where its work is per claim (a bitmap each), maxClaim where it is per
// task too (status records to keep, or retry records and cancel marks to
// drop).
func (s *store) ackChunk() int {
	if s.retention > 0 || s.idsNow.Load() {
		return maxClaim
	}
	return maxMoved
}

// ackReply reads ackScript's reply: the tasks it finished, and whether the
// queue holds retry records or cancel marks.
func ackReply(r any, err error) (int, bool, error) {
	v, err := redis.Values(r, err)
	if err != nil {
		return 0, false, err
	}
	if len(v) != 2 {
		return 0, false, fmt.Errorf("%w: unexpected ack reply %v", ErrMalformed, v)
	}
	n, nerr := redis.Int(v[0], nil)
	byID, berr := redis.Int(v[1], nil)
	if err := errors.Join(nerr, berr); err != nil {
		return 0, false, fmt.Errorf("%w: unexpected ack reply %v: %w", ErrMalformed, v, err)
	}
	return n, byID == 1, nil
}

// dropClaims deletes claim records that serve no more (see dropScript),
// and, when kept is not nil, has the script that deletes the last of them
// (one of its own when there are none) recount the tasks of the records
// kept.
func (s *store) dropClaims(ctx context.Context, claims, kept []string) error {
	if err := s.listsFirst(ctx); err != nil {
		return err
	}
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
