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

// A new owner of a paused queue, after a graceful hand-over or a crash,
// claims nothing until Resume.
func TestPauseSurvivesATakeover(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	bg := bounded(t)
	ctx, cancel := context.WithCancel(bg)
	rec := newRecorder()
	errc := runPool(ctx, q, PoolConfig{Owner: "first"}, rec.fn(nil))
	require.Eventually(t, func() bool { return stats0(t, q).Owner == "first" }, 5*time.Second, time.Millisecond)
	require.NoError(t, q.Pause(bg, QueueOf(0)))
	addAll(t, q, orderTasks(2, 3))
	cancel() // a graceful stop: the lease goes at once
	require.NoError(t, receive(t, errc))
	assert.Zero(t, rec.total())

	ctx, cancel = context.WithCancel(bg)
	defer cancel()
	errc = runPool(ctx, q, PoolConfig{Owner: "second"}, rec.fn(nil))
	require.Eventually(t, func() bool { return stats0(t, q).Owner == "second" }, 5*time.Second, time.Millisecond)
	assert.Never(t, func() bool { return rec.total() > 0 }, 3*pauseRecheck, 10*time.Millisecond, "the new owner claims nothing")
	st := stats0(t, q)
	assert.True(t, st.Paused)
	assert.Equal(t, int64(6), st.Ready)
	require.NoError(t, q.Resume(bg, QueueOf(0)))
	require.Eventually(t, func() bool { return rec.total() == 6 }, 5*time.Second, time.Millisecond)
	assert.Equal(t, []string{pl(0, 0), pl(0, 1), pl(0, 2)}, rec.order(0))
	assert.Equal(t, []string{pl(1, 0), pl(1, 1), pl(1, 2)}, rec.order(1))
	cancel()
	require.NoError(t, receive(t, errc))

	// A crash: the old owner's lease lapses with the queue paused; the
	// next one claims nothing either.
	old, err := q.Consume(bg, 0, ConsumerConfig{Owner: "old", LeaseTTL: time.Minute})
	require.NoError(t, err)
	require.NoError(t, q.Pause(bg, AllQueues()))
	addAll(t, q, orderTasks(1, 1))
	lapse(t, s, k.lease)
	next, err := q.Consume(bg, 0, ConsumerConfig{Owner: "next"})
	require.NoError(t, err)
	defer next.Release(bg)
	_, err = old.Claim(bg, 1)
	assert.ErrorIs(t, err, ErrLeaseLost)
	_, err = next.RemoveTask(bg)
	assert.ErrorIs(t, err, ErrNoTask, "paused: nothing is claimed")
	assert.Equal(t, int64(1), stats0(t, q).Ready)
	require.NoError(t, q.Resume(bg, AllQueues()))
	task, err := next.RemoveTask(bg)
	require.NoError(t, err)
	assert.Equal(t, pl(0, 0), string(task.Payload))
}

func TestPauseScopesNameOnlyTheirQueues(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 2, Config{Queues: 3})
	ctx := bounded(t)
	n := q.Layout().Analysers()
	paused := func() []int {
		t.Helper()
		st, err := q.Stats(ctx)
		require.NoError(t, err)
		var out []int
		for _, s := range st {
			if s.Paused {
				out = append(out, s.Analyser)
			}
		}
		return out
	}
	require.NoError(t, q.Pause(ctx, QueueOf(4)))
	assert.Equal(t, []int{4}, paused())
	require.NoError(t, q.Resume(ctx, QueueOf(4)))
	assert.Empty(t, paused())
	require.NoError(t, q.Pause(ctx, PartitionQueues(1)))
	assert.Equal(t, []int{1, 3, 5}, paused(), "partition 1 serves the odd analysers")

	// Work flows on the queues not named.
	for o := range n {
		_, err := q.AddTask(ctx, uint64(o), []byte(pl(o, 0)))
		require.NoError(t, err)
	}
	for a := range n {
		c, err := q.Consume(ctx, a, ConsumerConfig{})
		require.NoError(t, err)
		ts, err := c.Claim(ctx, 10)
		require.NoError(t, err)
		if a%2 == 1 {
			assert.Empty(t, ts, "analyser %d is paused", a)
		} else {
			assert.Len(t, ts, 1, "analyser %d is not", a)
			_, err = c.Ack(ctx, taskIDs(ts)...)
			require.NoError(t, err)
		}
		require.NoError(t, c.Release(ctx))
	}
	require.NoError(t, q.Resume(ctx, AllQueues()))
	assert.Empty(t, paused())
	st, err := q.Stats(ctx)
	require.NoError(t, err)
	for _, s := range st {
		assert.Equal(t, int64(s.Analyser%2), s.Ready, "analyser %d", s.Analyser)
	}
}

func TestPauseRefusesQueuesThatAreNot(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 2, Config{Queues: 3})
	ctx := bounded(t)
	for _, c := range []struct {
		w    Queues
		want error
	}{
		{QueueOf(6), ErrAnalyserRange},
		{QueueOf(-1), ErrAnalyserRange},
		{PartitionQueues(2), ErrBadConfig},
		{PartitionQueues(-1), ErrBadConfig},
		{Queues{}, ErrBadConfig},
	} {
		assert.ErrorIs(t, q.Pause(ctx, c.w), c.want, "pause %v", c.w)
		assert.ErrorIs(t, q.Resume(ctx, c.w), c.want, "resume %v", c.w)
	}
	st, err := q.Stats(ctx)
	require.NoError(t, err)
	for _, s := range st {
		assert.False(t, s.Paused, "analyser %d", s.Analyser)
	}
	assert.Equal(t, "analyser 3", QueueOf(3).String())
	assert.Equal(t, "partition 1", PartitionQueues(1).String())
	assert.Equal(t, "all queues", AllQueues().String())
	assert.Equal(t, "no queues", Queues{}.String())
	require.NoError(t, q.Close())
	assert.ErrorIs(t, q.Pause(ctx, AllQueues()), ErrClosed)
}
