package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Tests of the count of large entries (large.go).

// largeCount returns the meta hash's count of large entries (0: none).
func largeCount(t *testing.T, s *testServer, k queueKeys) int {
	t.Helper()
	v, err := redis.Int(s.do(t, "HGET", k.meta, largeField), nil)
	if errors.Is(err, redis.ErrNil) {
		return 0
	}
	require.NoError(t, err)
	return v
}

// bigPayload returns the payload of task i of OrderID o, n bytes long.
func bigPayload(o, i, n int) []byte {
	p := pl(o, i) + "|"
	return []byte(p + strings.Repeat("b", max(n-len(p), 0)))
}

// Every write that puts a large entry into a ready list counts it, and
// only large ones: AddTask alone and in a shared round trip, AddTasks,
// AddTaskOnce, a due scheduled task's move, a hand-back and a replay.
// Claims through the script's loop take them off; the claim that finds
// the list empty drops the count.
func TestLargeEntriesAreCounted(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	big := largeEntry + 1
	_, err := q.AddTask(ctx, 0, []byte("small"))
	require.NoError(t, err)
	assert.Equal(t, int64(0), s.do(t, "HEXISTS", k.meta, largeField), "no large entry, no count")

	_, err = q.AddTask(ctx, 0, bigPayload(0, 0, big))
	require.NoError(t, err)
	assert.Equal(t, 1, largeCount(t, s, k), "AddTask")

	_, err = q.AddTasks(ctx, []Task{{OrderID: 0, Payload: []byte("s")}, {OrderID: 0, Payload: bigPayload(0, 1, big)}, {OrderID: 0, Payload: bigPayload(0, 2, 3*big)}})
	require.NoError(t, err)
	assert.Equal(t, 3, largeCount(t, s, k), "AddTasks")

	// The adder's shared round trip (concurrent AddTask calls) sends
	// the entries of one list in one push.
	now := time.Now()
	entries := [][]byte{encodeTask(Task{ID: formatID(0x1a, 1), OrderID: 0, Payload: []byte("s"), AddedAt: now}, 0),
		encodeTask(Task{ID: formatID(0x1a, 2), OrderID: 0, Payload: bigPayload(0, 3, big), AddedAt: now}, 0),
		encodeTask(Task{ID: formatID(0x1a, 3), OrderID: 0, Payload: bigPayload(0, 4, big), AddedAt: now}, 0)}
	var calls []*addCall
	for _, e := range entries {
		calls = append(calls, &addCall{ctx: ctx, key: k.ready, entry: e})
	}
	for _, err := range pushMany(ctx, q.parts[0].pool, calls) {
		require.NoError(t, err)
	}
	assert.Equal(t, 5, largeCount(t, s, k), "a shared round trip")

	_, added, err := q.AddTaskOnce(ctx, 0, "k1", time.Minute, bigPayload(0, 5, big))
	require.NoError(t, err)
	require.True(t, added)
	_, added, err = q.AddTaskOnce(ctx, 0, "k1", time.Minute, bigPayload(0, 5, big))
	require.NoError(t, err)
	require.False(t, added)
	_, added, err = q.AddTaskOnce(ctx, 0, "k2", time.Minute, []byte("s"))
	require.NoError(t, err)
	require.True(t, added)
	assert.Equal(t, 6, largeCount(t, s, k), "AddTaskOnce: once, and only a large one")

	_, err = q.AddTaskAt(ctx, 0, time.Now().Add(time.Minute), bigPayload(0, 6, big))
	require.NoError(t, err)
	require.Equal(t, int64(1), s.do(t, "ZCARD", k.sched))
	assert.Equal(t, 6, largeCount(t, s, k), "a scheduled task counts once it is ready")

	// A consumer's claim (the script's loop) takes its large entries off:
	// small, 0, s, 1, 2, s, 3 (the scheduled task waits for the ready
	// tasks added before it was due).
	c := consumeFirst(t, q)
	got, err := c.Claim(ctx, 7)
	require.NoError(t, err)
	require.Equal(t, 7, len(got))
	assert.Equal(t, 6-4, largeCount(t, s, k))

	// Handed back: counted again.
	require.NoError(t, c.Requeue(ctx, got[1], got[3], got[4]))
	assert.Equal(t, 6-4+3, largeCount(t, s, k), "a hand-back")

	// The rest of the ready list: the count goes with it.
	rest, err := c.Claim(ctx, 100)
	require.NoError(t, err)
	require.Len(t, rest, 3+3)
	assert.Equal(t, int64(0), s.do(t, "HEXISTS", k.meta, largeField))

	// The scheduled task's turn: its move counts it (seen here as the
	// claim, with no room for it, puts it back), its claim takes it off.
	makeDue(t, s, k)
	_, err = c.st.claim(ctx, 1, 1, true, nil)
	require.ErrorIs(t, err, errNoRoom)
	assert.Equal(t, 1, largeCount(t, s, k), "a due scheduled task")
	last, err := c.Claim(ctx, 100)
	require.NoError(t, err)
	require.Len(t, last, 1)
	assert.Equal(t, int64(0), s.do(t, "HEXISTS", k.meta, largeField))
	none, err := c.Claim(ctx, 100)
	require.NoError(t, err)
	require.Empty(t, none)

	// A dead letter replayed: counted.
	var dead Task
	for _, tk := range rest {
		if len(tk.Payload) > largeEntry {
			dead = tk
			break
		}
	}
	held := c.claimedOf(dead)
	_, err = c.st.bury(ctx, []burial{{held.ref(), encodeDead(encodeTask(dead, 1), 1, "test", time.Now().UnixMilli())}})
	require.NoError(t, err)
	n, err := q.Replay(ctx, 0, dead.ID)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	assert.Equal(t, 1, largeCount(t, s, k), "a replay")
}

// makeDue makes the scheduled tasks of the queue of k due now.
func makeDue(t *testing.T, s *testServer, k queueKeys) {
	t.Helper()
	ids, err := redis.Strings(s.do(t, "ZRANGE", k.sched, 0, -1), nil)
	require.NoError(t, err)
	for _, id := range ids {
		s.do(t, "ZADD", k.sched, "XX", time.Now().UnixMilli(), id)
	}
}

// byteConn counts the bytes of the bulk strings in the replies it reads.
type byteConn struct {
	redis.Conn
	n *atomic.Int64
}

// countingQueue returns a queue of one partition, its server and the keys
// of its queue 0, and the count of the bytes its connections read
// (byteConn).
func countingQueue(t *testing.T) (*Queue, *testServer, queueKeys, *atomic.Int64) {
	t.Helper()
	srv := newTestServers(t, 1)[0]
	read := new(atomic.Int64)
	q := queueOnPool(t, srv.wrapPool(16, func(c redis.Conn) redis.Conn { return byteConn{Conn: c, n: read} }))
	return q, srv, newQueueKeys(q.cfg.Prefix, 0, 0), read
}

func (c byteConn) add(v any, err error) (any, error) {
	var size func(any) int64
	size = func(v any) int64 {
		switch v := v.(type) {
		case []byte:
			return int64(len(v))
		case []any:
			n := int64(0)
			for _, e := range v {
				n += size(e)
			}
			return n
		}
		return 0
	}
	c.n.Add(size(v))
	return v, err
}

func (c byteConn) Do(cmd string, args ...any) (any, error) { return c.add(c.Conn.Do(cmd, args...)) }
func (c byteConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	return c.add(redis.DoContext(c.Conn, ctx, cmd, args...))
}
func (c byteConn) DoWithTimeout(d time.Duration, cmd string, args ...any) (any, error) {
	return c.add(redis.DoWithTimeout(c.Conn, d, cmd, args...))
}
func (c byteConn) Receive() (any, error) { return c.add(c.Conn.Receive()) }
func (c byteConn) ReceiveContext(ctx context.Context) (any, error) {
	return c.add(redis.ReceiveContext(c.Conn, ctx))
}
func (c byteConn) ReceiveWithTimeout(d time.Duration) (any, error) {
	return c.add(redis.ReceiveWithTimeout(c.Conn, d))
}

// A store that claims in place, after small tasks, meets large ones: no
// claim reads more than its byte budget and one entry, and every task
// comes out once, in order. Once the large ones are gone, claims are made
// in place again.
func TestClaimInPlaceReadsWithinTheBudget(t *testing.T) {
	t.Parallel()
	q, srv, k, read := countingQueue(t)
	ctx := context.Background()
	// Large tasks of 50 KiB under a budget of 256 KiB: with 200 KiB and
	// 1 MiB, 12 MB went through an embedded test server that, under the
	// race detector, sends about 10 MB/s and answers nothing else while
	// it does, and the Consumer's lease ran out one run in a few.
	const small, large, bigSize, budget = 50, 60, 50 << 10, 256 << 10
	ts := orderTasks(1, small)
	for i := range large {
		ts = append(ts, Task{OrderID: 0, Payload: bigPayload(0, small+i, bigSize)})
	}
	addAll(t, q, ts)
	assert.Equal(t, large, largeCount(t, srv, k))

	c := movingConsumer(t, q)
	took := func(n int) []claimed {
		t.Helper()
		read.Store(0)
		got, err := c.st.claim(ctx, n, budget, false, nil)
		require.NoError(t, err)
		held := int64(0)
		for _, tk := range got {
			held += tk.size()
		}
		assert.LessOrEqual(t, read.Load(), int64(budget+bigSize+4096), "bytes read by a claim of %d tasks", len(got))
		if len(got) > 1 {
			assert.LessOrEqual(t, held, int64(budget+len(got)*64), "bytes held")
		}
		return got
	}
	var order []string
	for _, tk := range took(small) {
		order = append(order, string(tk.Payload))
	}
	require.Len(t, order, small)
	for len(order) < small+large {
		got := took(maxMoved)
		require.NotEmpty(t, got)
		for _, tk := range got {
			p, _, _ := strings.Cut(string(tk.Payload), "|")
			order = append(order, p)
		}
	}
	for i, p := range order {
		require.Equal(t, pl(0, i), p)
	}
	require.Empty(t, took(maxMoved))
	assert.Equal(t, 0, largeCount(t, srv, k))

	// Small tasks again: claimed in place (the first claim sized by the
	// large entries seen last).
	addAll(t, q, orderTasks(1, 10))
	got := took(maxMoved)
	require.NotEmpty(t, got)
	size, err := redis.Int(srv.do(t, "HGET", k.meta, endSizeField), nil)
	require.NoError(t, err)
	assert.Equal(t, len(got), size, "claimed in place")
}

// A large entry among small ones, scheduled and coming due: the claim
// that moves it to the ready list does not then take it in place.
func TestDueLargeTaskIsNotClaimedInPlace(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	due := time.Now().Add(time.Minute)
	_, err := q.AddTaskAt(ctx, 0, due, bigPayload(0, 0, 4*largeEntry))
	require.NoError(t, err)
	require.Equal(t, int64(1), s.do(t, "ZCARD", k.sched))
	makeDue(t, s, k)
	c := movingConsumer(t, q)
	c.st.entrySize.Store(64) // as if small entries came before
	got, err := c.st.claim(ctx, 10, 1<<20, false, nil)
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, int64(0), s.do(t, "HEXISTS", k.meta, endSizeField), "not claimed in place")
	assert.Equal(t, 0, largeCount(t, s, k), "taken off as it was claimed")
}

// A count that does not read as one (written by hand) is taken as at
// least the list's length, never as none, and goes once the list is
// empty.
func TestLargeCountWrittenByHand(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	addAll(t, q, orderTasks(1, 3))
	s.do(t, "HSET", k.meta, largeField, "x")
	_, err := q.AddTask(ctx, 0, bigPayload(0, 3, 2*largeEntry))
	require.NoError(t, err)
	assert.Equal(t, 4, largeCount(t, s, k), "the list's length")

	s.do(t, "HSET", k.meta, largeField, "-1")
	c := movingConsumer(t, q)
	c.st.entrySize.Store(64)
	got, err := c.st.claim(ctx, 10, 1<<20, false, nil)
	require.NoError(t, err)
	require.Len(t, got, 4)
	assert.Equal(t, int64(0), s.do(t, "HEXISTS", k.meta, endSizeField), "not claimed in place")
	assert.Equal(t, int64(0), s.do(t, "HEXISTS", k.meta, largeField), "the list is empty: the count goes")
	for i, tk := range got {
		p, _, _ := strings.Cut(string(tk.Payload), "|")
		assert.Equal(t, fmt.Sprint(pl(0, i)), p)
	}
}

// A store that claimed in place, lost its lease and took it again: what it
// knew of the ready list is of the tenure that ended (another owner
// claimed its small tasks, and large ones came), so its next claim reads
// nothing it has not counted, and keeps to its budget.
func TestClaimInPlaceAfterALostLease(t *testing.T) {
	t.Parallel()
	q, srv, k, read := countingQueue(t)
	ctx := context.Background()
	const small, large, bigSize, budget = 300, 200, 20 << 10, 1 << 20
	addAll(t, q, orderTasks(1, small))
	a := movingConsumer(t, q)
	for range 2 {
		got, err := a.st.claim(ctx, 50, budget, false, nil)
		require.NoError(t, err)
		require.NotEmpty(t, got)
	}
	require.Positive(t, a.st.ahead.Load(), "small entries known past the end")

	// The lease lapses; another owner recovers, claims every task and
	// leaves; large tasks come.
	srv.do(t, "DEL", k.lease)
	b, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	all, err := b.Claim(ctx, 2*small)
	require.NoError(t, err)
	require.Len(t, all, small)
	var ts []Task
	for i := range large {
		ts = append(ts, Task{OrderID: 0, Payload: bigPayload(0, i, bigSize)})
	}
	addAll(t, q, ts)
	require.NoError(t, b.Release(ctx))

	require.NoError(t, a.st.acquire(ctx, nil, nil))
	read.Store(0)
	got, err := a.st.claim(ctx, maxMoved, budget, false, nil)
	require.NoError(t, err)
	require.NotEmpty(t, got)
	assert.LessOrEqual(t, read.Load(), int64(budget+bigSize+4096), "bytes read by a claim of %d tasks", len(got))
	for i, tk := range got {
		p, _, _ := strings.Cut(string(tk.Payload), "|")
		assert.Equal(t, pl(0, i), p)
	}
}
