package queue

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestState(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 2, Config{Queues: 2})
	ctx := context.Background()
	const order = 7
	id, err := q.AddTask(ctx, order, []byte("x"))
	require.NoError(t, err)
	st, err := q.State(ctx, order, id)
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, st, "queued tasks are not tracked per task")

	c, err := q.Consume(ctx, q.AnalyserOf(order), ConsumerConfig{MaxAttempts: 1})
	require.NoError(t, err)
	task, err := c.RemoveTask(ctx)
	require.NoError(t, err)
	require.Equal(t, id, task.ID)
	st, err = q.State(ctx, order, id)
	require.NoError(t, err)
	assert.Equal(t, StatePending, st)

	dead, err := c.Fail(ctx, task, errors.New("boom"))
	require.NoError(t, err)
	require.True(t, dead)
	st, err = q.State(ctx, order, id)
	require.NoError(t, err)
	assert.Equal(t, StateDead, st)
	assert.Equal(t, "dead", st.String())
	require.NoError(t, c.Release(ctx))
}

func TestAddTaskOnce(t *testing.T) {
	t.Parallel()
	q, servers := newTestQueue(t, 1, Config{})
	ctx := context.Background()
	id1, added, err := q.AddTaskOnce(ctx, 3, "req-1", time.Minute, []byte("a"))
	require.NoError(t, err)
	assert.True(t, added)
	id2, added, err := q.AddTaskOnce(ctx, 3, "req-1", time.Minute, []byte("b"))
	require.NoError(t, err)
	assert.False(t, added)
	assert.Equal(t, id1, id2, "a repeated key returns the first task's ID")
	_, added, err = q.AddTaskOnce(ctx, 4, "req-1", time.Minute, []byte("c"))
	require.NoError(t, err)
	assert.True(t, added, "the key is per OrderID")

	st, err := q.Stats(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 2, st[0].Ready)

	// Once the window ends the key may be used again.
	if servers[0].mini != nil {
		servers[0].mini.FastForward(2 * time.Minute)
	} else {
		_, _, err = q.AddTaskOnce(ctx, 5, "short", 20*time.Millisecond, []byte("d"))
		require.NoError(t, err)
		assert.Eventually(t, func() bool {
			_, added, err := q.AddTaskOnce(ctx, 5, "short", 20*time.Millisecond, []byte("e"))
			return err == nil && added
		}, 5*time.Second, 10*time.Millisecond)
		return
	}
	_, added, err = q.AddTaskOnce(ctx, 3, "req-1", time.Minute, []byte("f"))
	require.NoError(t, err)
	assert.True(t, added)

	_, _, err = q.AddTaskOnce(ctx, 3, "", time.Minute, []byte("g"))
	assert.ErrorIs(t, err, ErrBadConfig)
	_, _, err = q.AddTaskOnce(ctx, 3, "k", time.Minute, nil)
	assert.ErrorIs(t, err, ErrEmptyPayload)
}

func TestReplayPurgeCheckLayout(t *testing.T) {
	t.Parallel()
	q, servers := newTestQueue(t, 1, Config{})
	ctx := context.Background()
	_, err := q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	// A process that believes in two queues must not touch the store.
	other, err := New([]*redis.Pool{servers[0].pool}, Config{Prefix: q.cfg.Prefix, Queues: 2})
	require.NoError(t, err)
	_, err = other.Replay(ctx, 0)
	assert.ErrorIs(t, err, ErrLayoutMismatch)
	_, err = other.Purge(ctx, 0)
	assert.ErrorIs(t, err, ErrLayoutMismatch)
}

func TestPing(t *testing.T) {
	t.Parallel()
	q, servers := newTestQueue(t, 2, Config{})
	ctx := context.Background()
	require.NoError(t, q.Ping(ctx))
	if servers[1].mini == nil {
		return // stopping the shared real server is not this test's to do
	}
	servers[1].mini.Close()
	err := q.Ping(ctx)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "queue: ping partition 1")
}
