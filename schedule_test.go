package queue

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A claim moves due tasks to the ready list up to scriptBytes of them (at
// least one however large): large tasks falling due together are moved
// over several claims, earliest first, so that no claim holds Redis for
// long (400 tasks of 1 MiB due at once held it 2.4s in one claim).
func TestClaimMovesDueTasksInBoundedBytes(t *testing.T) {
	t.Parallel()
	const size = scriptBytes/2 + 1 // two do not fit
	q, servers := newTestQueue(t, 1, Config{MaxPayload: size})
	s := servers[0]
	ctx := bounded(t)
	// Scheduled an hour ahead, however long the adds of large tasks
	// take on a loaded machine, then made due by hand, in the same order.
	base := time.Now().Add(time.Hour)
	var ids []string
	for i := range 3 {
		id, err := q.AddTaskAt(ctx, uint64(i), base.Add(time.Duration(i)*time.Millisecond), bytes.Repeat([]byte{byte('a' + i)}, size))
		require.NoError(t, err)
		ids = append(ids, id)
	}
	require.Equal(t, int64(3), stats0(t, q).Scheduled)
	k := newQueueKeys(q.cfg.Prefix, 0, 0)
	past := time.Now().Add(-time.Second).UnixMilli()
	for i, id := range ids {
		s.do(t, "ZADD", k.sched, "XX", past+int64(i), id)
	}
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer c.Release(ctx)
	var got []string
	for i := range 3 {
		ts, err := c.Claim(ctx, 10)
		require.NoError(t, err)
		require.Equal(t, 1, len(ts), "claim %d took more than one due task", i)
		got = append(got, ts[0].ID)
		assert.Equal(t, int64(2-i), stats0(t, q).Scheduled, "after claim %d", i)
		_, err = c.Ack(ctx, ts[0].ID)
		require.NoError(t, err)
	}
	assert.Equal(t, ids, got, "due tasks moved out of due order")
}

// AddTasks schedules large tasks in scripts of at most scriptBytes of
// entries (one task however large), as the claim moves them: no script
// holds Redis for long.
func TestAddTasksSchedulesInBoundedBytes(t *testing.T) {
	t.Parallel()
	const size = scriptBytes/2 + 1 // two do not fit
	servers := newTestServers(t, 1)
	var calls atomic.Int32
	pool := servers[0].wrapPool(16, func(c redis.Conn) redis.Conn {
		return &countConn{Conn: c, cmd: "EVAL", key: scriptSources["schedule"], n: &calls}
	})
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t), MaxPayload: size})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	ctx := bounded(t)
	due := time.Now().Add(time.Hour)
	tasks := []Task{
		{OrderID: 1, Payload: bytes.Repeat([]byte("a"), size), NotBefore: due},
		{OrderID: 1, Payload: bytes.Repeat([]byte("b"), size), NotBefore: due},
		{OrderID: 1, Payload: bytes.Repeat([]byte("c"), size), NotBefore: due},
		{OrderID: 1, Payload: []byte("d"), NotBefore: due},
	}
	ids, err := q.AddTasks(ctx, tasks)
	require.NoError(t, err)
	assert.Equal(t, int32(3), calls.Load(), "schedule scripts for 3 large tasks and a small one")
	sched, err := q.Scheduled(ctx, 0, 0, 10)
	require.NoError(t, err)
	var got []string
	for _, s := range sched {
		got = append(got, s.ID)
	}
	assert.Equal(t, ids, got)
}

// A due time past what a millisecond count holds (its UnixMilli wraps, to
// 0 or below) is refused, rather than scheduled as due at once.
func TestAddTaskAtRefusesADueTimeOutOfRange(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx := bounded(t)
	for _, at := range []time.Time{time.Unix(1<<62, 0), time.Date(math.MaxInt32, 1, 1, 0, 0, 0, 0, time.UTC)} {
		_, err := q.AddTaskAt(ctx, 1, at, []byte("x"))
		assert.ErrorIs(t, err, ErrBadConfig, "due %v", at)
		_, err = q.AddTasks(ctx, []Task{{OrderID: 1, Payload: []byte("y")}, {OrderID: 1, Payload: []byte("z"), NotBefore: at}})
		assert.ErrorIs(t, err, ErrBadConfig, "due %v", at)
	}
	s := stats0(t, q)
	assert.Zero(t, s.Ready+s.Scheduled, "a refused add wrote something")
	far := time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC) // a common "never"
	// Ties of one millisecond keep it too.
	for i := range 3 {
		id, err := q.AddTaskAt(ctx, 1, far, []byte("x"))
		require.NoError(t, err)
		st, err := q.Status(ctx, 1, id)
		require.NoError(t, err)
		assert.Equal(t, StateScheduled, st.State)
		assert.True(t, st.Due.Equal(far), "task %d due %v", i, st.Due)
	}
}

// Scheduled refuses a negative offset rather than list nothing, and a
// limit as large as an int lists all that there are.
func TestScheduledOffsetAndLimitBounds(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx := bounded(t)
	var ids []string
	for i := range 3 {
		id, err := q.AddTaskAfter(ctx, 1, time.Hour+time.Duration(i)*time.Second, []byte("x"))
		require.NoError(t, err)
		ids = append(ids, id)
	}
	_, err := q.Scheduled(ctx, 0, -1, 10)
	assert.ErrorIs(t, err, ErrBadConfig)
	for offset := range 3 {
		got, err := q.Scheduled(ctx, 0, offset, math.MaxInt)
		require.NoError(t, err)
		var gotIDs []string
		for _, s := range got {
			gotIDs = append(gotIDs, s.ID)
		}
		assert.Equal(t, ids[offset:], gotIDs, "offset %d", offset)
	}
	got, err := q.Scheduled(ctx, 0, 0, 0)
	require.NoError(t, err)
	assert.Empty(t, got)
}

// A NotBefore far enough in the past that its millisecond count wraps to
// a large positive one is not in the future: AddTasks adds the task at
// once, as AddTaskAt does, rather than schedule it for that count (the
// year 284 million).
func TestAddTasksAddsAFarPastNotBeforeAtOnce(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx := bounded(t)
	past := time.Date(-300_000_000, 1, 1, 0, 0, 0, 0, time.UTC)
	require.Greater(t, past.UnixMilli(), time.Now().UnixMilli(), "the count does not wrap")
	_, err := q.AddTaskAt(ctx, 1, past, []byte("x"))
	require.NoError(t, err)
	_, err = q.AddTasks(ctx, []Task{{OrderID: 1, Payload: []byte("y"), NotBefore: past}})
	require.NoError(t, err)
	s := stats0(t, q)
	assert.Equal(t, int64(2), s.Ready)
	assert.Zero(t, s.Scheduled)
}

// A due time within a millisecond is kept rounded up: a task never starts
// before the time it was given, not even by the fraction of a millisecond
// that a count rounded down would drop.
func TestDueTimeRoundsUp(t *testing.T) {
	base := time.UnixMilli(1_700_000_000_123)
	assert.Equal(t, int64(1_700_000_000_123), dueMS(base))
	assert.Equal(t, int64(1_700_000_000_124), dueMS(base.Add(time.Nanosecond)))
	assert.Equal(t, int64(1_700_000_000_124), dueMS(base.Add(999*time.Microsecond)))
	assert.Equal(t, int64(-5), dueMS(time.UnixMilli(-5)))
	assert.Equal(t, int64(-4), dueMS(time.UnixMilli(-5).Add(time.Microsecond)))
	for range 1000 {
		at := time.Now().Add(time.Duration(rand.Int64N(int64(time.Hour))))
		assert.False(t, time.UnixMilli(dueMS(at)).Before(at), "%v kept as %d", at, dueMS(at))
	}
}

// A score written by hand far past what an add writes reads as the bound
// on its side, not as a time wrapped around to the other end.
func TestDueTimeOfAHandWrittenScore(t *testing.T) {
	assert.Equal(t, time.UnixMilli(1_700_000_000_123), dueTime(1_700_000_000_123.5))
	assert.Equal(t, maxDue, dueTime(1e300))
	assert.Equal(t, maxDue, dueTime(math.Inf(1)))
	assert.Equal(t, maxDue, dueTime(math.NaN()))
	assert.Equal(t, time.UnixMilli(-maxDue.UnixMilli()), dueTime(-1e300))
	assert.False(t, dueTime(1e300).Before(time.Now()), "a far score is far ahead")
}

// A dead letter replayed after a scheduled task of its OrderID fell due
// runs after it: replayed, it is new work, added then (its AddedAt is the
// replay's time), and the scheduled task joined the sequence before.
func TestReplayedTaskRunsAfterAScheduledTaskDueBefore(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx := bounded(t)
	r, err := q.AddTask(ctx, 7, []byte("replayed"))
	require.NoError(t, err)
	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 1})
	require.NoError(t, err)
	tasks, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Len(t, tasks, 1)
	dead, err := c.Fail(ctx, tasks[0], errors.New("boom"))
	require.NoError(t, err)
	require.True(t, dead)
	require.NoError(t, c.Release(ctx))

	due := time.Now().Add(50 * time.Millisecond)
	_, err = q.AddTaskAt(ctx, 7, due, []byte("scheduled"))
	require.NoError(t, err)
	time.Sleep(time.Until(due) + 50*time.Millisecond) // due, and nobody claims
	before := time.Now().Truncate(time.Millisecond)
	n, err := q.Replay(ctx, 0, r)
	require.NoError(t, err)
	require.Equal(t, 1, n)

	c, err = q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer c.Release(ctx)
	var got []string
	for range 2 {
		tasks, err := c.Claim(ctx, 1)
		require.NoError(t, err)
		require.Len(t, tasks, 1)
		got = append(got, string(tasks[0].Payload))
		if tasks[0].ID == r {
			assert.False(t, tasks[0].AddedAt.Before(before), "added when replayed")
		}
		_, err = c.Ack(ctx, tasks[0].ID)
		require.NoError(t, err)
	}
	assert.Equal(t, []string{"scheduled", "replayed"}, got)
}
