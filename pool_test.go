package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// recorder collects what analyse functions saw, per OrderID.
type recorder struct {
	mu       sync.Mutex
	byOrder  map[uint64][]string // payloads in start order
	running  map[uint64]int
	overlap  int
	starts   map[string]int   // starts per task ID
	attempts map[string][]int // Attempt of each start, per task ID
}

func newRecorder() *recorder {
	return &recorder{byOrder: map[uint64][]string{}, running: map[uint64]int{}, starts: map[string]int{}, attempts: map[string][]int{}}
}

func (r *recorder) begin(t Task) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.running[t.OrderID]++
	if r.running[t.OrderID] > 1 {
		r.overlap++
	}
	r.starts[t.ID]++
	r.attempts[t.ID] = append(r.attempts[t.ID], t.Attempt)
	r.byOrder[t.OrderID] = append(r.byOrder[t.OrderID], string(t.Payload))
}

func (r *recorder) end(t Task) {
	r.mu.Lock()
	r.running[t.OrderID]--
	r.mu.Unlock()
}

// fn returns an AnalyseFunc that records every delivery and then runs do
// (nil: succeed).
func (r *recorder) fn(do AnalyseFunc) AnalyseFunc {
	return func(ctx context.Context, t Task) error {
		r.begin(t)
		defer r.end(t)
		if do == nil {
			return nil
		}
		return do(ctx, t)
	}
}

// order returns the payloads of orderID's deliveries so far.
func (r *recorder) order(orderID uint64) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.byOrder[orderID]...)
}

// attemptsOf returns the Attempt of each delivery of task id so far.
func (r *recorder) attemptsOf(id string) []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int(nil), r.attempts[id]...)
}

// total returns the number of deliveries so far.
func (r *recorder) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.starts {
		n += c
	}
	return n
}

func TestPoolDrainsInOrder(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 1, Config{})
	ctx := bounded(t)
	const orders, per = 50, 20
	var tasks []Task
	for i := 0; i < per; i++ {
		for o := 0; o < orders; o++ {
			tasks = append(tasks, Task{OrderID: uint64(o), Payload: []byte(fmt.Sprint(i))})
		}
	}
	_, err := q.AddTasks(ctx, tasks)
	require.NoError(t, err)
	rec := newRecorder()
	err = q.AnalysePool(ctx, 0, PoolConfig{Workers: 8, ExitOnEmpty: true}, func(ctx context.Context, task Task) error {
		rec.begin(task)
		defer rec.end(task)
		return nil
	})
	require.NoError(t, err)
	assert.Len(t, rec.byOrder, orders)
	for o, got := range rec.byOrder {
		want := make([]string, per)
		for i := range want {
			want[i] = fmt.Sprint(i)
		}
		assert.Equal(t, want, got, "order %d", o)
	}
	assert.Zero(t, rec.overlap)
	st, err := q.Stats(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, orders*per, st[0].Processed)
	assert.Zero(t, st[0].Pending)
	assert.Zero(t, st[0].Ready)
}

// taskFault is a failure injected into one task of TestPoolOrderUnderFailures.
type taskFault int

const (
	noFault     taskFault = iota
	errTwice              // fails its first two deliveries
	panicOnce             // panics in its first delivery
	timeoutOnce           // outlives TaskTimeout in its first delivery
	alwaysFails           // fails every delivery: dead-lettered
)

func faultOf(o, i int) taskFault {
	switch {
	case o%50 == 1 && i == 2:
		return errTwice
	case o%50 == 2 && i == 1:
		return panicOnce
	case o%100 == 3 && i == 3:
		return timeoutOnce
	case o%100 == 4 && i == 0, o%100 == 5 && i == 4:
		return alwaysFails
	}
	return noFault
}

// deliveries is how many times a task with fault f runs.
func (f taskFault) deliveries(maxAttempts int) int {
	switch f {
	case errTwice:
		return 3
	case panicOnce, timeoutOnce:
		return 2
	case alwaysFails:
		return maxAttempts
	}
	return 1
}

// runSpan is one delivery's run time.
type runSpan struct{ start, end time.Time }

// Every failure kind, under every dispatch mode, and with an elastic
// pool resizing meanwhile: per OrderID, order and no overlap. The modes
// run one after the other, the others over fewer OrderIDs (every fault
// kind still among them): four pools of 64 workers with 10,000 tasks
// each at once overloaded a small machine under the race detector.
func TestPoolOrderUnderFailures(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		orders int
		cfg    PoolConfig
	}{
		{"byorder", 2000, PoolConfig{Workers: 64}},
		{"free", 500, PoolConfig{Workers: 64, Dispatch: DispatchFree}},
		{"free/elastic", 500, PoolConfig{MinWorkers: 4, MaxWorkers: 64, ScaleDownAfter: 20 * time.Millisecond, Dispatch: DispatchFree}},
		{"byorder/elastic", 500, PoolConfig{MinWorkers: 4, MaxWorkers: 64, ScaleDownAfter: 20 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) { testPoolOrderUnderFailures(t, tc.orders, tc.cfg) })
	}
}

func testPoolOrderUnderFailures(t *testing.T, orders int, cfg PoolConfig) {
	q, _ := newTestQueue(t, 1, Config{})
	ctx := bounded(t)
	const per, maxAttempts = 5, 3
	total := orders * per
	ids := addAll(t, q, orderTasks(orders, per))
	faults := map[string]taskFault{} // by task ID
	for n, id := range ids {
		faults[id] = faultOf(n%orders, n/orders)
	}

	delay := func(attempt int) time.Duration { return time.Duration(attempt) * 3 * time.Millisecond }
	var mu sync.Mutex
	backoffs := map[int]int{} // calls per attempt
	spans := map[string][]runSpan{}
	rec := newRecorder()
	var errs errLog
	counters := &Counters{}
	logs := &logRecorder{}
	cfg.Logger = slog.New(logs)
	cfg.MaxAttempts = maxAttempts
	// Long beside a task's run: a nil returned past it fails, and a
	// loaded host may stall a task that returns at once for tens of ms.
	cfg.TaskTimeout = 500 * time.Millisecond
	cfg.ExitOnEmpty = true
	// Every count below is exact, which holds only while the pool keeps
	// its lease: a lost one redelivers its pending tasks, as it must.
	// Under -race on a loaded host the test's miniredis once left a
	// renewal unanswered for over 2 seconds, past the default lease's
	// margin, and 1,536 tasks ran twice; a lease of a minute
	// keeps this test to what it checks, order under task failures.
	cfg.LeaseTTL = time.Minute
	cfg.OnError = errs.add
	cfg.Counters = counters
	cfg.Backoff = func(attempt int) time.Duration {
		mu.Lock()
		backoffs[attempt]++
		mu.Unlock()
		return delay(attempt)
	}
	err := q.AnalysePool(ctx, 0, cfg, rec.fn(func(ctx context.Context, task Task) error {
		start := time.Now()
		defer func() {
			mu.Lock()
			spans[task.ID] = append(spans[task.ID], runSpan{start, time.Now()})
			mu.Unlock()
		}()
		switch faults[task.ID] {
		case errTwice:
			if task.Attempt <= 2 {
				return fmt.Errorf("error %d of %s", task.Attempt, task.ID)
			}
		case panicOnce:
			if task.Attempt == 1 {
				panic("boom " + task.ID)
			}
		case timeoutOnce:
			if task.Attempt == 1 {
				<-ctx.Done()
				return ctx.Err()
			}
		case alwaysFails:
			return errors.New("always " + task.ID)
		}
		return nil
	}))
	require.NoError(t, err)

	// A delivery whose function returned nil fails all the same when it
	// came back past TaskTimeout: a loaded machine once held a task that
	// returned at once for 898ms before the pool read the clock. Each such
	// late delivery is one failure more for its task, retried (or the
	// task dead-lettered) as any failure is; the counts below take them in.
	late := lateDeliveries(errs.all())
	if len(late) > 0 {
		t.Logf("%d tasks had deliveries come back past TaskTimeout (a loaded machine): each failed, as it must", len(late))
	}
	// outcome gives how many times task id with fault f runs, and whether
	// it ends dead-lettered.
	outcome := func(id string, f taskFault) (n int, dead bool) {
		for a := 1; ; a++ {
			failed := a < f.deliveries(maxAttempts) || f == alwaysFails || slices.Contains(late[id], a)
			if !failed {
				return a, false
			}
			if a == maxAttempts {
				return a, true
			}
		}
	}

	// Per OrderID: tasks start in enqueue order, retries in place, never
	// two at once, and a dead task does not stop the ones after it.
	assert.Zero(t, rec.overlap)
	for o := 0; o < orders; o++ {
		var want []string
		for i := 0; i < per; i++ {
			n, _ := outcome(ids[i*orders+o], faultOf(o, i))
			for range n {
				want = append(want, pl(o, i))
			}
		}
		if !assert.Equal(t, want, rec.byOrder[uint64(o)], "order %d", o) {
			break
		}
	}
	wantBackoffs := map[int]int{}       // calls per attempt
	wantReported := map[taskFault]int{} // failed deliveries per fault
	var dead []string
	deadIDs := map[string]bool{}
	for _, id := range ids {
		f := faults[id]
		n, isDead := outcome(id, f)
		want := make([]int, n)
		for a := range want {
			want[a] = a + 1
		}
		assert.Equal(t, want, rec.attempts[id], "attempts of %s (fault %d)", id, f)
		// Every delivery but the last failed and backed off; the retry
		// started at least its backoff after the failure.
		for a := 1; a < n; a++ {
			wantBackoffs[a]++
			ss := spans[id]
			assert.GreaterOrEqual(t, ss[a].start.Sub(ss[a-1].end), delay(a), "retry %d of %s", a, id)
		}
		wantReported[f] += n - 1
		if isDead {
			wantReported[f]++ // the last one too, dead-lettered
			dead = append(dead, id)
			deadIDs[id] = true
		}
	}
	assert.Equal(t, wantBackoffs, backoffs)
	maps.DeleteFunc(wantReported, func(_ taskFault, n int) bool { return n == 0 })

	// Every failure was reported, typed.
	reported := map[taskFault]int{}
	for _, err := range errs.all() {
		var te *TaskError
		if !assert.ErrorAs(t, err, &te, "only task errors expected") {
			continue
		}
		f := faults[te.ID]
		reported[f]++
		n, _ := outcome(te.ID, f)
		assert.Equal(t, deadIDs[te.ID] && te.Attempt == n, te.Dead, "%v", te)
		if slices.Contains(late[te.ID], te.Attempt) {
			continue // its function returned nil, late
		}
		switch f {
		case panicOnce:
			var pe *PanicError
			if assert.ErrorAs(t, err, &pe) {
				assert.Equal(t, "boom "+te.ID, pe.Value)
				assert.Contains(t, string(pe.Stack), "testPoolOrderUnderFailures", "the stack is the panicking goroutine's")
			}
		case timeoutOnce:
			assert.ErrorIs(t, err, context.DeadlineExceeded)
			assert.Contains(t, err.Error(), "timed out")
		case noFault:
			t.Errorf("a task without a fault failed: %v", err)
		}
	}
	assert.Equal(t, wantReported, reported)

	ds, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	var gotDead []string
	for _, d := range ds {
		gotDead = append(gotDead, d.ID)
		assert.Equal(t, maxAttempts, d.Attempts)
		if faults[d.ID] == alwaysFails {
			assert.Contains(t, d.LastError, "always "+d.ID)
		} else {
			assert.Contains(t, d.LastError, "timed out", "%s: dead after late deliveries", d.ID)
		}
	}
	assert.ElementsMatch(t, dead, gotDead)
	st := stats0(t, q)
	assert.EqualValues(t, total-len(dead), st.Processed)
	assert.EqualValues(t, len(dead), st.Failed)
	assert.Zero(t, st.Pending)
	assert.Zero(t, st.Ready)
	sum := func(xs []int64) (s int64) {
		for _, x := range xs {
			s += x
		}
		return s
	}
	assert.EqualValues(t, total-len(dead), sum(counters.Processed()))
	assert.EqualValues(t, len(dead), sum(counters.Failed()))
	if cfg.MinWorkers < cfg.MaxWorkers {
		// Whether it grows depends on timing (a worker left free while
		// the others wait out TaskTimeout grows nothing): growth itself is
		// TestElasticPoolGrowsAndShrinks's to assert; this one checks
		// order through whatever resizes happened.
		t.Logf("workers grown %d times, shrunk %d times", len(logs.lines("queue: workers grown")), len(logs.lines("queue: workers shrunk")))
	}
	assert.Zero(t, counters.Workers(), "no worker is left")
}

// runPool runs AnalysePool in a goroutine; its result arrives on the
// returned channel.
func runPool(ctx context.Context, q *Queue, cfg PoolConfig, fn AnalyseFunc) <-chan error {
	errc := make(chan error, 1)
	go func() { errc <- q.AnalysePool(ctx, 0, cfg, fn) }()
	return errc
}

func TestPoolFailingOrderHoldsBackOnlyItself(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	// Order 1's first task fails, then waits out an hour's backoff; order 2
	// runs on the same (only) worker meanwhile.
	ids := addAll(t, q, []Task{
		{OrderID: 1, Payload: []byte(pl(1, 0))},
		{OrderID: 1, Payload: []byte(pl(1, 1))},
		{OrderID: 2, Payload: []byte(pl(2, 0))},
		{OrderID: 2, Payload: []byte(pl(2, 1))},
		{OrderID: 2, Payload: []byte(pl(2, 2))},
	})
	rec := newRecorder()
	fn := rec.fn(func(ctx context.Context, task Task) error {
		if task.ID == ids[0] && task.Attempt == 1 {
			return errors.New("not yet")
		}
		return nil
	})
	var errs errLog
	errc := runPool(ctx, q, PoolConfig{Workers: 1, OnError: errs.add,
		Backoff: func(int) time.Duration { return time.Hour }}, fn)
	require.Eventually(t, func() bool { return len(rec.order(2)) == 3 }, 5*time.Second, time.Millisecond)
	_, err := q.AddTask(ctx, 2, []byte(pl(2, 3))) // new work of other orders keeps flowing too
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(rec.order(2)) == 4 }, 5*time.Second, time.Millisecond)
	assert.Equal(t, []string{pl(2, 0), pl(2, 1), pl(2, 2), pl(2, 3)}, rec.order(2))
	assert.Equal(t, []string{pl(1, 0)}, rec.order(1), "order 1 waits for its failed task")

	// A stop during the backoff hands order 1 back, its failure counted.
	cancel()
	require.NoError(t, receive(t, errc))
	ready := readyTasks(t, s, k)
	assert.Equal(t, ids[:2], taskIDs(ready))
	assert.Equal(t, []int{2, 1}, taskAttempts(ready))
	assert.Zero(t, stats0(t, q).Pending)
	require.Len(t, errs.all(), 1)
	var te *TaskError
	require.ErrorAs(t, errs.all()[0], &te)
	assert.Equal(t, ids[0], te.ID)
	assert.Equal(t, 1, te.Attempt)
	assert.False(t, te.Dead)

	require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{Workers: 1, ExitOnEmpty: true}, fn))
	assert.Equal(t, []string{pl(1, 0), pl(1, 0), pl(1, 1)}, rec.order(1))
	assert.Equal(t, []int{1, 2}, rec.attemptsOf(ids[0]))
}

// A pool says when it finds its queue paused, and when it is resumed: a
// pool that claims nothing is not silent about why.
func TestPoolLogsPauseAndResume(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 1, Config{})
	ctx := bounded(t)
	require.NoError(t, q.Pause(ctx, QueueOf(0)))
	_, err := q.AddTask(ctx, 0, []byte("x"))
	require.NoError(t, err)
	h := &logRecorder{}
	done := make(chan struct{})
	errc := runPool(ctx, q, PoolConfig{Logger: slog.New(h), ExitOnEmpty: true}, func(context.Context, Task) error {
		close(done)
		return nil
	})
	require.Eventually(t, func() bool { return len(h.lines("queue: paused")) == 1 }, 10*time.Second, time.Millisecond, "%s", h)
	require.NoError(t, q.Resume(ctx, QueueOf(0)))
	<-done
	require.NoError(t, receive(t, errc))
	paused, resumed := h.lines("queue: paused"), h.lines("queue: resumed")
	require.Len(t, paused, 1, "%s", h)
	require.Len(t, resumed, 1, "%s", h)
	assert.Equal(t, slog.LevelInfo, paused[0].level)
}
