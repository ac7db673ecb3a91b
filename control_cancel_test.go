package queue

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Cancel against the per-OrderID order: a cancelled task never holds its
// OrderID back, and never runs unless it had started.

// noMarks asserts that the queue of k keeps no cancel mark.
func noMarks(t *testing.T, s *testServer, k queueKeys) {
	t.Helper()
	n, err := redis.Int(s.do(t, "EXISTS", k.cancels), nil)
	require.NoError(t, err)
	assert.Zero(t, n, "the cancels hash is gone")
}

// noMarksNorClaims checks that a drained queue keeps neither cancel
// marks nor claim-sequence records.
func noMarksNorClaims(t *testing.T, s *testServer, k queueKeys) {
	t.Helper()
	noMarks(t, s, k)
	n, err := redis.Int(s.do(t, "HLEN", k.claims), nil)
	require.NoError(t, err)
	assert.Zero(t, n, "no claim-sequence record is left")
}

// unusedID returns a task ID no producer handed out.
func unusedID() string { return formatID(0x5eed, 42) }

func TestCancelHeadTaskWhileLaterOnesWait(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	ids := addAll(t, q, []Task{
		{OrderID: 1, Payload: []byte("head")},
		{OrderID: 2, Payload: []byte("other")},
		{OrderID: 1, Payload: []byte("a")},
		{OrderID: 1, Payload: []byte("b")},
	})
	where, err := q.Cancel(ctx, 1, ids[0])
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, where, "ready: marked")
	rec := newRecorder()
	require.NoError(t, q.AnalysePool(ctx, 0, PoolConfig{Workers: 2, ExitOnEmpty: true}, rec.fn(nil)))
	assert.Equal(t, []string{"a", "b"}, rec.order(1), "the head never runs; the others run, in order")
	assert.Equal(t, []string{"other"}, rec.order(2))
	st := stats0(t, q)
	assert.Equal(t, int64(1), st.Cancelled)
	assert.Equal(t, int64(3), st.Processed)
	assert.Zero(t, st.Pending)
	noMarksNorClaims(t, s, k)
}

// A task claimed with others, held behind a slow earlier task of its
// OrderID, and cancelled while it waits, never starts once its owner has
// read the marks (every cancelPoll).
func TestCancelHeldTaskNeverStarts(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	ids := addAll(t, q, []Task{
		{OrderID: 1, Payload: []byte("slow")},
		{OrderID: 1, Payload: []byte("held")},
		{OrderID: 1, Payload: []byte("after")},
	})
	gate := make(chan struct{})
	started := make(chan struct{})
	rec := newRecorder()
	errc := runPool(ctx, q, PoolConfig{Workers: 2, Prefetch: 8}, rec.fn(func(_ context.Context, t Task) error {
		if string(t.Payload) == "slow" {
			close(started)
			<-gate
		}
		return nil
	}))
	<-started
	require.Eventually(t, func() bool { return stats0(t, q).Pending == 3 }, 5*time.Second, time.Millisecond, "all three claimed")
	where, err := q.Cancel(ctx, 1, ids[1])
	require.NoError(t, err)
	assert.Equal(t, StatePending, where)
	st, err := q.Status(ctx, 1, ids[1])
	require.NoError(t, err)
	assert.Equal(t, StatePending, st.State)
	assert.True(t, st.CancelAsked)
	// The owner has the mark in hand once it says it saw it. Cancel waits
	// cancelWait for that and returns the same whether or not it came, so
	// the mark is asked, not the clock: on a busy machine the owner's read
	// may come later.
	require.Eventually(t, func() bool {
		st, err := q.Status(ctx, 1, ids[1])
		return err == nil && st.CancelSeen
	}, 10*time.Second, 5*time.Millisecond, "the owner never said it saw the cancel")
	close(gate)
	require.Eventually(t, func() bool { return len(rec.order(1)) == 2 && stats0(t, q).Pending == 0 }, 5*time.Second, time.Millisecond)
	cancel()
	require.NoError(t, <-errc)
	assert.Equal(t, []string{"slow", "after"}, rec.order(1))
	assert.Empty(t, rec.attemptsOf(ids[1]), "the held task never started")
	assert.Equal(t, int64(1), stats0(t, q).Cancelled)
	noMarks(t, s, k)
}

func TestCancelRunningTask(t *testing.T) {
	t.Parallel()
	q, srv := newTestQueue(t, 1, Config{Retention: time.Minute})
	s, k := srv[0], newQueueKeys(q.cfg.Prefix, 0, 0)
	bg := bounded(t)
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	ids := addAll(t, q, []Task{
		{OrderID: 1, Payload: []byte("obeys")},   // returns its ctx's error
		{OrderID: 1, Payload: []byte("next")},    // runs after it
		{OrderID: 2, Payload: []byte("ignores")}, // finishes its work all the same: done
	})
	var mu sync.Mutex
	ended := map[string]error{}
	causes := map[string]error{}
	runs := map[string]int{}
	var endedAt time.Time // when the ctx of "obeys" ended
	running := make(chan string, 3)
	release := make(chan struct{})
	rec := newSeenLog()
	errc := runPool(ctx, q, PoolConfig{Workers: 4, TaskTimeout: -1}, func(tctx context.Context, t Task) error {
		p := string(t.Payload)
		mu.Lock()
		runs[p]++
		mu.Unlock()
		switch p {
		case "obeys":
			running <- p
			<-tctx.Done()
			mu.Lock()
			endedAt = time.Now()
			ended[p], causes[p] = tctx.Err(), context.Cause(tctx)
			mu.Unlock()
			rec.add(p)
			return tctx.Err()
		case "ignores":
			running <- p
			<-tctx.Done()
			mu.Lock()
			causes[p] = context.Cause(tctx)
			mu.Unlock()
			<-release
			rec.add(p)
			return nil
		}
		rec.add(p)
		return nil
	})
	require.ElementsMatch(t, []string{"obeys", "ignores"}, []string{receive(t, running), receive(t, running)})
	at := time.Now()
	for i, id := range []string{ids[0], ids[2]} {
		where, err := q.Cancel(ctx, []uint64{1, 2}[i], id)
		require.NoError(t, err)
		assert.Equal(t, StatePending, where)
	}
	rec.wait(t, "obeys")
	mu.Lock()
	took := endedAt.Sub(at) // from its Cancel, whatever the second one took
	mu.Unlock()
	// "ignores" runs on, its ctx ended: its owner says it saw the mark.
	// Cancel waits cancelWait for that and returns the same whether or
	// not it came, so the mark is asked until it says so.
	require.Eventually(t, func() bool {
		st, err := q.Status(bg, 2, ids[2])
		return err == nil && st.CancelSeen
	}, 10*time.Second, 5*time.Millisecond, "its owner never said it saw the mark")
	seen, err := q.Status(bg, 2, ids[2])
	require.NoError(t, err)
	assert.Equal(t, StatePending, seen.State)
	assert.True(t, seen.CancelAsked)
	assert.Less(t, took, 2*time.Second, "a running task's ctx ends within about a second")
	t.Logf("ctx ended %v after Cancel", took)
	close(release)
	rec.wait(t, "next")
	require.Eventually(t, func() bool { return stats0(t, q).Pending == 0 }, 5*time.Second, time.Millisecond)
	cancel()
	require.NoError(t, <-errc)
	mu.Lock()
	assert.ErrorIs(t, ended["obeys"], context.Canceled)
	assert.Equal(t, map[string]error{"obeys": ErrCancelled, "ignores": ErrCancelled}, causes, "the cause says the task was cancelled")
	assert.Equal(t, map[string]int{"obeys": 1, "next": 1, "ignores": 1}, runs, "a cancelled task is not retried")
	mu.Unlock()

	st, err := q.Status(bg, 1, ids[0])
	require.NoError(t, err)
	assert.Equal(t, StateCancelled, st.State)
	assert.Equal(t, 1, st.Attempt)
	assert.False(t, st.StartedAt.IsZero(), "it ran")
	assert.False(t, st.FinishedAt.Before(st.StartedAt))
	assert.False(t, st.CancelAsked)
	st, err = q.Status(bg, 2, ids[2])
	require.NoError(t, err)
	assert.Equal(t, StateDone, st.State, "a cancelled task that returns nil is done")
	sts := stats0(t, q)
	assert.Equal(t, int64(1), sts.Cancelled)
	assert.Equal(t, int64(2), sts.Processed)
	// The mark of the task that finished done goes with the drain.
	require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{ExitOnEmpty: true}, func(context.Context, Task) error { return nil }))
	noMarks(t, s, k)
}

func TestCancelDuringRetryBackoff(t *testing.T) {
	t.Parallel()
	q, srv := newTestQueue(t, 1, Config{Retention: time.Minute})
	s, k := srv[0], newQueueKeys(q.cfg.Prefix, 0, 0)
	bg := bounded(t)
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	ids := addAll(t, q, []Task{
		{OrderID: 1, Payload: []byte("fails")},
		{OrderID: 1, Payload: []byte("next")},
	})
	rec := newRecorder()
	errc := runPool(ctx, q, PoolConfig{Workers: 2, Backoff: func(int) time.Duration { return time.Hour }},
		rec.fn(func(_ context.Context, t Task) error {
			if string(t.Payload) == "fails" {
				return errors.New("not now")
			}
			return nil
		}))
	require.Eventually(t, func() bool {
		st, err := q.Status(ctx, 1, ids[0])
		return err == nil && st.State == StateRetrying
	}, 5*time.Second, time.Millisecond)
	at := time.Now()
	where, err := q.Cancel(ctx, 1, ids[0])
	require.NoError(t, err)
	assert.Equal(t, StatePending, where)
	require.Eventually(t, func() bool { return len(rec.order(1)) == 2 }, 5*time.Second, time.Millisecond)
	assert.Less(t, time.Since(at), 2*time.Second, "finished as cancelled at once, not after its hour of backoff")
	assert.Equal(t, []string{"fails", "next"}, rec.order(1))
	assert.Equal(t, []int{1}, rec.attemptsOf(ids[0]), "not run again")
	require.Eventually(t, func() bool { return stats0(t, q).Pending == 0 }, 5*time.Second, time.Millisecond)
	cancel()
	require.NoError(t, <-errc)
	st, err := q.Status(bg, 1, ids[0])
	require.NoError(t, err)
	assert.Equal(t, StateCancelled, st.State)
	assert.Equal(t, 1, st.Attempt, "one delivery made")
	assert.False(t, st.StartedAt.IsZero(), "it ran once")
	assert.Equal(t, int64(1), stats0(t, q).Cancelled)
	n, err := redis.Int(s.do(t, "EXISTS", k.retries), nil)
	require.NoError(t, err)
	assert.Zero(t, n, "no retry record is left")
	noMarks(t, s, k)
}

func TestCancelDeadTaskLeavesIt(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	id, err := q.AddTask(ctx, 1, []byte("poison"))
	require.NoError(t, err)
	require.NoError(t, q.AnalysePool(ctx, 0, PoolConfig{MaxAttempts: 1, ExitOnEmpty: true, OnError: func(error) {}},
		func(context.Context, Task) error { return errors.New("bad") }))
	where, err := q.Cancel(ctx, 1, id)
	require.NoError(t, err)
	assert.Equal(t, StateDead, where)
	st := stats0(t, q)
	assert.Equal(t, int64(1), st.Dead, "left in the dead-letter store")
	assert.Zero(t, st.Cancelled)
	noMarks(t, s, k)
	status, err := q.Status(ctx, 1, id)
	require.NoError(t, err)
	assert.Equal(t, StateDead, status.State)
	assert.Equal(t, "bad", status.LastError)
	// Replayed, it runs: the refused cancel left nothing behind.
	n, err := q.Replay(ctx, 0, id)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	rec := newRecorder()
	require.NoError(t, q.AnalysePool(ctx, 0, PoolConfig{ExitOnEmpty: true}, rec.fn(nil)))
	assert.Equal(t, []string{"poison"}, rec.order(1))
}

func TestCancelUnknownIDIsDroppedWhenTheQueueDrains(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	id := unusedID()
	where, err := q.Cancel(ctx, 1, id)
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, where)
	n, err := redis.Int(s.do(t, "HEXISTS", k.cancels, id), nil)
	require.NoError(t, err)
	assert.Equal(t, 1, n, "marked: it may be ready")
	st, err := q.Status(ctx, 1, id)
	require.NoError(t, err)
	assert.True(t, st.CancelAsked)
	addAll(t, q, orderTasks(3, 3))
	rec := newRecorder()
	require.NoError(t, q.AnalysePool(ctx, 0, PoolConfig{Workers: 2, ExitOnEmpty: true}, rec.fn(nil)))
	assert.Equal(t, 9, rec.total(), "a stray mark cancels nothing")
	noMarks(t, s, k)
	assert.Zero(t, stats0(t, q).Cancelled)
	st, err = q.Status(ctx, 1, id)
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, st.State)
}

func TestCancelWithTheConsumerAPI(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer c.Release(ctx)
	ids := addAll(t, q, []Task{
		{OrderID: 1, Payload: []byte("a")},
		{OrderID: 1, Payload: []byte("b")},
		{OrderID: 2, Payload: []byte("c")},
		{OrderID: 1, Payload: []byte("d")},
	})
	for _, i := range []int{0, 3} {
		_, err := q.Cancel(ctx, 1, ids[i])
		require.NoError(t, err)
	}
	ts, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	assert.Equal(t, []string{ids[1], ids[2]}, taskIDs(ts), "Claim never returns a cancelled task")
	_, err = c.Ack(ctx, taskIDs(ts)...)
	require.NoError(t, err)
	_, err = c.RemoveTask(ctx)
	assert.ErrorIs(t, err, ErrNoTask)

	// Every task a claim takes is cancelled: RemoveTask claims again.
	ids = addAll(t, q, []Task{
		{OrderID: 1, Payload: []byte("e")},
		{OrderID: 1, Payload: []byte("f")},
	})
	_, err = q.Cancel(ctx, 1, ids[0])
	require.NoError(t, err)
	task, err := c.RemoveTask(ctx)
	require.NoError(t, err)
	assert.Equal(t, "f", string(task.Payload))
	_, err = c.Ack(ctx, task.ID)
	require.NoError(t, err)
	id, err := q.AddTask(ctx, 1, []byte("g"))
	require.NoError(t, err)
	_, err = q.Cancel(ctx, 1, id)
	require.NoError(t, err)
	_, err = c.RemoveTask(ctx)
	assert.ErrorIs(t, err, ErrNoTask, "only a cancelled task left: none")

	st := stats0(t, q)
	assert.Equal(t, int64(4), st.Cancelled)
	assert.Equal(t, int64(3), st.Processed)
	assert.Zero(t, st.Pending)
	assert.Zero(t, st.Ready)
	noMarksNorClaims(t, s, k)
}

func TestCancelRefusesBadInput(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	for _, id := range []string{"", "short", strings.Repeat("w", idLen), strings.ToUpper(unusedID()), unusedID() + "0"} {
		_, err := q.Cancel(ctx, 1, id)
		assert.ErrorIs(t, err, ErrBadConfig, "%q", id)
	}
	noMarks(t, s, k)
	require.NoError(t, q.Close())
	_, err := q.Cancel(ctx, 1, unusedID())
	assert.ErrorIs(t, err, ErrClosed)
}

func TestCancelScheduledTaskWithRetention(t *testing.T) {
	t.Parallel()
	q, srv := newTestQueue(t, 1, Config{Retention: time.Minute})
	s, k := srv[0], newQueueKeys(q.cfg.Prefix, 0, 0)
	ctx := bounded(t)
	id, err := q.AddTaskAfter(ctx, 1, time.Hour, []byte("later"))
	require.NoError(t, err)
	where, err := q.Cancel(ctx, 1, id)
	require.NoError(t, err)
	assert.Equal(t, StateScheduled, where)
	st, err := q.Status(ctx, 1, id)
	require.NoError(t, err)
	assert.Equal(t, StateCancelled, st.State)
	assert.False(t, st.AddedAt.IsZero())
	assert.True(t, st.StartedAt.IsZero(), "it never ran")
	assert.False(t, st.FinishedAt.Before(st.AddedAt))
	// A second cancel finds it finished, and marks nothing.
	where, err = q.Cancel(ctx, 1, id)
	require.NoError(t, err)
	assert.Equal(t, StateCancelled, where)
	noMarks(t, s, k)
	for _, key := range []string{k.sched, k.later} {
		n, err := redis.Int(s.do(t, "EXISTS", key), nil)
		require.NoError(t, err)
		assert.Zero(t, n, "%s is gone", key)
	}
	assert.Equal(t, int64(1), stats0(t, q).Cancelled)
}

// A Queue without Config.Retention (qugo, a producer) cancels on a queue
// whose owner keeps a history: Cancel reads and writes the history with
// the owner's retention, as Status reads it. It answered "marked" for a
// task done already, and cancelled a scheduled task without a record,
// so that Status said unknown for good.
func TestCancelUsesTheOwnersRetention(t *testing.T) {
	t.Parallel()
	owner, srv := newTestQueue(t, 1, Config{Retention: time.Minute})
	s, k := srv[0], newQueueKeys(owner.cfg.Prefix, 0, 0)
	tool, err := New([]*redis.Pool{s.pool}, Config{Prefix: owner.cfg.Prefix})
	require.NoError(t, err)
	t.Cleanup(func() { tool.Close() })
	ctx := bounded(t)

	done, err := owner.AddTask(ctx, 1, []byte("done"))
	require.NoError(t, err)
	c, err := owner.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	got, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Len(t, got, 1)
	_, err = c.Ack(ctx, got[0].ID) // the owner records its retention
	require.NoError(t, err)
	require.NoError(t, c.Release(ctx))

	where, err := tool.Cancel(ctx, 1, done)
	require.NoError(t, err)
	assert.Equal(t, StateDone, where, "finished already: left as it is")
	noMarks(t, s, k)

	later, err := tool.AddTaskAfter(ctx, 1, time.Hour, []byte("later"))
	require.NoError(t, err)
	where, err = tool.Cancel(ctx, 1, later)
	require.NoError(t, err)
	assert.Equal(t, StateScheduled, where)
	for _, q := range []*Queue{tool, owner} {
		st, err := q.Status(ctx, 1, later)
		require.NoError(t, err)
		assert.Equal(t, StateCancelled, st.State, "its record is kept with the owner's retention")
	}
	where, err = tool.Cancel(ctx, 1, later)
	require.NoError(t, err)
	assert.Equal(t, StateCancelled, where)
	noMarks(t, s, k)
}

// Without a history anywhere, a cancelled scheduled task leaves no record
// (nothing would read it) and a done task reads unknown: it is marked.
func TestCancelWithoutAnyHistory(t *testing.T) {
	t.Parallel()
	q, srv := newTestQueue(t, 1, Config{})
	s, k := srv[0], newQueueKeys(q.cfg.Prefix, 0, 0)
	ctx := bounded(t)
	later, err := q.AddTaskAfter(ctx, 1, time.Hour, []byte("later"))
	require.NoError(t, err)
	where, err := q.Cancel(ctx, 1, later)
	require.NoError(t, err)
	assert.Equal(t, StateScheduled, where)
	assert.Empty(t, historyKeys(q, s), "no history bucket written")
	noMarks(t, s, k)
	where, err = q.Cancel(ctx, 1, unusedID())
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, where)
}

// Cancel's cost does not grow with the length of the queue: it reads the
// task's records (Status) and the claim records, then sends one script,
// and none of them reads a list.
func TestCancelIsBoundedOnALongQueue(t *testing.T) {
	t.Parallel()
	servers := newTestServers(t, 1)
	log := &cmdLog{}
	q, err := New([]*redis.Pool{countingPool(t, servers[0], log)}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	ctx := bounded(t)
	// The ready list as AddTasks would leave it, written with RPUSH from
	// the consuming end (miniredis's LPUSH copies its list each time).
	const n = 100_000
	ids := q.ids.nextN(n)
	k := newQueueKeys(q.cfg.Prefix, 0, 0)
	now := time.Now().UnixMilli()
	args := []any{k.ready}
	for i := n - 1; i >= 0; i-- {
		args = append(args, appendEntry(nil, 0, ids[i], uint64(i%100), now, 0, nil, []byte("x")))
		if len(args) == 10_001 || i == 0 {
			servers[0].do(t, "RPUSH", args...)
			args = args[:1]
		}
	}
	require.NoError(t, q.checkLayout(ctx, q.parts[0]))
	_, err = q.Cancel(ctx, 0, unusedID()) // loads the script
	require.NoError(t, err)

	log.reset()
	where, err := q.Cancel(ctx, 2, ids[2]) // the third to be claimed
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, where)
	var cmds []string
	log.mu.Lock()
	for _, c := range log.cmds {
		if c != "" { // the pool's flush as it takes the connection back
			cmds = append(cmds, c)
		}
	}
	log.mu.Unlock()
	require.GreaterOrEqual(t, len(cmds), 2)
	assert.Equal(t, []string{"HGETALL", "EVALSHA"}, cmds[len(cmds)-2:], "a read of the claim records (not of the ready list), then one script call")
	for _, c := range cmds {
		assert.NotContains(t, []string{"LRANGE", "LPOS", "LREM", "LINDEX", "LLEN", "SCAN", "KEYS"}, c, "no read of a list or of the keyspace")
	}
	// The script takes the ready list's length (LLEN, constant time) for
	// the cancel marks' bound, and reads none of its entries.
	src := strings.ToUpper(scriptSources["cancel"])
	for _, cmd := range []string{"LRANGE", "LPOS", "LREM", "LINDEX", "SCAN", "KEYS"} {
		assert.NotContains(t, src, "'"+cmd+"'", "the cancel script reads no list's entries")
	}
	assert.Equal(t, int64(n), stats0(t, q).Ready)

	// The marked task is skipped when met.
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer c.Release(ctx)
	got, err := c.Claim(ctx, 4)
	require.NoError(t, err)
	assert.Equal(t, []string{ids[0], ids[1], ids[3]}, taskIDs(got), "the claim of four finished one as cancelled")
	assert.Equal(t, int64(1), stats0(t, q).Cancelled)
}

// signalWriter closes its channel once a line it is written holds want.
type signalWriter struct {
	want string
	once sync.Once
	ch   chan struct{}
}

func (w *signalWriter) Write(p []byte) (int, error) {
	if strings.Contains(string(p), w.want) {
		w.once.Do(func() { close(w.ch) })
	}
	return len(p), nil
}

// A task that runs on through a graceful stop (ShutdownTimeout) is still
// cancelled: Cancel has its ctx ended as while the pool ran, and it is
// finished as cancelled, neither handed back nor run again.
func TestCancelRunningTaskDuringGracefulStop(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 1, Config{Retention: time.Minute})
	bg := bounded(t)
	ctx, stop := context.WithCancel(bg)
	defer stop()
	ids := addAll(t, q, []Task{{OrderID: 1, Payload: []byte("long")}})
	running := make(chan struct{}, 1)
	var runs int
	var mu sync.Mutex
	stopping := &signalWriter{want: "queue: stopping", ch: make(chan struct{})}
	errc := runPool(ctx, q, PoolConfig{Workers: 1, TaskTimeout: -1, ShutdownTimeout: time.Minute,
		Logger: slog.New(slog.NewTextHandler(stopping, nil))}, func(tctx context.Context, t Task) error {
		mu.Lock()
		runs++
		mu.Unlock()
		running <- struct{}{}
		<-tctx.Done()
		return tctx.Err()
	})
	receive(t, running)
	stop()
	select {
	case <-stopping.ch:
	case <-bg.Done():
		t.Fatal("the pool did not start stopping")
	}
	where, err := q.Cancel(bg, 1, ids[0])
	require.NoError(t, err)
	assert.Equal(t, StatePending, where)
	select {
	case err := <-errc: // the task's ctx ended, so the stop did not wait out its minute
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("the cancelled task still runs")
	}
	st, err := q.Status(bg, 1, ids[0])
	require.NoError(t, err)
	assert.Equal(t, StateCancelled, st.State)
	assert.Zero(t, stats0(t, q).Ready, "not handed back")
	mu.Lock()
	assert.Equal(t, 1, runs)
	mu.Unlock()
}

// The status record of a cancelled scheduled task is written after the
// cancel: when that write fails, the error says the task is cancelled.
func TestCancelScheduledTaskWhoseRecordFails(t *testing.T) {
	t.Parallel()
	s := newTestServers(t, 1)[0]
	pool := hookPool(s, func(script string, _ []any) error {
		if script == "history" {
			return errors.New("refused")
		}
		return nil
	})
	defer pool.Close()
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t), Retention: time.Minute})
	require.NoError(t, err)
	defer q.Close()
	ctx := bounded(t)
	id, err := q.AddTaskAfter(ctx, 1, time.Hour, []byte("later"))
	require.NoError(t, err)
	where, err := q.Cancel(ctx, 1, id)
	assert.Equal(t, StateScheduled, where)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "is cancelled (it was scheduled and is removed), but its status record was not written: ")
	scheduled, err := q.Scheduled(ctx, 0, 0, 10)
	require.NoError(t, err)
	assert.Empty(t, scheduled, "removed all the same")
	assert.Equal(t, int64(1), stats0(t, q).Cancelled)
}

// A task whose cancel was asked while its owner did not answer, and whose
// deliveries that owner used up before it went (a crash in its last
// retry: here a Consumer that failed it and left without the retry), is
// finished as cancelled by the next owner, as Cancel promises, and not
// moved to the dead-letter store: recovery dead-lettered it, dropping the
// mark with it, and a replay of the dead letters would have run it.
func TestCancelOfATaskWhoseDeliveriesRanOutInACrash(t *testing.T) {
	t.Parallel()
	for _, next := range []string{"pool", "Consumer"} {
		t.Run(next, func(t *testing.T) {
			t.Parallel()
			q, srv, k, ids := wornOutTask(t)
			ctx := bounded(t)

			st, err := q.Cancel(ctx, 0, ids[0])
			require.NoError(t, err)
			require.Equal(t, StatePending, st, "held, by an owner that does not answer")

			var ran []string
			if next == "pool" {
				var mu sync.Mutex
				require.NoError(t, q.AnalysePool(ctx, 0, PoolConfig{MaxAttempts: 2, ExitOnEmpty: true},
					func(_ context.Context, task Task) error {
						mu.Lock()
						defer mu.Unlock()
						ran = append(ran, task.ID)
						return nil
					}))
			} else {
				c2, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 2})
				require.NoError(t, err)
				got, err := c2.RemoveTask(ctx)
				require.NoError(t, err)
				ran = append(ran, got.ID)
				_, err = c2.Ack(ctx, got.ID)
				require.NoError(t, err)
				require.NoError(t, c2.Release(ctx))
			}
			assert.Equal(t, ids[1:], ran, "the cancelled task never ran, and its OrderID went on")
			ds, err := q.Dead(ctx, 0)
			require.NoError(t, err)
			assert.Empty(t, ds, "nothing dead-lettered")
			status, err := q.Status(ctx, 0, ids[0])
			require.NoError(t, err)
			assert.Equal(t, StateCancelled, status.State)
			noMarks(t, srv[0], k)
		})
	}
}

// wornOutTask returns a queue of one OrderID's two tasks (ids) whose
// first used up its deliveries (MaxAttempts 2) under an owner that left
// without running its last: a Consumer failed it, and released the
// queue with its retry recorded and never finished.
func wornOutTask(t *testing.T) (*Queue, []*testServer, queueKeys, []string) {
	t.Helper()
	q, srv := newTestQueue(t, 1, Config{Retention: time.Hour})
	ctx := bounded(t)
	ids := addAll(t, q, orderTasks(1, 2))
	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 2})
	require.NoError(t, err)
	task, err := c.RemoveTask(ctx)
	require.NoError(t, err)
	require.Equal(t, ids[0], task.ID)
	dead, err := c.Fail(ctx, task, errors.New("boom"))
	require.NoError(t, err)
	require.False(t, dead)
	require.NoError(t, c.Release(ctx))
	return q, srv, newQueueKeys(q.cfg.Prefix, 0, 0), ids
}

// cmdHookConn runs between once, before (or, with after, after) the
// command cmd with first argument arg.
type cmdHookConn struct {
	redis.Conn
	between  *atomic.Pointer[func()]
	cmd, arg string
	after    bool
}

func (c *cmdHookConn) hook(after bool, cmd string, args []any) {
	if after != c.after || cmd != c.cmd || len(args) == 0 || args[0] != c.arg {
		return
	}
	if f := c.between.Swap(nil); f != nil {
		(*f)()
	}
}

func (c *cmdHookConn) Do(cmd string, args ...any) (any, error) {
	c.hook(false, cmd, args)
	defer c.hook(true, cmd, args)
	return c.Conn.Do(cmd, args...)
}

func (c *cmdHookConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	c.hook(false, cmd, args)
	defer c.hook(true, cmd, args)
	return c.Conn.(redis.ConnWithContext).DoContext(ctx, cmd, args...)
}

func (c *cmdHookConn) ReceiveContext(ctx context.Context) (any, error) {
	return c.Conn.(redis.ConnWithContext).ReceiveContext(ctx)
}

func (c *cmdHookConn) DoWithTimeout(d time.Duration, cmd string, args ...any) (any, error) {
	c.hook(false, cmd, args)
	defer c.hook(true, cmd, args)
	return c.Conn.(redis.ConnWithTimeout).DoWithTimeout(d, cmd, args...)
}

func (c *cmdHookConn) ReceiveWithTimeout(d time.Duration) (any, error) {
	return c.Conn.(redis.ConnWithTimeout).ReceiveWithTimeout(d)
}

// The cancel of a task whose deliveries ran out, asked while the next
// owner recovers it (after recovery read the marks, before it
// dead-letters the task), is kept all the same: the dead-lettering
// leaves a task with a mark pending, and recovery reads it again.
func TestCancelDuringTheRecoveryOfATaskWhoseDeliveriesRanOut(t *testing.T) {
	t.Parallel()
	q, srv, k, ids := wornOutTask(t)
	ctx := bounded(t)

	type result struct {
		st  TaskState
		err error
	}
	cancelled := make(chan result, 1)
	var between atomic.Pointer[func()]
	mark := func() {
		go func() {
			st, err := q.Cancel(ctx, 0, ids[0])
			cancelled <- result{st, err}
		}()
		for { // until Cancel's script has set the mark
			if n, err := redis.Int(srv[0].do(t, "HEXISTS", k.cancels, ids[0]), nil); err != nil || n == 1 {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	between.Store(&mark)
	pool := srv[0].wrapPool(4, func(cn redis.Conn) redis.Conn {
		return &cmdHookConn{Conn: cn, between: &between, cmd: "HMGET", arg: k.cancels, after: true}
	})
	t.Cleanup(func() { pool.Close() })
	next, err := New([]*redis.Pool{pool}, Config{Prefix: q.cfg.Prefix, Retention: time.Hour})
	require.NoError(t, err)
	t.Cleanup(func() { next.Close() })
	c2, err := next.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 2})
	require.NoError(t, err)
	require.Nil(t, between.Load(), "the cancel came after recovery read the marks")
	got, err := c2.RemoveTask(ctx)
	require.NoError(t, err)
	assert.Equal(t, ids[1], got.ID, "the cancelled task never ran, and its OrderID went on")
	_, err = c2.Ack(ctx, got.ID)
	require.NoError(t, err)
	require.NoError(t, c2.Release(ctx))
	r := <-cancelled
	require.NoError(t, r.err)
	assert.Equal(t, StatePending, r.st)
	ds, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	assert.Empty(t, ds, "nothing dead-lettered")
	status, err := q.Status(ctx, 0, ids[0])
	require.NoError(t, err)
	assert.Equal(t, StateCancelled, status.State)
	noMarks(t, srv[0], k)
}

// A task whose last delivery fails after Cancel marked it and before its
// holder saw the mark is dead-lettered (its holder had not seen the
// cancel), and the mark goes with it: Cancel took the mark's end for
// the owner's answer and said the task was pending, to be finished as
// cancelled. It now says where the task went.
func TestCancelOfATaskThatDiesBeforeItsMarkIsSeen(t *testing.T) {
	t.Parallel()
	q, srv := newTestQueue(t, 1, Config{Retention: time.Hour})
	k := newQueueKeys(q.cfg.Prefix, 0, 0)
	ctx := bounded(t)
	ids := addAll(t, q, orderTasks(1, 1))
	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 1})
	require.NoError(t, err)
	t.Cleanup(func() { c.Release(context.Background()) })
	task, err := c.RemoveTask(ctx)
	require.NoError(t, err)

	var between atomic.Pointer[func()]
	var dead bool
	var ferr error
	fail := func() { dead, ferr = c.Fail(ctx, task, errors.New("boom")) }
	between.Store(&fail)
	pool := srv[0].wrapPool(4, func(cn redis.Conn) redis.Conn {
		return &cmdHookConn{Conn: cn, between: &between, cmd: "HGET", arg: k.cancels}
	})
	t.Cleanup(func() { pool.Close() })
	other, err := New([]*redis.Pool{pool}, Config{Prefix: q.cfg.Prefix})
	require.NoError(t, err)
	t.Cleanup(func() { other.Close() })

	st, err := other.Cancel(ctx, 0, ids[0])
	require.NoError(t, err)
	require.Nil(t, between.Load(), "the task failed while Cancel waited for its mark to be seen")
	require.NoError(t, ferr)
	require.True(t, dead)
	assert.Equal(t, StateDead, st, "where the task went")
	ds, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, ds, 1)
}
