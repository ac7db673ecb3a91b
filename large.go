package queue

import (
	"context"
	"fmt"
	"strings"

	"github.com/gomodule/redigo/redis"
)

// Large entries: what keeps a claim in place to its byte budget.
//
// A claim in place (claimend.go) takes its entries without looking at
// them, and the pool reads them after: it sizes the claim by the entries
// seen so far, and only the read tells how large these are. A queue of
// small tasks followed by large ones would have a claim sized for the
// small ones read the large ones, thousands at once, whatever
// MaxHeldBytes says. So every write that puts an entry of more than
// largeEntry bytes into a ready list also counts it, in the same atomic
// step, in the meta hash's "large" field, and a claim is made in place
// only while that count is 0 (or the field absent), and of at most the
// budget's bytes in entries of largeEntry: its read then never passes the
// budget, or one entry. While the count is not 0, claims take their
// entries through the claim script's own loop, which counts their bytes
// before it keeps them, and takes the count down by the large entries it
// claims; a claim that finds the ready list empty drops the field.
//
// Entries leave the ready list in other ways (a claim in place, which
// takes none while the count is not 0; a list emptied by hand), so the
// count may be larger than the large entries there: that costs claims in
// place until the list is next empty, never memory. The count is never
// smaller, but for entries pushed by a release that did not keep it.
const (
	largeEntry = 8 << 10
	largeField = "large"
)

// luaLarge defines, for scripts given a queue's meta hash and ready list:
//
//   - addLarge(meta, ready, n), called after n large entries went into the
//     ready list: adds n to the count. A count that does not read as one
//     (written by hand) becomes the list's length, which is at least the
//     number of large entries in it. addedLarge says it added some.
//   - takeLarge(meta, ready, n), called by a claim that took n large
//     entries, with no claim in place left at the end: takes n from the
//     count, and drops it once it is 0 or the list is empty. A count that
//     does not read as one stays until then.
const luaLarge = `
local addedLarge = false
local function addLarge(meta, ready, n)
  if n == 0 then return end
  addedLarge = true
  local v = redis.call('HGET', meta, '$largeField')
  if v and not (string.match(v, '^%d+$') and #v <= 15) then
    redis.call('HSET', meta, '$largeField', string.format('%d', redis.call('LLEN', ready)))
  else
    redis.call('HINCRBY', meta, '$largeField', n)
  end
end
local function takeLarge(meta, ready, n)
  local v = redis.call('HGET', meta, '$largeField')
  if not v then return end
  local c = string.match(v, '^%d+$') and #v <= 15 and tonumber(v) - n
  if c and c <= 0 or redis.call('LLEN', ready) == 0 then
    redis.call('HDEL', meta, '$largeField')
  elseif c and n > 0 then
    redis.call('HSET', meta, '$largeField', string.format('%d', c))
  end
end
`

// pushScript is an LPUSH of entries, some of them large, that counts
// those in the same step.
//
//	KEYS[1] = ready list, KEYS[2] = meta hash
//	ARGV[1] = how many of the entries are large, ARGV[2...] = the entries, in LPUSH order
//
// Returns the list's length, as LPUSH does.
var pushScript = newScript("push", 2, typeCheck(listAt(1), hashAt(2))+luaLarge+`
local n = 0
for i = 2, #ARGV, $scriptChunk do
  n = redis.call('LPUSH', KEYS[1], unpack(ARGV, i, math.min(i + $scriptChunk - 1, #ARGV)))
end
addLarge(KEYS[2], KEYS[1], tonumber(ARGV[1]))
return n
`)

// metaOfReady returns the meta hash of the queue whose ready list is ready.
func metaOfReady(ready string) string {
	return strings.TrimSuffix(ready, "ready") + "meta"
}

// largeIn returns how many of the values of an LPUSH's arguments (its key
// first, then the entries) are large.
func largeIn(args []any) int {
	n := 0
	for _, v := range args[1:] {
		if argSize(v) > largeEntry {
			n++
		}
	}
	return n
}

// sendPush sends the LPUSH of args (its key, then the entries) on c, as
// the push script when large of the entries are large.
func sendPush(c redis.Conn, args []any, large int) error {
	if large == 0 {
		return c.Send("LPUSH", args...)
	}
	return pushScript.Send(c, pushCall(args, large)...)
}

// pushCall returns the keys and arguments of the push script for an LPUSH
// of args, large of them large.
func pushCall(args []any, large int) []any {
	call := make([]any, 0, len(args)+2)
	call = append(call, args[0], metaOfReady(args[0].(string)), large)
	return append(call, args[1:]...)
}

// doPush is sendPush for one entry, with its reply.
func doPush(ctx context.Context, c redis.Conn, key string, entry []byte) error {
	if len(entry) <= largeEntry {
		_, err := doContext(c, ctx, "LPUSH", key, entry)
		return err
	}
	_, err := runScript(ctx, pushScript, c, key, metaOfReady(key), 1, entry)
	return err
}

// sendAhead sends the reads, after a claim, of what is past the claimed
// end of the queue of k: the ready list's length, then the end's fields
// and the count of large entries (large.go). In that order, a large entry
// pushed between the two reads is in the count, or in neither.
func sendAhead(c redis.Conn, k queueKeys) {
	c.Send("LLEN", k.ready)
	c.Send("HMGET", k.meta, endFirstField, endSizeField, largeField)
}

// aheadFields reads the replies of sendAhead: the end's first seq and
// size (0, 0: none), and the entries past it, none large (aheadLarge:
// large ones counted).
func aheadFields(c redis.Conn, ctx context.Context) (f, size, ahead int64, err error) {
	n, lerr := redis.Int64(receiveContext(c, ctx))
	m, err := redis.Values(receiveContext(c, ctx))
	if err = replyErr(lerr, err); err != nil {
		return 0, 0, 0, err
	}
	if len(m) != 3 {
		return 0, 0, 0, fmt.Errorf("%w: HMGET replied %d values", ErrMalformed, len(m))
	}
	f, size = parseEnd(m[0], m[1])
	if l, _ := redis.String(m[2], nil); l != "" && l != "0" {
		return f, size, aheadLarge, nil
	}
	return f, size, max(n-size, 0), nil
}

// Values of store.ahead that are no count of entries.
const (
	aheadLarge   = -1 // large entries counted
	aheadUnknown = -2 // not read in this tenure of the lease, or since a hand-back
)

// withRead returns how many entries past the end to read with a claim in
// place of up to n tasks, pop at first, with a budget of maxBytes (0: the
// claim goes alone, as large as asked, and a claim made in place reads
// its entries apart). The claim then asks for that many, to be made in
// place or not at all (the claim script's {-5}: it goes again alone).
//
// A claim in place takes no large entry (large.go), but its read is sent
// before the claim's answer, and reads the entries past the end whatever
// the claim did: those it took, or, where it was not made, those a claim
// in place would have taken. So the read is kept to the entries the last
// read found past the end (none large, then; only this store takes
// entries from that end) and the budget's entries at the largest size a
// task makes: whatever came since, the read passes the budget by at most
// that. Where nothing is known (a store's first claim, or one after a
// hand-back put entries at the consuming end), large entries were
// counted, or the last claim was not made in place, it reads nothing.
func (s *store) withRead(n, pop int, maxBytes int64) int {
	known := s.ahead.Load()
	if known < 0 || s.declined.Load() {
		return 0
	}
	return int(min(int64(min(n, pop)), known+max(1, maxBytes/max(s.maxEntry, 1))))
}
