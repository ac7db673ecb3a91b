package queue

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// seenLog collects the payloads an AnalyseFunc saw, in order.
type seenLog struct {
	mu   sync.Mutex
	seen []string
	ch   chan string
}

func newSeenLog() *seenLog { return &seenLog{ch: make(chan string, 1000)} }

func (r *seenLog) add(p string) {
	r.mu.Lock()
	r.seen = append(r.seen, p)
	r.mu.Unlock()
	r.ch <- p
}

func (r *seenLog) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.seen...)
}

func (r *seenLog) wait(t *testing.T, want string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case p := <-r.ch:
			if p == want {
				return
			}
		case <-timeout:
			t.Fatalf("%q did not run; saw %v", want, r.list())
		}
	}
}

func TestScheduledTaskJoinsItsOrderWhenDue(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	_, err := q.AddTask(ctx, 1, []byte("before"))
	require.NoError(t, err)
	due := time.Now().Add(300 * time.Millisecond)
	sid, err := q.AddTaskAt(ctx, 1, due, []byte("scheduled"))
	require.NoError(t, err)
	st, err := q.Status(ctx, 1, sid)
	require.NoError(t, err)
	assert.Equal(t, StateScheduled, st.State)
	assert.Equal(t, dueMS(due), st.Due.UnixMilli())
	assert.Equal(t, int64(1), stats0(t, q).Scheduled)
	sched, err := q.Scheduled(ctx, 0, 0, 10)
	require.NoError(t, err)
	require.Len(t, sched, 1)
	assert.Equal(t, sid, sched[0].ID)

	rec := newSeenLog()
	var started time.Time
	var mu sync.Mutex
	errc := runPool(ctx, q, PoolConfig{Workers: 2}, func(_ context.Context, t Task) error {
		if string(t.Payload) == "scheduled" {
			mu.Lock()
			started = time.Now()
			mu.Unlock()
		}
		rec.add(string(t.Payload))
		return nil
	})
	rec.wait(t, "before")
	_, err = q.AddTask(ctx, 1, []byte("after-added-early")) // before the due time: runs before it
	require.NoError(t, err)
	rec.wait(t, "after-added-early")
	rec.wait(t, "scheduled")
	_, err = q.AddTask(ctx, 1, []byte("after"))
	require.NoError(t, err)
	rec.wait(t, "after")
	assert.Equal(t, []string{"before", "after-added-early", "scheduled", "after"}, rec.list())
	mu.Lock()
	late := started.Sub(due)
	mu.Unlock()
	assert.GreaterOrEqual(t, late, time.Duration(0), "never before its due time")
	t.Logf("started %v after its due time (idle pool)", late)
	assert.Zero(t, stats0(t, q).Scheduled)
	cancel()
	require.NoError(t, <-errc)
}

func TestCancelScheduledReadyAndRunning(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()

	// Scheduled: removed at once.
	sid, err := q.AddTaskAfter(ctx, 1, time.Hour, []byte("never"))
	require.NoError(t, err)
	where, err := q.Cancel(ctx, 1, sid)
	require.NoError(t, err)
	assert.Equal(t, StateScheduled, where)
	assert.Zero(t, stats0(t, q).Scheduled)

	// The head task of OrderID 1, ready, while later ones wait: marked,
	// then finished as cancelled when claimed, and 1 goes on.
	head, err := q.AddTask(ctx, 1, []byte("head"))
	require.NoError(t, err)
	_, err = q.AddTask(ctx, 1, []byte("second"))
	require.NoError(t, err)
	where, err = q.Cancel(ctx, 1, head)
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, where)
	st, err := q.Status(ctx, 1, head)
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, st.State, "queued, which only a scan would tell")
	assert.True(t, st.CancelAsked)

	// A running task: its ctx ends, and it is not retried.
	runningID, err := q.AddTask(ctx, 2, []byte("long"))
	require.NoError(t, err)
	_, err = q.AddTask(ctx, 2, []byte("after-long"))
	require.NoError(t, err)

	rec := newSeenLog()
	started := make(chan struct{})
	var longRuns int
	var mu sync.Mutex
	errc := runPool(ctx, q, PoolConfig{Workers: 4, TaskTimeout: -1}, func(tctx context.Context, t Task) error {
		if string(t.Payload) == "long" {
			mu.Lock()
			longRuns++
			mu.Unlock()
			close(started)
			<-tctx.Done()
			rec.add("long-ended")
			return tctx.Err()
		}
		rec.add(string(t.Payload))
		return nil
	})
	rec.wait(t, "second")
	<-started
	cancelAt := time.Now()
	where, err = q.Cancel(ctx, 2, runningID)
	require.NoError(t, err)
	assert.Equal(t, StatePending, where)
	rec.wait(t, "long-ended")
	assert.Less(t, time.Since(cancelAt), 3*time.Second, "a running task's ctx ends within about a second")
	rec.wait(t, "after-long")
	assert.NotContains(t, rec.list(), "head")
	mu.Lock()
	assert.Equal(t, 1, longRuns, "a cancelled task is not retried")
	mu.Unlock()
	require.Eventually(t, func() bool {
		s := stats0(t, q)
		return s.Pending == 0 && s.Cancelled == 3
	}, 5*time.Second, 10*time.Millisecond)
	cancel()
	require.NoError(t, <-errc)
	// Every mark is gone once nothing is ready or pending.
	noMarks(t, s, k)
}

func TestPauseDuringDrainAndResume(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	for i := range 50 {
		_, err := q.AddTask(ctx, uint64(i%5), []byte(pl(i%5, i/5)))
		require.NoError(t, err)
	}
	var mu sync.Mutex
	count := 0
	gate := make(chan struct{})
	errc := runPool(ctx, q, PoolConfig{Workers: 2, Prefetch: 2, MaxHeldTasks: 2, LeaseTTL: 600 * time.Millisecond}, func(_ context.Context, t Task) error {
		mu.Lock()
		count++
		n := count
		mu.Unlock()
		if n == 10 {
			<-gate
		}
		return nil
	})
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return count >= 10 }, 5*time.Second, time.Millisecond)
	require.NoError(t, q.Pause(ctx, AllQueues()))
	close(gate)
	assert.True(t, stats0(t, q).Paused)
	// What was claimed before the pause finishes: nothing pending, so
	// nothing running (a task is pending while it runs).
	require.Eventually(t, func() bool { return stats0(t, q).Pending == 0 }, 5*time.Second, time.Millisecond)
	mu.Lock()
	at := count
	mu.Unlock()
	time.Sleep(1500 * time.Millisecond) // over two lease TTLs: the lease is kept
	mu.Lock()
	assert.Equal(t, at, count, "a paused pool claims nothing new")
	mu.Unlock()
	s := stats0(t, q)
	assert.NotEmpty(t, s.Owner, "a paused pool keeps its lease")
	assert.Zero(t, s.Pending)
	require.NoError(t, q.Resume(ctx, QueueOf(0)))
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return count == 50 }, 5*time.Second, time.Millisecond)
	assert.False(t, stats0(t, q).Paused)
	cancel()
	require.NoError(t, <-errc)
}

func TestStatusThroughALife(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 1, Config{Retention: time.Minute})
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	id, err := q.AddTask(ctx, 7, []byte("x"))
	require.NoError(t, err)
	fails := 0
	var mu sync.Mutex
	seen := make(chan TaskStatus, 10)
	errc := runPool(ctx, q, PoolConfig{Workers: 1, Backoff: func(int) time.Duration { return 300 * time.Millisecond }}, func(_ context.Context, t Task) error {
		st, err := q.Status(ctx, 7, t.ID)
		if err == nil {
			seen <- st
		}
		mu.Lock()
		defer mu.Unlock()
		if fails == 0 {
			fails++
			return errors.New("first try fails")
		}
		return nil
	})
	st := <-seen
	assert.Equal(t, StatePending, st.State)
	assert.Equal(t, uint64(7), st.OrderID)
	assert.Equal(t, 1, st.Attempt)
	assert.NotEmpty(t, st.Owner)
	require.Eventually(t, func() bool {
		st, err := q.Status(ctx, 7, id)
		return err == nil && st.State == StateRetrying && st.LastError == "first try fails"
	}, 5*time.Second, 5*time.Millisecond)
	st = <-seen
	assert.Equal(t, 2, st.Attempt)
	require.Eventually(t, func() bool {
		st, err := q.Status(ctx, 7, id)
		return err == nil && st.State == StateDone
	}, 5*time.Second, 5*time.Millisecond)
	st, err = q.Status(ctx, 7, id)
	require.NoError(t, err)
	assert.Equal(t, 2, st.Attempt)
	// A reader without the retention in its Config (a tool, say) finds
	// it all the same: the owner recorded it.
	reader, err := New([]*redis.Pool{q.parts[0].pool}, Config{Prefix: q.cfg.Prefix})
	require.NoError(t, err)
	other, err := reader.Status(ctx, 7, id)
	require.NoError(t, err)
	assert.Equal(t, st, other)
	assert.False(t, st.AddedAt.IsZero())
	assert.False(t, st.StartedAt.Before(st.AddedAt))
	assert.False(t, st.FinishedAt.Before(st.StartedAt))
	cancel()
	require.NoError(t, <-errc)
}

func TestAddTasksSchedulesThoseWithNotBefore(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 2, Config{Queues: 2})
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	due := time.Now().Add(400 * time.Millisecond)
	var tasks []Task
	for o := range 8 {
		tasks = append(tasks,
			Task{OrderID: uint64(o), Payload: []byte(pl(o, 0))},
			Task{OrderID: uint64(o), Payload: []byte(pl(o, 2)), NotBefore: due},
			Task{OrderID: uint64(o), Payload: []byte(pl(o, 1)), NotBefore: time.Now().Add(-time.Second)}, // past: at once
		)
	}
	ids, err := q.AddTasks(ctx, tasks)
	require.NoError(t, err)
	require.Len(t, ids, len(tasks))
	st, err := q.Stats(ctx)
	require.NoError(t, err)
	var scheduled int64
	for _, s := range st {
		scheduled += s.Scheduled
	}
	assert.Equal(t, int64(8), scheduled)
	sid := ids[1]
	s, err := q.Status(ctx, 0, sid)
	require.NoError(t, err)
	assert.Equal(t, StateScheduled, s.State)
	assert.Equal(t, dueMS(due), s.Due.UnixMilli())

	var mu sync.Mutex
	seen := map[uint64][]string{}
	var wg sync.WaitGroup
	for a := range q.Analysers() {
		wg.Go(func() {
			err := q.AnalysePool(ctx, a, PoolConfig{Workers: 2}, func(_ context.Context, t Task) error {
				mu.Lock()
				seen[t.OrderID] = append(seen[t.OrderID], string(t.Payload))
				mu.Unlock()
				return nil
			})
			assert.NoError(t, err)
		})
	}
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, s := range seen {
			n += len(s)
		}
		return n == len(tasks)
	}, 10*time.Second, 5*time.Millisecond)
	cancel()
	wg.Wait()
	for o := range 8 {
		assert.Equal(t, []string{pl(o, 0), pl(o, 1), pl(o, 2)}, seen[uint64(o)], "order %d", o)
	}
}

func TestConsumerAckKeepsStatusWithRetention(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 1, Config{Retention: time.Minute})
	ctx := bounded(t)
	id, err := q.AddTask(ctx, 3, []byte("c"))
	require.NoError(t, err)
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	task, err := c.RemoveTask(ctx)
	require.NoError(t, err)
	require.Equal(t, id, task.ID)
	n, err := c.Ack(ctx, id)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	st, err := q.Status(ctx, 3, id)
	require.NoError(t, err)
	assert.Equal(t, StateDone, st.State)
	assert.Equal(t, 1, st.Attempt)
	assert.Equal(t, task.AddedAt.UnixMilli(), st.AddedAt.UnixMilli())
	assert.False(t, st.StartedAt.Before(st.AddedAt))
	require.NoError(t, c.Release(ctx))
}

func TestScheduledTaskKeepsItsHeaders(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	h := map[string]string{"trace": "abc"}
	_, err := q.AddTask(ctx, 1, []byte("s"), WithHeaders(h), At(time.Now().Add(100*time.Millisecond)))
	require.NoError(t, err)
	assert.Equal(t, int64(1), stats0(t, q).Scheduled)
	_, _, err = q.AddTaskOnce(ctx, 1, "k", time.Minute, []byte("o"), At(time.Now().Add(time.Hour)))
	assert.ErrorIs(t, err, ErrBadConfig)
	got := make(chan Task, 1)
	errc := runPool(ctx, q, PoolConfig{Workers: 1}, func(_ context.Context, t Task) error { got <- t; return nil })
	task := <-got
	assert.Equal(t, h, task.Headers)
	cancel()
	require.NoError(t, <-errc)
}
