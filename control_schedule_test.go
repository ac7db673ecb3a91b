package queue

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Scheduled tasks: routing over partitions and queues, an idle pool's wake
// for a due time, a due task's wait for its turn.

func TestScheduledRoutingAcrossPartitionsAndQueues(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 2, Config{Queues: 3})
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	n := q.Layout().Analysers()
	require.Equal(t, 6, n)
	// An hour away: OrderID o waits in analyser o%6's queue.
	for o := range 2 * n {
		_, err := q.AddTaskAfter(ctx, uint64(o), time.Hour, []byte(fmt.Sprintf("later:%d", o)))
		require.NoError(t, err)
	}
	for o := range n {
		_, err := q.AddTaskAfter(ctx, uint64(o), 200*time.Millisecond, []byte(fmt.Sprintf("soon:%d", o)))
		require.NoError(t, err)
	}
	st, err := q.Stats(ctx)
	require.NoError(t, err)
	for a := range n {
		assert.Equal(t, int64(3), st[a].Scheduled, "analyser %d", a)
		sched, err := q.Scheduled(ctx, a, 0, 10)
		require.NoError(t, err)
		require.Len(t, sched, 3)
		assert.Equal(t, fmt.Sprintf("soon:%d", a), string(sched[0].Payload), "earliest due first")
		for _, s := range sched {
			assert.Equal(t, a, int(s.OrderID%uint64(n)), "analyser %d lists only its OrderIDs", a)
		}
	}
	_, err = q.Scheduled(ctx, n, 0, 10)
	assert.ErrorIs(t, err, ErrAnalyserRange)

	// Each analyser's pool runs its own task when it falls due, and only
	// that one.
	var mu sync.Mutex
	ran := map[int][]string{}
	var wg sync.WaitGroup
	for a := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := q.AnalysePool(ctx, a, PoolConfig{Workers: 1}, func(_ context.Context, t Task) error {
				mu.Lock()
				ran[a] = append(ran[a], string(t.Payload))
				mu.Unlock()
				return nil
			})
			assert.NoError(t, err)
		}()
	}
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		k := 0
		for _, r := range ran {
			k += len(r)
		}
		return k == n
	}, 10*time.Second, 5*time.Millisecond)
	cancel()
	wg.Wait()
	for a := range n {
		assert.Equal(t, []string{fmt.Sprintf("soon:%d", a)}, ran[a], "analyser %d", a)
	}
	st, err = q.Stats(context.Background())
	require.NoError(t, err)
	for a := range n {
		assert.Equal(t, int64(2), st[a].Scheduled, "analyser %d", a)
	}
}

// An idle pool learns of a task scheduled during its wait, and starts it
// at its due time. (It learns at once where Redis tracks keys for it, and
// when its wait ends, within a second, where Redis cannot, as miniredis:
// the due time is further away than that.)
func TestScheduledWhileIdleStartsNearItsDueTime(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	startedAt := make(chan time.Time, 1)
	errc := runPool(ctx, q, PoolConfig{}, func(context.Context, Task) error {
		startedAt <- time.Now()
		return nil
	})
	require.Eventually(t, func() bool { return stats0(t, q).Owner != "" }, 5*time.Second, time.Millisecond)
	time.Sleep(300 * time.Millisecond) // well into its idle wait
	due := time.Now().Add(1500 * time.Millisecond)
	_, err := q.AddTaskAt(ctx, 1, due, []byte("x"))
	require.NoError(t, err)
	late := receive(t, startedAt).Sub(due)
	t.Logf("started %v after its due time", late)
	assert.GreaterOrEqual(t, late, time.Duration(0), "never before its due time")
	assert.Less(t, late, 250*time.Millisecond, "woken for its due time")
	cancel()
	require.NoError(t, <-errc)
}

// A due task waits behind the ready tasks added before its due time, a
// claim of many stops where it belongs, and it can still be cancelled as
// scheduled while it waits.
func TestScheduledDueTaskWaitsItsTurnInALongClaim(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx := bounded(t)
	const older = 2050
	addAll(t, q, orderTasks(1, older))
	due := time.Now().Add(100 * time.Millisecond)
	sid, err := q.AddTaskAt(ctx, 0, due, []byte("s"))
	require.NoError(t, err)
	gone, err := q.AddTaskAt(ctx, 0, due, []byte("cancelled"))
	require.NoError(t, err)
	sleepPast(due, 20*time.Millisecond)
	_, err = q.AddTask(ctx, 0, []byte("newer"))
	require.NoError(t, err)

	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer c.Release(ctx)
	var got []string
	claim := func() int {
		ts, err := c.Claim(ctx, 100)
		require.NoError(t, err)
		for _, task := range ts {
			got = append(got, string(task.Payload))
		}
		_, err = c.Ack(ctx, taskIDs(ts)...)
		require.NoError(t, err)
		return len(ts)
	}
	for len(got) < older {
		require.Positive(t, claim())
	}
	assert.Len(t, got, older, "the claim stopped before the newer task")
	st, err := q.Status(ctx, 0, sid)
	require.NoError(t, err)
	assert.Equal(t, StateScheduled, st.State)
	where, err := q.Cancel(ctx, 0, gone)
	require.NoError(t, err)
	assert.Equal(t, StateScheduled, where, "due and waiting: still scheduled")
	for claim() > 0 {
	}
	require.Len(t, got, older+2)
	assert.Equal(t, []string{pl(0, older-1), "s", "newer"}, got[older-1:])
}
