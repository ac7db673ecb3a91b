package queue

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

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

	// A key of 1 KiB is taken, a longer one refused before anything is
	// sent.
	_, added, err = q.AddTaskOnce(ctx, 6, strings.Repeat("k", 1<<10), time.Minute, []byte("h"))
	require.NoError(t, err)
	assert.True(t, added)
	_, _, err = q.AddTaskOnce(ctx, 6, strings.Repeat("k", 1<<10+1), time.Minute, []byte("i"))
	assert.ErrorIs(t, err, ErrBadConfig)
	_, _, err = q.AddTaskOnce(ctx, 3, "", time.Minute, []byte("g"))
	assert.ErrorIs(t, err, ErrBadConfig)
	_, _, err = q.AddTaskOnce(ctx, 3, "k", time.Minute, nil)
	assert.ErrorIs(t, err, ErrEmptyPayload)
	st, err = q.Stats(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 3, st[0].Ready, "only the task of the 1 KiB key added")

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
}
