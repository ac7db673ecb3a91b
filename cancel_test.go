package queue

import (
	"errors"
	"fmt"
	"testing"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A cancel asked while a task is pending, whose task then finishes
// otherwise (acknowledged: it returned nil; dead-lettered: its last
// delivery failed), goes with the task: the task is not reported
// cancelled, and a replay of the dead letter runs it, as Cancel's
// contract for dead letters says (it leaves them).
func TestCancelMarkGoesWithItsFinishedTask(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	done, err := q.AddTask(ctx, 1, []byte("done"))
	require.NoError(t, err)
	dead, err := q.AddTask(ctx, 2, []byte("dead"))
	require.NoError(t, err)
	_, err = q.AddTask(ctx, 3, []byte("behind")) // the ready list never empties
	require.NoError(t, err)

	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 1})
	require.NoError(t, err)
	ts, err := c.Claim(ctx, 2)
	require.NoError(t, err)
	require.Len(t, ts, 2)
	for _, id := range []string{done, dead} {
		where, err := q.Cancel(ctx, 0, id) // the Consumer does not watch marks
		require.NoError(t, err)
		require.Equal(t, StatePending, where)
	}
	n, err := c.Ack(ctx, done)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	wentDead, err := c.Fail(ctx, ts[1], errors.New("boom"))
	require.NoError(t, err)
	require.True(t, wentDead)

	assert.Zero(t, s.do(t, "HEXISTS", k.cancels, done), "the acknowledged task's mark is left")
	assert.Zero(t, s.do(t, "HEXISTS", k.cancels, dead), "the dead letter's mark is left")
	st, err := q.Status(ctx, 1, done)
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, st.State, "a task that ran to its end is reported %v", st.State)

	replayed, err := q.Replay(ctx, 0, dead)
	require.NoError(t, err)
	require.Equal(t, 1, replayed)
	ts, err = c.Claim(ctx, 10)
	require.NoError(t, err)
	var ids []string
	for _, t := range ts {
		ids = append(ids, t.ID)
	}
	assert.Contains(t, ids, dead, "the replayed dead letter was cancelled by a mark of its earlier life")
	require.NoError(t, c.Release(ctx))
}

// A claim that finds the ready list empty drops the marks of tasks that
// are nowhere any more, a bounded number at a time (scriptChunk): however
// many there are, no claim holds Redis for long, and the marks of pending
// tasks stay.
func TestEmptyClaimSweepsMarksInBoundedSteps(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	id, err := q.AddTask(ctx, 1, []byte("held"))
	require.NoError(t, err)
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer c.Release(ctx)
	ts, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Len(t, ts, 1)
	s.do(t, "HSET", k.cancels, id, "1")
	const stale = 3*scriptChunk + scriptChunk/2
	conn := s.pool.Get()
	for i := range stale {
		require.NoError(t, conn.Send("HSET", k.cancels, fmt.Sprintf("%020d", i), "1"))
	}
	require.NoError(t, conn.Flush())
	for range stale {
		_, err := conn.Receive()
		require.NoError(t, err)
	}
	conn.Close()

	left := int64(stale + 1)
	for left > 1 {
		ts, err := c.Claim(ctx, 10)
		require.NoError(t, err)
		require.Empty(t, ts)
		n, err := redis.Int64(s.do(t, "HLEN", k.cancels), nil)
		require.NoError(t, err)
		require.Less(t, n, left, "an empty claim dropped no stale mark")
		require.GreaterOrEqual(t, n, left-scriptChunk, "an empty claim swept more than scriptChunk marks")
		left = n
	}
	assert.Equal(t, int64(1), s.do(t, "HEXISTS", k.cancels, id), "the pending task's mark was dropped")
}

// A cancels hash of another type (written by hand) makes Cancel fail,
// and is left alone by the claims, which go on: on an empty queue as on
// a full one.
func TestClaimLeavesCancelsOfAnotherType(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	s.do(t, "SET", k.cancels, "not a hash")
	id, err := q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	_, err = q.Cancel(ctx, 1, id)
	require.ErrorIs(t, err, ErrWrongType)
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer c.Release(ctx)
	ts, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	require.Len(t, ts, 1)
	ts, err = c.Claim(ctx, 10) // the ready list is empty
	require.NoError(t, err)
	assert.Empty(t, ts)
	assert.Equal(t, "string", s.do(t, "TYPE", k.cancels))
}
