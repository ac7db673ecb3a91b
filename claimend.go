package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/gomodule/redigo/redis"
)

// Claims in place: the claimed end of the ready list.
//
// A pool's claim of tasks that need no look (no cancel mark, no due
// scheduled task, no byte count) copies nothing: its entries stay at the
// consuming end of the ready list, where they were, and the claim record
// ("#<first>/<n>", as any) and the meta hash's "endfirst" and "endsize"
// fields say that the endsize entries at that end belong to the claims
// from endfirst on, oldest at the very end: claims in place. The i-th
// entry (from 0) of a claim in place whose older claims in place hold off
// entries is at the ready list's index -(off+i+1). The next claim in place
// takes the entries past them; its done bitmap is the one any claim has
// ("<tag>claim:<first>:done"), and an ack sets its places there as for any
// claim, without deleting anything: a finished claim in place leaves the
// ready list (LTRIM) when it is the oldest, at the next claim in place.
//
// Everything else that touches the consuming end or a claim's entries
// works on claim lists as before: it first opens the end (endScript),
// which moves each unfinished claim in place into a claim list of its
// own, as a claim used to (SORT ... STORE), drops the finished ones, and
// clears the fields. The owner does that before it puts tasks back,
// dead-letters, retries or cancels one, and before a claim that must look
// at its entries (the claim script refuses one with {-4} while the end is
// claimed); a new owner before its recovery. Readers of other processes
// (Status, State, Cancel's search, Pending, Stats) read the end where it
// is, and change nothing.
//
// So a claim costs Redis a record and a read of the entries it hands
// out, and no copy of them: the copy was more than half of Redis's work
// in a drain.

// maxEnd bounds the entries at the claimed end: a claim that would pass
// it opens the end first, which drops the finished claims and copies the
// others. Finished claims stay at the end until every older one finishes:
// without the bound, one long task would keep the entries of every claim
// made after it in the ready list.
const maxEnd = 4 * maxMoved

// maxEndBytes bounds the claimed end's entries, at the entry size seen so
// far, as maxEnd bounds their number.
const maxEndBytes = 16 << 20

// Meta hash fields of the claimed end.
const (
	endFirstField = "endfirst"
	endSizeField  = "endsize"
)

// endReply starts endScript's refusal, before any write, when the claims
// it was given are not those of the claimed end (it changed since the
// caller read it).
const endReply = "QUGOEND"

// luaEnd defines, for scripts given the meta hash of a queue:
//
//   - claimedEnd(meta): the first seq and size of its claimed end (0, 0:
//     none), read once a script;
//   - setClaimedEnd(meta, first, size): writes them (size 0 clears them);
//   - inEnd(meta, first): the number of entries of older claims at the end
//     when claim first is in place, else nil;
//   - recordCount(v): the number of tasks of claim record v, or nil.
//
// Fields that do not read as counts read as no claimed end: the entries
// there then read as ready.
const luaEnd = `
local endFirst, endSize
local function claimedEnd(meta)
  if not endFirst then
    local r = redis.call('HMGET', meta, '$endFirstField', '$endSizeField')
    local f, n = tonumber(r[1] or ''), tonumber(r[2] or '')
    if f and n and f >= 0 and n > 0 and f % 1 == 0 and n % 1 == 0 and f <= $maxClaimSeq then
      endFirst, endSize = f, n
    else
      endFirst, endSize = 0, 0
    end
  end
  return endFirst, endSize
end
local function setClaimedEnd(meta, f, n)
  endFirst, endSize = f, n
  if n > 0 then
    redis.call('HSET', meta, '$endFirstField', string.format('%d', f), '$endSizeField', string.format('%d', n))
  else
    redis.call('HDEL', meta, '$endFirstField', '$endSizeField')
  end
end
local function inEnd(meta, first)
  local f, n = claimedEnd(meta)
  first = tonumber(first)
  if first and n > 0 and first >= f and first < f + n then return first - f end
  return nil
end
local function recordCount(v)
  if not v or string.byte(v, 1) ~= $claimedMark then return nil end
  local n = string.match(v, '^.%d+$idsLater(%d+)$')
  if n then return tonumber(n) end
  local ids = string.match(v, '^.%d+:(.*)$')
  if ids and #ids > 0 and #ids % $idLen == 0 then return #ids / $idLen end
  return nil
end
`

// endScript opens the claimed end: each claim in place, oldest first,
// moves into a claim list of its own (its entries as they are, in claim
// order), or, when all its places are set, leaves the ready list with its
// record and done bitmap; then the fields go. Entries at the end that no
// record covers (a record deleted by hand) stay in the ready list, as
// ready.
//
//	KEYS[1] = ready list, KEYS[2] = lease, KEYS[3] = meta hash, KEYS[4] = claim-sequence hash,
//	then the claim list and done bitmap of each claim below
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3...] = the claims in place, oldest first
//
// It refuses, before any write, with endReply when those are not the
// claims the records name from the end's first (endWalk); returns the
// number of claims it opened.
var endScript = newScript("end", -1, fenced(2, typeCheck(listAt(1), hashAt(3), hashAt(4)), luaEnd+luaClaimKeys+luaOpenEnd+`
local firsts, lists, bits = {}, {}, {}
for i = 3, #ARGV do
  firsts[#firsts + 1], lists[#lists + 1], bits[#bits + 1] = ARGV[i], KEYS[2 * i - 1], KEYS[2 * i]
end
if not openEnd(KEYS[1], KEYS[3], KEYS[4], firsts, lists, bits) then
  return redis.error_reply('$endReply the claims given are not those in place')
end
return #firsts
`))

// luaOpenEnd defines openEnd(ready, meta, claims, firsts, lists, bits),
// for scripts given the end's claims: it opens the claimed end as
// endScript says, and returns true, when firsts (with their lists and
// done bitmaps) are the claims in place, oldest first, as the records
// name them from the end's first (endWalk); else false, having written
// nothing. It needs luaEnd and luaClaimKeys.
const luaOpenEnd = `
local function openEnd(ready, meta, claims, firsts, lists, bits)
  local f, size = claimedEnd(meta)
  if size == 0 then return true end
  local plan, covered = {}, 0
  while covered < size do
    local n = recordCount(redis.call('HGET', claims, string.format('%d', f + covered)))
    if not n or n <= 0 or covered + n > size then break end
    plan[#plan + 1] = n
    covered = covered + n
  end
  if #plan ~= #firsts then return false end
  local at = f
  for i = 1, #plan do
    if firsts[i] ~= string.format('%d', at) or lists[i] ~= claimKeys(claims, firsts[i]) or bits[i] ~= lists[i] .. ':done' then return false end
    if redis.call('TYPE', lists[i]).ok ~= 'none' or not bitsOK(bits[i]) then return false end
    at = at + plan[i]
  end
  for i = 1, #plan do
    local n, first, l, d = plan[i], firsts[i], lists[i], bits[i]
    if redis.call('BITPOS', d, 0) >= n then
      redis.call('DEL', d)
      redis.call('HDEL', claims, first)
    else
      local moved = redis.pcall('SORT', ready, 'BY', 'nosort', 'DESC', 'LIMIT', 0, n, 'STORE', l)
      if moved ~= n then
        -- SORT refused (an ACL): through Lua.
        redis.call('DEL', l)
        local es = redis.call('LRANGE', ready, -n, -1)
        for j = #es, 1, -$scriptChunk do
          local part = {}
          for k = j, math.max(j - $scriptChunk + 1, 1), -1 do part[#part + 1] = es[k] end
          redis.call('RPUSH', l, unpack(part))
        end
      end
    end
    redis.call('LTRIM', ready, 0, -n - 1)
  end
  setClaimedEnd(meta, 0, 0)
  return true
end
`

// endWalk returns the claims in place of a claimed end of size entries
// from first, oldest first, as endScript reads them from the
// claim-sequence records: a claim's record names its count, and the next
// one starts where it ends. It stops at a record that is missing or does
// not read, or would pass the end.
func endWalk(records map[string]string, first, size int64) []string {
	var out []string
	for covered := int64(0); covered < size; {
		f := strconv.FormatInt(first+covered, 10)
		n, ok := recordCount(records[f])
		if !ok || covered+int64(n) > size {
			break
		}
		out = append(out, f)
		covered += int64(n)
	}
	return out
}

// recordCount returns the number of tasks claim record v holds, as
// luaEnd's recordCount reads it.
func recordCount(v string) (int, bool) {
	if n, ok := laterCount(v); ok {
		return n, true
	}
	ids, list, ok := claimIDs(v)
	if !list || !ok || len(ids) == 0 {
		return 0, false
	}
	return len(ids) / idLen, true
}

// sendEnd sends the read of the claimed end's fields of the queue of k;
// endFields reads its reply.
func sendEnd(c redis.Conn, k queueKeys) error {
	return c.Send("HMGET", k.meta, endFirstField, endSizeField)
}

// endFields reads the reply of sendEnd: the end's first seq and size (0,
// 0: none).
func endFields(v any, err error) (int64, int64, error) {
	m, err := redis.Values(v, err)
	if err != nil {
		return 0, 0, err
	}
	if len(m) != 2 {
		return 0, 0, fmt.Errorf("%w: HMGET replied %d values", ErrMalformed, len(m))
	}
	f, n := parseEnd(m[0], m[1])
	return f, n, nil
}

// parseEnd reads the meta hash's end fields as luaEnd's claimedEnd does.
func parseEnd(first, size any) (int64, int64) {
	f, ferr := redis.Int64(first, nil)
	n, nerr := redis.Int64(size, nil)
	if ferr != nil || nerr != nil || f < 0 || n <= 0 || f > maxClaimSeq {
		return 0, 0
	}
	return f, n
}

// openEnd opens the claimed end of the store's queue (endScript), when
// there is one: the owner's step before anything that works on claim
// lists. It reads the end and the records, then runs the script; a
// refusal (the end changed meanwhile) reads them again.
func (s *store) openEnd(ctx context.Context) error {
	var err error
	for try := 0; try < seqTries; try++ {
		made := s.endMade.Load()
		err = s.openEndOnce(ctx)
		var re redis.Error
		if err == nil || !errors.As(err, &re) || !strings.HasPrefix(string(re), endReply) {
			if err == nil {
				s.openedEnd(made)
			}
			return err
		}
	}
	return err
}

func (s *store) openEndOnce(ctx context.Context) error {
	type read struct {
		first, size int64
		records     map[string]string
	}
	got, err := onPartition(ctx, s.part, s.what("open the claimed end of"), func(c redis.Conn) (read, error) {
		sendEnd(c, s.keys)
		c.Send("HGETALL", s.keys.claims)
		if err := c.Flush(); err != nil {
			return read{}, err
		}
		f, n, err := endFields(receiveContext(c, ctx))
		records, rerr := redis.StringMap(receiveContext(c, ctx))
		if err = replyErr(err, rerr); err != nil {
			return read{}, err
		}
		return read{f, n, records}, nil
	})
	if err != nil || got.size == 0 {
		return err
	}
	claims := endWalk(got.records, got.first, got.size)
	keys := []any{s.keys.ready, s.keys.lease, s.keys.meta, s.keys.claims}
	for _, f := range claims {
		keys = append(keys, claimListKey(s.keys, f), claimDoneKey(s.keys, f))
	}
	args := append(append([]any{len(keys)}, keys...), s.value(), s.ttlMS)
	for _, f := range claims {
		args = append(args, f)
	}
	_, err = s.script(ctx, "open the claimed end of", endScript, args...)
	return err
}

// readInPlace reads the entries of the claim in place of n tasks from
// first, which the claim script says has off entries of older claims
// between it and the consuming end, the end starting at endFirst; in claim
// order. The end's fields are read after the entries: as only this
// store's claims add to the end, fields that still cover the claim from
// the same first say that the entries read were its own. Fields that
// changed say that the end was opened since the claim (by one of this
// store's other steps: listsFirst): the claim's entries are then in its
// list, read next.
func (s *store) readInPlace(ctx context.Context, first, endFirst int64, off, n int) ([][]byte, error) {
	var h tapHolder
	return onPartition(withTapHolder(ctx, &h), s.part, s.what("read claim of"), func(c redis.Conn) ([][]byte, error) {
		c.Send("LRANGE", s.keys.ready, -(off + n), -(off + 1))
		sendAhead(c, s.keys)
		if err := c.Flush(); err != nil {
			return nil, err
		}
		es, err := h.arm(0, s.tapChunk, s.entryList()).entriesOf(receiveContext(c, ctx))
		f, size, ahead, merr := aheadFields(c, ctx)
		if err = replyErr(err, merr); err != nil {
			return nil, err
		}
		s.ahead.Store(ahead)
		if mine, ok := (&endRead{es, off, f, size}).of(first, endFirst, off, n); ok {
			return mine, nil
		}
		// Opened since: the claim is in its list.
		l := claimListKey(s.keys, strconv.FormatInt(first, 10))
		es, err = bulkStrings(doContext(c, ctx, "LRANGE", l, 0, -1))
		if err == nil && len(es) != n {
			// Gone with the lease (a new owner's recovery put the claim
			// back), or malformed.
			if v, lerr := redis.String(doContext(c, ctx, "GET", s.keys.lease)); lerr == nil && v != s.value() || lerr == redis.ErrNil {
				return nil, ErrLeaseLost
			}
			err = fmt.Errorf("%w: %s holds %d entries, the claim took %d", ErrMalformed, l, len(es), n)
		}
		return es, err
	})
}

// endClaim is a claim in place this store made, as far as it knows still
// at the end.
type endClaim struct {
	first int64
	n     int
	batch *claimBatch // its tasks' claim, whose acked counts its confirmed acks
}

// maxEndTrims bounds the claims in place a claim offers to trim.
const maxEndTrims = 16

// endClaims returns the firsts of the store's claims in place, oldest
// first, up to maxEndTrims: the claims a claim script may trim, or open
// (the script checks them; stale ones change nothing); how many of them,
// from the oldest, are finished as Redis confirmed (trims: the claim
// script trims those and no more); and the entries of the others (off:
// where a claim's entries will be, as far as this store knows).
func (s *store) endClaims() (firsts []string, trims, off int) {
	s.endMu.Lock()
	defer s.endMu.Unlock()
	firsts = make([]string, 0, min(len(s.ends), maxEndTrims))
	done := true
	for _, c := range s.ends[:min(len(s.ends), maxEndTrims)] {
		firsts = append(firsts, strconv.FormatInt(c.first, 10))
		if done = done && int(c.batch.acked.Load()) >= c.n; done {
			trims++
		} else {
			off += c.n
		}
	}
	return firsts, trims, off
}

// endRoom is the claim script's ARGV[11] for a store with claims in place
// of its own at the end: the most entries the end may hold, by maxEnd and
// by maxEndBytes at the entry size seen so far; 0, to open the end first,
// once claims claims are there (an end of many claims costs Redis a long
// script to open, and one the caller cannot name whole cannot be opened
// in the claim's script).
func (s *store) endRoom(claims int) int64 {
	if claims >= maxEndTrims {
		return 0
	}
	return max(1, min(maxEnd, maxEndBytes/s.entryGuess()))
}

// claimedInPlace notes a claim in place of n tasks from first, batch, the
// end starting at endFirst after the claim's trims.
func (s *store) claimedInPlace(endFirst, first int64, n int, batch *claimBatch) {
	s.endMu.Lock()
	defer s.endMu.Unlock()
	s.endFrom(endFirst)
	s.ends = append(s.ends, endClaim{first, n, batch})
	s.endMade.Add(1)
	s.declined.Store(false)
}

// openedEnd notes that the end is open, as of the claims in place counted
// in made before it was read.
func (s *store) openedEnd(made int64) {
	s.endMu.Lock()
	defer s.endMu.Unlock()
	if made > s.endOpened {
		s.endOpened = made
		if made == s.endMade.Load() {
			s.ends = s.ends[:0]
		}
	}
}

// listsFirst opens the claimed end where this store may have claimed in
// place since it last opened it: the step before a script that works on
// the claim lists of tasks this store holds.
func (s *store) listsFirst(ctx context.Context) error {
	s.endMu.Lock()
	held := s.endMade.Load() > s.endOpened
	s.endMu.Unlock()
	if !held {
		return nil
	}
	return s.openEnd(ctx)
}

// endRead is the read of the end made with a claim (claimThenRead): the
// entries of the ready list that end skip entries before its consuming
// end, as LRANGE gives them (toward the consuming end), and the end's
// fields read after them.
type endRead struct {
	raw         [][]byte
	skip        int
	first, size int64
}

// of returns, in claim order, the entries of the claim in place of n
// tasks from first, with off entries of older claims before it at the
// end, which starts at endFirst, when this read holds them: the read
// skipped just those off entries, and the end still started there when
// it was read. It takes them: reordered in the read's own buffer, they
// are the read's no longer (a later call finds nothing).
func (e *endRead) of(first, endFirst int64, off, n int) ([][]byte, bool) {
	if e == nil || e.skip != off || e.first != endFirst || first-endFirst != int64(off) || e.size < int64(off+n) || len(e.raw) < n {
		return nil, false
	}
	es := e.raw[len(e.raw)-n:]
	e.raw = nil
	slices.Reverse(es)
	return es, true
}

// trimmedTo notes that the claimed end starts at first and holds size
// entries (0: none), as a claim's trims left it.
func (s *store) trimmedTo(first, size int64) {
	s.endMu.Lock()
	defer s.endMu.Unlock()
	if size == 0 {
		s.ends = s.ends[:0]
		return
	}
	s.endFrom(first)
}

// endFrom drops the claims in place before first, where the end now
// starts. Called with s.endMu held.
func (s *store) endFrom(first int64) {
	i := 0
	for i < len(s.ends) && s.ends[i].first < first {
		i++
	}
	s.ends = append(s.ends[:0], s.ends[i:]...)
	if len(s.ends) > 0 && s.ends[0].first != first {
		s.ends = s.ends[:0] // not the end Redis holds: forget it
	}
}

// claimThenRead runs the claim script (call: its key count, keys and
// arguments) and, in the same round trip, reads the k entries of the
// ready list past the off entries at its consuming end (none when k is
// 0), and what is past the end after the claim (sendAhead): where the
// claim's trims leave off entries of older claims at the end, a claim in
// place of up to k tasks is those entries, and the claim costs one round
// trip.
func (s *store) claimThenRead(ctx context.Context, call []any, off, k int) ([]any, *endRead, error) {
	type replies struct {
		r    []any
		read *endRead
	}
	var h tapHolder
	got, err := onPartition(withTapHolder(ctx, &h), s.part, s.what("claim from"), func(c redis.Conn) (replies, error) {
		if err := claimScript.SendHash(c, call...); err != nil {
			return replies{}, err
		}
		if k > 0 {
			c.Send("LRANGE", s.keys.ready, -(off + k), -(off + 1))
		}
		sendAhead(c, s.keys)
		if err := c.Flush(); err != nil {
			return replies{}, err
		}
		var tap *replyTap
		if k > 0 {
			tap = h.arm(1, s.tapChunk, s.entryList()) // the entries' reply, after the script's
		}
		r, err := redis.Values(receiveContext(c, ctx))
		var es [][]byte
		var lerr error
		if k > 0 {
			es, lerr = tap.entriesOf(receiveContext(c, ctx))
		}
		f, size, ahead, merr := aheadFields(c, ctx)
		if err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
			s.ahead.Store(aheadUnknown)                          // read before the claim, which runs next
			if err := claimScript.Send(c, call...); err != nil { // EVAL: the script whole
				return replies{}, err
			}
			if err := c.Flush(); err != nil {
				return replies{}, err
			}
			r, err := redis.Values(receiveContext(c, ctx))
			return replies{r: r}, err
		}
		if merr == nil {
			s.ahead.Store(ahead)
		}
		if err != nil || lerr != nil || merr != nil || k == 0 {
			return replies{r: r}, err // the entries, unread, are read apart
		}
		return replies{r, &endRead{es, off, f, size}}, nil
	})
	return got.r, got.read, err
}
