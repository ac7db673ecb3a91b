package queue

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// The claim record. A claim moves the entries it pops, as they were, into
// a list of the claim's own, "<tag>claim:<first>" (first: the claim seq
// before the claim's first task, so the i-th entry, from 0, has claim seq
// first+i+1 and is at place i), and records the claim in the
// claim-sequence hash (the "order" key) under first, as '#', first
// again, ':' and the claimed task IDs back to back (seqFiller for an
// entry with no readable header); a pool's claim writes '#', first, '/'
// and the number of tasks instead, and the pool's first ack of one of
// them once the claim is idsAfter old writes the IDs (idsLater). A task leaves pending when its place is set in the claim's
// done bitmap, "<tag>claim:<first>:done" (Redis's bit order: place 0 is
// the first byte's high bit): an ack ORs a bitmap of places into it,
// with one BITOP for all the claim's tasks it acknowledges, and a
// dead-letter, a hand-back or a cancel sets one place. Once every place
// is set, the list, the bitmap and the hash field go, in the script that
// set the last place. The meta hash's "pending" field counts the tasks of
// claim records whose place is not set.
//
// A pool's claim is made in place where it can (claimend.go): its entries
// stay at the end of the ready list, where they are its list, until the
// claim is finished or something else needs them in a list of their own.
//
// So a claim writes one list (or none) and one hash field whatever its size, and an
// ack one bitmap per claim it touches: no field per task, which is what a
// claim used to cost Redis (a pending-hash field per task, written, then
// deleted). The pending hash of earlier releases (task ID -> entry, with
// claim-sequence records of IDs alone) is still read, by recovery, Status,
// Cancel and Stats, and emptied by the recovery after an upgrade; nothing
// writes it any more.

// claimedMark starts a claim-sequence record of this format; records of
// the pending hash's format are the task IDs alone.
const claimedMark = '#'

// claimsName is the last part of the claim-sequence hash's key, from which
// scripts derive the keys of claim lists (claimKeys).
const claimsName = "order"

// claimListKey is the key of the claim list of first on the queue of k.
func claimListKey(k queueKeys, first string) string {
	return strings.TrimSuffix(k.claims, claimsName) + "claim:" + first
}

// claimDoneKey is the key of the done bitmap of the claim list of first.
func claimDoneKey(k queueKeys, first string) string { return claimListKey(k, first) + ":done" }

// placeBitmap returns bitmap dst, in Redis's bit order, with place set.
func placeBitmap(dst []byte, place int32) []byte {
	i := int(place) / 8
	for len(dst) <= i {
		dst = append(dst, 0)
	}
	dst[i] |= 0x80 >> (uint(place) % 8)
	return dst
}

// placeSet reports whether place is set in bitmap b.
func placeSet(b []byte, place int) bool {
	i := place / 8
	return i < len(b) && b[i]&(0x80>>(uint(place)%8)) != 0
}

// idsLater separates a claim record's first seq from its task count in a
// record whose IDs are not written yet, "#<first>/<n>": a pool's claim
// writes that, and the pool writes the IDs with its first ack once the
// claim is idsAfter old, if it is not finished by then (the claim script
// would have to cut each one out of its entry, a quarter of its work per
// task). Readers that need the IDs of such a record read them from its
// list (findScript).
const idsLater = '/'

// claimIDs returns the task IDs a claim-sequence record names, and
// whether it is a claim record (claimedMark) rather than one of the
// pending hash's format. ok is false for a record that is neither. A
// claim record whose IDs are not written yet names none (see findScript).
func claimIDs(v string) (ids string, list, ok bool) {
	if len(v) > 0 && v[0] == claimedMark {
		if _, ok := laterCount(v); ok {
			return "", true, true
		}
		_, ids, found := strings.Cut(v, ":")
		return ids, true, found && len(ids)%idLen == 0
	}
	return v, false, len(v)%idLen == 0
}

// laterCount returns the task count of a claim record whose IDs are not
// written yet ("#<first>/<n>"), and whether v is one: n is at most what
// any claim takes (maxMoved, for one Redis moves itself).
func laterCount(v string) (int, bool) {
	if len(v) < 4 || v[0] != claimedMark {
		return 0, false
	}
	f, n, found := strings.Cut(v[1:], string(idsLater))
	if _, ok := claimFirst(f); !ok || !found {
		return 0, false
	}
	count, err := strconv.Atoi(n)
	return count, err == nil && count > 0 && count <= max(maxClaim, maxMoved) && strconv.Itoa(count) == n
}

// claimRecordFirst returns the first seq a claim record holds besides its
// field, so that a record whose field was overwritten still leads to its
// claim list (and one whose value was, by its field).
func claimRecordFirst(v string) (int64, bool) {
	if len(v) == 0 || v[0] != claimedMark {
		return 0, false
	}
	f, _, found := strings.Cut(v[1:], ":")
	if !found {
		f, _, found = strings.Cut(v[1:], string(idsLater))
	}
	first, ok := claimFirst(f)
	return first, found && ok
}

// claimFirst parses a claim-sequence hash field: a claim's first seq.
func claimFirst(f string) (int64, bool) {
	first, err := strconv.ParseInt(f, 10, 64)
	return first, err == nil && first >= 0 && strconv.FormatInt(first, 10) == f
}

// luaClaimRec defines, for scripts that change claim records (see the top
// of this file):
//
//   - claimKeys(claims, first): the list and done bitmap keys of a claim.
//   - setDone(claims, meta, first, bits): ORs the bitmap bits into the
//     claim's done bitmap (of a claim list, or of a claim in place:
//     luaEnd's inEnd), deletes the record of a claim list once every place is set
//     (its first clear bit past the last place: bits set past it, which
//     only someone overwriting the bitmap makes, finish nothing),
//     and returns how many places it set that were not (0 when the record
//     is gone).
//   - openPlaces(l, d): the places of claim list l whose bit in done
//     bitmap d is not set (bits past the list count for nothing).
//
// A done bitmap is written only by these functions; its type is checked
// before each write all the same, so that a key someone overwrote fails
// the script before it changed anything of that claim.
const luaClaimRec = luaEnd + luaClaimKeys + `
local function openPlaces(l, d)
  local n = redis.call('LLEN', l)
  local full, set = math.floor(n / 8), 0
  if full > 0 then set = redis.call('BITCOUNT', d, 0, full - 1) end
  for p = full * 8, n - 1 do set = set + redis.call('GETBIT', d, p) end
  return n - set
end
local function finished(claims, meta, first, l, d, k)
  if k > 0 then incr(meta, 'pending', -k) end
  if redis.call('BITPOS', d, 0) >= redis.call('LLEN', l) then
    redis.call('DEL', l, d)
    redis.call('HDEL', claims, first)
  end
end
local function setDone(claims, meta, first, bits)
  local l, d = claimKeys(claims, first)
  local inPlace = redis.call('TYPE', l).ok ~= 'list'
  if inPlace and not inEnd(meta, first) or not bitsOK(d) then return 0 end
  local before = redis.call('BITCOUNT', d)
  if before == 0 then
    redis.call('SET', d, bits)
  else
    local tmp = l .. ':or'
    redis.call('SET', tmp, bits)
    redis.call('BITOP', 'OR', d, d, tmp)
    redis.call('DEL', tmp)
  end
  local k = redis.call('BITCOUNT', d) - before
  if inPlace then
    -- A claim in place leaves the end at a claim (claimend.go).
    if k > 0 then incr(meta, 'pending', -k) end
  else
    finished(claims, meta, first, l, d, k)
  end
  return k
end
`

// luaClaimKeys defines luaClaimRec's claimKeys; bitsOK(d), which reports
// whether key d may be read as a done bitmap; and claimTypes(claims, from,
// to, step), which returns the wrongTypeReply error when the list or done
// bitmap of a claim named by ARGV[from], ARGV[from+step], ... up to
// ARGV[to] ("" names none) holds another type: scripts call it before
// their first write; and idsLater(v), which reports whether record v is a
// claim record whose IDs are not written yet ("#<first>/<n>").
const luaClaimKeys = `
local function idsLater(v)
  return string.byte(v, 1) == $claimedMark and string.match(v, '^.%d+$idsLater%d+$') ~= nil
end
local function claimKeys(claims, first)
  local l = string.sub(claims, 1, -#'$claimsName' - 1) .. 'claim:' .. first
  return l, l .. ':done'
end
local function bitsOK(d)
  local t = redis.call('TYPE', d).ok
  return t == 'string' or t == 'none'
end
local function claimTypes(claims, from, to, step)
  local seen = {}
  for i = from, to, step do
    if ARGV[i] ~= '' and not seen[ARGV[i]] then
      seen[ARGV[i]] = true
      local l, d = claimKeys(claims, ARGV[i])
      for _, kt in ipairs({{l, 'list'}, {d, 'string'}}) do
        local t = redis.call('TYPE', kt[1]).ok
        if t ~= kt[2] and t ~= 'none' then
          return redis.error_reply('$wrongTypeReply ' .. kt[1] .. ' holds a ' .. t .. ', want a ' .. kt[2])
        end
      end
    end
  end
end
`

// luaCheckClaims is the first step of a script that changes claimed
// tasks (its claims hash in claimsKey), before any write: it returns
// claimTypes' error for the claims named by ARGV[from], ARGV[from+step],
// ... up to ARGV[to] (to a Lua expression).
func luaCheckClaims(from int, to string, step int) string {
	return fmt.Sprintf("local bad = claimTypes(claimsKey, %d, %s, %d)\nif bad then return bad end", from, to, step)
}

// luaNamed defines named(claims, pending, id), which reports whether a
// claim record in claims names task id (finished or not), or the pending
// hash holds it; a record whose IDs are not written yet may name any
// task, and so names every one. Only a whole task ID matches. It reads no claim list or
// done bitmap: the keys a script touches are those it was given.
const luaNamed = `
local function named(claims, pending, id)
  local all = #id == $idLen and redis.call('HVALS', claims) or {}
  for _, v in ipairs(all) do
    -- A record whose IDs are not written yet may name any task.
    if idsLater(v) then return true end
    local base = string.byte(v, 1) == $claimedMark and string.find(v, ':', 2, true)
    if base then
      local from = base + 1
      while true do
        local at = string.find(v, id, from, true)
        if not at then break end
        if (at - base - 1) % $idLen == 0 then return true end
        from = at + 1
      end
    end
  end
  return redis.call('HEXISTS', pending, id) == 1
end
`

// luaClaimAfter defines claimAfter(claims, first): a first seq past
// first that no claim record in claims holds or reaches, read from the
// records alone (their fields, and the first seq and task IDs their values
// hold): a claim may touch only its own list and done bitmap, given in
// KEYS. A claim finds its first taken only when the meta hash's claim
// count was set back (by hand): rather than overwrite that claim's list,
// and lose its tasks, it claims after every record, so that they keep
// their order. The scan costs a read of the claim-sequence hash, and is
// made only then; a list or done bitmap left without its record (deleted
// by hand) costs a refusal each.
const luaClaimAfter = `
local function claimAfter(claims, first)
  local after = first + 1
  local all = redis.call('HGETALL', claims)
  for i = 1, #all, 2 do
    local v = all[i + 1]
    local mark = '^' .. string.char($claimedMark)
    local from, ids = string.match(v, mark .. '(%d+):(.*)$')
    local count = math.ceil(#(ids or v) / $idLen)
    if not from then
      local n
      from, n = string.match(v, mark .. '(%d+)$idsLater(%d+)$')
      if from then count = tonumber(n) end
    end
    for _, f in ipairs({all[i], from}) do
      if string.match(f, '^%d+$') and #f <= 15 then
        after = math.max(after, tonumber(f) + count)
      end
    end
  end
  return after
end
`

// claimCall returns the arguments of a script whose keys are keys and then
// the claim list and done bitmap of each claim record named in records
// (once each; "" names none), with the ack's scratch key when scratch: a
// script of keyCount -1 (its key count first), so that every key a script
// touches comes in KEYS, and a Redis Cluster checks them all before it
// runs the script, as for any other key.
func (s *store) claimCall(keys []any, records []string, scratch bool, args ...any) []any {
	out := make([]any, 1, 1+len(keys)+3*len(records)+len(args))
	out = append(out, keys...)
	for i, r := range records {
		if r == "" || slices.Contains(records[:i], r) {
			continue
		}
		l := claimListKey(s.keys, r)
		out = append(out, l, l+":done")
		if scratch {
			out = append(out, l+":or")
		}
	}
	out[0] = len(out) - 1
	return append(out, args...)
}

// slot is where a claimed task is: its claim record and place there.
type slot struct {
	claim *claimBatch
	place int32
}

// claimBatch names one claim record.
type claimBatch struct {
	record string // the claim's first seq: the field of its claim-sequence record

	// ids are the claim's task IDs back to back, as its record is to hold
	// them, while it holds none (idsLater): the acker sends them with the
	// claim's first ack made idsAfter or more after at, when it was
	// claimed, or made while the queue holds retry records or cancel marks
	// (see idsAfter); only the acker reads or clears them.
	ids string
	at  time.Time

	// acked counts the places of a claim in place that acks set, as
	// Redis confirmed them (claimend.go): once it is the claim's size, the
	// claim's next trim is certain.
	acked atomic.Int32
}

// idsAfter is how old a claim whose record holds no IDs must be for an
// ack to write them. A claim finished sooner never has them written: it
// saves a pool about a tenth of a microsecond of Redis's time per task
// (the IDs sent, read and stored) where tasks are quick, while a Cancel,
// State or Status that looks for one of its tasks meanwhile reads the
// claim's list instead of its record (see findScript). A claim that
// lasts longer is one of a pool whose tasks are slow, where the cost is
// nothing, and whose records are then found by their IDs. While the queue
// holds retry records or cancel marks (the last ack said so), an ack
// needs the IDs of the tasks it finishes, to drop theirs: it writes the
// IDs whatever the claim's age, as it would otherwise read each task's
// ID from the claim's list.
const idsAfter = 100 * time.Millisecond
