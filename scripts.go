package queue

import (
	"regexp"
	"strconv"
	"strings"

	"github.com/gomodule/redigo/redis"
)

// Every Lua script of the package is made by newScript, which renders its
// source once: the names below, written "$name" in a script, stand for the
// Go constants they mirror, so a script and the Go code that reads its
// records cannot drift apart. The rendered text of each script is checked
// in under testdata/scripts (see TestScriptsGolden): read the scripts there
// as they run.
//
// Every key a script touches comes in KEYS, all with the queue's hash tag.
// Scripts that change pending work first check the caller's lease value
// (fencing token, nonce and owner) and refuse with staleReply when it is not the
// current one, so a stale owner changes nothing (fenced). They also extend
// the lease (ARGV[2], milliseconds), so a Consumer that keeps working keeps
// its lease. Scripts also refuse, before any write, to run on a key of the
// wrong Redis type (typeCheck), so that a key someone overwrote costs an
// error and never a task.
var scriptVars = strings.NewReplacer(
	"$entryTask", strconv.Itoa(entryTask),
	"$entryFlags", strconv.Itoa(entryFlags),
	"$entryRecovered", strconv.Itoa(entryRecovered),
	"$entryHeader", strconv.Itoa(entryHeader),
	"$idLen", strconv.Itoa(idLen),
	"$scriptChunk", strconv.Itoa(scriptChunk),
	"$scriptBytes", strconv.Itoa(scriptBytes),
	"$seqFiller", seqFiller,
	"$idsLater", string(idsLater),
	"$accountedByte", strconv.Itoa(accountedMark),
	"$claimedMark", strconv.Itoa(claimedMark),
	"$claimsName", claimsName,
	"$cancelSeen", cancelSeen,
	"$scheduleStep", strconv.FormatFloat(scheduleStep, 'g', -1, 64),
	"$scheduleExact", strconv.Itoa(scheduleExact),
	"$staleReply", staleReply,
	"$wrongTypeReply", wrongTypeReply,
	"$badValueReply", badValueReply,
	"$seqReply", seqReply,
	"$endReply", endReply,
	"$markTakenField", markTakenField,
	"$markBoundField", markBoundField,
	"$endFirstField", endFirstField,
	"$endSizeField", endSizeField,
	"$largeEntry", strconv.Itoa(largeEntry),
	"$largeField", largeField,
	"$lastDeathField", lastDeathField,
	"$maxDeathsAheadMS", strconv.FormatInt(maxDeathsAhead.Milliseconds(), 10),
	"$layoutRecorded", layoutRecorded,
	"$maxClaimSeq", strconv.FormatInt(maxClaimSeq, 10), // before $maxClaim: the first name that matches is taken
	"$maxClaim", strconv.Itoa(maxClaim),
	"$maxGroupWeight", strconv.Itoa(maxGroupWeight),
	"$maxSessionMS", strconv.FormatInt(maxSessionTTL.Milliseconds(), 10),
)

// unrendered matches a $name left in a rendered script. (A Lua pattern's
// anchor, '$' before a quote, is not one.)
var unrendered = regexp.MustCompile(`\$[A-Za-z]`)

// scriptSources holds the rendered text of every script, by name.
var scriptSources = map[string]string{}

// newScript renders src and returns it as a script of keyCount keys,
// registered under name.
func newScript(name string, keyCount int, src string) *redis.Script {
	text := scriptVars.Replace(src)
	if unrendered.MatchString(text) {
		panic("queue: script " + name + " has an unknown $name") // a programming error, caught by every test
	}
	if _, dup := scriptSources[name]; dup {
		panic("queue: two scripts named " + name)
	}
	scriptSources[name] = text
	return redis.NewScript(keyCount, text)
}

// staleReply is the error a script returns to a caller whose lease is gone.
const staleReply = "QUGOSTALE"

// scriptChunk bounds the values passed to one variadic command inside a
// script (Lua's unpack has a C-stack limit of a few thousand).
const scriptChunk = 1000

// fenced returns a fenced script: the lease check (the lease at
// KEYS[leaseKey] must hold ARGV[1]), then checks, the script's other
// checks, then the lease's extension by ARGV[2] ms, then body. Redis does
// not undo a script that fails halfway, so every check comes before the
// first write.
func fenced(leaseKey int, checks, body string) string {
	k := "KEYS[" + strconv.Itoa(leaseKey) + "]"
	return "\nif redis.call('GET', " + k + ") ~= ARGV[1] then return redis.error_reply('$staleReply lease lost') end\n" +
		checks + "redis.call('PEXPIRE', " + k + ", ARGV[2])\n" + body
}

// luaIncr defines incr(key, field, n), which adds n to a counter of a
// hash. A counter that holds something else than a count (written by
// hand, say) starts over at n rather than fail the script after its first
// write: counters are statistics, and no task may pay for one.
const luaIncr = `
local function incr(key, field, n)
  local v = redis.call('HGET', key, field)
  if v and not (string.match(v, '^%d+$') and #v <= 15) then
    redis.call('HSET', key, field, n)
  else
    redis.call('HINCRBY', key, field, n)
  end
end
`

// badValueReply starts the error a script returns, before any write, when
// a value it must read (a claim sequence, a fence) is not one it wrote.
const badValueReply = "QUGOBADVALUE"

// typeCheck returns Lua that refuses with wrongTypeReply, before any write,
// when a key holds another type than the one given for its KEYS index.
// Redis does not roll a failed script back: a claim that popped tasks and
// then failed on a pending hash that had become a list would lose them.
// Only keys written after a first write need the check; a script's first
// write fails by itself, before anything changed.
func typeCheck(keys ...keyType) string {
	var b strings.Builder
	for _, k := range keys {
		key := "KEYS[" + strconv.Itoa(k.index) + "]"
		b.WriteString("\nlocal t = redis.call('TYPE', " + key + ").ok\n" +
			"if t ~= '" + k.want + "' and t ~= 'none' then return redis.error_reply('$wrongTypeReply ' .. " + key +
			" .. ' holds a ' .. t .. ', want a " + k.want + "') end")
	}
	return b.String() + "\n"
}

// keyType is a KEYS index and the Redis type its key must hold.
type keyType struct {
	index int
	want  string
}

func hashAt(i int) keyType { return keyType{i, "hash"} }
func listAt(i int) keyType { return keyType{i, "list"} }

// scriptBytes bounds the task bytes one hand-back or dead-letter script
// carries, and those of the due tasks one claim moves (a larger task goes
// alone): however large the tasks, no script holds Redis for long, and
// other queues and lease renewals go on.
const scriptBytes = 8 << 20

// buryChunk returns how many of items one bury script takes: at most
// lim's tasks and bytes of records, and one however large.
func buryChunk(items []burial, lim scriptLimit) int {
	n, size := 0, int64(0)
	for n < len(items) && n < lim.tasks && (n == 0 || size+int64(len(items[n].rec)) <= lim.bytes) {
		size += int64(len(items[n].rec))
		n++
	}
	return n
}

// argsChunk returns how many of args, groups of stride whose last one is
// a task's bytes, one script takes: at most scriptChunk groups and
// scriptBytes of their last ones, and one group however large.
func argsChunk(args []any, stride int) int {
	n, size := 0, 0
	for n+stride-1 < len(args) && n < stride*scriptChunk && (n == 0 || size+argSize(args[n+stride-1]) <= scriptBytes) {
		size += argSize(args[n+stride-1])
		n += stride
	}
	return n
}

// scriptLimit bounds the tasks one hand-back or dead-letter script
// carries: scriptChunk and scriptBytes, or less after round trips a
// failed connection cut short (see cutRetry).
type scriptLimit struct {
	tasks int
	bytes int64
}

var fullScript = scriptLimit{scriptChunk, scriptBytes}

// halve returns lim at half its size (one task however large at least).
func (lim scriptLimit) halve() scriptLimit {
	return scriptLimit{max(1, lim.tasks/2), max(1, lim.bytes/2)}
}

// requeueChunk returns where the requeue script that pushes tasks[:end]
// from the end starts: at most lim's tasks and bytes, and one task however
// large.
func requeueChunk(tasks []claimed, end int, lim scriptLimit) int {
	start, size := end, int64(0)
	for start > max(0, end-lim.tasks) && (start == end || size+tasks[start-1].size() <= lim.bytes) {
		start--
		size += tasks[start].size()
	}
	return start
}

// argSize is the size of a script argument this file passes: a string or
// bytes.
func argSize(v any) int {
	switch v := v.(type) {
	case []byte:
		return len(v)
	case string:
		return len(v)
	}
	return 0
}
