package queue

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A claim sequence that is not a count used to fail the claim script after
// its RPOP, which Redis does not undo: the popped tasks were gone, and a
// pool that took the failure for a lost reply claimed again and emptied
// the queue. The script now checks it before its first write.
func TestClaimRefusesBadSeqBeforePopping(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"not a number", "99999999999999999999", "", "-5", "1.5"} {
		t.Run(bad, func(t *testing.T) {
			t.Parallel()
			q, s, k := testQueue1(t)
			ctx := context.Background()
			ids := addAll(t, q, orderTasks(1, 3))
			c, err := q.Consume(ctx, 0, ConsumerConfig{})
			require.NoError(t, err)
			s.do(t, "HSET", k.meta, "seq", bad)
			_, err = c.Claim(ctx, 10)
			require.ErrorIs(t, err, ErrWrongType)
			assert.Contains(t, err.Error(), "seq")
			assert.EqualValues(t, 3, s.do(t, "LLEN", k.ready), "nothing popped")
			assert.Zero(t, s.do(t, "EXISTS", k.pending, k.claims))

			// Fixed by hand, the queue goes on, in order, nothing lost.
			s.do(t, "HDEL", k.meta, "seq")
			got, err := c.Claim(ctx, 10)
			require.NoError(t, err)
			assert.Equal(t, ids, taskIDs(got))
		})
	}
}

// A pool meeting a bad claim sequence reports it, loses nothing, and drains
// in order once it is fixed.
func TestPoolLosesNothingOnBadSeq(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	ids := addAll(t, q, orderTasks(2, 50))
	s.do(t, "HSET", k.meta, "seq", "garbage")
	rec := newRecorder()
	var errs errLog
	errc := runPool(ctx, q, PoolConfig{Workers: 4, ExitOnEmpty: true, OnError: errs.add}, rec.fn(nil))
	require.Eventually(t, func() bool { return errs.count(ErrWrongType) >= 2 }, 10*time.Second, time.Millisecond)
	assert.EqualValues(t, len(ids), s.do(t, "LLEN", k.ready), "every task still ready")
	assert.Zero(t, rec.total())
	s.do(t, "HDEL", k.meta, "seq")
	require.NoError(t, receive(t, errc))
	for o := 0; o < 2; o++ {
		var want []string
		for i := 0; i < 50; i++ {
			want = append(want, pl(o, i))
		}
		assert.Equal(t, want, rec.order(uint64(o)))
	}
	assert.Zero(t, s.do(t, "EXISTS", k.ready, k.pending, k.claims))
}

// Counters that are not counts start over rather than fail a script after
// its first write.
func TestBadCountersStartOver(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	addAll(t, q, orderTasks(1, 4))
	s.do(t, "HSET", k.meta, "processed", "x", "failed", "99999999999999999999", "redelivered", "")
	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 1})
	require.NoError(t, err)
	got, err := c.Claim(ctx, 4)
	require.NoError(t, err)
	n, err := c.Ack(ctx, got[0].ID)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	dead, err := c.Fail(ctx, got[1], errors.New("boom"))
	require.NoError(t, err)
	assert.True(t, dead)
	lapse(t, s, k.lease)
	_, err = q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 1})
	require.NoError(t, err)
	m, err := redis.StringMap(s.do(t, "HGETALL", k.meta), nil)
	require.NoError(t, err)
	assert.Equal(t, "1", m["processed"])
	assert.Equal(t, "1", m["failed"])
	assert.Equal(t, "2", m["redelivered"])
	assert.EqualValues(t, 2, s.do(t, "LLEN", k.ready), "the abandoned tasks are back")
}

// A poison task that kills its owner at every delivery is still stopped:
// its first crash is free (nothing showed it had started), every later one
// counts, since a recovered task's delivery is recorded before it starts.
func TestPoisonTaskStillDeadLettered(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 2))
	const maxAttempts = 2
	var attempts []int
	for range maxAttempts + 2 {
		c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: maxAttempts})
		require.NoError(t, err)
		task, err := c.RemoveTask(ctx)
		require.NoError(t, err)
		if task.ID != ids[0] {
			break
		}
		attempts = append(attempts, task.Attempt)
		lapse(t, s, k.lease) // it crashed its owner
	}
	assert.Equal(t, []int{1, 1, 2}, attempts)
	dead, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, dead, 1)
	assert.Equal(t, ids[0], dead[0].ID)
	assert.Equal(t, maxAttempts, dead[0].Attempts)
}

// garbageEntries are ready-list elements that are not tasks. Those with a
// readable ID (which the claim script files them under) have IDs of their
// own: two elements with one ID in one claim would share a pending field.
func garbageEntries() [][]byte {
	good := encodeTask(Task{ID: testID, OrderID: 5, AddedAt: time.UnixMilli(1), Payload: []byte("p")}, 0)
	return [][]byte{
		[]byte("garbage"),
		{},
		{entryTask},
		append([]byte{entryTask}, "ABCDEFGHIJKLMNOPQRST\x01\x01\x00p"...),                          // bad ID characters
		append(append([]byte{}, good[:entryHeader]...), 0x80),                                      // truncated varint
		append([]byte{0x09}, good[1:]...),                                                          // a flag outside entryFlags
		join([]byte{entryTask | entryHeaders}, []byte("hhhhhhhhhhhhhhhhhhhh"), good[entryHeader:]), // headers flagged, none there
	}
}

// TestMalformedReadyQuarantined writes garbage straight into a ready list
// between real tasks: claims skip it, and it lands in the dead-letter store
// with its raw bytes.
func TestMalformedReadyQuarantined(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, s, k := deadQueue(t)
	garbage := garbageEntries()
	var want []string
	for i, g := range garbage {
		id, err := q.AddTask(ctx, uint64(i), []byte("task "+strconv.Itoa(i)))
		require.NoError(t, err)
		want = append(want, id)
		s.do(t, "LPUSH", k.ready, g)
	}
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	var got []string
	for {
		ts, err := c.Claim(ctx, 3)
		require.NoError(t, err)
		if len(ts) == 0 {
			break
		}
		for _, task := range ts {
			got = append(got, task.ID)
		}
	}
	assert.Equal(t, want, got, "the real tasks, in order")
	assert.Zero(t, s.do(t, "LLEN", k.ready))
	pending, err := q.Pending(ctx, 0)
	require.NoError(t, err)
	assert.Len(t, pending, len(want), "only real tasks are pending")
	assert.EqualValues(t, len(want), int64(len(pendingOf(t, s, k))))

	assertQuarantined(t, q, garbage, "claim: ")
	st := statsOf(t, q, 0)
	assert.EqualValues(t, len(garbage), st.Failed)
	assert.EqualValues(t, len(garbage), st.Dead)
	require.NoError(t, c.Release(ctx))
}

// TestRemoveTaskSkipsMalformed checks that garbage at the head of the ready
// list does not make RemoveTask report an empty queue.
func TestRemoveTaskSkipsMalformed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, s, k := deadQueue(t)
	for _, g := range garbageEntries() {
		s.do(t, "LPUSH", k.ready, g)
	}
	id, err := q.AddTask(ctx, 1, []byte("real"))
	require.NoError(t, err)
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	task, err := c.RemoveTask(ctx)
	require.NoError(t, err)
	assert.Equal(t, id, task.ID)
	_, err = c.RemoveTask(ctx)
	assert.ErrorIs(t, err, ErrNoTask)
	assertQuarantined(t, q, garbageEntries(), "claim: ")
	require.NoError(t, c.Release(ctx))
}

// TestPoolSkipsMalformed runs a pool that claims one task at a time over a
// ready list that starts with garbage: ExitOnEmpty must not stop it before
// the real tasks are done.
func TestPoolSkipsMalformed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, s, k := deadQueue(t)
	for _, g := range garbageEntries() {
		s.do(t, "LPUSH", k.ready, g)
	}
	_, err := q.AddTasks(ctx, []Task{{OrderID: 1, Payload: []byte("x")}, {OrderID: 2, Payload: []byte("y")}})
	require.NoError(t, err)
	var done []string
	err = q.AnalysePool(ctx, 0, PoolConfig{Workers: 1, Prefetch: 1, ExitOnEmpty: true, Logger: slog.New(slog.DiscardHandler)},
		func(_ context.Context, task Task) error {
			done = append(done, string(task.Payload))
			return nil
		})
	require.NoError(t, err)
	assert.Equal(t, []string{"x", "y"}, done)
	assertQuarantined(t, q, garbageEntries(), "claim: ")
	// One task a claim: claims of garbage alone dropped their order
	// records at once, the others with their task's ack.
	assert.Zero(t, s.do(t, "EXISTS", k.pending, k.claims))
}

// assertQuarantined checks that the dead-letter store holds exactly the
// given raw records, each with an error naming where it was found.
func assertQuarantined(t *testing.T, q *Queue, raw [][]byte, where string) {
	t.Helper()
	list, err := q.Dead(context.Background(), 0)
	require.NoError(t, err)
	var got []string
	for _, d := range list {
		assert.NotNil(t, d.Raw, "record %q", d.ID)
		assert.True(t, strings.HasPrefix(d.LastError, where), d.LastError)
		assert.Contains(t, d.LastError, ErrMalformed.Error())
		assert.Zero(t, d.Attempts)
		got = append(got, string(d.Raw))
	}
	var want []string
	for _, r := range raw {
		want = append(want, string(r))
	}
	assert.ElementsMatch(t, want, got)
}

// No hand-back or dead-letter script carries more than scriptBytes of
// tasks (but one task, however large) nor more than scriptChunk of them.
func TestScriptChunksBounded(t *testing.T) {
	t.Parallel()
	for _, sizes := range [][]int{{1}, {3 << 20, 3 << 20, 3 << 20, 3 << 20}, {20 << 20, 1, 1}, {1, 20 << 20, 1}, make([]int, 2500)} {
		tasks := make([]claimed, len(sizes))
		var items []burial
		for i, n := range sizes {
			tasks[i].Payload = make([]byte, n)
			items = append(items, burial{taskRef{field: "f"}, make([]byte, n)})
		}
		covered := 0
		for end := len(tasks); end > 0; {
			start := requeueChunk(tasks, end, fullScript)
			require.Less(t, start, end, "progress")
			var size int64
			for _, t := range tasks[start:end] {
				size += t.size()
			}
			assert.True(t, end-start == 1 || size <= scriptBytes, "%d tasks of %d bytes in one script", end-start, size)
			assert.LessOrEqual(t, end-start, scriptChunk)
			covered += end - start
			end = start
		}
		assert.Equal(t, len(tasks), covered)
		covered = 0
		for rest := items; len(rest) > 0; {
			n := buryChunk(rest, fullScript)
			require.Positive(t, n)
			size := 0
			for _, b := range rest[:n] {
				size += len(b.rec)
			}
			assert.True(t, n == 1 || size <= scriptBytes, "%d records of %d bytes in one script", n, size)
			assert.LessOrEqual(t, n, scriptChunk)
			covered += n
			rest = rest[n:]
		}
		assert.Equal(t, len(items), covered)
	}
}

// Tasks of megabytes drain with the defaults: claims take what fits the
// pool's byte budget (one task at least), and nothing is lost, run out of
// order or run twice, and the lease holds.
func TestLargeTasksDrain(t *testing.T) {
	t.Parallel()
	// Tasks of 256 KiB (large: counted, claimed through the script's
	// loop), claims of at most two. An embedded test server under the
	// race detector moves about 10 MB/s on a loaded machine, and answers
	// nothing else while it sends a claim's reply: with tasks of 1 MiB,
	// and another test's claims beside, the lease's renewal waited past
	// its timeout one run in a few.
	q, servers := newTestQueue(t, 1, Config{MaxPayload: 2 << 20})
	ctx := bounded(t)
	var tasks []Task
	for i := 0; i < 12; i++ {
		p := make([]byte, 256<<10)
		copy(p, pl(int(i%2), i/2))
		tasks = append(tasks, Task{OrderID: uint64(i % 2), Payload: p})
	}
	addAll(t, q, tasks)
	rec := newRecorder()
	var errs errLog
	require.NoError(t, q.AnalysePool(ctx, 0, PoolConfig{ExitOnEmpty: true, MaxHeldBytes: 5 << 17, OnError: errs.add},
		func(ctx context.Context, task Task) error {
			return rec.fn(nil)(ctx, Task{ID: task.ID, OrderID: task.OrderID, Attempt: task.Attempt, Payload: []byte(strings.TrimRight(string(task.Payload[:8]), "\x00"))})
		}))
	assert.Empty(t, errs.all())
	for o := 0; o < 2; o++ {
		var want []string
		for i := 0; i < 6; i++ {
			want = append(want, pl(o, i))
		}
		assert.Equal(t, want, rec.order(uint64(o)))
	}
	assert.Zero(t, servers[0].do(t, "EXISTS", newQueueKeys(q.cfg.Prefix, 0, 0).pending))
}
