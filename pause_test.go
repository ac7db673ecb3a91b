package queue

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A negative analyser or partition, or a Queues never set, names no
// queue: Pause and Resume refuse it and change nothing, rather than
// read it as every queue.
func TestPauseRefusesAQueueSetNotNamed(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 2, Config{Queues: 2})
	ctx := bounded(t)
	for _, c := range []struct {
		w    Queues
		want error
	}{
		{QueueOf(-1), ErrAnalyserRange},
		{QueueOf(-7), ErrAnalyserRange},
		{PartitionQueues(-1), ErrBadConfig},
		{Queues{}, ErrBadConfig},
	} {
		require.ErrorIs(t, q.Pause(ctx, c.w), c.want, "Pause(%v)", c.w)
		require.ErrorIs(t, q.Resume(ctx, c.w), c.want, "Resume(%v)", c.w)
	}
	st, err := q.Stats(ctx)
	require.NoError(t, err)
	for _, s := range st {
		assert.False(t, s.Paused, "analyser %d paused", s.Analyser)
	}

	require.NoError(t, q.Pause(ctx, QueueOf(3)))
	require.NoError(t, q.Pause(ctx, PartitionQueues(0)))
	st, err = q.Stats(ctx)
	require.NoError(t, err)
	for _, s := range st {
		assert.Equal(t, s.Analyser != 1, s.Paused, "analyser %d", s.Analyser)
	}
	require.NoError(t, q.Resume(ctx, AllQueues()))
	st, err = q.Stats(ctx)
	require.NoError(t, err)
	for _, s := range st {
		assert.False(t, s.Paused, "analyser %d paused", s.Analyser)
	}
	assert.Equal(t, "analyser 3", QueueOf(3).String())
	assert.Equal(t, "partition 1", PartitionQueues(1).String())
	assert.Equal(t, "all queues", AllQueues().String())
	assert.Equal(t, "no queues", Queues{}.String())
}

// On a paused queue a Consumer's Claim takes nothing while its ready list
// holds tasks: Wait must not report them ready at once, or a loop of
// Claim and Wait spins on Redis for as long as the pause lasts.
func TestConsumerWaitOnPausedQueueWaits(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx := bounded(t)
	_, err := q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	require.NoError(t, q.Pause(ctx, QueueOf(0)))
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer c.Release(ctx)
	claims := 0
	for end := time.Now().Add(time.Second); time.Now().Before(end); {
		ts, err := c.Claim(ctx, 10)
		require.NoError(t, err)
		require.Empty(t, ts)
		claims++
		ready, err := c.Wait(ctx, time.Second)
		require.NoError(t, err)
		assert.False(t, ready, "a paused queue's task reported ready")
	}
	assert.LessOrEqual(t, claims, 2*int(time.Second/pauseRecheck), "Claim and Wait spun on a paused queue")

	require.NoError(t, q.Resume(ctx, QueueOf(0)))
	ready, err := c.Wait(ctx, time.Second) // the last claim saw the pause: wait it out, once
	require.NoError(t, err)
	assert.False(t, ready)
	ts, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	assert.Len(t, ts, 1)
}
