package queue

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// errLog collects the errors a pool reports.
type errLog struct {
	mu   sync.Mutex
	errs []error
}

func (l *errLog) add(err error) {
	l.mu.Lock()
	l.errs = append(l.errs, err)
	l.mu.Unlock()
}

func (l *errLog) all() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]error(nil), l.errs...)
}

// count returns how many reported errors match target (errors.Is).
func (l *errLog) count(target error) int {
	n := 0
	for _, err := range l.all() {
		if errors.Is(err, target) {
			n++
		}
	}
	return n
}

func TestPoolRecoversAbandonedClaims(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	const orders, per = 20, 5
	ids := addAll(t, q, orderTasks(orders, per))
	a, err := q.Consume(ctx, 0, ConsumerConfig{Owner: "crashed", LeaseTTL: time.Minute, MaxAttempts: 5})
	require.NoError(t, err)
	held, err := a.Claim(ctx, 37) // task 0 of every order, task 1 of 17
	require.NoError(t, err)
	require.Equal(t, ids[:37], taskIDs(held))
	// Orders 0-9 finish their first task; order 10's first task fails once;
	// the rest is abandoned in the crash.
	_, err = a.Ack(ctx, taskIDs(held[:10])...)
	require.NoError(t, err)
	_, err = a.Fail(ctx, held[10], errors.New("first try"))
	require.NoError(t, err)

	// A pool waits as a standby while the crashed owner's lease lasts, and
	// takes over when it lapses.
	rec := newRecorder()
	var errs errLog
	errc := runPool(ctx, q, PoolConfig{Workers: 4, ExitOnEmpty: true, OnError: errs.add, MaxAttempts: 5,
		LeaseTTL: 2 * time.Second}, rec.fn(nil))
	assert.Never(t, func() bool { return rec.total() > 0 }, 100*time.Millisecond, 10*time.Millisecond)
	lapse(t, s, k.lease)
	require.NoError(t, receive(t, errc))
	assert.Empty(t, errs.all())

	acked := map[string]bool{}
	for _, id := range ids[:10] {
		acked[id] = true
	}
	for i, id := range ids {
		want := 1
		switch {
		case acked[id]:
			assert.Zero(t, rec.starts[id], "acked task %d ran again", i)
			continue
		case i == 10:
			want = 3 // one recorded failure, and the retry that followed, interrupted
		case i < 37:
			want = 1 // its crashed first delivery was never recorded as started
		}
		assert.Equal(t, []int{want}, rec.attempts[id], "task %d", i)
	}
	for o := 0; o < orders; o++ {
		var want []string
		for i := 0; i < per; i++ {
			if !(o < 10 && i == 0) {
				want = append(want, pl(o, i))
			}
		}
		assert.Equal(t, want, rec.byOrder[uint64(o)], "order %d", o)
	}
	assert.Zero(t, rec.overlap)
	st := stats0(t, q)
	assert.EqualValues(t, 27, st.Redelivered)
	assert.EqualValues(t, orders*per, st.Processed)
	assert.Zero(t, st.Pending)
	assert.Zero(t, st.Ready)
	_, err = a.Ack(ctx, held[20].ID)
	assert.ErrorIs(t, err, ErrLeaseLost)
}

func TestPoolDeadLettersCrashLoop(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	ids := addAll(t, q, orderTasks(1, 2))
	const maxAttempts = 3
	// The first crash is not counted: nothing recorded that the first
	// delivery started. Recovery marks the task, its next claim records
	// the delivery, and from then on every crash counts.
	for _, attempt := range []int{1, 1, 2, 3} {
		c, err := q.Consume(ctx, 0, ConsumerConfig{LeaseTTL: time.Minute, MaxAttempts: maxAttempts})
		require.NoError(t, err)
		task, err := c.RemoveTask(ctx)
		require.NoError(t, err)
		require.Equal(t, ids[0], task.ID)
		require.Equal(t, attempt, task.Attempt)
		lapse(t, s, k.lease) // the process crashed on it
	}

	rec := newRecorder()
	var errs errLog
	require.NoError(t, q.AnalysePool(ctx, 0, PoolConfig{ExitOnEmpty: true, MaxAttempts: maxAttempts, OnError: errs.add}, rec.fn(nil)))
	assert.Empty(t, errs.all())
	assert.Zero(t, rec.starts[ids[0]], "a task that crashed its worker MaxAttempts times must not run again")
	assert.Equal(t, []string{pl(0, 1)}, rec.byOrder[0], "its OrderID goes on")
	ds, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, ds, 1)
	assert.Equal(t, ids[0], ds[0].ID)
	assert.Equal(t, maxAttempts, ds[0].Attempts)
	assert.Contains(t, ds[0].LastError, "delivered 3 times")
	assert.Equal(t, pl(0, 0), string(ds[0].Payload))
	st := stats0(t, q)
	assert.EqualValues(t, 1, st.Failed)
	assert.EqualValues(t, 1, st.Processed)
}

// blockFirst returns an AnalyseFunc (recording into rec) whose first
// delivery of task id signals started and then blocks until its ctx ends;
// that ctx's error arrives on cancelled.
func blockFirst(rec *recorder, id string) (fn AnalyseFunc, started chan struct{}, cancelled chan error) {
	started, cancelled = make(chan struct{}, 1), make(chan error, 1)
	var first sync.Once
	fn = rec.fn(func(ctx context.Context, task Task) error {
		blocks := false
		if task.ID == id {
			first.Do(func() { blocks = true })
		}
		if blocks {
			started <- struct{}{}
			<-ctx.Done()
			cancelled <- ctx.Err()
			return ctx.Err()
		}
		return nil
	})
	return fn, started, cancelled
}

func TestPoolLeaseLossCancelsAndRecovers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		intrude bool // another owner holds the lease for a while
	}{
		{"deleted", false},
		{"overwritten", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q, s, k := testQueue1(t)
			ids := addAll(t, q, orderTasks(1, 2))
			rec := newRecorder()
			fn, started, cancelled := blockFirst(rec, ids[0])
			ctx, cancel := context.WithCancel(bounded(t))
			defer cancel()
			var errs errLog
			errc := runPool(ctx, q, PoolConfig{Owner: "p", Workers: 2, LeaseTTL: 2 * time.Second, OnError: errs.add}, fn)
			receive(t, started)
			token := stats0(t, q).Token

			if tc.intrude {
				s.do(t, "SET", k.lease, "999999:intruder", "PX", 60000)
			} else {
				s.do(t, "DEL", k.lease)
			}
			assert.ErrorIs(t, receive(t, cancelled), context.Canceled, "the running task's ctx ends")
			require.Eventually(t, func() bool { return errs.count(ErrLeaseLost) > 0 }, 5*time.Second, time.Millisecond)

			if tc.intrude {
				// A standby now: it runs nothing while the other owner holds
				// the lease, and the interrupted task stays pending.
				assert.Never(t, func() bool { return len(rec.order(0)) > 1 }, 100*time.Millisecond, 10*time.Millisecond)
				assert.EqualValues(t, 1, pendingHas(t, s, k, ids[0]))
				assert.Equal(t, "intruder", stats0(t, q).Owner)
				lapse(t, s, k.lease)
			}
			// It takes the lease back and recovers: the interrupted task
			// first, then the next one. Its first delivery was not recorded
			// as started (first deliveries never are), so it is not counted.
			require.Eventually(t, func() bool { return len(rec.order(0)) == 3 }, 10*time.Second, time.Millisecond, "errors: %v", errs.all())
			assert.Equal(t, []string{pl(0, 0), pl(0, 0), pl(0, 1)}, rec.order(0))
			assert.Equal(t, []int{1, 1}, rec.attemptsOf(ids[0]))
			st := stats0(t, q)
			assert.Equal(t, "p", st.Owner)
			assert.Greater(t, st.Token, token)
			assert.EqualValues(t, 2, st.Redelivered)
			cancel()
			require.NoError(t, receive(t, errc))
			assert.Zero(t, stats0(t, q).Pending)
		})
	}
}

func TestPoolBadInput(t *testing.T) {
	t.Parallel()
	q, servers := newTestQueue(t, 2, Config{Queues: 3}) // analysers 0..5
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ok := func(context.Context, Task) error { return nil }

	assert.ErrorIs(t, q.AnalysePool(ctx, 0, PoolConfig{}, nil), ErrNilFunc)
	for _, a := range []int{-1, 6, 1 << 30} {
		assert.ErrorIs(t, q.AnalysePool(ctx, a, PoolConfig{}, ok), ErrAnalyserRange, "analyser %d", a)
		_, err := q.Consume(ctx, a, ConsumerConfig{})
		assert.ErrorIs(t, err, ErrAnalyserRange, "analyser %d", a)
		_, err = q.Pending(ctx, a)
		assert.ErrorIs(t, err, ErrAnalyserRange)
		_, err = q.Dead(ctx, a)
		assert.ErrorIs(t, err, ErrAnalyserRange)
		_, err = q.Replay(ctx, a)
		assert.ErrorIs(t, err, ErrAnalyserRange)
		_, err = q.Purge(ctx, a)
		assert.ErrorIs(t, err, ErrAnalyserRange)
	}
	for _, cfg := range []PoolConfig{
		{Workers: -1},
		{Prefetch: -1},
		{MaxAttempts: -1},
		{LeaseTTL: time.Millisecond},
		{LeaseTTL: -time.Second},
		// Sizes out of any sensible range: an error, not a pool that
		// allocates without end.
		{Workers: 1 << 40},
		{Prefetch: 1 << 40},
		{MaxAttempts: 1 << 20},
		{LeaseTTL: 48 * time.Hour},
		{TaskTimeout: 1000 * time.Hour},
		{ShutdownTimeout: -time.Second},
		{Prefetch: 100, MaxHeldTasks: 10},
		{MaxHeldBytes: -1},
	} {
		assert.ErrorIs(t, q.AnalysePool(ctx, 0, cfg, ok), ErrBadConfig, "%+v", cfg)
	}
	for _, cfg := range []ConsumerConfig{
		{LeaseTTL: time.Millisecond},
		{MaxAttempts: -2},
		{MaxAttempts: 1 << 20},
		{LeaseTTL: 48 * time.Hour},
	} {
		_, err := q.Consume(ctx, 0, cfg)
		assert.ErrorIs(t, err, ErrBadConfig, "%+v", cfg)
	}
	// Nothing was written anywhere.
	for i, s := range servers {
		assert.Empty(t, scanKeys(t, s, q.cfg.Prefix), "server %d", i)
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func debugLogger(w *lockedBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// miniQueue returns a queue on a miniredis of its own, whatever the
// backend of the test run.
func miniQueue(t *testing.T) (*Queue, *miniredis.Miniredis) {
	t.Helper()
	m := miniredis.RunT(t)
	pool := testPool("redis://" + m.Addr())
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	return q, m
}

// reopen returns a new Queue over q's pools and settings, as a process
// that starts afresh would make.
func reopen(t *testing.T, q *Queue) *Queue {
	t.Helper()
	pools := make([]*redis.Pool, len(q.parts))
	for i, p := range q.parts {
		pools[i] = p.pool
	}
	q2, err := New(pools, q.cfg)
	require.NoError(t, err)
	return q2
}

func TestPoolRedisDownAndBack(t *testing.T) {
	t.Parallel()
	t.Run("mid-run", func(t *testing.T) {
		t.Parallel()
		q, m := miniQueue(t)
		ctx, cancel := context.WithCancel(bounded(t))
		defer cancel()
		rec := newRecorder()
		var errs errLog
		errc := runPool(ctx, q, PoolConfig{Workers: 2, LeaseTTL: time.Minute, OnError: errs.add}, rec.fn(nil))
		_, err := q.AddTask(ctx, 1, []byte("before"))
		require.NoError(t, err)
		require.Eventually(t, func() bool { return len(rec.order(1)) == 1 }, 5*time.Second, time.Millisecond)

		m.Close()
		_, err = q.AddTask(ctx, 1, []byte("lost"))
		assert.Error(t, err, "AddTask reports the outage")
		require.Eventually(t, func() bool { return len(errs.all()) >= 2 }, 10*time.Second, time.Millisecond,
			"the pool reports the outage")
		require.NoError(t, m.Restart())
		require.Eventually(t, func() bool {
			_, err := q.AddTask(ctx, 1, []byte("after"))
			return err == nil
		}, 5*time.Second, 10*time.Millisecond)
		require.Eventually(t, func() bool { return len(rec.order(1)) == 2 }, 15*time.Second, time.Millisecond)
		assert.Equal(t, []string{"before", "after"}, rec.order(1))
		cancel()
		require.NoError(t, receive(t, errc))
		assert.Zero(t, errs.count(ErrLeaseLost), "a short outage keeps the lease")
	})

	t.Run("at start", func(t *testing.T) {
		t.Parallel()
		q, m := miniQueue(t)
		ctx, cancel := context.WithCancel(bounded(t))
		defer cancel()
		_, err := q.AddTask(ctx, 1, []byte("queued"))
		require.NoError(t, err)
		m.Close()
		// A process starting while the server is down.
		rec := newRecorder()
		var errs errLog
		errc := runPool(ctx, reopen(t, q), PoolConfig{OnError: errs.add}, rec.fn(nil))
		require.Eventually(t, func() bool { return len(errs.all()) >= 2 }, 10*time.Second, time.Millisecond,
			"the pool reports the outage and retries")
		assert.Empty(t, errc, "the pool waits for the server")
		require.NoError(t, m.Restart())
		require.Eventually(t, func() bool { return len(rec.order(1)) == 1 }, 15*time.Second, time.Millisecond)
		cancel()
		require.NoError(t, receive(t, errc))
	})

	t.Run("longer than the lease", func(t *testing.T) {
		t.Parallel()
		q, m := miniQueue(t)
		ctx, cancel := context.WithCancel(bounded(t))
		defer cancel()
		ids, err := q.AddTasks(ctx, orderTasks(1, 2))
		require.NoError(t, err)
		rec := newRecorder()
		fn, started, cancelled := blockFirst(rec, ids[0])
		var errs errLog
		errc := runPool(ctx, q, PoolConfig{LeaseTTL: time.Second, OnError: errs.add}, fn)
		receive(t, started)
		m.Close()
		// It cannot renew: it cancels the running task before the lease
		// ends, and waits as a standby.
		assert.ErrorIs(t, receive(t, cancelled), context.Canceled)
		require.Eventually(t, func() bool { return errs.count(ErrLeaseLost) > 0 }, 5*time.Second, time.Millisecond)
		m.FastForward(time.Second) // the server's clock expires the old lease
		require.NoError(t, m.Restart())
		require.Eventually(t, func() bool { return len(rec.order(0)) == 3 }, 15*time.Second, time.Millisecond)
		assert.Equal(t, []string{pl(0, 0), pl(0, 0), pl(0, 1)}, rec.order(0))
		assert.Equal(t, []int{1, 1}, rec.attemptsOf(ids[0]), "an unrecorded first delivery is not counted")
		cancel()
		require.NoError(t, receive(t, errc))
	})
}

func TestPoolEvictionPolicyWarning(t *testing.T) {
	// Not parallel: on a real server it changes the server's configuration.
	drainOne := func(t *testing.T, q *Queue) string {
		t.Helper()
		var log lockedBuffer
		_, err := q.AddTask(context.Background(), 1, []byte("x"))
		require.NoError(t, err)
		rec := newRecorder()
		require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{ExitOnEmpty: true, Logger: debugLogger(&log)}, rec.fn(nil)))
		assert.Equal(t, []string{"x"}, rec.order(1), "the pool goes on")
		return log.String()
	}

	t.Run("config refused", func(t *testing.T) {
		q, _ := miniQueue(t) // miniredis has no CONFIG command
		log := drainOne(t, q)
		assert.Contains(t, log, "cannot read maxmemory-policy")
		assert.NotContains(t, log, "may evict")
	})

	t.Run("evicting policy", func(t *testing.T) {
		if testRedisURL == "" {
			t.Skip("needs a real server: set QUEUE_TEST_REDIS_URL")
		}
		skipOnCluster(t, "CONFIG SET reaches one primary, whichever the router picks")
		q, servers := newTestQueue(t, 1, Config{})
		s := servers[0]
		orig, err := redis.Strings(s.do(t, "CONFIG", "GET", "maxmemory-policy"), nil)
		require.NoError(t, err)
		require.Len(t, orig, 2)
		restore := func() { s.do(t, "CONFIG", "SET", "maxmemory-policy", orig[1]) }
		t.Cleanup(restore)

		s.do(t, "CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
		log := drainOne(t, q)
		restore()
		assert.Contains(t, log, "may evict")
		assert.Contains(t, log, "allkeys-lru")

		if orig[1] == "noeviction" {
			log = drainOne(t, q)
			assert.NotContains(t, log, "may evict")
		}
	})
}

func TestPoolCleanStopReportsNothing(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 1, Config{})
	// A session this short releases its lease while its first renewal may
	// still be under way: a clean stop all the same, with nothing to report.
	var errs errLog
	for range 300 {
		require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{ExitOnEmpty: true, OnError: errs.add}, func(context.Context, Task) error {
			return nil
		}))
	}
	assert.Empty(t, errs.all())
	assert.Empty(t, stats0(t, q).Owner)
}

// An ack that reaches Redis after another owner took the lease is refused
// (the fencing token, checked inside the script), and the pool that sent
// it stops its tenure: the task counts as not done, stays pending, and
// runs again once the pool has the lease back. Here another owner takes
// the lease as the task ends, before its ack is sent: the ack script, or
// another call of the pool that meets the new token first, ends the
// tenure (both happen, from run to run).
func TestPoolLateAckOfAStaleOwnerIsRefused(t *testing.T) {
	t.Parallel()
	q, servers := newTestQueue(t, 1, Config{})
	s, k := servers[0], newQueueKeys(q.cfg.Prefix, 0, 0)
	ctx, stop := context.WithCancel(bounded(t))
	defer stop()
	ids := addAll(t, q, orderTasks(1, 1))
	taken := make(chan struct{})
	var errs errLog
	var runs atomic.Int32
	errc := runPool(ctx, q, PoolConfig{Owner: "stale", Workers: 1, LeaseTTL: 2 * time.Second, OnError: errs.add},
		func(context.Context, Task) error {
			if runs.Add(1) == 1 {
				s.do(t, "SET", k.lease, "999999:intruder", "PX", 60000)
				close(taken)
			}
			return nil
		})
	receive(t, taken)
	require.Eventually(t, func() bool { return errs.count(ErrLeaseLost) > 0 }, 10*time.Second, time.Millisecond)
	st := stats0(t, q)
	assert.Equal(t, "intruder", st.Owner)
	assert.Zero(t, st.Processed, "the late ack counted for nothing")
	assert.EqualValues(t, 1, pendingHas(t, s, k, ids[0]), "still pending")
	assert.EqualValues(t, 1, runs.Load(), "the stale pool started nothing more")

	lapse(t, s, k.lease) // the intruder is gone: the pool takes the lease back
	require.Eventually(t, func() bool { return stats0(t, q).Processed == 1 }, 10*time.Second, time.Millisecond)
	assert.EqualValues(t, 2, runs.Load(), "run again, at least once")
	stop()
	require.NoError(t, receive(t, errc))
}

// A dead letter waits for the acks handed over before it: the earlier
// task of its OrderID, acknowledged while Redis refused acks for a while,
// is recorded done before the later one is recorded dead. Written first,
// a lease lost meanwhile would leave the earlier task pending, to run
// again after the later one had died.
func TestDeadLetterWaitsForEarlierAcks(t *testing.T) {
	t.Parallel()
	srv := newTestServers(t, 1)[0]
	var mu sync.Mutex
	var taken []string // the outcome scripts Redis ran, in order
	refuseUntil := time.Now().Add(time.Hour)
	pool := hookPool(srv, func(script string, _ []any) error {
		if script != "ack" && script != "bury" {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		if script == "ack" && time.Now().Before(refuseUntil) {
			return errors.New("LOADING Redis is loading the dataset in memory")
		}
		taken = append(taken, script)
		return nil
	})
	defer pool.Close()
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	defer q.Close()
	ids := addAll(t, q, []Task{{OrderID: 1, Payload: []byte("A")}, {OrderID: 1, Payload: []byte("B")}})
	fn := func(ctx context.Context, task Task) error {
		if task.ID == ids[0] {
			mu.Lock()
			refuseUntil = time.Now().Add(300 * time.Millisecond) // A's ack is refused a while
			mu.Unlock()
			return nil
		}
		return errors.New("B fails")
	}
	var errs errLog
	require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{Workers: 1, MaxAttempts: 1, ExitOnEmpty: true, OnError: errs.add}, fn))
	mu.Lock()
	defer mu.Unlock()
	// (A script's first call may go twice: EVALSHA, then EVAL.)
	assert.Equal(t, []string{"ack", "bury"}, slices.Compact(taken), "A recorded done before B dead")
	dead, err := q.Dead(context.Background(), 0)
	require.NoError(t, err)
	require.Len(t, dead, 1)
	assert.Equal(t, ids[1], dead[0].ID)
}

// A pool whose Redis loses its data (a restart without persistence) says
// so when it takes the queue again and finds the layout record gone: the
// tasks Redis held then are lost, and nothing else would tell.
func TestPoolWarnsWhenRedisLostItsData(t *testing.T) {
	t.Parallel()
	q, servers := newTestQueue(t, 1, Config{})
	s := servers[0]
	var logs lockedBuffer
	ctx, stop := context.WithCancel(bounded(t))
	defer stop()
	addAll(t, q, orderTasks(1, 1))
	var runs atomic.Int32
	errc := runPool(ctx, q, PoolConfig{LeaseTTL: time.Second, OnError: func(error) {},
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))},
		func(context.Context, Task) error { runs.Add(1); return nil })
	require.Eventually(t, func() bool { return runs.Load() == 1 }, 10*time.Second, time.Millisecond)
	assert.NotContains(t, logs.String(), "layout record was gone")
	k := newQueueKeys(q.cfg.Prefix, 0, 0)
	// As a restart without persistence leaves it (key by key: a cluster
	// has no KEYS).
	for _, key := range []string{q.layoutKeyOf(q.parts[0]), k.lease, k.meta, k.ready, k.claims, k.wake} {
		s.do(t, "DEL", key)
	}
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "layout record was gone") }, 10*time.Second, 5*time.Millisecond)
	stop()
	require.NoError(t, <-errc)
}

// An analyse function's error whose Error method panics (a typed nil, or
// a broken Error) fails its delivery as any error does: it is retried,
// then dead-lettered with a text that says what happened, and every place
// that turns it into text (OnError, OnDone, the dead-letter record, the
// log) gets that text, the original error still reachable.
func TestPoolErrorWhoseErrorMethodPanics(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		err  func() error
		want string // in the text
	}{
		{"typed nil", func() error { var e *nilDerefError; return e }, "error of type *queue.nilDerefError (a nil pointer): its Error method panicked"},
		{"Error panics", func() error { return boomError{} }, "error of type queue.boomError: its Error method panicked: boom in Error"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q, _, _ := testQueue1(t)
			ctx := bounded(t)
			ids := addAll(t, q, orderTasks(2, 1))
			rec := newRecorder()
			var errs errLog
			var mu sync.Mutex
			var texts, done []string
			var logs lockedBuffer
			cfg := PoolConfig{ExitOnEmpty: true, MaxAttempts: 2, Backoff: func(int) time.Duration { return time.Millisecond },
				OnError: func(err error) {
					errs.add(err)
					text := err.Error() // as a caller's logging does
					mu.Lock()
					texts = append(texts, text)
					mu.Unlock()
				},
				OnDone: func(_ Task, _ time.Duration, err error) {
					text := err.Error()
					mu.Lock()
					done = append(done, text)
					mu.Unlock()
				}}
			require.NoError(t, q.AnalysePool(ctx, 0, cfg, rec.fn(func(context.Context, Task) error { return tc.err() })))
			for _, id := range ids {
				assert.Equal(t, []int{1, 2}, rec.attemptsOf(id), "retried, then dead-lettered")
			}
			require.Len(t, errs.all(), 4, "two failed deliveries of each task")
			for _, err := range errs.all() {
				var te *TaskError
				require.ErrorAs(t, err, &te)
				assert.Equal(t, te.Attempt == 2, te.Dead)
				switch want := tc.err().(type) {
				case *nilDerefError:
					var got *nilDerefError
					assert.ErrorAs(t, err, &got, "the original error is reachable")
					assert.Nil(t, got)
				case boomError:
					assert.ErrorIs(t, err, want, "the original error is reachable")
				}
			}
			mu.Lock()
			for _, s := range append(texts, done...) {
				assert.Contains(t, s, tc.want)
			}
			assert.Len(t, done, 4)
			mu.Unlock()
			dead, err := q.Dead(ctx, 0)
			require.NoError(t, err)
			require.Len(t, dead, 2)
			for _, d := range dead {
				assert.Equal(t, 2, d.Attempts)
				assert.Contains(t, d.LastError, tc.want)
			}

			// Without OnError, the pool logs the failures, with that text.
			addAll(t, q, orderTasks(1, 1))
			cfg.OnError, cfg.OnDone = nil, nil
			cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			require.NoError(t, q.AnalysePool(ctx, 0, cfg, func(context.Context, Task) error { return tc.err() }))
			assert.Contains(t, logs.String(), "queue: task failed")
			assert.Contains(t, logs.String(), tc.want)
		})
	}
}

// A pool of a Queue made by Dial warns that Redis lost its data too (as
// TestPoolWarnsWhenRedisLostItsData's does). There every new connection
// to a server whose layout was verified checks it before it is used, and
// records it again when it is gone: the first connection after the
// restart has recorded it before the pool's next tenure reads it, and
// must pass on that it was gone.
func TestDialPoolWarnsWhenRedisLostItsData(t *testing.T) {
	t.Parallel()
	m := miniredis.RunT(t)
	expireInRealTime(t, m)
	warnsOfLostData(t, "redis://"+m.Addr(), func() {
		restartEmpty(t, m, "", 0)
	})
}

// TestDialPoolWarnsWhenRedisLostItsDataReal is
// TestDialPoolWarnsWhenRedisLostItsData with a redis-server killed and
// started again, empty.
func TestDialPoolWarnsWhenRedisLostItsDataReal(t *testing.T) {
	requireFaultSuite(t)
	r := startRedis(t, false)
	warnsOfLostData(t, r.url(), func() {
		r.kill()
		r.start()
	})
}

// warnsOfLostData runs a pool of a Queue dialled to url, a task running
// as restart makes its Redis lose its data, and checks that the pool
// warns once it takes the queue again, and not before.
func warnsOfLostData(t *testing.T, url string, restart func()) {
	ctx, stop := context.WithCancel(bounded(t))
	defer stop()
	q, err := Dial(ctx, []string{url}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	defer q.Close()
	addAll(t, q, orderTasks(1, 2))
	var logs lockedBuffer
	var runs atomic.Int32
	release := make(chan struct{})
	errc := runPool(ctx, q, PoolConfig{LeaseTTL: time.Second, Workers: 1, OnError: func(error) {},
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))},
		func(ctx context.Context, _ Task) error {
			if runs.Add(1) == 1 {
				select { // held as Redis restarts
				case <-release:
				case <-ctx.Done():
				}
			}
			return nil
		})
	require.Eventually(t, func() bool { return runs.Load() == 1 }, 10*time.Second, time.Millisecond)
	restart()
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "layout record was gone") }, 10*time.Second, 5*time.Millisecond,
		"logs: %s", &logs)
	assert.Equal(t, 1, strings.Count(logs.String(), "layout record was gone"), "warned once")
	close(release)
	stop()
	require.NoError(t, <-errc)
}
