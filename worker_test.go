package queue

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A process resumed after a pause longer than its lease (the zombie fault)
// has every goroutine runnable at once; a worker that came before the
// renewer started prefetched tasks that the next owner had already run.
// Workers now check the lease's deadline before each start.
func TestWorkerStartsNothingPastLeaseDeadline(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 1, Config{})
	ctx := context.Background()
	_, err := q.AddTask(ctx, 1, []byte("a"))
	require.NoError(t, err)
	c, err := q.Consume(ctx, 0, ConsumerConfig{LeaseTTL: time.Second})
	require.NoError(t, err)
	cfg, err := PoolConfig{Workers: 1, LeaseTTL: time.Second}.withDefaults()
	require.NoError(t, err)
	var started atomic.Int64
	s := newSession(context.Background(), c.st, cfg, func(context.Context, Task) error { started.Add(1); return nil })
	defer s.cancelTask()
	defer s.cancelLease()
	tasks, err := c.st.claim(ctx, 10, 1<<20, false, nil)
	require.NoError(t, err)
	require.Len(t, tasks, 1)

	s.setDeadline(time.Now().Add(-time.Millisecond)) // the pause outlived the lease
	s.workers[0].set.give(tasks)
	done := make(chan struct{})
	go func() { defer close(done); s.workers[0].loop() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		s.loseLease()
		<-done
		t.Fatal("the worker did not stop")
	}
	assert.Zero(t, started.Load(), "a task started after the lease deadline")
	assert.True(t, s.isLost(), "the session takes the lease as lost")
}

// A worker that settles a task picks its next one under the same lock,
// and starts it after looking whether the session stopped meanwhile. The
// stop hands back at once, in claim order, every task not running; it
// takes a task picked and not started for a running one. So such a task
// either went back with them (put back before the stop took the set) or
// runs: put back after, it went back only once every running task had
// ended (ShutdownTimeout at most), ahead of tasks claimed before it.
// Many short stops of eight workers on one set catch the worker between
// its pick and its look.
func TestWorkerPickGoesBackAtOnceOrRuns(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 1, Config{})
	ctx := context.Background()
	c, err := q.Consume(ctx, 0, ConsumerConfig{LeaseTTL: time.Minute})
	require.NoError(t, err)
	cfg, err := PoolConfig{Workers: 8, Dispatch: DispatchFree, LeaseTTL: time.Minute}.withDefaults()
	require.NoError(t, err)
	const orders, per = 16, 40
	for trial := range 200 {
		var ran atomic.Int64
		runs := map[string]*atomic.Int32{}
		var ts []claimed
		for i := range per {
			for o := range orders {
				id := fmt.Sprintf("%d-%d", o, i)
				runs[id] = &atomic.Int32{}
				ts = append(ts, claimed{Task: Task{OrderID: uint64(o), ID: id, Attempt: 1}, seq: int64(len(ts))})
			}
		}
		s := newSession(ctx, c.st, cfg, func(_ context.Context, task Task) error {
			runs[task.ID].Add(1)
			ran.Add(1)
			return nil
		})
		s.setDeadline(time.Now().Add(time.Hour))
		s.shared.give(ts)
		for _, w := range s.workers {
			w.set.mu.Lock()
			s.start(w, false)
			w.set.mu.Unlock()
		}
		for ran.Load() < orders*per/4 {
			time.Sleep(10 * time.Microsecond)
		}
		s.stopStarting()
		first := s.takeUnstarted()
		s.workWG.Wait()
		later := s.takeUnstarted()
		s.cancelTask()
		s.cancelLease()
		require.Empty(t, claimedIDs(later), "trial %d: a task picked and not started went back after the running ones", trial)
		for _, task := range first {
			require.Zero(t, runs[task.ID].Load(), "trial %d: %s went back and ran", trial, task.ID)
			delete(runs, task.ID)
		}
		for id, n := range runs {
			require.EqualValues(t, 1, n.Load(), "trial %d: %s neither went back nor ran once", trial, id)
		}
	}
}

// rateLimitedSession returns a session of one worker, not started, whose
// rate limit (a token every 1000 s, a burst of 1) was made at now, and
// the IDs of the tasks it has run so far.
func rateLimitedSession(t *testing.T, now time.Time) (*session, func() []string) {
	q, _ := newTestQueue(t, 1, Config{})
	ctx := context.Background()
	c, err := q.Consume(ctx, 0, ConsumerConfig{LeaseTTL: time.Minute})
	require.NoError(t, err)
	cfg, err := PoolConfig{Workers: 1, Rate: 0.001, Burst: 1, LeaseTTL: time.Minute}.withDefaults()
	require.NoError(t, err)
	var mu sync.Mutex
	var ran []string
	s := newSession(ctx, c.st, cfg, func(_ context.Context, task Task) error {
		mu.Lock()
		ran = append(ran, task.ID)
		mu.Unlock()
		return nil
	})
	s.limit = newLimiter(cfg.Rate, cfg.Burst, now)
	s.setDeadline(now.Add(time.Hour))
	return s, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(ran)
	}
}

// stopWhileWaiting starts s's worker w, and once it waits for the rate
// limit, takes the set's unstarted tasks as a stop's first hand-back does
// (before the worker sees the stop), then stops the session and takes
// what is left once the worker ended. It returns the ID of the task that
// waited and the two hand-backs.
func stopWhileWaiting(t *testing.T, s *session, w *worker) (waiting string, first, later []claimed) {
	t.Helper()
	w.set.mu.Lock()
	s.start(w, false)
	w.set.mu.Unlock()
	require.Eventually(t, func() bool { return w.held.Load() != nil }, 10*time.Second, time.Millisecond)
	waiting = *w.held.Load()
	first = s.takeUnstarted()
	s.stopStarting()
	s.workWG.Wait()
	later = s.takeUnstarted()
	s.cancelTask()
	s.cancelLease()
	return waiting, first, later
}

// A task waiting for the rate limit has not started: a stop that takes
// the set's tasks while it waits takes it with them, at once and in claim
// order, and its worker then does not start it; the stop's later
// hand-back, made once every running task ended, has nothing of it.
func TestWorkerRateWaitGoesBackAtOnce(t *testing.T) {
	t.Parallel()
	s, ran := rateLimitedSession(t, time.Now())
	s.workers[0].set.give([]claimed{
		{Task: Task{OrderID: 1, ID: "a", Attempt: 1}, seq: 1},
		{Task: Task{OrderID: 1, ID: "b", Attempt: 1}, seq: 2},
		{Task: Task{OrderID: 2, ID: "c", Attempt: 1}, seq: 3},
	})
	w := s.workers[0]
	// "a" runs on the burst's token; the next task waits about 1000 s.
	waiting, first, later := stopWhileWaiting(t, s, w)
	assert.Equal(t, []string{"a"}, ran(), "only the first task ran")
	assert.Contains(t, claimedIDs(first), waiting, "the waiting task went back at once")
	assert.Equal(t, []string{"b", "c"}, claimedIDs(first), "in claim order")
	assert.Empty(t, claimedIDs(later), "nothing went back late")
}

// A stop that takes the set's tasks drops each emptied line, and one
// beyond what the set keeps leaves it for good. A task waiting for the
// rate limit on such a line went back with the others and then ran all
// the same when its wait ended: its worker found its line still marked
// waiting and took it for its own, so it ran twice (here and after the
// hand-back), and its line was dropped twice.
func TestWorkerRateWaitTakenWithFullFreeDoesNotRun(t *testing.T) {
	t.Parallel()
	s, ran := rateLimitedSession(t, time.Now())
	w := s.workers[0]
	w.set.give([]claimed{
		{Task: Task{OrderID: 1, ID: "a", Attempt: 1}, seq: 1},
		{Task: Task{OrderID: 2, ID: "b", Attempt: 1}, seq: 2},
	})
	// The set keeps as many emptied lines as it may, as after a drain of
	// many OrderIDs: every line the stop empties leaves it.
	w.set.mu.Lock()
	for id := uint64(1000); len(w.set.free) < w.set.maxFree; id++ {
		o := &orderLine{id: id}
		w.set.orders[id] = o
		s.lines.Add(1)
		w.set.drop(o)
	}
	w.set.mu.Unlock()
	// "a" runs on the burst's token; "b" waits about 1000 s.
	_, first, later := stopWhileWaiting(t, s, w)
	assert.Equal(t, []string{"b"}, claimedIDs(first), "the waiting task went back at once")
	assert.Equal(t, []string{"a"}, ran(), "the task that went back did not run")
	assert.Empty(t, claimedIDs(later), "nothing went back late")
	assert.Zero(t, s.lines.Load(), "every line dropped once")
}

// A worker that picked a task just before a stop took the set's tasks
// starts it, as it would have a moment sooner: the stop counted it as
// running. But with the pool's rate limit the task waits for its token
// first, and the stop ends that wait at once: the task started then, long
// before its token, a start the limit does not allow. It does not start;
// it goes back with the tasks the stop hands back once the running ones
// ended, its Attempt unchanged, ahead of its OrderID's later tasks.
func TestWorkerTakenPickDoesNotStartBeforeItsToken(t *testing.T) {
	t.Parallel()
	now := time.Now()
	s, ran := rateLimitedSession(t, now)
	defer s.cancelLease()
	defer s.cancelTask()
	s.limit.reserve(now) // the burst's token went to an earlier task: the next comes in about 1000 s
	w := s.workers[0]
	w.set.give([]claimed{
		{Task: Task{OrderID: 1, ID: "a", Attempt: 1}, seq: 1},
		{Task: Task{OrderID: 1, ID: "b", Attempt: 1}, seq: 2},
	})
	o, task, _, _ := w.set.next(w, now) // the worker's pick, just before the stop
	require.NotNil(t, o)

	s.stopStarting()
	first := s.takeUnstarted()
	done := make(chan struct{})
	go func() { defer close(done); w.runOne(o, task, now) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		s.cancelTask() // the end of the stop's ShutdownTimeout
		<-done
	}
	later := s.takeUnstarted()
	assert.Empty(t, ran(), "the task started before its token")
	assert.Equal(t, []string{"b"}, claimedIDs(first), "the stop counted the pick as running")
	if assert.Equal(t, []string{"a"}, claimedIDs(later), "the pick went back with the later hand-back") {
		assert.Equal(t, 1, later[0].Attempt, "its Attempt unchanged")
	}
}

// A retiring worker's goroutine leaves the worker alone once the set has
// it gone: a grow may start a new goroutine on the same worker at once,
// whose first wait sets the timer (the race detector sees an old
// goroutine that still stops it).
func TestWorkerGoneLeavesItsTimer(t *testing.T) {
	t.Parallel()
	s, _ := rateLimitedSession(t, time.Now())
	defer s.cancelLease()
	defer s.cancelTask()
	w := s.workers[0]
	w.timerFor(time.Hour) // an earlier wait's
	w.set.mu.Lock()
	w.retire = true
	s.start(w, false)
	w.set.mu.Unlock()
	for {
		w.set.mu.Lock()
		if w.gone {
			break
		}
		w.set.mu.Unlock()
		time.Sleep(100 * time.Microsecond)
	}
	// As grow does, with the set's lock held: the worker starts again,
	// and waits.
	w.retire = false
	w.timer = nil
	fired := w.timerFor(10 * time.Millisecond)
	w.set.mu.Unlock()
	select {
	case <-fired:
	case <-time.After(10 * time.Second):
		t.Fatal("the new wait's timer was stopped")
	}
	s.workWG.Wait()
}

// A worker's clock reads the monotonic clock and keeps to the wall clock:
// each reading lies between two of time.Now, by both clocks.
func TestWorkerClockKeepsToTheWallClock(t *testing.T) {
	t.Parallel()
	w := &worker{}
	last := time.Time{}
	for range 1000 {
		before := time.Now()
		now := w.now()
		after := time.Now()
		require.False(t, now.Before(before) || now.After(after), "monotonic reading %v outside [%v, %v]", now, before, after)
		// Wall readings: within what the wall clock moved against the
		// monotonic one since the worker's last read of both (none here).
		wall := now.Round(0)
		require.False(t, wall.Before(before.Round(0).Add(-time.Millisecond)) || wall.After(after.Round(0).Add(time.Millisecond)),
			"wall reading %v outside [%v, %v]", wall, before.Round(0), after.Round(0))
		require.False(t, now.Before(last), "the clock went back")
		last = now
	}
	// A reading of both clocks at least once a second.
	w.clockAt = time.Now().Add(-2 * time.Second)
	before := time.Now()
	w.now()
	assert.False(t, w.clockAt.Before(before), "the wall clock was not read again after a second")
}
