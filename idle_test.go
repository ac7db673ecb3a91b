package queue

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An idle pool's wait ends for a task scheduled to fall due before the
// wait would, not for every change of the scheduled set: a producer
// scheduling a stream of tasks an hour ahead does not make the idle owner
// claim at its pace (it did, once per task it could see), while a task
// scheduled a moment ahead in the middle of that stream still starts on
// time.
func TestIdlePoolIgnoresTasksScheduledBeyondItsWait(t *testing.T) {
	t.Parallel()
	q, srv, claims := claimCountingQueue(t)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	started := make(chan time.Time, 1)
	errc := runPool(ctx, q, PoolConfig{Workers: 2}, func(context.Context, Task) error {
		started <- time.Now()
		return nil
	})
	// Let the pool settle into its idle wait.
	require.Eventually(t, func() bool {
		n := claims.Load()
		time.Sleep(300 * time.Millisecond)
		return claims.Load() == n
	}, 10*time.Second, time.Millisecond)

	before := claims.Load()
	// Tasks scheduled an hour ahead come before and after the one due
	// soon, and go on coming while the pool waits for it: counted, not
	// timed, so a slow machine schedules as many.
	const ahead = 200
	later := 0
	addLater := func() {
		_, err := q.AddTaskAfter(ctx, uint64(later), time.Hour, []byte("later"))
		require.NoError(t, err)
		later++
	}
	for range ahead {
		addLater()
	}
	due := time.Now().Add(300 * time.Millisecond)
	_, err := q.AddTaskAt(ctx, 1, due, []byte("soon"))
	require.NoError(t, err)
	late := 100 * time.Millisecond
	if srv.mini != nil {
		// miniredis refuses key tracking: the pool waits on its own
		// connection, and learns of a task scheduled during its wait
		// within a second (see AddTaskAt).
		late += time.Second
	}
	giveUp := time.After(5 * time.Second)
	var at time.Time
wait:
	for {
		select {
		case at = <-started:
			break wait
		case <-giveUp:
			t.Fatal("the task due soon did not start")
		default:
			addLater()
		}
	}
	assert.Less(t, at.Sub(due), late, "the task due soon started late")
	assert.False(t, at.Before(due.Truncate(time.Millisecond)), "the task due soon started early")
	scheduled := later + 1
	n := claims.Load() - before
	t.Logf("%d tasks scheduled, %d claims meanwhile", scheduled, n)
	assert.Less(t, int(n), 100, "the idle pool claimed at the pace of the tasks scheduled an hour ahead")
	cancel()
	require.NoError(t, <-errc)
}

// A task rescheduled sooner (a Cancel and an add, which leave the
// scheduled set's size as it was) while the idle wait lets a change of
// the set settle still ends the wait on time: the wait read the set's
// head before those changes, and the size alone does not tell it they
// came. It waited until its old due time, or a minute.
func TestIdlePoolSeesARescheduleDuringItsSettle(t *testing.T) {
	t.Parallel()
	q, srv, claims := claimCountingQueue(t)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	old, err := q.AddTaskAfter(ctx, 2, 2*time.Hour, []byte("old"))
	require.NoError(t, err)
	started := make(chan time.Time, 1)
	errc := runPool(ctx, q, PoolConfig{Workers: 1}, func(context.Context, Task) error {
		started <- time.Now()
		return nil
	})
	require.Eventually(t, func() bool { // the pool settles into its idle wait
		n := claims.Load()
		time.Sleep(300 * time.Millisecond)
		return claims.Load() == n
	}, 10*time.Second, time.Millisecond)

	// A task scheduled far ahead wakes the wait, which reads the set and
	// lets further changes settle; meanwhile a task is rescheduled sooner.
	_, err = q.AddTaskAfter(ctx, 3, time.Hour, []byte("later"))
	require.NoError(t, err)
	time.Sleep(schedSettle / 5)
	where, err := q.Cancel(ctx, 2, old)
	require.NoError(t, err)
	require.Equal(t, StateScheduled, where)
	due := time.Now().Add(150 * time.Millisecond)
	_, err = q.AddTaskAt(ctx, 2, due, []byte("soon"))
	require.NoError(t, err)
	late := 100 * time.Millisecond
	if srv.mini != nil {
		late += time.Second // no key tracking: the pool looks every second
	}
	select {
	case at := <-started:
		assert.Less(t, at.Sub(due), late, "the rescheduled task started late")
	case <-time.After(5 * time.Second):
		t.Fatal("the rescheduled task did not start")
	}
	cancel()
	require.NoError(t, <-errc)
}

// claimCountingQueue returns a queue on one server, the server, and the
// number of claim scripts its pools have sent.
func claimCountingQueue(t *testing.T) (*Queue, *testServer, *atomic.Int32) {
	t.Helper()
	servers := newTestServers(t, 1)
	claims := new(atomic.Int32)
	pool := hookPool(servers[0], func(script string, args []any) error {
		if script == "claim" {
			claims.Add(1)
		}
		return nil
	})
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	return q, servers[0], claims
}
