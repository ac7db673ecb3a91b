package queue

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A queue's slot served by another primary while an owner holds its
// lease: the owner resyncs, and tasks whose acks the old primary took and
// lost run again then, not at the next handover.

func TestSlotMovesCounts(t *testing.T) {
	t.Parallel()
	const a, b, c = "10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"
	r := &clusterRouter{}
	store := func(owners ...string) { // owners of slots 0, 1, 2; "" none
		m := newSlotMap()
		for s, o := range owners {
			if o != "" {
				require.NoError(t, m.assign(int64(s), int64(s), o))
			}
		}
		r.mu.Lock()
		r.storeSlotsLocked(m)
		r.mu.Unlock()
	}
	moves := func() []uint32 { return []uint32{r.moves.n[0].Load(), r.moves.n[1].Load(), r.moves.n[2].Load()} }

	store(a, a, b)
	assert.Equal(t, []uint32{0, 0, 0}, moves(), "the first map moves nothing")
	store(a, a, b)
	assert.Equal(t, []uint32{0, 0, 0}, moves(), "a refresh that finds the same owners")
	store(b, "", b)
	assert.Equal(t, []uint32{1, 0, 0}, moves(), "slot 0 failed over; slot 1 without a primary for a while")
	store(b, a, b)
	assert.Equal(t, []uint32{1, 0, 0}, moves(), "slot 1 back on the primary it had")
	store(a, c, b)
	assert.Equal(t, []uint32{2, 1, 0}, moves(), "slot 0 back, slot 1 on another")
	r.moveSlot(2, c)
	assert.Equal(t, []uint32{2, 1, 1}, moves(), "a MOVED reply")
	r.moveSlot(2, c)
	assert.Equal(t, []uint32{2, 1, 1}, moves(), "a MOVED reply the map had")
}

// movable is a one-queue Queue on a hand-made router over two miniredis
// servers (miniredis has no cluster of its own): every slot on a until
// the test moves the queue's slot to b.
type movable struct {
	q      *Queue
	r      *clusterRouter
	a, b   *miniredis.Miniredis
	k      queueKeys
	slot   int
	logs   *logRecorder
	mu     sync.Mutex
	errs   []error
	runs   map[string]int
	ran    chan string
	unheld chan struct{} // closed to let the first run of the first task return
}

func newMovable(t *testing.T) *movable {
	t.Helper()
	m := &movable{a: miniredis.RunT(t), b: miniredis.RunT(t), logs: &logRecorder{}, runs: map[string]int{},
		ran: make(chan string, 100), unheld: make(chan struct{})}
	expireInRealTime(t, m.a)
	expireInRealTime(t, m.b)
	m.r = oneNodeRouter(t, m.a.Addr(), nil)
	pool := m.r.partitionPool(nil)
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	m.q, m.k = q, newQueueKeys(q.cfg.Prefix, 0, 0)
	m.slot = keySlot(m.k.lease)
	return m
}

// run runs a pool of one worker whose first task's first run waits for
// unheld; it returns the pool's result channel.
func (m *movable) run(ctx context.Context) <-chan error {
	first := true
	return runPool(ctx, m.q, PoolConfig{Workers: 1, LeaseTTL: time.Minute, Logger: slog.New(m.logs),
		OnError: func(err error) {
			m.mu.Lock()
			m.errs = append(m.errs, err)
			m.mu.Unlock()
		}},
		func(ctx context.Context, t Task) error {
			m.mu.Lock()
			m.runs[t.ID]++
			hold := first
			first = false
			m.mu.Unlock()
			m.ran <- t.ID
			if hold {
				select {
				case <-m.unheld:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		})
}

func (m *movable) runsOf(id string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.runs[id]
}

// reports returns the errors reported whose text contains s.
func (m *movable) reports(s string) []error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []error
	for _, err := range m.errs {
		if strings.Contains(err.Error(), s) {
			out = append(out, err)
		}
	}
	return out
}

// queueCopyScript returns, in one atomic step, every key matching
// ARGV[1] with its type, PTTL and contents (miniredis has no DUMP but of
// strings).
var queueCopyScript = redis.NewScript(0, `
local out = {}
for _, k in ipairs(redis.call('KEYS', ARGV[1])) do
  local t = redis.call('TYPE', k)['ok']
  local v
  if t == 'string' then v = {redis.call('GET', k)}
  elseif t == 'list' then v = redis.call('LRANGE', k, 0, -1)
  elseif t == 'hash' then v = redis.call('HGETALL', k)
  elseif t == 'zset' then v = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')
  else return redis.error_reply('key ' .. k .. ' of type ' .. t) end
  table.insert(out, {k, t, redis.call('PTTL', k), v})
end
return out`)

// queueTag returns the hash tag of the keys of k's queue, braces included.
func queueTag(k queueKeys) string { return k.ready[:strings.IndexByte(k.ready, '}')+1] }

// copyQueue copies every key of the queue from a to b as one atomic
// reading of a found them, with their TTLs: b then holds the queue as a
// held it, as a replica holds what it had when its primary failed.
func (m *movable) copyQueue(t *testing.T) {
	t.Helper()
	m.copyKeys(t, queueTag(m.k)+"*")
}

// copyKeys is copyQueue of the keys matching pattern.
func (m *movable) copyKeys(t *testing.T, pattern string) {
	t.Helper()
	from, err := redis.Dial("tcp", m.a.Addr())
	require.NoError(t, err)
	defer from.Close()
	to, err := redis.Dial("tcp", m.b.Addr())
	require.NoError(t, err)
	defer to.Close()
	keys, err := redis.Values(queueCopyScript.Do(from, pattern))
	require.NoError(t, err)
	require.NotEmpty(t, keys)
	for _, raw := range keys {
		kv, err := redis.Values(raw, nil)
		require.NoError(t, err)
		k, _ := redis.String(kv[0], nil)
		typ, _ := redis.String(kv[1], nil)
		ttl, _ := redis.Int64(kv[2], nil)
		v, err := redis.Values(kv[3], nil)
		require.NoError(t, err)
		cmd := map[string]string{"string": "SET", "list": "RPUSH", "hash": "HSET", "zset": "ZADD"}[typ]
		if typ == "zset" { // member, score: ZADD wants score, member
			for i := 0; i+1 < len(v); i += 2 {
				v[i], v[i+1] = v[i+1], v[i]
			}
		}
		_, err = to.Do(cmd, append([]any{k}, v...)...)
		require.NoError(t, err, "%s %s", cmd, k)
		if ttl > 0 {
			_, err = to.Do("PEXPIRE", k, ttl)
			require.NoError(t, err)
		}
	}
}

// TestPoolResyncsWhenItsSlotMoves: a pool runs a task and acknowledges it
// on primary a; b, which had the queue as it was before the ack (the
// replica of a that lost the ack with a's last writes), takes the slot
// over. The pool ends its tenure, takes the lease again and recovers:
// the task runs again. Before, the pool kept its lease and renewed it on
// b, and the task stayed pending there, unseen, until a next owner.
func TestPoolResyncsWhenItsSlotMoves(t *testing.T) {
	t.Parallel()
	m := newMovable(t)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	id, err := m.q.AddTask(ctx, 1, []byte("lost ack"))
	require.NoError(t, err)
	errc := m.run(ctx)
	require.Equal(t, id, <-m.ran)
	m.copyQueue(t) // the task pending, as b has it
	close(m.unheld)
	require.Eventually(t, func() bool { return m.a.HGet(m.k.meta, "processed") == "1" }, 10*time.Second, time.Millisecond,
		"the ack reached a")
	require.Empty(t, m.b.HGet(m.k.meta, "processed"), "b lacks it")

	m.r.moveSlot(m.slot, m.b.Addr()) // as a MOVED reply from a makes the router do
	m.requireRunAgain(t, ctx, cancel, errc, id, "hash slot "+fmt.Sprint(m.slot))
}

// requireRunAgain checks that the pool of m (its result errc, its ctx
// ended by cancel) runs task id again once the queue moved from a to b,
// in one resync reported for where, and goes on there. The pool's next
// claim round (an idle pool's wait for work ends within a second) sees
// the move, ends the tenure (nothing runs), and the next one's recovery
// puts the task back.
func (m *movable) requireRunAgain(t *testing.T, ctx context.Context, cancel context.CancelFunc, errc <-chan error, id, where string) {
	t.Helper()
	select {
	case got := <-m.ran:
		assert.Equal(t, id, got)
	case <-time.After(20 * time.Second):
		t.Fatalf("the task whose ack b lacks did not run again; reported: %v", m.reports(""))
	}
	require.Eventually(t, func() bool { return m.b.HGet(m.k.meta, "processed") == "1" }, 10*time.Second, time.Millisecond,
		"its second run's ack reached b")
	assert.Equal(t, 2, m.runsOf(id))
	moved := m.reports("changed (from " + m.a.Addr() + " to " + m.b.Addr() + ")")
	require.Len(t, moved, 1, "%v", m.reports(""))
	assert.ErrorContains(t, moved[0], where)
	assert.ErrorContains(t, moved[0], "resyncing")
	took := m.logs.lines("took the lease")
	require.Len(t, took, 2, "%s", m.logs)
	assert.Equal(t, "1", took[1].attrs["recovered"], "the second tenure recovered the task")

	// It goes on, on b.
	id2, err := m.q.AddTask(ctx, 1, []byte("after"))
	require.NoError(t, err)
	require.Equal(t, id2, <-m.ran)
	cancel()
	require.NoError(t, <-errc)
	assert.Len(t, m.logs.lines("took the lease"), 2, "one resync: %s", m.logs)
}

// TestPoolKeepsItsTenureWhenAnotherSlotMoves: another slot moving, and a
// refresh of the map that finds the queue's slot where it was, end
// nothing.
func TestPoolKeepsItsTenureWhenAnotherSlotMoves(t *testing.T) {
	t.Parallel()
	m := newMovable(t)
	close(m.unheld)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	errc := m.run(ctx)
	id, err := m.q.AddTask(ctx, 1, []byte("before"))
	require.NoError(t, err)
	require.Equal(t, id, <-m.ran)

	m.r.moveSlot((m.slot+1)%clusterSlots, m.b.Addr())
	m.r.mu.Lock()
	m.r.storeSlotsLocked(m.r.slots.Load()) // a refresh: the same owners
	m.r.mu.Unlock()
	// A task added now is claimed in a claim round after the changes,
	// which looks at the slot after its claim.
	id2, err := m.q.AddTask(ctx, 1, []byte("after"))
	require.NoError(t, err)
	require.Equal(t, id2, <-m.ran)
	cancel()
	require.NoError(t, <-errc)
	assert.Empty(t, m.reports("changed"))
	assert.Len(t, m.logs.lines("took the lease"), 1, "%s", m.logs)
	assert.Equal(t, 1, m.runsOf(id))
}

// TestConsumerResyncsWhenItsSlotMoves: as TestPoolResyncsWhenItsSlotMoves,
// for a Consumer: the Claim after the move hands out again the task whose
// ack b lacks, and one after another slot's move resyncs nothing.
func TestConsumerResyncsWhenItsSlotMoves(t *testing.T) {
	t.Parallel()
	m := newMovable(t)
	ctx := bounded(t)
	id, err := m.q.AddTask(ctx, 1, []byte("lost ack"))
	require.NoError(t, err)
	c, err := m.q.Consume(ctx, 0, ConsumerConfig{LeaseTTL: time.Minute})
	require.NoError(t, err)
	ts, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	require.Len(t, ts, 1)
	m.copyQueue(t)
	n, err := c.Ack(ctx, id)
	require.NoError(t, err)
	require.Equal(t, 1, n)

	token := c.Token()
	m.r.moveSlot((m.slot+1)%clusterSlots, m.b.Addr())
	ts, err = c.Claim(ctx, 10)
	require.NoError(t, err)
	assert.Empty(t, ts, "another slot moved")
	assert.Equal(t, token, c.Token(), "no resync: the token is the one it had")

	m.r.moveSlot(m.slot, m.b.Addr())
	ts, err = c.Claim(ctx, 10)
	require.NoError(t, err)
	require.Len(t, ts, 1, "the task whose ack b lacks")
	assert.Equal(t, id, ts[0].ID)
	assert.NotEqual(t, token, c.Token(), "resynced: a new token")
	n, err = c.Ack(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	ts, err = c.Claim(ctx, 10)
	require.NoError(t, err)
	assert.Empty(t, ts)
	require.NoError(t, c.Release(ctx))
}

// TestClusterPoolResyncsWhenItsSlotMovesReal is TestPoolResyncsWhenItsSlotMoves
// on a real cluster: the queue as it was before the ack is copied to the
// other primary (importing the slot), the ack made on the slot's primary,
// then the slot given over as a migration ends (its keys there dropped,
// as a failover without WaitReplicas drops the old primary's last
// writes). The pool's next command gets MOVED, the router follows it, and
// the pool resyncs: the task runs again.
func TestClusterPoolResyncsWhenItsSlotMovesReal(t *testing.T) {
	c := startCluster(t, 3, 0)
	q := clusterQueue(t, c, 1)
	k := newQueueKeys(q.cfg.Prefix, 0, 0)
	slot := keySlot(k.lease)
	src := c.primaryOf(k.lease)
	var dst *redisProc
	for _, p := range c.primaries() {
		if p.port != src.port && dst == nil {
			dst = p
		}
	}
	srcID, dstID := c.id(src), c.id(dst)
	keys := func() []string {
		ks, err := redis.Strings(c.must(src, "CLUSTER", "GETKEYSINSLOT", slot, 1000), nil)
		require.NoError(t, err)
		return ks
	}

	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	id, err := q.AddTask(ctx, 1, []byte("lost ack"))
	require.NoError(t, err)
	var mu sync.Mutex
	var errs []error
	ran := make(chan string, 100)
	unheld := make(chan struct{})
	first := true
	errc := runPool(ctx, q, PoolConfig{Workers: 1, LeaseTTL: time.Minute,
		OnError: func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() }},
		func(ctx context.Context, t Task) error {
			mu.Lock()
			hold := first
			first = false
			mu.Unlock()
			ran <- t.ID
			if hold {
				select {
				case <-unheld:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		})
	require.Equal(t, id, <-ran)

	// Copy the queue to dst, the task pending.
	c.must(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", srcID)
	conn, err := redis.Dial("tcp", dst.addr(), redis.DialReadTimeout(5*time.Second))
	require.NoError(t, err)
	defer conn.Close()
	dumped, err := redis.Values(dumpScript.Do(dialNode(t, src), k.lease, queueTag(k)+"*"))
	require.NoError(t, err)
	require.NotEmpty(t, dumped)
	for _, raw := range dumped {
		kv, err := redis.Values(raw, nil)
		require.NoError(t, err)
		ttl, _ := redis.Int64(kv[1], nil)
		require.NoError(t, conn.Send("ASKING"))
		_, err = conn.Do("RESTORE", kv[0], max(ttl, 0), kv[2], "REPLACE")
		require.NoError(t, err, "RESTORE %s", kv[0])
	}
	close(unheld)
	require.Eventually(t, func() bool {
		n, _ := redis.String(c.do(src, "HGET", k.meta, "processed"))
		return n == "1"
	}, 10*time.Second, time.Millisecond, "the ack reached the slot's primary")

	// Give the slot to dst, as a migration's end does: the commands that
	// meet src without the keys meanwhile are sent to dst (ASK).
	c.must(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dstID)
	for ks := keys(); len(ks) > 0; ks = keys() {
		args := make([]any, len(ks))
		for i, key := range ks {
			args[i] = key
		}
		c.must(src, "DEL", args...)
	}
	// src last: once the pool meets MOVED, every node names dst, and the
	// router's refresh reads no map that gives the slot back to src.
	for _, p := range c.primaries() {
		if p.port != src.port {
			c.must(p, "CLUSTER", "SETSLOT", slot, "NODE", dstID)
		}
	}
	c.must(src, "CLUSTER", "SETSLOT", slot, "NODE", dstID)
	c.waitSettled(fmt.Sprintf("slot %d given to %d", slot, dst.port))

	// The pool's next claim round (an idle pool's wait for work ends
	// within a second) meets MOVED, ends its tenure and recovers.
	select {
	case got := <-ran:
		assert.Equal(t, id, got)
	case <-time.After(20 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("the task whose ack dst lacks did not run again; reported: %v", errs)
	}
	id2, err := q.AddTask(ctx, 1, []byte("after"))
	require.NoError(t, err)
	require.Equal(t, id2, <-ran)
	cancel()
	require.NoError(t, <-errc)
	mu.Lock()
	defer mu.Unlock()
	var moved int
	for _, err := range errs {
		if strings.Contains(err.Error(), "changed (from "+src.addr()+" to "+dst.addr()+")") {
			moved++
		}
	}
	assert.Equal(t, 1, moved, "%v", errs)
}

// dumpScript returns, in one atomic step, every key matching ARGV[1] (of
// KEYS[1]'s slot) with its PTTL and DUMP.
var dumpScript = redis.NewScript(1, `
local out = {}
for _, k in ipairs(redis.call('KEYS', ARGV[1])) do
  table.insert(out, {k, redis.call('PTTL', k), redis.call('DUMP', k)})
end
return out`)

// dialNode returns a connection to node n, closed at the test's end.
func dialNode(t *testing.T, n *redisProc) redis.Conn {
	t.Helper()
	c, err := redis.Dial("tcp", n.addr(), redis.DialReadTimeout(5*time.Second))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}
