package queue

import (
	"context"
	"errors"
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

// A claim-sequence record that does not decode (one stray byte) made
// recovery sort the tasks by ID, which is not the order Redis accepted
// them in across producers. Recovery no longer guesses: the tasks whose
// place is lost go to the dead-letter store, and the pool says so.
func TestRecoveryQuarantinesTasksWhoseSeqIsLost(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	// Two producers: IDs do not sort in the order the tasks were added.
	a2 := "aaa00000000000000000"
	a1 := "vvv00000000000000000"
	for _, id := range []string{a1, a2} {
		s.do(t, "LPUSH", k.ready, encodeTask(Task{ID: id, OrderID: 7, AddedAt: time.UnixMilli(1000), Payload: []byte(id[:1])}, 0))
	}
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	got, err := c.Claim(ctx, 2)
	require.NoError(t, err)
	require.Equal(t, []string{a1, a2}, taskIDs(got))
	// The crash, and one stray byte in the claim's record.
	rec, err := redis.StringMap(s.do(t, "HGETALL", k.claims), nil)
	require.NoError(t, err)
	require.Len(t, rec, 1)
	for f, v := range rec {
		s.do(t, "HSET", k.claims, f, v+"x")
	}
	lapse(t, s, k.lease)

	r := newRecorder()
	var errs errLog
	require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{ExitOnEmpty: true, OnError: errs.add}, r.fn(nil)))
	assert.Empty(t, r.order(7), "nothing runs in a guessed order")
	assert.Equal(t, 1, errs.count(ErrMalformed), "the pool reports it: %v", errs.all())
	dead, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, dead, 2)
	for _, d := range dead {
		assert.Nil(t, d.Raw, "a whole task, replayable")
		assert.Contains(t, d.LastError, "claim-sequence record")
	}
	assert.Zero(t, s.do(t, "EXISTS", k.pending, k.claims))
}

// Recovery charged a delivery to every pending task, started or not: with
// MaxAttempts 1, a lease lapse dead-lettered every task the owner had
// claimed. Now only recorded deliveries count.
func TestRecoveryChargesNoUnstartedTask(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(10, 1))
	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 1})
	require.NoError(t, err)
	_, err = c.Claim(ctx, 10)
	require.NoError(t, err)
	lapse(t, s, k.lease) // the owner dies before starting any

	r := newRecorder()
	require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{ExitOnEmpty: true, MaxAttempts: 1}, r.fn(nil)))
	for _, id := range ids {
		assert.Equal(t, []int{1}, r.attemptsOf(id), "task %s", id)
	}
	st := stats0(t, q)
	assert.Zero(t, st.Dead)
	assert.EqualValues(t, 10, st.Processed)
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

// No hand-back or dead-letter script carries more than scriptBytes of
// tasks (but one task, however large) nor more than scriptChunk of them.
func TestScriptChunksBounded(t *testing.T) {
	t.Parallel()
	for _, sizes := range [][]int{{1}, {3 << 20, 3 << 20, 3 << 20, 3 << 20}, {20 << 20, 1, 1}, {1, 20 << 20, 1}, make([]int, 2500)} {
		tasks := make([]claimed, len(sizes))
		var args []any
		for i, n := range sizes {
			tasks[i].Payload = make([]byte, n)
			args = append(args, "f", make([]byte, n))
		}
		covered := 0
		for end := len(tasks); end > 0; {
			start := requeueChunk(tasks, end)
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
		for rest := args; len(rest) > 0; {
			n := buryChunk(rest)
			require.Positive(t, n)
			size := 0
			for i := 1; i < n; i += 2 {
				size += argSize(rest[i])
			}
			assert.True(t, n == 2 || size <= scriptBytes, "%d records of %d bytes in one script", n/2, size)
			assert.LessOrEqual(t, n, 2*scriptChunk)
			covered += n
			rest = rest[n:]
		}
		assert.Equal(t, len(args), covered)
	}
}

// Tasks of megabytes drain with the defaults: claims take what fits the
// pool's byte budget (one task at least), and nothing is lost, run out of
// order or run twice, and the lease holds.
func TestLargeTasksDrain(t *testing.T) {
	t.Parallel()
	q, servers := newTestQueue(t, 1, Config{MaxPayload: 8 << 20})
	ctx := bounded(t)
	var tasks []Task
	for i := 0; i < 12; i++ {
		p := make([]byte, 3<<20)
		copy(p, pl(int(i%2), i/2))
		tasks = append(tasks, Task{OrderID: uint64(i % 2), Payload: p})
	}
	addAll(t, q, tasks)
	rec := newRecorder()
	var errs errLog
	require.NoError(t, q.AnalysePool(ctx, 0, PoolConfig{ExitOnEmpty: true, MaxHeldBytes: 8 << 20, OnError: errs.add},
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
