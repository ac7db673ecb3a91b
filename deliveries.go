package queue

import (
	"context"
	"strconv"
	"time"
)

// A delivery's record: what a pool or a Consumer writes into a pending
// task's entry as a delivery starts (recordDelivery) or fails (fail), so
// that recovery after a crash counts the deliveries made, once.

// recordDelivery records in t's pending record that delivery t.Attempt is
// made, so that recovery after a crash counts it, once. Recovery counts an
// interrupted delivery only with this record, so that tasks claimed with
// one that crashes its owner, and never started, lose no attempt: the
// pool records the delivery of every task delivered before and of every
// task recovery marked (see entryRecovered), so that a task that crashes
// its owner is counted from its second crash on. Costs one round trip.
func (s *store) recordDelivery(ctx context.Context, t claimed) error {
	if err := s.listsFirst(ctx); err != nil {
		return err
	}
	r := t.ref()
	_, err := s.script(ctx, "record delivery on", retryScript, s.claimCall([]any{s.keys.claims, s.keys.lease, s.keys.meta},
		[]string{r.record}, false, s.value(), s.ttlMS, r.record, r.place, t.ID, t.Attempt)...)
	return err
}

// failedCount is failScript's count after a failed delivery attempt:
// with inPlace (the retry's delivery recorded ahead, see fail) the
// attempt and the retry, accounted; else the failed deliveries, "-"
// before them (not accounted).
func failedCount(attempt int, inPlace bool) string {
	if inPlace {
		return strconv.Itoa(attempt + 1)
	}
	return "-" + strconv.Itoa(attempt)
}

// accountedMark starts a pending record whose count includes the current
// delivery; an entry starts with its flags byte (see isEntryStart).
const accountedMark = '+'

// luaRewrite defines rewrite(first, place, id, n, accounted): it
// rewrites the delivery count of task id at place in the claim list of
// first to n (see recount), and reports whether the task there was
// pending. A task that names no claim (first "": one its caller no longer
// holds) is not pending, and no key is read for it; nor is one whose
// entry there is not task id's. It needs luaClaimRec and the
// claim-sequence hash as claimsKey. The entry is rewritten from what
// Redis holds: a record costs its caller the ID, not the whole task (a
// recovered task of 1 MiB sends 1 MiB less before it starts).
const luaRewrite = `
-- recount returns the encoded task e (behind a '+' or not) with n as its
-- delivery count, not marked recovered, behind a '+' when accounted is
-- '1'; false when e is not an encoded task of ID id.
local function recount(e, id, n, accounted)
  local i = 1
  if string.byte(e, 1) == $accountedByte then i = 2 end
  local flags = string.byte(e, i)
  if not flags or string.sub(e, i + 1, i + $idLen) ~= id then return false end
  local p = i + 1 + $idLen
  for _ = 1, 2 do -- OrderID, AddedAt
    while (string.byte(e, p) or 0) >= 128 do p = p + 1 end
    p = p + 1
  end
  local from = p
  while (string.byte(e, p) or 0) >= 128 do p = p + 1 end
  if p > #e then return false end
  if flags % ($entryRecovered * 2) >= $entryRecovered then flags = flags - $entryRecovered end
  local v = {}
  while n >= 128 do
    v[#v + 1] = string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  v[#v + 1] = string.char(n)
  local mark = ''
  if accounted == '1' then mark = '+' end
  return mark .. string.char(flags) .. string.sub(e, i + 1, from - 1) .. table.concat(v) .. string.sub(e, p + 1)
end
local function rewrite(first, place, id, n, accounted)
  if first == '' then return false end
  local l, d = claimKeys(claimsKey, first)
  if redis.call('TYPE', l).ok ~= 'list' or not bitsOK(d) or redis.call('GETBIT', d, place) == 1 then return false end
  local e = redis.call('LINDEX', l, place)
  if not e then return false end
  local record = recount(e, id, n, accounted)
  if not record then return false end
  redis.call('LSET', l, place, record)
  return true
end
`

// retryScript rewrites a pending record as the task with the deliveries
// it has had, counting the current one (one about to start, or the retry
// that follows a failure), behind a '+' that marks the count as
// accounted, so that recovery after a crash does not count the current
// delivery again.
//
//	KEYS[1] = claim-sequence hash, KEYS[2] = lease, KEYS[3] = meta hash
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3] = claim, ARGV[4] = place,
//	ARGV[5] = task ID, ARGV[6] = deliveries
//
// Returns 1, or 0 when the task is no longer pending.
var retryScript = newScript("retry", -1, fenced(2, typeCheck(hashAt(1)), "local claimsKey = KEYS[1]\n"+luaIncr+luaClaimRec+luaRewrite+"\n"+luaCheckClaims(3, "3", 1)+`
if not rewrite(ARGV[3], tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), '1') then return 0 end
return 1
`))

// fail records a failed delivery of t (as claimed, with its Attempt). When
// t has had maxAttempts deliveries it moves to the dead-letter store with
// cause and fail reports dead; otherwise the failure is recorded in the
// pending record and in the retries hash (for Status), with the retry that
// follows (at retryAt; zero: when its holder says). With inPlace (a
// Consumer's caller retries the task it holds, with nothing recorded as
// it starts) the retry's delivery is recorded ahead, so that a crash
// counts it; a pool records it as it starts (recordDelivery), and a crash
// while the task waits out its backoff then counts no delivery that did
// not happen, nor makes it a suspect (see gate). Costs one round trip.
func (s *store) fail(ctx context.Context, t claimed, cause error, retryAt time.Time, inPlace bool) (dead bool, err error) {
	msg := "<nil>"
	if cause != nil {
		msg = cause.Error()
	}
	if t.Attempt >= s.maxAttempts {
		entry := encodeTask(t.Task, t.Attempt)
		moved, err := s.bury(ctx, []burial{{t.ref(), encodeDead(entry, t.Attempt, msg, s.diedNow(t.OrderID))}})
		return moved > 0, err
	}
	if err := s.listsFirst(ctx); err != nil {
		return false, err
	}
	r := t.ref()
	_, err = s.script(ctx, "record failure on", failScript, s.claimCall([]any{s.keys.claims, s.keys.lease, s.keys.meta, s.keys.retries},
		[]string{r.record}, false, s.value(), s.ttlMS, r.record, r.place, t.ID, failedCount(t.Attempt, inPlace), t.ID, retryRecord(time.Now(), retryAt, msg))...)
	return false, err
}

// failScript is retryScript for a failed delivery: the count is ARGV[6],
// accounted ('+') when ARGV[6] is a count and plain when it is "-" and a
// count (see failedCount), and the failure is recorded in the retries
// hash (KEYS[4], under the task ID ARGV[7], ARGV[8]).
var failScript = newScript("fail", -1, fenced(2, typeCheck(hashAt(1), hashAt(4)), "local claimsKey = KEYS[1]\n"+luaIncr+luaClaimRec+luaRewrite+"\n"+luaCheckClaims(3, "3", 1)+`
local n, accounted = ARGV[6], '1'
if string.sub(n, 1, 1) == '-' then n, accounted = string.sub(n, 2), '0' end
if not rewrite(ARGV[3], tonumber(ARGV[4]), ARGV[5], tonumber(n), accounted) then return 0 end
redis.call('HSET', KEYS[4], ARGV[7], ARGV[8])
return 1
`))
