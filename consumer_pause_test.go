package queue

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

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
