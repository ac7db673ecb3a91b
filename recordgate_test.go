package queue

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The gate's rules, on a clock of the test's own.
func TestRecordGateRules(t *testing.T) {
	t.Parallel()
	g := &gate{}
	s := &session{cfg: PoolConfig{Prefetch: 1024}, halt: make(chan struct{}), freed: make(chan struct{}, 1)}
	a, b, c := newLineSet(s, false), newLineSet(s, false), newLineSet(s, false)
	t0 := time.Unix(1000, 0)

	// a records: b waits for a's record, then for a's run.
	_, got, ha, _ := g.take(a, t0)
	require.Equal(t, gateHeld, got)
	again, got, _, behind := g.take(b, t0.Add(time.Millisecond))
	assert.Equal(t, gateWait, got)
	assert.Equal(t, t0.Add(time.Millisecond+recordLook), again, "no end known: b looks again later")
	assert.Same(t, ha, behind, "b waits behind a's hold")
	g.start(ha, t0.Add(2*time.Millisecond))
	again, got, _, _ = g.take(b, t0.Add(100*time.Millisecond))
	assert.Equal(t, gateWait, got, "a suspect runs alone until it finishes")
	assert.Equal(t, t0.Add(2*time.Millisecond+recordRun), again)
	assert.Equal(t, []*lineSet{b}, g.waiting, "a set is listed once")
	assert.True(t, g.heldBy(ha))

	// b's suspect set aside until then: the gate's freeing hurries it.
	o := &orderLine{id: 7, tasks: []claimed{{Task: Task{ID: "suspect"}}}}
	b.mu.Lock()
	b.delay(o, again)
	o.gated = true
	b.mu.Unlock()
	g.done(ha)
	assert.False(t, g.heldBy(ha))
	assert.Empty(t, g.waiting)
	b.mu.Lock()
	hurried := !o.notBefore.After(time.Now())
	b.mu.Unlock()
	assert.True(t, hurried, "a suspect set aside is due once the gate frees")
	_, got, hb, _ := g.take(b, t0.Add(200*time.Millisecond))
	require.Equal(t, gateHeld, got)

	// b's task runs past recordRun: c goes on beside it.
	g.start(hb, t0.Add(201*time.Millisecond))
	_, got, hc, _ := g.take(c, t0.Add(201*time.Millisecond+recordRun))
	require.Equal(t, gateHeld, got)
	g.done(hb) // no longer the holder: changes nothing
	_, got, _, _ = g.take(a, t0.Add(202*time.Millisecond+recordRun))
	assert.Equal(t, gateWait, got, "c holds the gate")

	// c's record is slow: the gate stays shut however long it takes.
	t1 := t0.Add(201*time.Millisecond + recordRun + time.Minute)
	again, got, _, behind = g.take(a, t1)
	assert.Equal(t, gateWait, got, "a slow record keeps the gate")
	assert.Equal(t, t1.Add(recordLook), again)
	assert.Same(t, hc, behind)
	g.done(hc)
	assert.Empty(t, g.waiting, "the sets waiting are hurried as the gate frees")
	_, got, hb, _ = g.take(b, t1.Add(time.Millisecond))
	assert.Equal(t, gateHeld, got)
	g.done(hb)
	assert.Nil(t, g.holder)

	// A session's end drops its sets from the waiting ones.
	_, _, ha, _ = g.take(a, t1.Add(time.Second))
	g.take(b, t1.Add(time.Second))
	g.take(c, t1.Add(time.Second))
	g.forget([]*lineSet{b})
	assert.Equal(t, []*lineSet{c}, g.waiting)
	g.done(ha)
}

// markDelivered rewrites every ready entry of s's first queue as delivered
// deliveries times before, the last interrupted by a crash (as recovery
// writes it): its next delivery is a suspect's.
func markDelivered(t *testing.T, q *Queue, s *testServer, deliveries int) {
	t.Helper()
	k := newQueueKeys(q.cfg.Prefix, 0, 0)
	n, err := redis.Int(s.do(t, "LLEN", k.ready), nil)
	require.NoError(t, err)
	for i := range n {
		b, err := redis.Bytes(s.do(t, "LINDEX", k.ready, i), nil)
		require.NoError(t, err)
		task, _, err := decodeEntry(b)
		require.NoError(t, err)
		s.do(t, "LSET", k.ready, i, encodeEntry(task, deliveries, entryRecovered))
	}
}

// Suspects (tasks charged a delivery by a crash) run one at a time, each
// to its end (here past recordLook), while other tasks run beside them
// (each waits until a suspect runs, whatever the machine's speed): a
// task that crashes the process then takes no healthy suspect along. They
// were let in 20 ms apart (a second, for want of a wake-up), so that a
// poison could start while healthy suspects still ran.
func TestSuspectsRunOneAtATime(t *testing.T) {
	t.Parallel()
	q, servers := newTestQueue(t, 1, Config{})
	ctx := bounded(t)
	const suspects, others = 3, 4
	addAll(t, q, orderTasks(suspects, 1))
	markDelivered(t, q, servers[0], 1)
	ids := addAll(t, q, orderTasks(suspects+others, 1)[suspects:])
	fresh := map[string]bool{}
	for _, id := range ids {
		fresh[id] = true
	}
	var mu sync.Mutex
	running, most, freshBeside, started := 0, 0, 0, false
	suspectRuns := make(chan struct{})
	err := q.AnalysePool(ctx, 0, PoolConfig{Workers: suspects + others, ExitOnEmpty: true}, func(ctx context.Context, task Task) error {
		if fresh[task.ID] {
			// A fresh task claimed with the suspects waits until one
			// runs (its start is recorded first): held back behind the
			// suspects, it would find none running then.
			select {
			case <-suspectRuns:
			case <-time.After(10 * time.Second):
			}
			mu.Lock()
			if running > 0 {
				freshBeside++
			}
			mu.Unlock()
			return nil
		}
		mu.Lock()
		running++
		most = max(most, running)
		if !started {
			started = true
			close(suspectRuns)
		}
		mu.Unlock()
		time.Sleep(recordLook + 100*time.Millisecond)
		mu.Lock()
		running--
		mu.Unlock()
		return nil
	})
	require.NoError(t, err)
	assert.Equal(t, 1, most, "suspects ran one at a time")
	assert.Positive(t, freshBeside, "other tasks ran beside them")
	assert.EqualValues(t, suspects+others, stats0(t, q).Processed)
}

// The gate is its Queue's: a suspect of another Queue in the process
// (another prefix, another deployment) runs beside this one's, where a
// gate of the package made it wait for this one's outcome.
func TestRecordGateIsTheQueuesOwn(t *testing.T) {
	t.Parallel()
	ctx := bounded(t)
	qx, sx := newTestQueue(t, 1, Config{})
	qy, sy := newTestQueue(t, 1, Config{})
	addAll(t, qx, orderTasks(1, 1))
	markDelivered(t, qx, sx[0], 1)
	addAll(t, qy, orderTasks(1, 1))
	markDelivered(t, qy, sy[0], 1)

	xRuns, yRan := make(chan struct{}), make(chan struct{})
	var beside bool
	var wg sync.WaitGroup
	wg.Go(func() {
		err := qx.AnalysePool(ctx, 0, PoolConfig{Workers: 2, ExitOnEmpty: true}, func(context.Context, Task) error {
			close(xRuns)
			select {
			case <-yRan:
				beside = true
			case <-time.After(3 * time.Second): // the gate's recordRun is longer
			}
			return nil
		})
		assert.NoError(t, err)
	})
	<-xRuns
	err := qy.AnalysePool(ctx, 0, PoolConfig{Workers: 2, ExitOnEmpty: true}, func(context.Context, Task) error {
		close(yRan)
		return nil
	})
	require.NoError(t, err)
	wg.Wait()
	assert.True(t, beside, "the other Queue's suspect ran while this one's did")
}

// Tasks whose delivery failed, handed back by a graceful stop, are no
// suspects: after an outage and a redeploy the next owner runs them side
// by side, not one at a time.
func TestFailedTasksHandedBackAreNoSuspects(t *testing.T) {
	t.Parallel()
	ctx := bounded(t)
	q, _ := newTestQueue(t, 1, Config{})
	const orders = 6
	addAll(t, q, orderTasks(orders, 2))
	failed := make(chan struct{}, orders)
	stopCtx, stop := context.WithCancel(ctx)
	go func() {
		for range orders {
			<-failed
		}
		stop()
	}()
	err := q.AnalysePool(stopCtx, 0, PoolConfig{Workers: orders, Backoff: func(int) time.Duration { return time.Minute }},
		func(context.Context, Task) error {
			failed <- struct{}{}
			return errors.New("the database is down")
		})
	require.NoError(t, err)
	stop()

	most, _ := drainRetries(t, ctx, q, orders)
	assert.GreaterOrEqual(t, most, 2, "the retries ran side by side")
	assert.EqualValues(t, 2*orders, stats0(t, q).Processed)
}

// A pool that loses its lease while failed tasks wait out their backoff:
// the next owner delivers each as the second attempt (the retry never
// started, and is not charged), side by side, not as crash suspects.
func TestFailedTasksRecoveredAfterALostLease(t *testing.T) {
	t.Parallel()
	ctx := bounded(t)
	q, srv := newTestQueue(t, 1, Config{})
	s, k := srv[0], newQueueKeys(q.cfg.Prefix, 0, 0)
	const orders = 6
	addAll(t, q, orderTasks(orders, 2))
	failed := make(chan struct{}, orders)
	stopCtx, stop := context.WithCancel(ctx)
	defer stop()
	var errs errLog
	errc := runPool(stopCtx, q, PoolConfig{Workers: orders, LeaseTTL: time.Second, OnError: errs.add, Backoff: func(int) time.Duration { return time.Minute }},
		func(context.Context, Task) error {
			failed <- struct{}{}
			return errors.New("the database is down")
		})
	for range orders {
		receive(t, failed)
	}
	require.Eventually(t, func() bool { // every failure recorded
		n, err := redis.Int(try(s, "HLEN", k.retries))
		return err == nil && n == orders
	}, 10*time.Second, time.Millisecond)
	s.do(t, "SET", k.lease, "1:another", "PX", 60000) // the lease is another's: lost
	require.Eventually(t, func() bool { return errs.count(ErrLeaseLost) > 0 }, 10*time.Second, time.Millisecond)
	stop()
	require.NoError(t, receive(t, errc))
	s.do(t, "DEL", k.lease)

	most, attempts := drainRetries(t, ctx, q, orders)
	assert.GreaterOrEqual(t, most, 2, "the retries ran side by side")
	assert.Equal(t, []int{2, 2, 2, 2, 2, 2}, attempts, "each retry is the second delivery")
}

// drainRetries drains analyser 0's queue with a pool of workers, each
// task delivered before waiting until two tasks run at once (or 3 s: one
// at a time, no second comes). It returns the most tasks that ran at
// once, and the attempts of the tasks delivered before, in order.
func drainRetries(t *testing.T, ctx context.Context, q *Queue, workers int) (most int, attempts []int) {
	t.Helper()
	var mu sync.Mutex
	running, seen := 0, false
	both := make(chan struct{})
	err := q.AnalysePool(ctx, 0, PoolConfig{Workers: workers, ExitOnEmpty: true}, func(_ context.Context, task Task) error {
		mu.Lock()
		running++
		most = max(most, running)
		if task.Attempt > 1 {
			attempts = append(attempts, task.Attempt)
		}
		if running == 2 && !seen {
			seen = true
			close(both)
		}
		mu.Unlock()
		if task.Attempt > 1 {
			select {
			case <-both:
			case <-time.After(3 * time.Second):
			}
		}
		mu.Lock()
		running--
		mu.Unlock()
		return nil
	})
	require.NoError(t, err)
	return most, attempts
}

// A suspect waiting for its turn at the record gate holds back no other
// OrderID of its worker: it is set aside, and the worker runs the fresh
// tasks it serves while another suspect runs. (A worker that waited
// would have them wait until that suspect's outcome is in Redis, or for
// recordRun.)
func TestSuspectWaitingForTheGateHoldsBackNoOtherOrderID(t *testing.T) {
	t.Parallel()
	q, servers := newTestQueue(t, 1, Config{})
	ctx := bounded(t)
	// Two workers: the first suspect's OrderID on worker 0; the second
	// suspect's, and the fresh tasks' OrderIDs, on worker 1.
	var on0, on1 []uint64
	for id := uint64(0); len(on0) < 1 || len(on1) < 4; id++ {
		if workerOf(id, 2) == 0 {
			on0 = append(on0, id)
		} else {
			on1 = append(on1, id)
		}
	}
	first, second, others := on0[0], on1[0], on1[1:4]
	addAll(t, q, []Task{{OrderID: first, Payload: []byte("s1")}, {OrderID: second, Payload: []byte("s2")}})
	markDelivered(t, q, servers[0], 1)
	var fresh []Task
	for _, id := range others {
		fresh = append(fresh, Task{OrderID: id, Payload: []byte("fresh")}, Task{OrderID: id, Payload: []byte("fresh")})
	}
	addAll(t, q, fresh)

	var freshDone atomic.Int32
	allFresh := make(chan struct{})
	var beside atomic.Bool
	err := q.AnalysePool(ctx, 0, PoolConfig{Workers: 2, ExitOnEmpty: true}, func(ctx context.Context, task Task) error {
		switch string(task.Payload) {
		case "fresh":
			if freshDone.Add(1) == int32(len(fresh)) {
				close(allFresh)
			}
		case "s1":
			// Runs until the fresh tasks are done, or for less than
			// recordRun: the gate stays shut to the other suspect.
			select {
			case <-allFresh:
				beside.Store(true)
			case <-time.After(recordRun - 500*time.Millisecond):
			}
		}
		return nil
	})
	require.NoError(t, err)
	assert.True(t, beside.Load(), "the fresh tasks of the waiting suspect's worker waited for the running suspect")
	assert.EqualValues(t, 2+len(fresh), stats0(t, q).Processed)
}

// A suspect's record whose round trip is slow (a loaded machine, a Redis
// that answers late) keeps the gate shut until it comes back: no other
// suspect records its delivery meanwhile, for a poison task among them
// would take every suspect recorded beside it along. The gate once opened
// to every suspect after a second of such a wait, and a loaded machine
// then dead-lettered healthy tasks charged for a crash they never had.
func TestSuspectsWaitForASlowRecord(t *testing.T) {
	t.Parallel()
	servers := newTestServers(t, 1)
	preloadScripts(t, servers[0].pool) // one call per script call: no NOSCRIPT, no EVAL
	const suspects, slow = 3, recordLook + 200*time.Millisecond
	var mu sync.Mutex
	inFlight, most := 0, 0 // suspects recorded and not yet finished
	pool := hookPool(servers[0], func(script string, _ []any) error {
		if script == "retry" { // a suspect's record, ahead of its start
			mu.Lock()
			inFlight++
			most = max(most, inFlight)
			mu.Unlock()
			time.Sleep(slow)
		}
		return nil
	})
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	ctx := bounded(t)
	addAll(t, q, orderTasks(suspects, 1))
	markDelivered(t, q, servers[0], 1)
	err = q.AnalysePool(ctx, 0, PoolConfig{Workers: suspects, ExitOnEmpty: true}, func(context.Context, Task) error {
		mu.Lock()
		inFlight--
		mu.Unlock()
		return nil
	})
	require.NoError(t, err)
	assert.Equal(t, 1, most, "suspects recorded while another's record or run was in flight")
	assert.EqualValues(t, suspects, stats0(t, q).Processed)
}
