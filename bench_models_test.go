package queue

import (
	"fmt"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// BenchmarkStoreModels measures what Redis spends per task on the claim
// and the acknowledgements of a task under four ways of recording what a
// pool has claimed, each reduced to its per-task work (no fencing, type
// checks, schedule or cancels): the store's cost model, to weigh a new
// record format before building it. Each run claims 1000 tasks at a time
// from a list of drainSize() entries and acknowledges them 100 or 1000 at
// a time (a busy pool's acker sends what finished since its last round
// trip); redis-cpu-µs/task is the server's CPU time
// over the claims and acks (INFO cpu), so the fill is not in it.
//
//   - raw: RPOP 1000, nothing recorded (RawDrain's drain).
//   - hash: the store's model today. A claim script pops the entries,
//     writes one pending-hash field per task (task ID -> entry) and the
//     claim's ID sequence, and returns the entries; an ack script deletes
//     the acknowledged tasks' fields, and with the claim's last task its
//     sequence record.
//   - list: a claim script pops the entries, appends them to a list of
//     the claim's own (the claim record, in claim order) and returns
//     them; an ack script ORs a bitmap of the acknowledged tasks' places
//     into the claim's acknowledgement bitmap (BITOP), and deletes both
//     records once every task is acknowledged (BITCOUNT).
//   - sortstore: the claim script moves the entries to the claim's list
//     without reading them (SORT ... BY nosort LIMIT ... STORE, then
//     LTRIM), and the pool reads them with LRANGE; acks as in list.
//
// Needs a real server (QUEUE_TEST_REDIS_URL): miniredis reports no CPU
// time and implements no SORT.
func BenchmarkStoreModels(b *testing.B) {
	for _, model := range []string{"raw", "hash", "list", "sortstore"} {
		for _, ack := range []int{100, 1000} {
			if model == "raw" && ack > 100 {
				continue // it acknowledges nothing
			}
			name := fmt.Sprintf("model=%s/ack=%d", model, ack)
			if model == "raw" {
				name = "model=raw"
			}
			b.Run(name, func(b *testing.B) {
				_, servers := benchQueue(b, 1)
				pool := servers[0].pool
				if _, ok := serverCPU(pool); !ok {
					b.Skip("needs a real redis-server (QUEUE_TEST_REDIS_URL)")
				}
				m := newStoreModel(b, pool, testPrefix(b)+":model", ack)
				n := drainSize()
				var spent time.Duration
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					m.fill(n)
					before, _ := serverCPU(pool)
					m.drain(model)
					after, _ := serverCPU(pool)
					spent += after - before
				}
				b.StopTimer()
				b.ReportMetric(spent.Seconds()*1e6/float64(b.N*n), "redis-cpu-µs/task")
				m.check()
			})
		}
	}
}

// modelClaim is how many tasks a claim takes.
const modelClaim = 1000

// modelHashClaim and modelHashAck are the hash model's scripts.
//
//	KEYS: ready list, meta hash, pending hash, claim-sequence hash; ARGV[1] = tasks to claim
var modelHashClaim = redis.NewScript(4, `
local items = redis.call('RPOP', KEYS[1], tonumber(ARGV[1]))
if not items then return {} end
local n, sub = #items, string.sub
local args, seq = {}, {}
for i = 1, n do
  local e = items[i]
  local f = sub(e, 2, 21)
  seq[i], args[2 * i - 1], args[2 * i] = f, f, e
end
local first = redis.call('HINCRBY', KEYS[2], 'seq', n) - n
redis.call('HSET', KEYS[3], unpack(args))
redis.call('HSET', KEYS[4], first, table.concat(seq))
items[n + 1] = first
return items
`)

// KEYS: pending hash, claim-sequence hash; ARGV[1] = k, ARGV[2 .. 1+k] = task IDs,
// ARGV[2+k] = the claim's sequence record to delete, if any
var modelHashAck = redis.NewScript(2, `
local k = tonumber(ARGV[1])
local n = redis.call('HDEL', KEYS[1], unpack(ARGV, 2, 1 + k))
if ARGV[2 + k] then redis.call('HDEL', KEYS[2], ARGV[2 + k]) end
return n
`)

// modelListClaim: KEYS: ready list, meta hash, claim list prefix; ARGV[1] = tasks to claim.
var modelListClaim = redis.NewScript(3, `
local items = redis.call('RPOP', KEYS[1], tonumber(ARGV[1]))
if not items then return {} end
local n = #items
local first = redis.call('HINCRBY', KEYS[2], 'seq', n) - n
redis.call('RPUSH', KEYS[3] .. first, unpack(items))
items[n + 1] = first
return items
`)

// modelSortClaim: KEYS: ready list, meta hash, claim list prefix; ARGV[1] = tasks to claim.
// Returns {first, n}.
var modelSortClaim = redis.NewScript(3, `
local len = redis.call('LLEN', KEYS[1])
local n = math.min(tonumber(ARGV[1]), len)
if n == 0 then return {0, 0} end
local first = redis.call('HINCRBY', KEYS[2], 'seq', n) - n
redis.call('SORT', KEYS[1], 'BY', 'nosort', 'LIMIT', len - n, n, 'STORE', KEYS[3] .. first)
if n == len then redis.call('DEL', KEYS[1]) else redis.call('LTRIM', KEYS[1], 0, len - n - 1) end
return {first, n}
`)

// modelBitmapAck ORs ARGV[3], a bitmap of the acknowledged tasks' places
// in claim ARGV[1] of ARGV[2] tasks, into the claim's acknowledgement
// bitmap (Redis's own BITOP, through a scratch key), and deletes the
// claim's records once all are acknowledged (BITCOUNT).
//
//	KEYS: claim list prefix, acknowledgement bitmap prefix, scratch key
var modelBitmapAck = redis.NewScript(3, `
local id, n = ARGV[1], tonumber(ARGV[2])
local acks = KEYS[2] .. id
redis.call('SET', KEYS[3], ARGV[3])
redis.call('BITOP', 'OR', acks, acks, KEYS[3])
redis.call('DEL', KEYS[3])
if redis.call('BITCOUNT', acks) == n then
  redis.call('DEL', KEYS[1] .. id, acks)
  return 1
end
return 0
`)

type storeModel struct {
	b                          *testing.B
	pool                       *redis.Pool
	ready, meta, pending, seqs string
	claims, acks               string
	ackSize                    int // tasks an ack acknowledges
	tasks                      int // entries added
	claimed, acked             int
}

func newStoreModel(b *testing.B, pool *redis.Pool, prefix string, ackSize int) *storeModel {
	m := &storeModel{b: b, pool: pool, ackSize: ackSize, ready: prefix + ":ready", meta: prefix + ":meta", pending: prefix + ":pending",
		seqs: prefix + ":seqs", claims: prefix + ":c:", acks: prefix + ":a:"}
	b.Cleanup(func() {
		c := pool.Get()
		defer c.Close()
		c.Do("DEL", m.ready, m.meta, m.pending, m.seqs)
	})
	return m
}

// fill pushes n entries of benchPayload, 1000 to a round trip, pipelined.
func (m *storeModel) fill(n int) {
	c := m.pool.Get()
	defer c.Close()
	sent := 0
	for n > 0 {
		args := []any{m.ready}
		for range min(n, 1000) {
			args = append(args, appendEntry(nil, 0, fmt.Sprintf("%020d", m.tasks), uint64(m.tasks), 0, 0, nil, benchPayload))
			m.tasks++
			n--
		}
		if err := c.Send("LPUSH", args...); err != nil {
			m.b.Fatal(err)
		}
		sent++
	}
	if err := c.Flush(); err != nil {
		m.b.Fatal(err)
	}
	for range sent {
		if _, err := c.Receive(); err != nil {
			m.b.Fatal(err)
		}
	}
}

// drain claims and acknowledges every ready entry under model.
func (m *storeModel) drain(model string) {
	c := m.pool.Get()
	defer c.Close()
	for {
		var entries [][]byte
		var first int64
		var err error
		switch model {
		case "raw":
			entries, err = redis.ByteSlices(c.Do("RPOP", m.ready, modelClaim))
			if err == redis.ErrNil {
				return
			}
		case "hash", "list":
			var r []any
			if model == "hash" {
				r, err = redis.Values(modelHashClaim.Do(c, m.ready, m.meta, m.pending, m.seqs, modelClaim))
			} else {
				r, err = redis.Values(modelListClaim.Do(c, m.ready, m.meta, m.claims, modelClaim))
			}
			if err == nil && len(r) > 0 {
				first, err = redis.Int64(r[len(r)-1], nil)
				entries, _ = redis.ByteSlices(r[:len(r)-1], nil)
			}
		case "sortstore":
			var r []int64
			r, err = redis.Int64s(modelSortClaim.Do(c, m.ready, m.meta, m.claims, modelClaim))
			if err == nil && r[1] > 0 {
				first = r[0]
				entries, err = redis.ByteSlices(c.Do("LRANGE", m.claims+fmt.Sprint(first), 0, -1))
			}
		}
		if err != nil {
			m.b.Fatal(err)
		}
		if len(entries) == 0 {
			return
		}
		m.claimed += len(entries)
		if model != "raw" {
			m.ack(c, model, first, entries)
		}
	}
}

// ack acknowledges the claim's entries, m.ackSize at a time, in claim order.
func (m *storeModel) ack(c redis.Conn, model string, first int64, entries [][]byte) {
	n := len(entries)
	for at := 0; at < n; at += m.ackSize {
		end := min(at+m.ackSize, n)
		var err error
		if model == "hash" {
			args := []any{m.pending, m.seqs, end - at}
			for _, e := range entries[at:end] {
				args = append(args, string(e[1:entryHeader]))
			}
			if end == n {
				args = append(args, first)
			}
			_, err = modelHashAck.Do(c, args...)
		} else {
			bits := make([]byte, (n+7)/8)
			for i := at; i < end; i++ {
				bits[i/8] |= 0x80 >> (i % 8)
			}
			_, err = modelBitmapAck.Do(c, m.claims, m.acks, m.acks+"scratch", first, n, bits)
		}
		if err != nil {
			m.b.Fatal(err)
		}
		m.acked += end - at
	}
}

// check fails the benchmark unless every entry was claimed and
// acknowledged, and nothing of the records is left.
func (m *storeModel) check() {
	if m.claimed != m.tasks {
		m.b.Fatalf("claimed %d of %d entries", m.claimed, m.tasks)
	}
	c := m.pool.Get()
	defer c.Close()
	n, err := redis.Int(c.Do("EXISTS", m.ready, m.pending, m.seqs, m.acks+"scratch"))
	if err != nil || n != 0 {
		m.b.Fatalf("%d records left (%v)", n, err)
	}
	for _, p := range []string{m.claims, m.acks} {
		keys, err := redis.Strings(c.Do("KEYS", p+"*"))
		if err != nil || len(keys) != 0 {
			m.b.Fatalf("claim records left: %v (%v)", keys, err)
		}
	}
}
