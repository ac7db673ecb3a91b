package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Status through a task's life, and the history that Config.Retention
// keeps.

func TestStatusThroughWholeLivesWithRetention(t *testing.T) {
	t.Parallel()
	q, srv := newTestQueue(t, 1, Config{Retention: time.Minute})
	s, k := srv[0], newQueueKeys(q.cfg.Prefix, 0, 0)
	bg := bounded(t)
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	ids := addAll(t, q, []Task{
		{OrderID: 1, Payload: []byte("retried")},
		{OrderID: 2, Payload: []byte("dies")},
		{OrderID: 4, Payload: []byte("cancelled")},
	})
	retried, dies, cancelled := ids[0], ids[1], ids[2]
	due := time.Now().Add(400 * time.Millisecond)
	later, err := q.AddTaskAt(bg, 3, due, []byte("later"))
	require.NoError(t, err)

	st, err := q.Status(bg, 1, retried)
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, st.State, "ready: in no record but the list")
	st, err = q.Status(bg, 3, later)
	require.NoError(t, err)
	assert.Equal(t, StateScheduled, st.State)
	assert.Equal(t, dueMS(due), st.Due.UnixMilli())
	assert.False(t, st.AddedAt.IsZero())
	_, err = q.Cancel(bg, 4, cancelled)
	require.NoError(t, err)
	st, err = q.Status(bg, 4, cancelled)
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, st.State, "queued: it will be cancelled when met")
	assert.True(t, st.CancelAsked)

	const backoff = 400 * time.Millisecond
	var mu sync.Mutex
	inside := map[string][]TaskStatus{} // Status as each delivery saw it
	starts := map[string][]time.Time{}  // when each delivery's function was called
	ends := map[string][]time.Time{}    // and when it returned
	var fnErr []error
	errc := runPool(ctx, q, PoolConfig{Workers: 2, MaxAttempts: 2, Owner: "pool-a", OnError: func(error) {},
		Backoff: func(int) time.Duration { return backoff }},
		func(_ context.Context, task Task) error {
			called := time.Now()
			p := string(task.Payload)
			st, err := q.Status(bg, task.OrderID, task.ID)
			mu.Lock()
			defer mu.Unlock()
			starts[p] = append(starts[p], called)
			defer func() { ends[p] = append(ends[p], time.Now()) }()
			if err != nil {
				fnErr = append(fnErr, err)
				return nil
			}
			inside[p] = append(inside[p], st)
			switch {
			case p == "dies":
				return errors.New("always")
			case p == "retried" && task.Attempt == 1:
				return errors.New("first try fails")
			}
			return nil
		})
	require.Eventually(t, func() bool {
		st, err := q.Status(bg, 1, retried)
		return err == nil && st.State == StateRetrying
	}, 5*time.Second, time.Millisecond)
	st, err = q.Status(bg, 1, retried)
	seen := time.Now()
	require.NoError(t, err)
	assert.Equal(t, "first try fails", st.LastError)
	assert.Equal(t, "pool-a", st.Owner)
	assert.Equal(t, 2, st.Attempt, "the next delivery's number")
	// Due its backoff after the failure, which came after the function
	// returned and before the status was read (bounds of cause, not of
	// speed: a loaded machine may read it long after; Due is in ms).
	mu.Lock()
	returned := ends["retried"][0]
	mu.Unlock()
	assert.False(t, st.Due.Before(returned.Add(backoff).Truncate(time.Millisecond)), "due %v, its backoff after %v", st.Due, returned)
	assert.False(t, st.Due.After(seen.Add(backoff)), "due %v, over its backoff after %v", st.Due, seen)

	require.Eventually(t, func() bool {
		s := stats0(t, q)
		return s.Processed == 2 && s.Failed == 1 && s.Cancelled == 1 && s.Pending == 0
	}, 10*time.Second, 5*time.Millisecond)
	cancel()
	require.NoError(t, receive(t, errc))
	mu.Lock()
	defer mu.Unlock()
	require.Empty(t, fnErr)

	// Pending, as each delivery saw itself: attempt, owner, added.
	for p, want := range map[string][]int{"retried": {1, 2}, "dies": {1, 2}, "later": {1}} {
		require.Len(t, inside[p], len(want), p)
		for i, st := range inside[p] {
			assert.Equal(t, StatePending, st.State, p)
			assert.Equal(t, want[i], st.Attempt, p)
			assert.Equal(t, "pool-a", st.Owner, p)
			assert.False(t, st.AddedAt.IsZero(), p)
		}
	}
	assert.Equal(t, "first try fails", inside["retried"][1].LastError, "the second delivery sees the first one's error")

	st, err = q.Status(bg, 1, retried)
	require.NoError(t, err)
	assert.Equal(t, StateDone, st.State)
	assert.Equal(t, 2, st.Attempt)
	assert.False(t, st.StartedAt.Before(st.AddedAt))
	assert.False(t, st.FinishedAt.Before(st.StartedAt))
	// The last delivery's start: after the first returned, before its
	// function was called (to the millisecond it is stored in, and the
	// few the pool's clock, read from the monotonic one, may be ahead of
	// the wall clock by), however long the machine took in between.
	assert.False(t, st.StartedAt.Before(ends["retried"][0].Truncate(time.Millisecond)), "the last delivery's start %v, before the first returned at %v", st.StartedAt, ends["retried"][0])
	assert.False(t, st.StartedAt.After(starts["retried"][1].Add(5*time.Millisecond)), "the last delivery's start %v, after its function was called at %v", st.StartedAt, starts["retried"][1])

	st, err = q.Status(bg, 2, dies)
	require.NoError(t, err)
	assert.Equal(t, StateDead, st.State)
	assert.Equal(t, 2, st.Attempt)
	assert.Equal(t, "always", st.LastError)
	assert.False(t, st.FinishedAt.IsZero())

	st, err = q.Status(bg, 3, later)
	require.NoError(t, err)
	assert.Equal(t, StateDone, st.State)
	assert.False(t, st.StartedAt.Before(due.Truncate(time.Millisecond)), "not before its due time")

	st, err = q.Status(bg, 4, cancelled)
	require.NoError(t, err)
	assert.Equal(t, StateCancelled, st.State)
	assert.False(t, st.CancelAsked, "finished")
	assert.True(t, st.StartedAt.IsZero(), "it never ran")
	assert.False(t, st.FinishedAt.IsZero())
	assert.Empty(t, starts["cancelled"])

	// Nothing per task is left but the history.
	for _, key := range []string{k.retries, k.cancels, k.pending, k.claims, k.sched, k.later} {
		n, err := redis.Int(s.do(t, "EXISTS", key), nil)
		require.NoError(t, err)
		assert.Zero(t, n, "%s is gone", key)
	}
}

// queueHistoryKeys returns the history hashes of the queue of k.
func queueHistoryKeys(t *testing.T, s *testServer, k queueKeys) []string {
	t.Helper()
	keys, err := redis.Strings(s.do(t, "KEYS", strings.ReplaceAll(k.history, "{", "\\{")+"*"), nil)
	require.NoError(t, err)
	return keys
}

func TestStatusWithoutRetentionForgetsFinishedTasks(t *testing.T) {
	skipOnCluster(t, "it lists the history hashes with KEYS, which reads one server")
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	ids := addAll(t, q, orderTasks(2, 2))
	_, err := q.Cancel(ctx, 1, ids[1])
	require.NoError(t, err)
	require.NoError(t, q.AnalysePool(ctx, 0, PoolConfig{ExitOnEmpty: true}, func(context.Context, Task) error { return nil }))
	for i, id := range ids {
		st, err := q.Status(ctx, uint64(i%2), id)
		require.NoError(t, err)
		assert.Equal(t, StateUnknown, st.State, "task %d", i)
		assert.True(t, st.FinishedAt.IsZero())
	}
	assert.Empty(t, queueHistoryKeys(t, s, k), "no history is written")
	st := stats0(t, q)
	assert.Equal(t, int64(3), st.Processed)
	assert.Equal(t, int64(1), st.Cancelled)
}

func TestStatusHistoryExpiresAfterRetention(t *testing.T) {
	skipOnCluster(t, "it lists the history hashes with KEYS, which reads one server")
	t.Parallel()
	const retention = time.Second
	q, srv := newTestQueue(t, 1, Config{Retention: retention})
	s, k := srv[0], newQueueKeys(q.cfg.Prefix, 0, 0)
	ctx := bounded(t)
	id, err := q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	require.NoError(t, q.AnalysePool(ctx, 0, PoolConfig{ExitOnEmpty: true}, func(context.Context, Task) error { return nil }))
	st, err := q.Status(ctx, 1, id)
	require.NoError(t, err)
	assert.Equal(t, StateDone, st.State)
	keys := queueHistoryKeys(t, s, k)
	require.Len(t, keys, 1)
	ms, err := redis.Int64(s.do(t, "PTTL", keys[0]), nil)
	require.NoError(t, err)
	w := historyWidth(retention)
	assert.Positive(t, ms, "the history expires")
	assert.LessOrEqual(t, time.Duration(ms)*time.Millisecond, retention+w, "kept for Retention after its bucket ends")

	if s.mini != nil {
		s.mini.FastForward(retention + w + time.Millisecond)
	}
	require.Eventually(t, func() bool {
		st, err := q.Status(ctx, 1, id)
		return err == nil && st.State == StateUnknown
	}, 2*(retention+w)+time.Second, 20*time.Millisecond)
	assert.Empty(t, queueHistoryKeys(t, s, k))
}

// Many workers acknowledge at once: every task's status record is its own.
func TestStatusHistoryRecordsMatchTheirTasks(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 1, Config{Retention: time.Minute})
	ctx := bounded(t)
	const orders, per = 64, 6
	ids := addAll(t, q, orderTasks(orders, per))
	failOnce := func(i int) bool { return i%3 == 0 }
	index := map[string]int{}
	for i, id := range ids {
		index[id] = i
	}
	require.NoError(t, q.AnalysePool(ctx, 0, PoolConfig{Workers: 16, ExitOnEmpty: true, OnError: func(error) {},
		Backoff: func(int) time.Duration { return time.Millisecond }},
		func(_ context.Context, task Task) error {
			if failOnce(index[task.ID]) && task.Attempt == 1 {
				return fmt.Errorf("once")
			}
			return nil
		}))
	wrong := 0
	for i, id := range ids {
		st, err := q.Status(ctx, uint64(i%orders), id)
		require.NoError(t, err)
		want := 1
		if failOnce(i) {
			want = 2
		}
		if st.State != StateDone || st.Attempt != want {
			wrong++
			if wrong <= 5 {
				t.Errorf("task %d: %v after %d attempts, want done after %d", i, st.State, st.Attempt, want)
			}
		}
	}
	assert.Zero(t, wrong, "status records that are not their task's")
}

// The acker keeps each acknowledged task's status record beside its
// pending field, however many workers hand it tasks at once.
func TestAckerKeepsRecordsInStepWithFields(t *testing.T) {
	t.Parallel()
	a := newAcker(&session{st: &store{retention: time.Minute}})
	const workers, each = 8, 2000
	base := time.UnixMilli(1_700_000_000_000)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				n := w*each + i
				c := claimed{Task: Task{ID: fmt.Sprintf("%020d", n), AddedAt: base, Attempt: n}}
				c.field = c.ID
				a.ack(c, base)
			}
		}()
	}
	wg.Wait()
	refs, recs, _ := a.take()
	require.Len(t, refs, workers*each)
	require.Len(t, recs, len(refs))
	wrong := 0
	for i, f := range refs {
		if fmt.Sprintf("%020d", recs[i].attempts) != f.id {
			wrong++
		}
	}
	assert.Zero(t, wrong, "records beside another task's field")
}

func TestStatusOfTasksAcknowledgedThroughTheConsumerAPI(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 1, Config{Retention: time.Minute})
	ctx := bounded(t)
	ids := addAll(t, q, orderTasks(1, 2))
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer c.Release(ctx)
	task, err := c.RemoveTask(ctx)
	require.NoError(t, err)
	dead, err := c.Fail(ctx, task, errors.New("once"))
	require.NoError(t, err)
	require.False(t, dead)
	st, err := q.Status(ctx, 0, task.ID)
	require.NoError(t, err)
	assert.Equal(t, StatePending, st.State)
	assert.Equal(t, "once", st.LastError)
	_, err = c.Ack(ctx, task.ID)
	require.NoError(t, err)
	st, err = q.Status(ctx, 0, ids[0])
	require.NoError(t, err)
	assert.Equal(t, StateDone, st.State, "Retention keeps every finished task's status")
	assert.Equal(t, 2, st.Attempt, "retried in place after Fail")
	assert.False(t, st.AddedAt.IsZero())
	assert.False(t, st.FinishedAt.Before(st.StartedAt))

	// An ID this Consumer did not hand out is skipped, and gets no status.
	n, err := c.Ack(ctx, unusedID(), ids[1])
	require.NoError(t, err)
	assert.Zero(t, n)
	for _, id := range []string{unusedID(), ids[1]} {
		st, err = q.Status(ctx, 0, id)
		require.NoError(t, err)
		assert.Equal(t, StateUnknown, st.State, "%s was not acknowledged", id)
	}
}

// A cancel mark alone does not make a task cancelled: Cancel of a task
// that finished before it (no Retention), or of an ID that never was,
// leaves a mark until a claim finds the queue empty, and Status says
// unknown with the cancel asked, not cancelled.
func TestStatusOfAMarkAloneIsUnknown(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx := bounded(t)
	done, err := q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	_, err = q.AddTask(ctx, 2, []byte("keeps the queue from being empty"))
	require.NoError(t, err)
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	tasks, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Len(t, tasks, 1)
	require.Equal(t, done, tasks[0].ID)
	_, err = c.Ack(ctx, done)
	require.NoError(t, err)
	require.NoError(t, c.Release(ctx))

	for _, id := range []string{done, unusedID()} {
		where, err := q.Cancel(ctx, 1, id)
		require.NoError(t, err)
		assert.Equal(t, StateUnknown, where)
		st, err := q.Status(ctx, 1, id)
		require.NoError(t, err)
		assert.Equal(t, StateUnknown, st.State, id)
		assert.True(t, st.CancelAsked, id)
	}
	assert.Zero(t, stats0(t, q).Cancelled)
}

// A scheduled task cancelled by a producer with Config.Retention reads as
// cancelled to a reader without it (qugo), which goes by the retention
// recorded in the queue, before any pool has acknowledged a task there.
// (It read as unknown: the cancel's record did not say its retention.)
func TestCancelledScheduledTaskReadWithoutRetention(t *testing.T) {
	t.Parallel()
	q, srv := newTestQueue(t, 1, Config{Retention: time.Hour})
	ctx := context.Background()
	id, err := q.AddTaskAfter(ctx, 1, time.Hour, []byte("x"))
	require.NoError(t, err)
	where, err := q.Cancel(ctx, 1, id)
	require.NoError(t, err)
	require.Equal(t, StateScheduled, where)
	reader, err := New([]*redis.Pool{srv[0].pool}, Config{Prefix: q.cfg.Prefix})
	require.NoError(t, err)
	st, err := reader.Status(ctx, 1, id)
	require.NoError(t, err)
	assert.Equal(t, StateCancelled, st.State)
}

// A producer's cancel of a scheduled task, with a Retention other than the
// owner's, writes its record where readers look, and leaves the owner's
// retention recorded: the owner's records stay found. (It wrote its own
// retention over the owner's, and readers going by it lost the owner's
// records.)
func TestProducersCancelKeepsTheOwnersRetention(t *testing.T) {
	t.Parallel()
	pool, servers := newTestQueue(t, 1, Config{Retention: 24 * time.Hour})
	mk := func(r time.Duration) *Queue {
		q, err := New([]*redis.Pool{servers[0].pool}, Config{Prefix: pool.cfg.Prefix, Retention: r})
		require.NoError(t, err)
		t.Cleanup(func() { q.Close() })
		return q
	}
	reader, producer := mk(0), mk(time.Hour)
	ctx := context.Background()
	id, err := pool.AddTask(ctx, 0, []byte("x"))
	require.NoError(t, err)
	claimAckOne(t, pool, 0)
	st, err := reader.Status(ctx, 0, id)
	require.NoError(t, err)
	require.Equal(t, StateDone, st.State)
	sched, err := producer.AddTaskAt(ctx, 0, time.Now().Add(time.Hour), []byte("later"))
	require.NoError(t, err)
	where, err := producer.Cancel(ctx, 0, sched)
	require.NoError(t, err)
	require.Equal(t, StateScheduled, where)
	st, err = reader.Status(ctx, 0, id)
	require.NoError(t, err)
	assert.Equal(t, StateDone, st.State, "the owner's record")
	st, err = reader.Status(ctx, 0, sched)
	require.NoError(t, err)
	assert.Equal(t, StateCancelled, st.State, "the producer's record")
}
