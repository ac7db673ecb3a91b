package queue

import (
	"strings"

	"github.com/gomodule/redigo/redis"
)

// The scripts of one queue. Every key a script touches comes in KEYS, all
// with the queue's hash tag. Scripts that change pending work first check
// the caller's lease value (fencing token and owner) and refuse with
// staleReply when it is not the current one, so a stale owner changes
// nothing. They also extend the lease (ARGV[2], milliseconds), so a
// Consumer that keeps working keeps its lease.
// Scripts also refuse, before any write, to run on a key of the wrong
// Redis type (typeCheck), so that a key someone overwrote costs an error
// and never a task.

// staleReply is the error a script returns to a caller whose lease is gone.
const staleReply = "QUGOSTALE"

// scriptChunk bounds the values passed to one variadic command inside a
// script (Lua's unpack has a C-stack limit of a few thousand).
const scriptChunk = 1000

// leaseCheck is the common head of the fenced scripts.
const leaseCheck = `
if redis.call('GET', KEYS[LEASE]) ~= ARGV[1] then return redis.error_reply('` + staleReply + ` lease lost') end
redis.call('PEXPIRE', KEYS[LEASE], ARGV[2])
`

// fenced returns body behind the lease check, with the lease at KEYS[leaseKey].
func fenced(leaseKey, body string) string {
	return strings.ReplaceAll(leaseCheck, "LEASE", leaseKey) + body
}

// typeCheck returns Lua that refuses with wrongTypeReply, before any write,
// when a key holds another type than the one given after its KEYS index
// ("4=hash"). Redis does not roll a failed script back: a claim that popped
// tasks and then failed on a pending hash that had become a list would
// lose them. Only keys written after a first write need the check; a
// script's first write fails by itself, before anything changed.
func typeCheck(keys ...string) string {
	var b strings.Builder
	for _, k := range keys {
		i, want, _ := strings.Cut(k, "=")
		key := "KEYS[" + i + "]"
		b.WriteString("\nlocal t = redis.call('TYPE', " + key + ").ok\n" +
			"if t ~= '" + want + "' and t ~= 'none' then return redis.error_reply('" + wrongTypeReply + " ' .. " + key +
			" .. ' holds a ' .. t .. ', want a " + want + "') end")
	}
	return b.String() + "\n"
}

// claimScript moves up to ARGV[3] tasks from the consuming (right) end of
// the ready list into the pending hash, and records their claim order.
//
//	KEYS[1] = ready list, KEYS[2] = pending hash, KEYS[3] = lease, KEYS[4] = meta hash,
//	KEYS[5] = order hash
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3] = most tasks to claim
//
// Returns {entry..., first}: the i-th entry (1-based) has claim seq
// first+i and pending field pendingField(entry, first+i); {0} when the
// ready list is empty. Each pending record holds the entry as it was
// popped, under its task ID; the claim order goes into one order record,
// under first, holding the n fields' first 20 bytes back to back (a
// malformed entry's as orderFiller). Building a "<seq>:<entry>" string per
// task instead cost about 40 % more Redis time per claim. (The loop
// indexes its tables rather than asking for their length, and first goes
// last rather than shifting the reply.)
var claimScript = redis.NewScript(5, fenced("3", typeCheck("2=hash", "4=hash", "5=hash")+`
local items = redis.call('RPOP', KEYS[1], ARGV[3])
if not items then return {0} end
local n = #items
local first = redis.call('HINCRBY', KEYS[4], 'seq', n) - n
local sub, byte = string.sub, string.byte
local args, order = {}, {}
for i = 1, n do
  local e = items[i]
  local f
  if #e >= 21 and byte(e, 1) == 1 then
    f = sub(e, 2, 21)
    order[i] = f
  else
    f = string.format('bad:%d', first + i)
    order[i] = '`+orderFiller+`'
  end
  args[2 * i - 1] = f
  args[2 * i] = e
end
for i = 1, 2 * n, 1000 do
  redis.call('HSET', KEYS[2], unpack(args, i, math.min(i + 999, 2 * n)))
end
redis.call('HSET', KEYS[5], string.format('%d', first), table.concat(order))
items[n + 1] = first
return items
`))

// orderFiller stands in an order record for a malformed entry, which has
// no task ID: 20 bytes no task ID has.
const orderFiller = "--------------------"

// ackScript deletes finished tasks from the pending hash, and the order
// records of claims none of whose tasks is pending any more.
//
//	KEYS[1] = pending hash, KEYS[2] = lease, KEYS[3] = meta hash, KEYS[4] = order hash
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3] = number of task IDs k,
//	ARGV[4 .. 3+k] = task IDs, ARGV[4+k ...] = order records (claim firsts)
//
// Returns the number of pending records deleted (also added to processed).
var ackScript = redis.NewScript(4, fenced("2", typeCheck("3=hash", "4=hash")+`
local n, last = 0, 3 + tonumber(ARGV[3])
for i = 4, last, 1000 do
  n = n + redis.call('HDEL', KEYS[1], unpack(ARGV, i, math.min(i + 999, last)))
end
for i = last + 1, #ARGV, 1000 do
  redis.call('HDEL', KEYS[4], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if n > 0 then redis.call('HINCRBY', KEYS[3], 'processed', n) end
return n
`))

// retryScript replaces a pending record with ARGV[4]: the task encoded
// with the deliveries it has had, counting the current one (one about to
// start, or the retry that follows a failure), behind a '+' that marks the
// count as accounted, so that recovery after a crash does not count the
// current delivery again.
//
//	KEYS[1] = pending hash, KEYS[2] = lease, KEYS[3] = meta hash
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3] = task ID, ARGV[4] = "+" encoded task
//
// Returns 1, or 0 when the task is no longer pending.
var retryScript = redis.NewScript(3, fenced("2", `
if redis.call('HEXISTS', KEYS[1], ARGV[3]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
return 1
`))

// deadScript moves pending tasks to the dead-letter store.
//
//	KEYS[1] = pending hash, KEYS[2] = dead hash, KEYS[3] = lease, KEYS[4] = meta hash
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3...] = task ID, dead record, ...
//
// Returns the number moved (also added to failed); a task no longer
// pending is skipped. A record never replaces another one under the same
// field (garbage written into a pending hash under a dead task's ID, say):
// a quarantined malformed record (0 attempts: its second byte is 0) takes
// the first free field of "<field>#2", "<field>#3", ..., and a task's
// record moves what was under its ID there.
var deadScript = redis.NewScript(4, fenced("3", typeCheck("2=hash", "4=hash")+`
local n = 0
for i = 3, #ARGV, 2 do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    local f, rec = ARGV[i], ARGV[i + 1]
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
if n > 0 then redis.call('HINCRBY', KEYS[4], 'failed', n) end
return n
`))

// requeueScript puts pending tasks back at the consuming (right) end of the
// ready list: the last one pushed is the next one claimed.
//
//	KEYS[1] = ready list, KEYS[2] = pending hash, KEYS[3] = lease, KEYS[4] = meta hash
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3] = 1 to count as redeliveries,
//	ARGV[4...] = task ID, encoded task, ... in push order
//
// Returns the number pushed; a task no longer pending is skipped.
var requeueScript = redis.NewScript(4, fenced("3", typeCheck("1=list", "4=hash")+`
local n = 0
for i = 4, #ARGV, 2 do
  if redis.call('HDEL', KEYS[2], ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[1], ARGV[i + 1])
    n = n + 1
  end
end
if n > 0 and ARGV[3] == '1' then redis.call('HINCRBY', KEYS[4], 'redelivered', n) end
return n
`))

// acquireScript takes a free lease with a new fencing token.
//
//	KEYS[1] = lease, KEYS[2] = meta hash
//	ARGV[1] = owner, ARGV[2] = lease TTL ms
//
// Returns {1, lease value} when taken, or {0, ms left on the current lease}.
// Its first write is a DEL of the (absent) lease: Redis refuses a script at
// maxmemory only at its first write, and only when that command may grow
// memory (HINCRBY, SET), so starting with DEL lets a pool take the lease and
// drain a full Redis.
var acquireScript = redis.NewScript(2, `
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, redis.call('PTTL', KEYS[1])} end
redis.call('DEL', KEYS[1])
local v = redis.call('HINCRBY', KEYS[2], 'fence', 1) .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
return {1, v}
`)

// renewScript extends a lease that is still the caller's.
//
//	KEYS[1] = lease
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms
//
// Returns 1 when extended, 0 when the lease is gone or another's.
var renewScript = redis.NewScript(1, `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`)

// releaseScript gives a lease up and wakes one standby.
//
//	KEYS[1] = lease, KEYS[2] = wake list
//	ARGV[1] = lease value
//
// Returns 1 when released, 0 when the lease was not the caller's.
var releaseScript = redis.NewScript(2, `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('RPUSH', KEYS[2], '1')
redis.call('PEXPIRE', KEYS[2], 60000)
return 1
`)

// replayScript moves dead tasks back to the producing (left) end of the
// ready list, as new work.
//
//	KEYS[1] = dead hash, KEYS[2] = ready list
//	ARGV[1...] = task ID, encoded task, ...
//
// Returns the number moved; an ID no longer dead is skipped.
var replayScript = redis.NewScript(2, typeCheck("2=list")+`
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('LPUSH', KEYS[2], ARGV[i + 1])
    n = n + 1
  end
end
return n
`)
