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
//
// On time is judged against what a pool that missed the task would do,
// not against the clock of an idle machine: the stream stops before the
// task falls due, so that a pool that did not wait for it has nothing
// more to wake it, and starts it at its wait's end (idleWaitMax, a
// minute) on a real server. One that waits for it starts it within a
// claim; a loaded 2-core machine under -race has stalled that by 450ms.
// (On miniredis, which refuses key tracking, the pool looks every second
// whatever it missed.)
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
	// soon, and go on coming while the pool waits for it, until a little
	// before it falls due (the wait reads the set schedSettle after a
	// change: a read after the due time would find the task due whether
	// or not the wait waited for it): those before it counted, not
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
	// Far from a start within a claim of the due time, and from the
	// wait's end that a pool that missed it would start it at.
	late := time.Second
	if srv.mini != nil {
		// miniredis refuses key tracking: the pool waits on its own
		// connection, and learns of a task scheduled during its wait
		// within a second (see AddTaskAt).
		late += time.Second
	}
	var at time.Time
	for time.Now().Before(due.Add(-3*schedSettle)) && at.IsZero() {
		select {
		case at = <-started:
		default:
			addLater()
		}
	}
	if at.IsZero() {
		select {
		case at = <-started:
		case <-time.After(5 * time.Second):
			t.Fatal("the task due soon did not start")
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
// came. It waited until its old due time, or a minute: on time is judged
// against that, not against an idle machine's clock (a loaded 2-core
// machine under -race has stalled a start within a claim by 450ms).
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
	late := time.Second // far from a start within a claim, and from a minute
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

// unansweredQueue is a queue over server s whose connections swallow
// the first cmd on key once armed, until the caller's ctx ends: the
// connections of a redigo pool without a read timeout.
func unansweredQueue(t *testing.T, s *testServer, prefix, cmd, key string) (*Queue, *lostWait) {
	t.Helper()
	u := &lostWait{cmd: cmd, key: key, readTimeout: time.Hour, caught: make(chan struct{})}
	pool := s.wrapPool(8, func(c redis.Conn) redis.Conn { return &lostWaitConn{Conn: c, w: u} })
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: prefix})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	return q, u
}

// needNoTracking skips a test of the blocking waits of a server without
// client tracking: on a redis-server the waiter tracks keys instead, and
// its reads every second end a wait that goes unanswered.
func needNoTracking(t *testing.T) {
	t.Helper()
	if testRedisURL != "" {
		t.Skip("a redis-server tracks keys: pools wait through the waiter, not a blocking command of their own")
	}
}

// An idle pool whose wait for work is never answered (without client
// tracking: a blocking command of its own) gives the wait up a second
// after its block time, and claims what was added meanwhile. Before, the
// wait ended only with the connection's read timeout, and on a pool
// without one the queue stood still for good while its owner held it.
func TestIdleWaitNeverAnsweredEnds(t *testing.T) {
	t.Parallel()
	needNoTracking(t)
	skipOnCluster(t, "the connection wraps one server's")
	s := newTestServers(t, 1)[0]
	prefix := testPrefix(t)
	q, u := unansweredQueue(t, s, prefix, "BLMOVE", newQueueKeys(prefix, 0, 0).ready)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	ran := make(chan string, 1)
	u.armed.Store(true)
	errc := runPool(ctx, q, PoolConfig{Workers: 1}, func(_ context.Context, task Task) error {
		ran <- string(task.Payload)
		return nil
	})
	receive(t, u.caught)
	_, err := q.AddTask(ctx, 1, []byte("added while the wait hung"))
	require.NoError(t, err)
	select {
	case p := <-ran:
		assert.Equal(t, "added while the wait hung", p)
	case <-time.After(20 * time.Second):
		t.Fatal("the pool did not claim within 20s: its unanswered wait never ended")
	}
	cancel()
	require.NoError(t, receive(t, errc))
}

// A standby whose wait for the lease is never answered gives it up a
// second after its block time, and takes the lease the owner released.
// Before, it waited for good on a pool without a read timeout, and the
// queue had no owner once the old one stopped.
func TestStandbyWaitNeverAnsweredEnds(t *testing.T) {
	t.Parallel()
	needNoTracking(t)
	skipOnCluster(t, "the connection wraps one server's")
	s := newTestServers(t, 1)[0]
	prefix := testPrefix(t)
	owner, err := New([]*redis.Pool{s.pool}, Config{Prefix: prefix})
	require.NoError(t, err)
	t.Cleanup(func() { owner.Close() })
	standby, u := unansweredQueue(t, s, prefix, "BLPOP", newQueueKeys(prefix, 0, 0).wake)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	fn := func(context.Context, Task) error { return nil }
	octx, stopOwner := context.WithCancel(ctx)
	oerr := runPool(octx, owner, PoolConfig{Workers: 1, LeaseTTL: 2 * time.Second}, fn)
	require.Eventually(t, func() bool { return stats0(t, owner).Owner != "" }, 10*time.Second, 5*time.Millisecond)
	u.armed.Store(true)
	serr := runPool(ctx, standby, PoolConfig{Workers: 1, LeaseTTL: 2 * time.Second, Owner: "standby"}, fn)
	receive(t, u.caught)
	stopOwner() // releases the lease, and wakes the standby's wait, which hangs
	require.NoError(t, receive(t, oerr))
	require.Eventually(t, func() bool { return stats0(t, owner).Owner == "standby" }, 20*time.Second, 5*time.Millisecond,
		"the standby did not take the lease within 20s: its unanswered wait never ended")
	cancel()
	require.NoError(t, receive(t, serr))
}
