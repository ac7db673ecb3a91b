package queue

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Scheduled tasks and the per-OrderID order: a scheduled task joins its
// OrderID's sequence when it falls due, whoever holds the queue then, and
// whether anyone does.

// drainConsumer claims every ready task of c's queue one at a time,
// acknowledging each, and returns their payloads in claim order.
func drainConsumer(t *testing.T, c *Consumer) []string {
	t.Helper()
	ctx := bounded(t)
	var out []string
	for {
		task, err := c.RemoveTask(ctx)
		if errors.Is(err, ErrNoTask) {
			return out
		}
		require.NoError(t, err)
		out = append(out, string(task.Payload))
		_, err = c.Ack(ctx, task.ID)
		require.NoError(t, err)
	}
}

// twinQueue returns a second producer on q's servers and prefix, as another
// process would be, whose task IDs sort before q's: its node is the
// lowest, q's the highest (IDs of one node sort by their counter).
func twinQueue(t *testing.T, q *Queue, servers []*testServer) *Queue {
	t.Helper()
	pools := make([]*redis.Pool, len(servers))
	for i, s := range servers {
		pools[i] = s.pool
	}
	q2, err := New(pools, Config{Prefix: q.cfg.Prefix, Queues: q.cfg.Queues})
	require.NoError(t, err)
	t.Cleanup(func() { q2.Close() })
	q.ids.mu.Lock()
	q.ids.node, q.ids.n = ^uint64(0), 1
	q.ids.mu.Unlock()
	q2.ids.mu.Lock()
	q2.ids.node, q2.ids.n = 0, 1
	q2.ids.mu.Unlock()
	return q2
}

// sleepPast sleeps until at has passed by d on this clock: the passing of
// a due time is what these tests are about.
func sleepPast(at time.Time, d time.Duration) { time.Sleep(time.Until(at) + d) }

func TestScheduledJoinsByDueTimeWithNoOwner(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx := bounded(t)
	_, err := q.AddTask(ctx, 1, []byte("a"))
	require.NoError(t, err)
	due := time.Now().Add(150 * time.Millisecond)
	_, err = q.AddTaskAt(ctx, 1, due, []byte("s"))
	require.NoError(t, err)
	_, err = q.AddTask(ctx, 1, []byte("b")) // before the due time: runs before s
	require.NoError(t, err)
	sleepPast(due, 20*time.Millisecond)
	_, err = q.AddTask(ctx, 1, []byte("c")) // after it, though no one was there to move s: runs after s
	require.NoError(t, err)
	st0 := stats0(t, q)
	assert.Equal(t, int64(4), st0.Ready+st0.Scheduled, "a, b, c ready, s scheduled or ready")

	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer c.Release(ctx)
	assert.Equal(t, []string{"a", "b", "s", "c"}, drainConsumer(t, c))
	s := stats0(t, q)
	assert.Zero(t, s.Scheduled)
	assert.Zero(t, s.Ready)
}

func TestScheduledSameAndDifferentDueTimes(t *testing.T) {
	t.Parallel()
	q, servers := newTestQueue(t, 1, Config{})
	q2 := twinQueue(t, q, servers)
	ctx := bounded(t)
	due := time.Now().Add(time.Second)
	// Two producers schedule tasks of OrderID 1 for the same millisecond:
	// they join in the order Redis accepted them, whatever their IDs.
	_, err := q.AddTaskAt(ctx, 1, due, []byte("same-1"))
	require.NoError(t, err)
	_, err = q2.AddTaskAt(ctx, 1, due, []byte("same-2"))
	require.NoError(t, err)
	_, err = q.AddTaskAt(ctx, 1, due, []byte("same-3"))
	require.NoError(t, err)
	_, err = q2.AddTaskAt(ctx, 1, due.Add(-500*time.Millisecond), []byte("earlier"))
	require.NoError(t, err)
	_, err = q.AddTaskAt(ctx, 1, due.Add(50*time.Millisecond), []byte("later"))
	require.NoError(t, err)
	assert.Equal(t, int64(5), stats0(t, q).Scheduled)
	sched, err := q.Scheduled(ctx, 0, 0, 10)
	require.NoError(t, err)
	var listed []string
	for _, s := range sched {
		listed = append(listed, string(s.Payload))
		assert.Equal(t, uint64(1), s.OrderID)
	}
	assert.Equal(t, []string{"earlier", "same-1", "same-2", "same-3", "later"}, listed, "Scheduled lists them earliest due first")
	require.Len(t, sched, 5)
	for _, s := range sched[1:4] {
		assert.Equal(t, dueMS(due), s.Due.UnixMilli(), "%s falls due when asked", s.Payload)
		st, err := q.Status(ctx, 1, s.ID)
		require.NoError(t, err)
		assert.Equal(t, StateScheduled, st.State)
		assert.Equal(t, dueMS(due), st.Due.UnixMilli())
	}

	sleepPast(due.Add(50*time.Millisecond), 20*time.Millisecond)
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer c.Release(ctx)
	assert.Equal(t, []string{"earlier", "same-1", "same-2", "same-3", "later"}, drainConsumer(t, c))
}

func TestScheduledSameDueTimeWithAPool(t *testing.T) {
	t.Parallel()
	q, servers := newTestQueue(t, 1, Config{})
	q2 := twinQueue(t, q, servers)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	rec := newSeenLog()
	errc := runPool(ctx, q, PoolConfig{Workers: 4}, func(_ context.Context, t Task) error {
		rec.add(string(t.Payload))
		return nil
	})
	due := time.Now().Add(time.Second)
	for i := range 6 {
		p := q
		if i%2 == 1 {
			p = q2
		}
		_, err := p.AddTaskAt(ctx, 9, due, []byte(fmt.Sprint(i)))
		require.NoError(t, err)
	}
	rec.wait(t, "5")
	assert.Equal(t, []string{"0", "1", "2", "3", "4", "5"}, rec.list())
	cancel()
	require.NoError(t, <-errc)
}

func TestAddTaskAtPastOrZeroTimeAddsAtOnce(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx := bounded(t)
	_, err := q.AddTask(ctx, 1, []byte("a"))
	require.NoError(t, err)
	past, err := q.AddTaskAt(ctx, 1, time.Now().Add(-time.Hour), []byte("past"))
	require.NoError(t, err)
	_, err = q.AddTaskAt(ctx, 1, time.Time{}, []byte("zero"))
	require.NoError(t, err)
	_, err = q.AddTaskAfter(ctx, 1, -time.Second, []byte("negative"))
	require.NoError(t, err)
	_, err = q.AddTask(ctx, 1, []byte("b"))
	require.NoError(t, err)
	s := stats0(t, q)
	assert.Equal(t, int64(5), s.Ready, "a time not in the future adds the task at once")
	assert.Zero(t, s.Scheduled)
	st, err := q.Status(ctx, 1, past)
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, st.State, "a ready task is in no record but the ready list")
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer c.Release(ctx)
	assert.Equal(t, []string{"a", "past", "zero", "negative", "b"}, drainConsumer(t, c))
	// Bad input is refused as AddTask refuses it, scheduled or not.
	_, err = q.AddTaskAfter(ctx, 1, time.Hour, nil)
	assert.ErrorIs(t, err, ErrEmptyPayload)
	assert.Zero(t, stats0(t, q).Scheduled)
}

func TestScheduledOnPausedQueueRunsInItsPlaceAfterResume(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	rec := newSeenLog()
	errc := runPool(ctx, q, PoolConfig{Workers: 2}, func(_ context.Context, t Task) error {
		rec.add(string(t.Payload))
		return nil
	})
	require.Eventually(t, func() bool { return stats0(t, q).Owner != "" }, 5*time.Second, time.Millisecond)
	require.NoError(t, q.Pause(ctx, QueueOf(0)))
	_, err := q.AddTask(ctx, 1, []byte("a"))
	require.NoError(t, err)
	due := time.Now().Add(150 * time.Millisecond)
	sid, err := q.AddTaskAt(ctx, 1, due, []byte("s"))
	require.NoError(t, err)
	_, err = q.AddTask(ctx, 1, []byte("b"))
	require.NoError(t, err)
	sleepPast(due, 5*time.Millisecond)
	_, err = q.AddTask(ctx, 1, []byte("c")) // after s fell due, the queue paused
	require.NoError(t, err)
	time.Sleep(2 * pauseRecheck) // the paused pool looks, and claims nothing
	assert.Empty(t, rec.list(), "a paused pool runs nothing")
	st, err := q.Status(ctx, 1, sid)
	require.NoError(t, err)
	assert.Equal(t, StateScheduled, st.State, "due, and waiting: nothing moves while paused")
	assert.Equal(t, dueMS(due), st.Due.UnixMilli())
	assert.Equal(t, int64(1), stats0(t, q).Scheduled)
	require.NoError(t, q.Resume(ctx, QueueOf(0)))
	rec.wait(t, "c")
	assert.Equal(t, []string{"a", "b", "s", "c"}, rec.list())
	cancel()
	require.NoError(t, <-errc)
}

// An owner that crashes with due scheduled tasks: a stale owner cannot
// move them, and the next owner moves each once, in its place in its
// OrderID's sequence, none lost.
func TestScheduledAcrossOwnerCrashIsFencedAndExactlyOnce(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	old, err := q.Consume(ctx, 0, ConsumerConfig{Owner: "old", LeaseTTL: time.Minute})
	require.NoError(t, err)
	_, err = q.AddTask(ctx, 1, []byte("a"))
	require.NoError(t, err)
	claimedA, err := old.RemoveTask(ctx) // pending with the old owner when it dies
	require.NoError(t, err)
	require.Equal(t, "a", string(claimedA.Payload))
	due := time.Now().Add(100 * time.Millisecond)
	_, err = q.AddTaskAt(ctx, 1, due, []byte("s"))
	require.NoError(t, err)
	_, err = q.AddTask(ctx, 1, []byte("b"))
	require.NoError(t, err)
	sleepPast(due, 20*time.Millisecond)
	_, err = q.AddTask(ctx, 1, []byte("c"))
	require.NoError(t, err)

	// The old owner dies (its lease lapses) and another process takes the
	// queue over: the old one's claim is refused and moves nothing.
	lapse(t, s, k.lease)
	next, err := q.Consume(ctx, 0, ConsumerConfig{Owner: "next", LeaseTTL: time.Minute})
	require.NoError(t, err)
	defer next.Release(ctx)
	_, err = old.Claim(ctx, 10)
	require.ErrorIs(t, err, ErrLeaseLost)
	n, err := redis.Int(s.do(t, "ZCARD", k.sched), nil)
	require.NoError(t, err)
	assert.Equal(t, 1, n, "a stale owner moves no scheduled task")
	assert.Equal(t, []string{"a", "b", "s", "c"}, drainConsumer(t, next))
	assert.Zero(t, stats0(t, q).Scheduled)
	assert.Empty(t, drainConsumer(t, next), "each once")
}

// Many OrderIDs, ready and scheduled tasks interleaved, every due time
// passed while the owner was dead: a standby pool takes over and runs each
// task once, every OrderID's tasks in the order they joined it (a ready
// task when added, a scheduled one when due; a task added in the very
// millisecond another falls due goes first).
func TestScheduledTakeoverByStandbyPoolKeepsEveryOrder(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	old, err := q.Consume(ctx, 0, ConsumerConfig{Owner: "old", LeaseTTL: time.Minute})
	require.NoError(t, err)

	type joined struct {
		payload string
		at      int64 // ms: added, or due
		seq     int   // the order of the calls
		ready   bool
	}
	const orders = 8
	want := map[uint64][]joined{}
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	start := time.Now()
	var lastDue time.Time
	for i := range 240 {
		o := uint64(rng.IntN(orders))
		p := fmt.Sprintf("%d:%d", o, i)
		if rng.IntN(3) == 0 {
			due := time.Now().Add(time.Duration(rng.IntN(300)) * time.Millisecond)
			id, err := q.AddTaskAt(ctx, o, due, []byte(p))
			require.NoError(t, err)
			at := dueMS(due)
			// AddTaskAt adds at once a task due by the time it looks:
			// then its AddedAt decides, read below.
			if _, err := redis.Float64(s.do(t, "ZSCORE", k.sched, id), nil); errors.Is(err, redis.ErrNil) {
				at = -1
			} else {
				require.NoError(t, err)
			}
			want[o] = append(want[o], joined{payload: p, at: at, seq: i})
			lastDue = due
			continue
		}
		_, err := q.AddTask(ctx, o, []byte(p))
		require.NoError(t, err)
		want[o] = append(want[o], joined{payload: p, at: -1, seq: i, ready: true})
		if i == 10 {
			// The old owner claims what is ready so far: pending when it dies.
			ts, err := old.Claim(ctx, 100)
			require.NoError(t, err)
			require.NotEmpty(t, ts)
		}
		time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
	}
	// The AddedAt of the ready ones (and those scheduled in the past), as
	// recorded in their entries.
	added := map[string]int64{}
	for _, task := range readyTasks(t, s, k) {
		added[string(task.Payload)] = task.AddedAt.UnixMilli()
	}
	for _, v := range pendingOf(t, s, k) {
		rec := []byte(v)
		_, e, _, err := splitPending(rec)
		require.NoError(t, err)
		task, _, err := decodeEntry(e)
		require.NoError(t, err)
		added[string(task.Payload)] = task.AddedAt.UnixMilli()
	}
	for o, js := range want {
		for i := range js {
			if js[i].at < 0 {
				a, ok := added[js[i].payload]
				require.True(t, ok, "%s is ready or pending", js[i].payload)
				js[i].at, js[i].ready = a, true
			}
		}
		sort.SliceStable(js, func(i, j int) bool {
			if js[i].at != js[j].at {
				return js[i].at < js[j].at
			}
			if js[i].ready != js[j].ready {
				return js[i].ready // added in the millisecond it fell due: first
			}
			return js[i].seq < js[j].seq
		})
		want[o] = js
	}
	t.Logf("added over %v", time.Since(start))
	sleepPast(lastDue, 20*time.Millisecond)

	rec := newRecorder()
	// Each task once holds only while the standby keeps the lease it
	// takes: a pool that loses it (a renewal late on a busy machine)
	// stops, and what it ran but had not yet acknowledged runs again
	// under its next tenure. A 500ms lease was lost so within a second
	// of the takeover; the fault suite's 2s rides out such pauses. The
	// takeover does not wait on it: lapse ends the old lease.
	errs := &errLog{}
	errc := runPool(ctx, q, PoolConfig{Workers: 3, LeaseTTL: 2 * time.Second, Owner: "standby", OnError: errs.add}, rec.fn(nil))
	require.Eventually(t, func() bool {
		v, _ := redis.String(try(s, "GET", k.lease))
		return v != "" // the standby waits for the old lease
	}, time.Second, time.Millisecond)
	lapse(t, s, k.lease) // the old owner dies
	_, err = old.Claim(ctx, 10)
	assert.ErrorIs(t, err, ErrLeaseLost, "the old owner is stale")
	require.Eventually(t, func() bool {
		st := stats0(t, q)
		return st.Ready == 0 && st.Pending == 0 && st.Scheduled == 0
	}, 15*time.Second, 5*time.Millisecond)
	assert.Equal(t, "standby", stats0(t, q).Owner)
	cancel()
	require.NoError(t, <-errc)
	require.Zero(t, errs.count(ErrLeaseLost), "the standby kept its lease: %v", errs.all())
	for o, js := range want {
		var exp []string
		for _, j := range js {
			exp = append(exp, j.payload)
		}
		assert.Equal(t, exp, rec.order(o), "OrderID %d", o)
	}
}
