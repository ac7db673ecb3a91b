package queue

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Tests of a pool's stop: what it hands back, what it cancels, and the
// standby that takes over.

func TestPoolStopNoDuplicates(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	const orders, per = 100, 20
	const total = orders * per
	ids := addAll(t, q, orderTasks(orders, per))
	rec := newRecorder()
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	var n sync.Mutex
	count := 0
	err := q.AnalysePool(ctx, 0, PoolConfig{Workers: 8, Prefetch: 64}, rec.fn(func(context.Context, Task) error {
		n.Lock()
		count++
		if count == 700 {
			cancel() // stop mid-stream
		}
		n.Unlock()
		return nil
	}))
	require.NoError(t, err)
	started := rec.total()
	require.Less(t, started, total, "the stop came mid-stream")

	// Right after the stop: nothing pending, every unstarted task ready at
	// the consuming end in enqueue order, none counted as delivered, and
	// the lease free.
	st := stats0(t, q)
	assert.Zero(t, st.Pending)
	assert.EqualValues(t, started, st.Processed)
	assert.Empty(t, st.Owner)
	assert.Zero(t, s.do(t, "EXISTS", k.claims), "no claim is left to order")
	var unstarted []string
	for _, id := range ids {
		if rec.starts[id] == 0 {
			unstarted = append(unstarted, id)
		}
	}
	ready := readyTasks(t, s, k)
	assert.Equal(t, unstarted, taskIDs(ready))
	for _, task := range ready {
		require.Equal(t, 1, task.Attempt)
	}

	require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{Workers: 8, Prefetch: 64, ExitOnEmpty: true}, rec.fn(nil)))
	assert.Len(t, rec.starts, total)
	for i, id := range ids {
		if rec.starts[id] != 1 {
			t.Errorf("task %d started %d times", i, rec.starts[id])
		}
	}
	for o := 0; o < orders; o++ {
		var want []string
		for i := 0; i < per; i++ {
			want = append(want, pl(o, i))
		}
		assert.Equal(t, want, rec.byOrder[uint64(o)], "order %d", o)
	}
	assert.Zero(t, rec.overlap)
}

func TestPoolStopHandsBackUnstartedAtOnce(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ids := addAll(t, q, []Task{
		{OrderID: 1, Payload: []byte(pl(1, 0))},
		{OrderID: 1, Payload: []byte(pl(1, 1))},
		{OrderID: 2, Payload: []byte(pl(2, 0))},
		{OrderID: 1, Payload: []byte(pl(1, 2))},
		{OrderID: 2, Payload: []byte(pl(2, 1))},
	})
	started, finish := make(chan struct{}, 1), make(chan struct{})
	rec := newRecorder()
	fn := rec.fn(func(ctx context.Context, task Task) error {
		if task.ID == ids[0] {
			started <- struct{}{}
			select {
			case <-finish:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	var errs errLog
	// On a real server, a lease that would lapse while the task runs on.
	ttl, hold := 5*time.Second, 100*time.Millisecond
	if s.mini == nil {
		ttl, hold = 2*time.Second, 3*time.Second
	}
	errc := runPool(ctx, q, PoolConfig{Workers: 1, ShutdownTimeout: time.Minute, LeaseTTL: ttl, OnError: errs.add}, fn)
	receive(t, started) // the first task runs; the other four are claimed behind it
	cancel()

	// While the first task still runs inside ShutdownTimeout, the others are
	// already back at the consuming end, in claim order, uncounted.
	require.Eventually(t, func() bool {
		n, err := redis.Int(try(s, "LLEN", k.ready))
		return err == nil && n == 4
	}, 5*time.Second, time.Millisecond)
	ready := readyTasks(t, s, k)
	assert.Equal(t, ids[1:], taskIDs(ready))
	assert.Equal(t, []int{1, 1, 1, 1}, taskAttempts(ready))
	pending := pendingIDs(t, s, k)
	assert.Equal(t, []string{ids[0]}, pending)
	assert.EqualValues(t, 1, s.do(t, "HLEN", k.claims), "the running task's claim keeps its order record")
	// It waits for the running task (on a real server for longer than the
	// lease lasts without renewal), keeping the lease.
	assert.Never(t, func() bool { return len(errc) > 0 }, hold, 10*time.Millisecond)
	close(finish)
	require.NoError(t, receive(t, errc))
	assert.Empty(t, errs.all())
	assert.Equal(t, ids[1:], taskIDs(readyTasks(t, s, k)))
	st := stats0(t, q)
	assert.Zero(t, st.Pending)
	assert.EqualValues(t, 1, st.Processed)
	assert.Empty(t, st.Owner, "the lease is released")
	assert.Zero(t, s.do(t, "EXISTS", k.claims), "the claim's order record went with its last task")

	require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{Workers: 1, ExitOnEmpty: true}, fn))
	assert.Equal(t, []string{pl(1, 0), pl(1, 1), pl(1, 2)}, rec.order(1))
	assert.Equal(t, []string{pl(2, 0), pl(2, 1)}, rec.order(2))
	assert.Equal(t, 1, rec.starts[ids[0]], "a finished task never runs again")
}

func TestPoolStopCancelsAfterShutdownTimeout(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ids := addAll(t, q, []Task{
		{OrderID: 1, Payload: []byte(pl(1, 0))},
		{OrderID: 1, Payload: []byte(pl(1, 1))},
		{OrderID: 2, Payload: []byte(pl(2, 0))},
	})
	const grace = 100 * time.Millisecond
	started := make(chan struct{}, 1)
	var cancelledAt time.Time
	var cancelErr error
	rec := newRecorder()
	fn := rec.fn(func(ctx context.Context, task Task) error {
		if task.ID == ids[0] && task.Attempt == 1 {
			started <- struct{}{}
			<-ctx.Done() // ignores the stop until its ctx ends
			cancelledAt, cancelErr = time.Now(), ctx.Err()
			return ctx.Err()
		}
		return nil
	})
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	var errs errLog
	errc := runPool(ctx, q, PoolConfig{Workers: 1, ShutdownTimeout: grace, OnError: errs.add}, fn)
	receive(t, started)
	stopAt := time.Now()
	cancel()
	require.NoError(t, receive(t, errc))

	assert.ErrorIs(t, cancelErr, context.Canceled)
	assert.GreaterOrEqual(t, cancelledAt.Sub(stopAt), grace, "the running task had its ShutdownTimeout")
	// The interrupted task is handed back first, its delivery counted.
	ready := readyTasks(t, s, k)
	assert.Equal(t, ids, taskIDs(ready))
	assert.Equal(t, []int{2, 1, 1}, taskAttempts(ready))
	assert.Zero(t, stats0(t, q).Pending)
	for _, err := range errs.all() {
		var te *TaskError
		if errors.As(err, &te) {
			assert.False(t, te.Dead, "an interrupted task is not dead-lettered: %v", err)
		}
	}

	require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{Workers: 1, ExitOnEmpty: true}, fn))
	assert.Equal(t, []string{pl(1, 0), pl(1, 0), pl(1, 1)}, rec.order(1))
	assert.Equal(t, []int{1, 2}, rec.attemptsOf(ids[0]))
}

func TestPoolStandbyTakesOverAtStop(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 1, Config{})
	var mu sync.Mutex
	ranOn := map[string]string{} // task ID -> pool
	fn := func(name string) AnalyseFunc {
		return func(ctx context.Context, task Task) error {
			mu.Lock()
			ranOn[task.ID] = name
			mu.Unlock()
			return nil
		}
	}
	ranAll := func(ids []string, name string) func() bool {
		return func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, id := range ids {
				if ranOn[id] != name {
					return false
				}
			}
			return true
		}
	}
	ctx1, stop1 := context.WithCancel(bounded(t))
	defer stop1()
	ctx2, stop2 := context.WithCancel(bounded(t))
	defer stop2()
	// Leases of a minute: only a release lets the standby in within the test.
	errc1 := runPool(ctx1, q, PoolConfig{Owner: "p1", LeaseTTL: time.Minute}, fn("p1"))
	require.Eventually(t, func() bool {
		st, err := q.Stats(context.Background())
		return err == nil && st[0].Owner == "p1"
	}, 5*time.Second, time.Millisecond)
	errc2 := runPool(ctx2, q, PoolConfig{Owner: "p2", LeaseTTL: time.Minute}, fn("p2"))

	first := addAll(t, q, orderTasks(10, 3))
	require.Eventually(t, ranAll(first, "p1"), 5*time.Second, time.Millisecond)
	assert.Empty(t, errc2, "the standby waits")
	assert.Equal(t, "p1", stats0(t, q).Owner)

	stop1()
	require.NoError(t, receive(t, errc1))
	second := addAll(t, q, orderTasks(10, 3))
	require.Eventually(t, ranAll(second, "p2"), 5*time.Second, time.Millisecond)
	assert.True(t, ranAll(first, "p1")(), "nothing ran twice")
	assert.Equal(t, "p2", stats0(t, q).Owner)
	stop2()
	require.NoError(t, receive(t, errc2))
}

// layoutStopConn stops the pool (ends ctx) as it checks the layout with
// a tenure, and fails that check as a stop does.
type layoutStopConn struct {
	*hookConn
	layoutKey string
	reads     *int32
	stop      context.CancelFunc
	mu        *sync.Mutex
}

func (c *layoutStopConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	if cmd == "HMGET" && len(args) > 0 && args[0] == c.layoutKey {
		c.mu.Lock()
		*c.reads++
		n := *c.reads
		c.mu.Unlock()
		if n == 2 { // the first is New's check, the second the tenure's
			c.stop()
			return nil, context.Canceled
		}
	}
	return c.hookConn.DoContext(ctx, cmd, args...)
}

// A pool stopped while it checks the layout at the start of a tenure
// reports nothing: the check failed only because it stopped.
func TestPoolStopDuringLayoutCheckReportsNothing(t *testing.T) {
	t.Parallel()
	skipOnCluster(t, "a cluster's layout is checked once, not with each tenure")
	s := newTestServers(t, 1)[0]
	ctx, stop := context.WithCancel(bounded(t))
	defer stop()
	var reads int32
	var mu sync.Mutex
	prefix := testPrefix(t)
	pool := s.wrapPool(16, func(c redis.Conn) redis.Conn {
		none := func(string, []any) error { return nil }
		return &layoutStopConn{hookConn: &hookConn{Conn: c, before: none}, layoutKey: layoutKey(prefix), reads: &reads, stop: stop, mu: &mu}
	})
	defer pool.Close()
	q, err := New([]*redis.Pool{pool}, Config{Prefix: prefix})
	require.NoError(t, err)
	defer q.Close()
	var reported []error
	err = q.AnalysePool(ctx, 0, PoolConfig{OnError: func(err error) {
		mu.Lock()
		defer mu.Unlock()
		reported = append(reported, err)
	}}, func(context.Context, Task) error { return nil })
	require.NoError(t, err)
	mu.Lock()
	defer mu.Unlock()
	require.EqualValues(t, 2, reads, "stopped at the tenure's check")
	assert.Empty(t, reported)
}

// A pool whose ctx ends by its deadline stops as gracefully as one
// cancelled: the running task finishes, the claimed tasks not started go
// back in order, the lease is released, and nothing is left pending.
func TestPoolStopsGracefullyAtItsDeadline(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	var ts []Task
	for i := range 20 {
		ts = append(ts, Task{OrderID: 1, Payload: []byte(pl(1, i))})
	}
	ids := addAll(t, q, ts)
	end := time.Now().Add(300 * time.Millisecond)
	ctx, cancel := context.WithDeadline(bounded(t), end)
	defer cancel()
	var ran atomic.Int32
	errc := runPool(ctx, q, PoolConfig{Workers: 1, Prefetch: 20}, func(ctx context.Context, task Task) error {
		if ran.Add(1) == 3 {
			time.Sleep(time.Until(end) + 50*time.Millisecond) // running at the deadline
		}
		return nil
	})
	require.NoError(t, receive(t, errc))
	require.ErrorIs(t, ctx.Err(), context.DeadlineExceeded)
	ready := taskIDs(readyTasks(t, s, k))
	require.NotEmpty(t, ready, "the deadline passed with tasks claimed and not started")
	assert.Equal(t, ids[len(ids)-len(ready):], ready, "the unstarted tasks back, in order")
	assert.EqualValues(t, len(ids)-len(ready), ran.Load(), "each task run once, up to the stop")
	assert.Empty(t, pendingIDs(t, s, k))
	assert.Zero(t, s.do(t, "EXISTS", k.lease), "the lease released")
}

// slowClaimConn holds back the reply of every claim after the first for
// slow: the fetcher is then in a round trip when the pool's ctx ends.
type slowClaimConn struct {
	redis.Conn
	claims *atomic.Int32
	slow   time.Duration
	held   bool // a claim was sent: its reply comes late
}

func (c *slowClaimConn) late(cmd string, args []any) bool {
	return scriptName(cmd, args) == "claim" && c.claims.Add(1) > 1
}

func (c *slowClaimConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	if c.late(cmd, args) {
		time.Sleep(c.slow)
	}
	return redis.DoContext(c.Conn, ctx, cmd, args...)
}

func (c *slowClaimConn) Send(cmd string, args ...any) error {
	if c.late(cmd, args) {
		c.held = true
	}
	return c.Conn.Send(cmd, args...)
}

func (c *slowClaimConn) ReceiveContext(ctx context.Context) (any, error) {
	if c.held {
		c.held = false
		time.Sleep(c.slow)
	}
	return redis.ReceiveContext(c.Conn, ctx)
}

// A pool's ctx with a deadline: no task starts past it, even while the
// fetcher, which stops the pool, is still in a Redis round trip (here a
// claim whose reply comes 700 ms late). The worker reads the clock
// before each task in any case.
func TestPoolStartsNoTaskPastItsDeadline(t *testing.T) {
	t.Parallel()
	servers := newTestServers(t, 1)
	preloadScripts(t, servers[0].pool)
	var claims atomic.Int32
	pool := servers[0].wrapPool(8, func(c redis.Conn) redis.Conn {
		return &slowClaimConn{Conn: c, claims: &claims, slow: 700 * time.Millisecond}
	})
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	ids := addAll(t, q, orderTasks(1, 60)) // 600 ms of work on one worker
	end := time.Now().Add(200 * time.Millisecond)
	ctx, cancel := context.WithDeadline(bounded(t), end)
	defer cancel()
	var mu sync.Mutex
	var late []time.Duration
	var ran int
	err = q.AnalysePool(ctx, 0, PoolConfig{Workers: 1, TaskTimeout: time.Minute}, func(tctx context.Context, _ Task) error {
		// When the worker started it: the ctx's deadline less TaskTimeout.
		dl, _ := tctx.Deadline()
		mu.Lock()
		ran++
		if start := dl.Add(-time.Minute); !start.Before(end) {
			late = append(late, start.Sub(end))
		}
		mu.Unlock()
		time.Sleep(10 * time.Millisecond)
		return nil
	})
	require.NoError(t, err)
	assert.Empty(t, late, "tasks started after the pool's deadline")
	assert.GreaterOrEqual(t, claims.Load(), int32(2), "the fetcher was in its second claim")
	s, k := servers[0], newQueueKeys(q.cfg.Prefix, 0, 0)
	ready := taskIDs(readyTasks(t, s, k))
	assert.Equal(t, ids[ran:], ready, "the unstarted tasks back, in order")
}

// A stop whose acks Redis refuses every time (a key of the wrong type
// here; an ACL change does the same) ends all the same: the writes are
// given up retryFor(ShutdownTimeout) after the stop began, their tasks stay
// pending, the pool says so and returns, and the next owner runs them
// again, in order.
func TestPoolStopGivesUpWritesRedisRefuses(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ids := addAll(t, q, orderTasks(2, 2)) // OrderIDs 0 and 1, two tasks each
	s.do(t, "SET", k.retries, "x")        // every ack checks the retry records' type
	rec := newRecorder()
	ran := make(chan struct{}, len(ids))
	fn := rec.fn(func(ctx context.Context, task Task) error {
		ran <- struct{}{}
		return nil
	})
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	var errs errLog
	const grace = 100 * time.Millisecond
	errc := runPool(ctx, q, PoolConfig{Workers: 2, ShutdownTimeout: grace, OnError: errs.add}, fn)
	for range ids {
		receive(t, ran)
	}
	require.Eventually(t, func() bool { return errs.count(ErrWrongType) > 0 }, 10*time.Second, time.Millisecond,
		"the acks are refused")
	stopAt := time.Now()
	cancel()
	require.NoError(t, receive(t, errc))
	assert.Less(t, time.Since(stopAt), retryFor(grace)+5*time.Second, "the stop ended")
	var gaveUp int
	for _, err := range errs.all() {
		if strings.Contains(err.Error(), "gave up recording the outcome of 4 finished tasks") {
			gaveUp++
			assert.ErrorIs(t, err, ErrWrongType, "the report carries the refusal")
		}
	}
	assert.Equal(t, 1, gaveUp, "the given-up writes are reported once: %v", errs.all())
	assert.Equal(t, int64(4), stats0(t, q).Pending, "the tasks stay pending")

	s.do(t, "DEL", k.retries)
	require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{Workers: 2, ExitOnEmpty: true}, fn))
	for o := range 2 {
		assert.Equal(t, []string{pl(o, 0), pl(o, 1), pl(o, 0), pl(o, 1)}, rec.order(uint64(o)))
	}
	assert.Zero(t, stats0(t, q).Pending)
}

// A Close while a pool and a group member run stops them as their ctx's
// end would, and they return ErrClosed rather than go on over closed
// connections. With Dial's pools, closed at once, the finished task's ack
// cannot be written: it stays pending and runs again under the next
// owner.
func TestCloseStopsWhatRuns(t *testing.T) {
	t.Parallel()
	servers := newTestServers(t, 1)
	prefix := testPrefix(t)
	q, err := Dial(context.Background(), []string{servers[0].url}, Config{Prefix: prefix, Queues: 2})
	require.NoError(t, err)
	ids := addAll(t, q, []Task{{OrderID: 0, Payload: []byte("a")}})
	started, release := make(chan struct{}, 1), make(chan struct{})
	var runs atomic.Int32
	fn := func(ctx context.Context, task Task) error {
		runs.Add(1)
		if task.ID == ids[0] && task.Attempt == 1 {
			started <- struct{}{}
			<-release
		}
		return nil
	}
	ctx := bounded(t) // never ends within the test
	var errs errLog
	pool := runPool(ctx, q, PoolConfig{Workers: 1, LeaseTTL: 500 * time.Millisecond, ShutdownTimeout: 200 * time.Millisecond, OnError: errs.add}, fn)
	member := make(chan error, 1)
	go func() {
		member <- q.JoinGroup(ctx, "g", GroupConfig{Member: "m", Pool: PoolConfig{LeaseTTL: 500 * time.Millisecond, OnError: errs.add}}, fn)
	}()
	receive(t, started)
	require.NoError(t, q.Close())
	close(release) // it finishes within its ShutdownTimeout
	assert.ErrorIs(t, receive(t, pool), ErrClosed)
	assert.ErrorIs(t, receive(t, member), ErrClosed)

	again, err := Dial(context.Background(), []string{servers[0].url}, Config{Prefix: prefix, Queues: 2})
	require.NoError(t, err)
	defer again.Close()
	require.NoError(t, again.AnalysePool(bounded(t), 0, PoolConfig{Workers: 1, ExitOnEmpty: true}, fn))
	assert.Equal(t, int32(2), runs.Load(), "its ack was not written: it ran again")
}

// With pools given to New, which Close leaves open, a pool that Close
// stops still hands back and acknowledges: nothing runs twice.
func TestCloseStopsAPoolGracefully(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 1, Config{})
	ids := addAll(t, q, []Task{{OrderID: 1, Payload: []byte("a")}, {OrderID: 1, Payload: []byte("b")}})
	rec := newRecorder()
	fn, started, release := holdFirstRun(rec, ids[0])
	pool := runPool(bounded(t), q, PoolConfig{Workers: 1}, fn)
	receive(t, started)
	require.NoError(t, q.Close())
	close(release)
	assert.ErrorIs(t, receive(t, pool), ErrClosed)
	assert.Equal(t, 1, rec.starts[ids[0]])
	st, err := q.Pool(0).Get().Do("HGET", newQueueKeys(q.cfg.Prefix, 0, 0).meta, "pending")
	require.NoError(t, err)
	pending, _ := redis.Int(st, nil)
	assert.Zero(t, pending, "its ack was written")
}

// refuser refuses ack scripts until flip says otherwise.
type refuser struct {
	mu       sync.Mutex
	refusing bool
	after    time.Time // once a refused ack comes after this, refuse it, then let every later one through
	calls    int
	flipped  chan struct{}
}

func (r *refuser) before(script string, _ []any) error {
	if script != "ack" {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if !r.refusing {
		return nil
	}
	if !r.after.IsZero() && time.Now().After(r.after) {
		r.refusing = false
		close(r.flipped)
	}
	return errors.New("LOADING Redis is loading the dataset in memory") // transient
}

// A's ack refused until the stop gives it up; B, the next task of A's
// OrderID, running at the stop, finishes after that, when Redis takes
// acks again. B's ack is not sent either: had it been, the next owner
// would run A again after B was done. Both stay pending, and run again
// in order.
func TestPoolStopGivesUpEveryWriteAfterOne(t *testing.T) {
	t.Parallel()
	srv := newTestServers(t, 1)[0]
	r := &refuser{refusing: true, flipped: make(chan struct{})}
	pool := hookPool(srv, r.before)
	defer pool.Close()
	prefix := testPrefix(t)
	q, err := New([]*redis.Pool{pool}, Config{Prefix: prefix})
	require.NoError(t, err)
	defer q.Close()
	ids := addAll(t, q, []Task{{OrderID: 1, Payload: []byte("A")}, {OrderID: 1, Payload: []byte("B")}})
	bStarted := make(chan struct{}, 1)
	rec := newRecorder()
	fn := rec.fn(func(ctx context.Context, task Task) error {
		if task.ID == ids[1] && task.Attempt == 1 {
			bStarted <- struct{}{}
			<-r.flipped // runs on past ShutdownTimeout, ignoring ctx, and succeeds
		}
		return nil
	})
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	var errs errLog
	const grace = 100 * time.Millisecond
	errc := runPool(ctx, q, PoolConfig{Workers: 1, ShutdownTimeout: grace, OnError: errs.add}, fn)
	receive(t, bStarted)
	require.Eventually(t, func() bool { r.mu.Lock(); defer r.mu.Unlock(); return r.calls > 0 }, 5*time.Second, time.Millisecond)
	stopAt := time.Now()
	r.mu.Lock()
	r.after = stopAt.Add(retryFor(grace))
	r.mu.Unlock()
	cancel()
	require.NoError(t, receive(t, errc))

	plain, err := New([]*redis.Pool{srv.pool}, Config{Prefix: prefix})
	require.NoError(t, err)
	defer plain.Close()
	require.NoError(t, plain.AnalysePool(bounded(t), 0, PoolConfig{Workers: 1, ExitOnEmpty: true}, fn))
	assert.Equal(t, []string{"A", "B", "A", "B"}, rec.order(1), "both stayed pending, and ran again in order")
}

// A Close over pools given to New, which it leaves open, does not give up
// a write at its first refusal: a blip of Redis after the Close makes
// nothing run twice.
func TestCloseOverNewsPoolsRetriesWrites(t *testing.T) {
	t.Parallel()
	srv := newTestServers(t, 1)[0]
	var refusing atomic.Bool
	refusing.Store(true)
	var refusedAfterClose atomic.Int32
	var closed atomic.Bool
	pool := hookPool(srv, func(script string, _ []any) error {
		if script == "ack" && refusing.Load() {
			if closed.Load() {
				refusedAfterClose.Add(1)
			}
			return errors.New("LOADING Redis is loading the dataset in memory")
		}
		return nil
	})
	defer pool.Close()
	prefix := testPrefix(t)
	q, err := New([]*redis.Pool{pool}, Config{Prefix: prefix})
	require.NoError(t, err)
	ids := addAll(t, q, []Task{{OrderID: 1, Payload: []byte("A")}, {OrderID: 1, Payload: []byte("B")}})
	rec := newRecorder()
	fn, bStarted, release := holdFirstRun(rec, ids[1])
	var errs errLog
	errc := runPool(bounded(t), q, PoolConfig{Workers: 1, OnError: errs.add}, fn)
	receive(t, bStarted)
	closed.Store(true)
	require.NoError(t, q.Close())
	require.Eventually(t, func() bool { return refusedAfterClose.Load() > 0 }, 5*time.Second, time.Millisecond)
	refusing.Store(false) // the blip is over
	close(release)
	assert.ErrorIs(t, receive(t, errc), ErrClosed)

	again, err := New([]*redis.Pool{srv.pool}, Config{Prefix: prefix})
	require.NoError(t, err)
	defer again.Close()
	require.NoError(t, again.AnalysePool(bounded(t), 0, PoolConfig{Workers: 1, ExitOnEmpty: true}, fn))
	assert.Equal(t, []string{"A", "B"}, rec.order(1), "A's ack was retried and taken")
}

// holdFirstRun returns rec's analyse function, in which the first
// delivery of task id says so on started, then waits for release to be
// closed; every other delivery returns nil at once.
func holdFirstRun(rec *recorder, id string) (fn AnalyseFunc, started chan struct{}, release chan struct{}) {
	started, release = make(chan struct{}, 1), make(chan struct{})
	fn = rec.fn(func(ctx context.Context, task Task) error {
		if task.ID == id && task.Attempt == 1 {
			started <- struct{}{}
			<-release
		}
		return nil
	})
	return fn, started, release
}

// The acks of one OrderID go to Redis in the order they were made, however
// many workers ran its tasks and however many calls the acker's take
// needs: when a stop gives up the acks after one call went through, no
// later task of an OrderID is recorded done while an earlier one stays
// pending (the next owner would run the earlier one after it).
func TestPoolStopKeepsEachOrderIDsAcksInOrder(t *testing.T) {
	t.Parallel()
	srv := newTestServers(t, 1)[0]
	// More tasks than two ack calls hold (maxClaim each, with a
	// retention), whatever the acker took before the acks were refused.
	const orders, per = 200, 10
	// With a retention an ack call's arguments are four per task. While
	// refusing, every ack is refused; then calls go through until the
	// first that holds a whole chunk (and its EVAL, should Redis not have
	// the script yet), and none after it.
	var mu sync.Mutex
	refusing, chunkSent, chunkThrough := true, false, false
	refusedAfter := 0
	pool := hookPool(srv, func(script string, args []any) error {
		if script != "ack" {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		big := len(args) >= 4*maxClaim
		switch {
		case refusing:
		case chunkThrough:
			refusedAfter++
		case chunkSent:
			// The chunk again (EVAL after a NOSCRIPT), or the next.
			chunkThrough = true
			if src, _ := args[0].(string); big && src == scriptSources["ack"] {
				return nil
			}
			refusedAfter++
		default:
			chunkSent = big
			return nil
		}
		return errors.New("LOADING Redis is loading the dataset in memory")
	})
	defer pool.Close()
	prefix := testPrefix(t)
	q, err := New([]*redis.Pool{pool}, Config{Prefix: prefix, Retention: time.Hour})
	require.NoError(t, err)
	defer q.Close()
	ids := addAll(t, q, orderTasks(orders, per))
	var ran atomic.Int64
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	var errs errLog
	errc := runPool(ctx, q, PoolConfig{Workers: 8, Dispatch: DispatchFree, Prefetch: 4096, MaxHeldTasks: 16384,
		ShutdownTimeout: 100 * time.Millisecond, OnError: errs.add}, func(context.Context, Task) error {
		ran.Add(1)
		return nil
	})
	require.Eventually(t, func() bool { return ran.Load() == orders*per }, 30*time.Second, time.Millisecond,
		"every task runs while its ack is refused")
	mu.Lock()
	refusing = false
	mu.Unlock()
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return refusedAfter > 0 }, 30*time.Second, time.Millisecond,
		"one whole chunk of acks goes through, and the next is refused")
	cancel()
	require.NoError(t, receive(t, errc))

	// Each OrderID's tasks are done up to one, and pending from there.
	done, pending, bad := 0, 0, 0
	for o := range orders {
		var states []TaskState
		for i := range per {
			st, err := q.Status(bounded(t), uint64(o), ids[i*orders+o])
			require.NoError(t, err)
			states = append(states, st.State)
		}
		for i, st := range states {
			switch st {
			case StateDone:
				done++
				if i > 0 && states[i-1] != StateDone {
					if bad++; bad <= 3 {
						t.Errorf("OrderID %d: task %d recorded done after an earlier one left pending: %v", o, i, states)
					}
				}
			case StatePending:
				pending++
			default:
				t.Fatalf("OrderID %d: task %d is %v", o, i, st)
			}
		}
	}
	assert.NotZero(t, done, "a chunk of acks was written")
	assert.NotZero(t, pending, "the stop gave up the acks refused")
}
