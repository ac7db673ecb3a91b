package queue

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Pause and resume: what a paused queue tells a pool, a Consumer and a new
// owner, and which queues a scope names.

func TestPausedQueueWithNothingReadyReadsEmpty(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	require.NoError(t, q.Pause(ctx, AllQueues()))
	_, err := q.AddTaskAfter(ctx, 1, time.Hour, []byte("later")) // not due: nothing to claim
	require.NoError(t, err)
	var ran atomic.Int32
	fn := func(context.Context, Task) error { ran.Add(1); return nil }
	errc := runPool(ctx, q, PoolConfig{ExitOnEmpty: true}, fn)
	select {
	case err := <-errc:
		require.NoError(t, err, "an empty paused queue is empty: ExitOnEmpty returns")
	case <-time.After(5 * time.Second):
		cancel()
		<-errc
		t.Fatal("a pool with ExitOnEmpty waits on an empty paused queue")
	}

	// With a task ready, the paused queue is not empty: the pool waits
	// for Resume, then runs it and returns.
	_, err = q.AddTask(ctx, 1, []byte("a"))
	require.NoError(t, err)
	errc = runPool(ctx, q, PoolConfig{ExitOnEmpty: true}, fn)
	assert.Never(t, func() bool { return len(errc) > 0 }, 3*pauseRecheck, 10*time.Millisecond)
	assert.Zero(t, ran.Load())
	require.NoError(t, q.Resume(ctx, AllQueues()))
	require.NoError(t, receive(t, errc))
	assert.Equal(t, int32(1), ran.Load())
	assert.Equal(t, int64(1), stats0(t, q).Scheduled)
}
