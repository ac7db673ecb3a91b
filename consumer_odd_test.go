package queue

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The low-level Consumer API used in unusual orders: every task is still
// delivered, none twice in the queue, and the per-OrderID order holds.

func TestConsumerOddOrders(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	ids := addAll(t, q, orderTasks(1, 4)) // order 0: tasks 0..3
	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 3})
	require.NoError(t, err)

	ts, err := c.Claim(ctx, 2)
	require.NoError(t, err)
	require.Len(t, ts, 2)

	// Requeue the same task twice in one call, and one already there.
	require.NoError(t, c.Requeue(ctx, ts[0], ts[0], ts[1]))
	require.NoError(t, c.Requeue(ctx, ts[1]))
	r := readyTasks(t, s, k)
	assert.Equal(t, ids, taskIDs(r), "each task once, in order")

	// Ack twice, ack unknown ids, fail an acked task, requeue it.
	ts, err = c.Claim(ctx, 1)
	require.NoError(t, err)
	n, err := c.Ack(ctx, ts[0].ID, ts[0].ID)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	n, err = c.Ack(ctx, ts[0].ID, ids[3])
	require.NoError(t, err)
	assert.Equal(t, 0, n)
	dead, err := c.Fail(ctx, ts[0], errors.New("x"))
	require.NoError(t, err)
	assert.False(t, dead)
	require.NoError(t, c.Requeue(ctx, ts[0]))
	assert.Equal(t, ids[1:], taskIDs(readyTasks(t, s, k)))

	// Fail until dead, with a requeue between.
	ts, err = c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, ids[1], ts[0].ID)
	dead, err = c.Fail(ctx, ts[0], errors.New("1"))
	require.NoError(t, err)
	require.False(t, dead)
	require.NoError(t, c.Requeue(ctx, ts[0]))
	ts, err = c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, ids[1], ts[0].ID)
	assert.Equal(t, 2, ts[0].Attempt)
	dead, err = c.Fail(ctx, ts[0], nil)
	require.NoError(t, err)
	require.False(t, dead)
	dead, err = c.Fail(ctx, ts[0], errors.New("3"))
	require.NoError(t, err)
	require.True(t, dead)

	// Release, then everything is refused, and a new Consumer gets the
	// held task back first.
	ts, err = c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, ids[2], ts[0].ID)
	require.NoError(t, c.Release(ctx))
	_, err = c.Ack(ctx, ts[0].ID)
	assert.ErrorIs(t, err, ErrLeaseLost)
	_, err = c.Fail(ctx, ts[0], errors.New("late"))
	assert.ErrorIs(t, err, ErrLeaseLost)
	assert.ErrorIs(t, c.Requeue(ctx, ts[0]), ErrLeaseLost)
	_, err = c.Claim(ctx, 1)
	assert.ErrorIs(t, err, ErrLeaseLost)
	assert.NoError(t, c.Release(ctx))

	c2, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 3})
	require.NoError(t, err)
	defer c2.Release(context.Background())
	ts, err = c2.Claim(ctx, 10)
	require.NoError(t, err)
	assert.Equal(t, []string{ids[2], ids[3]}, taskIDs(ts))
	n, err = c2.Ack(ctx, taskIDs(ts)...)
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	st := stats0(t, q)
	assert.Zero(t, st.Pending)
	assert.Zero(t, st.Ready)
	assert.EqualValues(t, 1, st.Dead)
	_ = time.Second
}

// A task delivered more often than this Consumer's MaxAttempts (under an
// owner with a higher one) is dead-lettered by the claim, as a pool does,
// not handed out; the claim goes on with the next task.
func TestConsumerClaimDeadLettersExhaustedTasks(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx := bounded(t)
	ids := addAll(t, q, orderTasks(1, 2))
	a, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 5})
	require.NoError(t, err)
	got, err := a.Claim(ctx, 1)
	require.NoError(t, err)
	require.Len(t, got, 1)
	for range 3 {
		dead, err := a.Fail(ctx, got[0], errors.New("boom"))
		require.NoError(t, err)
		require.False(t, dead)
	}
	require.NoError(t, a.Requeue(ctx, got[0]))
	require.NoError(t, a.Release(ctx))

	b, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 2})
	require.NoError(t, err)
	defer b.Release(ctx)
	next, err := b.Claim(ctx, 1)
	require.NoError(t, err)
	require.Len(t, next, 1)
	assert.Equal(t, ids[1], next[0].ID, "the exhausted task is not handed out")
	ds, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, ds, 1)
	assert.Equal(t, ids[0], ds[0].ID)
	assert.Equal(t, 2, ds[0].Attempts)
	assert.Contains(t, ds[0].LastError, "exceeds MaxAttempts 2")
	n, err := q.Replay(ctx, 0)
	require.NoError(t, err)
	assert.Equal(t, 1, n, "a dead letter like any other")
}

// An entry whose delivery count leaves no room for one more delivery is
// malformed: it was handed out with an attempt that no dead record can
// hold, so that its Fail buried it unreadable and unreplayable.
func TestEntryWithTooManyDeliveriesIsQuarantined(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	s.do(t, "LPUSH", k.ready, appendEntry(nil, 0, testID, 0, time.Now().UnixMilli(), 1<<31, nil, []byte("p")))
	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 3})
	require.NoError(t, err)
	defer c.Release(ctx)
	got, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	assert.Empty(t, got)
	ds, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, ds, 1)
	assert.NotNil(t, ds[0].Raw, "kept as raw bytes")
	assert.Contains(t, ds[0].LastError, "out of range")
}
