package queue

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// streakSet returns a set shared by two workers of a session, given the
// tasks of ids, each "<OrderID><letter>".
func streakSet(t *testing.T, ids ...string) (*session, *lineSet, *worker, *worker) {
	t.Helper()
	s := &session{cfg: PoolConfig{Prefetch: 1024}, halt: make(chan struct{})}
	ls := newLineSet(s, true)
	var ts []claimed
	for i, id := range ids {
		var order uint64
		_, err := fmt.Sscanf(id, "%d", &order)
		require.NoError(t, err)
		ts = append(ts, claimed{Task: Task{ID: id, OrderID: order, Attempt: 1}, seq: int64(i)})
	}
	ls.give(ts)
	return s, ls, newWorker(s, 0, ls), newWorker(s, 1, ls)
}

// A worker runs the tasks of the OrderID it picked one after another, each
// once the one before it is done, and settles them all at once: here
// with the next OrderID's task picked in the same settle.
func TestStreakRunsAnOrderIDsTasksInOrder(t *testing.T) {
	_, ls, w, _ := streakSet(t, "1a", "2a", "1b", "1c")
	now := time.Now()
	o, t1, _, _ := ls.next(w, now)
	require.Equal(t, "1a", t1.ID)
	t2, ok := w.streakNext(o, now)
	require.True(t, ok)
	assert.Equal(t, "1b", t2.ID)
	t3, ok := w.streakNext(o, now)
	require.True(t, ok)
	assert.Equal(t, "1c", t3.ID)
	_, ok = w.streakNext(o, now)
	assert.False(t, ok, "the streak ends with the tasks held when it began")
	assert.Equal(t, []string{"1a", "1b", "1c"}, claimedIDs(o.tasks[o.head:]), "done tasks stay in the line until settled")

	next, t4 := ls.settleNext(o, w, now)
	assert.Equal(t, "2a", t4.ID)
	assert.NotSame(t, o, next)
	assert.Equal(t, lineParked, o.state, "the streak's three tasks settled done")
	assert.Zero(t, w.ran)
}

// A stop that takes the set's tasks during a streak hands back what
// follows the task the worker runs, never one it ran or runs: the worker
// then takes none of them, and settles what it ran.
func TestStreakStopTakesWhatFollows(t *testing.T) {
	s, ls, w, _ := streakSet(t, "1a", "1b", "1c", "1d", "1e", "2a")
	now := time.Now()
	o, _, _, _ := ls.next(w, now)
	_, ok := w.streakNext(o, now)
	require.True(t, ok)
	tc, ok := w.streakNext(o, now) // 1c runs
	require.True(t, ok)
	require.Equal(t, "1c", tc.ID)

	s.stopStarting()
	assert.ElementsMatch(t, []string{"1d", "1e", "2a"}, claimedIDs(ls.takeAll()), "in no particular order")
	_, ok = w.streakNext(o, now)
	assert.False(t, ok, "the stop took the rest")

	// 1c fails: it stays, and goes back with the second hand-back.
	ls.settle(w, o, false, time.Time{}, now)
	back := ls.takeAll()
	assert.Equal(t, []string{"1c"}, claimedIDs(back))
	assert.Equal(t, 2, back[0].Attempt)
	assert.Zero(t, ls.held())
}

// A stop that comes while the worker is between two tasks of its streak,
// the next taken but not started, hands back from the one after it: the
// worker starts the one it took (see unpickUntaken).
func TestStreakStopBetweenTasks(t *testing.T) {
	s, ls, w, _ := streakSet(t, "1a", "1b", "1c")
	now := time.Now()
	o, _, _, _ := ls.next(w, now)
	_, ok := w.streakNext(o, now) // 1b taken, not started
	require.True(t, ok)
	s.stopStarting()
	assert.Equal(t, []string{"1c"}, claimedIDs(ls.takeAll()))
	assert.False(t, ls.unpickUntaken(w, o), "taken by the stop: the worker starts 1b")
	got, _ := ls.settleNext(o, w, now)
	assert.Nil(t, got)
	assert.Zero(t, ls.held())
}

// A session that stops before the set's tasks were taken: the worker puts
// back the task it took, and the stop hands it back with its OrderID's
// later ones, not the one the worker ran.
func TestStreakPutBack(t *testing.T) {
	s, ls, w, _ := streakSet(t, "1a", "1b", "1c")
	now := time.Now()
	o, _, _, _ := ls.next(w, now)
	_, ok := w.streakNext(o, now)
	require.True(t, ok)
	s.stopStarting()
	require.True(t, ls.unpickUntaken(w, o))
	assert.Equal(t, []string{"1b", "1c"}, claimedIDs(ls.takeAll()))
}

// A task of a streak that fails stays first in its line, after the done
// ones are settled, with its Attempt one higher; the tasks behind it wait.
func TestStreakRetryMidway(t *testing.T) {
	_, ls, w, w2 := streakSet(t, "1a", "1b", "1c", "1d")
	now := time.Now()
	o, _, _, _ := ls.next(w, now)
	_, ok := w.streakNext(o, now)
	require.True(t, ok)
	_, ok = w.streakNext(o, now)
	require.True(t, ok)
	ls.settle(w, o, false, now.Add(time.Minute), now)
	assert.Equal(t, lineDelayed, o.state)
	assert.Equal(t, []string{"1c", "1d"}, claimedIDs(o.tasks[o.head:]))
	assert.Equal(t, 2, o.tasks[o.head].Attempt)
	got, _, _, _ := ls.next(w2, now)
	assert.Nil(t, got, "nothing runnable while 1c waits")

	// Once due, the retry runs first, and a task delivered before goes
	// through the full path: it ends a streak.
	o, t3, _, _ := ls.next(w2, now.Add(2*time.Minute))
	require.NotNil(t, o)
	assert.Equal(t, "1c", t3.ID)
	t4, ok := w2.streakNext(o, now.Add(2*time.Minute))
	require.True(t, ok, "1d follows the retried 1c")
	assert.Equal(t, "1d", t4.ID)
}

// A streak stops at a task delivered before (its start is recorded
// first), recovered or cancelled, once streakSpan old, after maxStreak
// tasks, and never begins under a rate limit.
func TestStreakBounds(t *testing.T) {
	for name, mark := range map[string]func(*claimed){
		"attempt":   func(t *claimed) { t.Attempt = 2 },
		"recovered": func(t *claimed) { t.recovered = true },
		"cancelled": func(t *claimed) { t.cancelled = true },
	} {
		t.Run(name, func(t *testing.T) {
			_, ls, w, _ := streakSet(t, "1a", "1b")
			now := time.Now()
			o, _, _, _ := ls.next(w, now)
			mark(&w.streak[0])
			_, ok := w.streakNext(o, now)
			assert.False(t, ok)
		})
	}
	t.Run("span", func(t *testing.T) {
		_, ls, w, _ := streakSet(t, "1a", "1b", "1c")
		now := time.Now()
		o, _, _, _ := ls.next(w, now)
		_, ok := w.streakNext(o, now.Add(streakSpan-time.Microsecond))
		assert.True(t, ok)
		_, ok = w.streakNext(o, now.Add(streakSpan))
		assert.False(t, ok)
	})
	t.Run("length", func(t *testing.T) {
		ids := make([]string, 2*maxStreak)
		for i := range ids {
			ids[i] = fmt.Sprintf("1-%d", i)
		}
		_, ls, w, _ := streakSet(t, ids...)
		now := time.Now()
		o, _, _, _ := ls.next(w, now)
		n := 1
		for {
			if _, ok := w.streakNext(o, now); !ok {
				break
			}
			n++
		}
		assert.Equal(t, maxStreak, n)
		next, t2 := ls.settleNext(o, w, now)
		require.Same(t, o, next, "the OrderID goes on, picked anew")
		assert.Equal(t, ids[maxStreak], t2.ID)
	})
	t.Run("rate limit", func(t *testing.T) {
		s, ls, w, _ := streakSet(t, "1a", "1b")
		s.limit = newLimiter(1000, 1, time.Now())
		o, _, _, _ := ls.next(w, time.Now())
		_, ok := w.streakNext(o, time.Now())
		assert.False(t, ok)
	})
}

// A graceful stop took a running line's tasks, then the lease was lost
// while its task ran: the worker leaves the line unsettled (the next
// owner has it), and the stop's second hand-back finds nothing more to
// take there, where it once took a slice from before the line's head.
func TestStreakLeaseLostDuringGracefulStop(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	addAll(t, q, orderTasks(1, 1)) // one task: its line's head is 0
	started := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	var errs errLog
	errc := runPool(ctx, q, PoolConfig{Owner: "p", Workers: 1, LeaseTTL: time.Second, ShutdownTimeout: time.Minute, OnError: errs.add},
		func(tctx context.Context, task Task) error {
			started <- struct{}{}
			<-tctx.Done() // the lease's loss ends it
			return tctx.Err()
		})
	receive(t, started)
	cancel() // a graceful stop: the first hand-back
	require.Eventually(t, func() bool {
		n, err := redis.Int(try(s, "EXISTS", k.lease))
		return err == nil && n == 1
	}, 5*time.Second, time.Millisecond)
	time.Sleep(50 * time.Millisecond) // the stop's first hand-back is done
	s.do(t, "DEL", k.lease)           // the renewal finds it gone: lost
	require.NoError(t, receive(t, errc))
	assert.Positive(t, errs.count(ErrLeaseLost), "%v", errs.all())
}

// A task done in a streak is acknowledged before the next one of its
// OrderID starts, however long that one runs: Status says done, and a
// lease lost meanwhile does not run it again.
func TestStreakAcksBeforeTheNextStarts(t *testing.T) {
	t.Parallel()
	q, srv := newTestQueue(t, 1, Config{Retention: time.Minute})
	s, k := srv[0], newQueueKeys(q.cfg.Prefix, 0, 0)
	ids := addAll(t, q, orderTasks(1, 2))
	rec := newRecorder()
	bStarted := make(chan struct{}, 4)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	var errs errLog
	var bRuns atomic.Int32
	errc := runPool(ctx, q, PoolConfig{Owner: "p", Workers: 1, LeaseTTL: 2 * time.Second, OnError: errs.add},
		rec.fn(func(tctx context.Context, task Task) error {
			if task.ID == ids[1] && bRuns.Add(1) == 1 {
				bStarted <- struct{}{}
				<-tctx.Done() // runs until the lease's loss ends it
				return tctx.Err()
			}
			return nil
		}))
	receive(t, bStarted)
	require.Eventually(t, func() bool {
		st, err := q.Status(ctx, 0, ids[0])
		return err == nil && st.State == StateDone
	}, 5*time.Second, time.Millisecond, "the first is acknowledged while the second runs")
	s.do(t, "DEL", k.lease)
	require.Eventually(t, func() bool { return bRuns.Load() >= 2 }, 10*time.Second, time.Millisecond, "errors: %v", errs.all())
	cancel()
	require.NoError(t, receive(t, errc))
	assert.Equal(t, []int{1}, rec.attemptsOf(ids[0]), "the first ran once")
}
