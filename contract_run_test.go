package queue_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/qugo/queue"
)

// event is one start or end of a delivery, in the order the test saw them.
type event struct {
	payload string
	attempt int
	end     bool
}

type eventLog struct {
	mu sync.Mutex
	ev []event
}

func (l *eventLog) add(e event) {
	l.mu.Lock()
	l.ev = append(l.ev, e)
	l.mu.Unlock()
}

func (l *eventLog) index(payload string, attempt int, end bool) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, e := range l.ev {
		if e == (event{payload, attempt, end}) {
			return i
		}
	}
	return -1
}

// TestContractRetryDeadOrder: an OrderID's failing task is retried in
// place while another OrderID flows; its next task starts only after it
// was dead-lettered, with payload, attempts and last error; the dead task
// can be listed, replayed (it then runs after what is queued) and purged.
func TestContractRetryDeadOrder(t *testing.T) {
	verifyNoLeak(t)
	servers, prefix := contractSetup(t, 1)
	ctx := context.Background()
	q := contractQueue(t, servers, queue.Config{Prefix: prefix})
	const bad, other = 1, 2
	var ids []string
	for _, tk := range []struct {
		order   uint64
		payload string
	}{{bad, "poison"}, {bad, "after"}, {other, "o1"}, {other, "o2"}, {other, "o3"}} {
		id, err := q.AddTask(ctx, tk.order, []byte(tk.payload))
		require.NoError(t, err)
		ids = append(ids, id)
	}
	var log eventLog
	var taskErrs atomic.Int32
	cfg := queue.PoolConfig{
		Workers: 4, ExitOnEmpty: true, MaxAttempts: 3,
		Backoff: func(int) time.Duration { return 100 * time.Millisecond },
		OnError: func(err error) {
			var te *queue.TaskError
			if errors.As(err, &te) {
				taskErrs.Add(1)
			}
		},
	}
	var st queue.TaskStatus
	require.NoError(t, q.AnalysePool(ctx, 0, cfg, func(ctx context.Context, task queue.Task) error {
		p := string(task.Payload)
		log.add(event{p, task.Attempt, false})
		defer log.add(event{p, task.Attempt, true})
		if p == "o3" { // runs while "poison" waits for its retry
			var err error
			st, err = q.Status(ctx, bad, ids[0])
			assert.NoError(t, err)
		}
		if p == "poison" {
			return fmt.Errorf("bad input %d", task.Attempt)
		}
		return nil
	}))
	for a := 1; a <= 3; a++ {
		assert.NotEqual(t, -1, log.index("poison", a, true), "attempt %d ran", a)
	}
	assert.Equal(t, -1, log.index("poison", 4, false), "a fourth attempt ran")
	assert.Greater(t, log.index("after", 1, false), log.index("poison", 3, true), "the next task of the OrderID started before the dead letter")
	assert.Less(t, log.index("o3", 1, true), log.index("poison", 2, false), "other OrderIDs waited for the retry")
	assert.Equal(t, int32(3), taskErrs.Load(), "each failed delivery reaches OnError as a *TaskError")
	assert.Contains(t, []queue.TaskState{queue.StateRetrying, queue.StatePending}, st.State, "status while retrying")

	dead, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, dead, 1)
	assert.Equal(t, ids[0], dead[0].ID)
	assert.Equal(t, uint64(bad), dead[0].OrderID)
	assert.Equal(t, "poison", string(dead[0].Payload))
	assert.Equal(t, 3, dead[0].Attempts)
	assert.Equal(t, "bad input 3", dead[0].LastError)
	assert.WithinDuration(t, time.Now(), dead[0].DiedAt, time.Minute)
	st, err = q.Status(ctx, bad, ids[0])
	require.NoError(t, err)
	assert.Equal(t, queue.StateDead, st.State)
	assert.Equal(t, 3, st.Attempt)
	assert.Equal(t, "bad input 3", st.LastError)

	// Replay: the task goes behind what is queued, with its count reset.
	_, err = q.AddTask(ctx, bad, []byte("queued"))
	require.NoError(t, err)
	n, err := q.Replay(ctx, 0)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	var got []string
	require.NoError(t, q.AnalysePool(ctx, 0, queue.PoolConfig{ExitOnEmpty: true}, func(_ context.Context, task queue.Task) error {
		got = append(got, fmt.Sprintf("%s/%d", task.Payload, task.Attempt))
		return nil
	}))
	assert.Equal(t, []string{"queued/1", "poison/1"}, got)
	dead, err = q.Dead(ctx, 0)
	require.NoError(t, err)
	assert.Empty(t, dead)

	// Purge: by ID and all.
	require.NoError(t, q.AnalysePool(ctx, 0, queue.PoolConfig{ExitOnEmpty: true, MaxAttempts: 1}, func(context.Context, queue.Task) error { return nil }))
	for i := 0; i < 3; i++ {
		_, err = q.AddTask(ctx, bad, []byte(fmt.Sprint("p", i)))
		require.NoError(t, err)
	}
	require.NoError(t, q.AnalysePool(ctx, 0, queue.PoolConfig{ExitOnEmpty: true, MaxAttempts: 1}, func(context.Context, queue.Task) error {
		return errors.New("no")
	}))
	dead, err = q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, dead, 3)
	n, err = q.Purge(ctx, 0, dead[0].ID)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	n, err = q.Purge(ctx, 0)
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	dead, err = q.Dead(ctx, 0)
	require.NoError(t, err)
	assert.Empty(t, dead)
	q.Close()
}

// TestContractGracefulStop: a stop while the only worker runs a task
// finishes it, hands the unstarted ones back at the consuming end in
// order, runs nothing twice, and joins every goroutine.
func TestContractGracefulStop(t *testing.T) {
	verifyNoLeak(t)
	servers, prefix := contractSetup(t, 1)
	q := contractQueue(t, servers, queue.Config{Prefix: prefix})
	bg := context.Background()
	for i := 0; i < 5; i++ {
		_, err := q.AddTask(bg, 9, []byte(fmt.Sprint(i)))
		require.NoError(t, err)
	}
	ctx, cancel := context.WithCancel(bg)
	started := make(chan struct{})
	var ran []string
	done := make(chan error, 1)
	go func() {
		done <- q.AnalysePool(ctx, 0, queue.PoolConfig{Workers: 1}, func(tctx context.Context, task queue.Task) error {
			ran = append(ran, string(task.Payload))
			if string(task.Payload) == "0" {
				close(started)
				<-ctx.Done() // the stop has begun
				time.Sleep(50 * time.Millisecond)
				return tctx.Err() // ShutdownTimeout (10s) has not cancelled it
			}
			return nil
		})
	}()
	<-started
	pending, err := q.Pending(bg, 0)
	require.NoError(t, err)
	require.Len(t, pending, 5, "the pool claimed the batch")
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("AnalysePool did not return after its ctx ended")
	}
	assert.Equal(t, []string{"0"}, ran)
	pending, err = q.Pending(bg, 0)
	require.NoError(t, err)
	assert.Empty(t, pending, "unstarted tasks were left pending")
	stats, err := q.Stats(bg)
	require.NoError(t, err)
	assert.Equal(t, int64(4), stats[0].Ready)
	assert.Equal(t, int64(1), stats[0].Processed)
	assert.Empty(t, stats[0].Owner, "the lease was released")

	_, err = q.AddTask(bg, 9, []byte("5"))
	require.NoError(t, err)
	ran = nil
	require.NoError(t, q.AnalysePool(bg, 0, queue.PoolConfig{ExitOnEmpty: true}, func(_ context.Context, task queue.Task) error {
		ran = append(ran, fmt.Sprintf("%s/%d", task.Payload, task.Attempt))
		return nil
	}))
	assert.Equal(t, []string{"1/1", "2/1", "3/1", "4/1", "5/1"}, ran, "handed back in order, at the consuming end, uncounted")
	q.Close()
}

// TestContractDrainLeavesFixedKeys: after a drain with retries, a dead
// letter replayed, a scheduled task and a cancel, only the fixed keys of
// the queue are left.
func TestContractDrainLeavesFixedKeys(t *testing.T) {
	servers, prefix := contractSetup(t, 1)
	ctx := context.Background()
	q := contractQueue(t, servers, queue.Config{Prefix: prefix})
	var ids []string
	for i := 0; i < 50; i++ {
		id, err := q.AddTask(ctx, uint64(i%7), []byte(fmt.Sprint(i)))
		require.NoError(t, err)
		ids = append(ids, id)
	}
	// Per queued task, Redis holds one list entry and nothing else.
	tag := "{" + prefix + ":0.0}:"
	assert.Equal(t, []string{prefix + ":layout", tag + "ready"}, prefixKeys(t, servers[0], prefix), "keys of 50 queued tasks")
	assert.Equal(t, 50, llen(t, servers[0], tag+"ready"))
	_, err := q.AddTaskAfter(ctx, 3, 20*time.Millisecond, []byte("later"))
	require.NoError(t, err)
	_, err = q.Cancel(ctx, 1, ids[1])
	require.NoError(t, err)
	var failed sync.Map
	cfg := queue.PoolConfig{ExitOnEmpty: true, MaxAttempts: 2, Backoff: func(int) time.Duration { return time.Millisecond }}
	fn := func(_ context.Context, task queue.Task) error {
		if _, again := failed.LoadOrStore(task.ID, true); !again && task.OrderID == 5 {
			return errors.New("once")
		}
		return nil
	}
	var stats []queue.AnalyserStats
	for { // ExitOnEmpty does not wait for the scheduled task
		require.NoError(t, q.AnalysePool(ctx, 0, cfg, fn))
		stats, err = q.Stats(ctx)
		require.NoError(t, err)
		if stats[0].Scheduled == 0 && stats[0].Ready == 0 {
			break
		}
	}
	assert.Equal(t, int64(50), stats[0].Processed)
	assert.Equal(t, int64(1), stats[0].Cancelled)
	// The layout, the counters and the standby's wake-up list (at most
	// one element, pushed when the lease was released): nothing per task.
	assert.Equal(t, []string{prefix + ":layout", tag + "meta", tag + "wake"}, prefixKeys(t, servers[0], prefix), "keys left after a drain")
	assert.LessOrEqual(t, llen(t, servers[0], tag+"wake"), 1)
}

// countingConn counts the commands sent on a connection.
type countingConn struct {
	redis.Conn
	n *atomic.Int64
}

func (c countingConn) Do(cmd string, args ...any) (any, error) {
	if cmd != "" {
		c.n.Add(1)
	}
	return c.Conn.Do(cmd, args...)
}

func (c countingConn) Send(cmd string, args ...any) error {
	c.n.Add(1)
	return c.Conn.Send(cmd, args...)
}

func (c countingConn) DoWithTimeout(d time.Duration, cmd string, args ...any) (any, error) {
	if cmd != "" {
		c.n.Add(1)
	}
	return redis.DoWithTimeout(c.Conn, d, cmd, args...)
}

func (c countingConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	if cmd != "" {
		c.n.Add(1)
	}
	return redis.DoContext(c.Conn, ctx, cmd, args...)
}

func (c countingConn) ReceiveContext(ctx context.Context) (any, error) {
	return redis.ReceiveContext(c.Conn, ctx)
}

func (c countingConn) ReceiveWithTimeout(d time.Duration) (any, error) {
	return redis.ReceiveWithTimeout(c.Conn, d)
}

// TestContractIdleWakes: an idle pool does not poll (a handful of
// commands a second), and starts a task added to it soon after.
func TestContractIdleWakes(t *testing.T) {
	servers, prefix := contractSetup(t, 1)
	var cmds atomic.Int64
	url := servers[0].url
	pool := &redis.Pool{MaxIdle: 8, DialContext: func(ctx context.Context) (redis.Conn, error) {
		c, err := redis.DialURLContext(ctx, url)
		if err != nil {
			return nil, err
		}
		return countingConn{c, &cmds}, nil
	}}
	defer pool.Close()
	q, err := queue.New([]*redis.Pool{pool}, queue.Config{Prefix: prefix})
	require.NoError(t, err)
	defer q.Close()
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan time.Time, 16)
	done := make(chan error, 1)
	go func() {
		done <- q.AnalysePool(ctx, 0, queue.PoolConfig{}, func(context.Context, queue.Task) error {
			started <- time.Now()
			return nil
		})
	}()
	defer func() { cancel(); require.NoError(t, <-done) }()
	_, err = q.AddTask(ctx, 1, []byte("warm"))
	require.NoError(t, err)
	<-started

	time.Sleep(300 * time.Millisecond) // settle into the idle wait
	before := cmds.Load()
	time.Sleep(time.Second)
	idle := cmds.Load() - before
	assert.Less(t, idle, int64(20), "commands in an idle second: the pool polls")

	var lat []time.Duration
	for i := 0; i < 5; i++ {
		time.Sleep(150 * time.Millisecond)
		at := time.Now()
		_, err := q.AddTask(ctx, 1, []byte("x"))
		require.NoError(t, err)
		lat = append(lat, (<-started).Sub(at))
	}
	min := lat[0]
	for _, l := range lat {
		if l < min {
			min = l
		}
	}
	assert.Less(t, min, 100*time.Millisecond, "enqueue to start, best of %v", lat)
	t.Logf("idle commands/s %d; enqueue to start %v", idle, lat)
}

// TestContractEvictionWarning: a server that may evict gets a warning at
// start; one that forbids CONFIG still runs the pool.
func TestContractEvictionWarning(t *testing.T) {
	servers, prefix := contractSetup(t, 1)
	s := servers[0]
	ctx := context.Background()
	run := func(t *testing.T, pools []*redis.Pool) string {
		var buf bytes.Buffer
		var mu sync.Mutex
		log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &buf}, &slog.HandlerOptions{Level: slog.LevelWarn}))
		q, err := queue.New(pools, queue.Config{Prefix: prefix})
		require.NoError(t, err)
		defer q.Close()
		_, err = q.AddTask(ctx, 1, []byte("x"))
		require.NoError(t, err)
		ran := 0
		require.NoError(t, q.AnalysePool(ctx, 0, queue.PoolConfig{ExitOnEmpty: true, Logger: log}, func(context.Context, queue.Task) error {
			ran++
			return nil
		}))
		assert.Equal(t, 1, ran)
		mu.Lock()
		defer mu.Unlock()
		return buf.String()
	}
	if s.mini != nil { // miniredis has no CONFIG: a server that refuses it
		assert.NotContains(t, run(t, contractPools(servers)), "level=WARN")
		return
	}
	c := s.pool.Get()
	defer c.Close()
	old, err := redis.Strings(c.Do("CONFIG", "GET", "maxmemory-policy"))
	require.NoError(t, err)
	assert.NotContains(t, run(t, contractPools(servers)), "maxmemory-policy", "no warning under %s", old[1])
	_, err = c.Do("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
	require.NoError(t, err)
	t.Cleanup(func() {
		c := s.pool.Get()
		defer c.Close()
		_, err := c.Do("CONFIG", "SET", "maxmemory-policy", old[1])
		assert.NoError(t, err, "restore maxmemory-policy")
	})
	out := run(t, contractPools(servers))
	assert.Contains(t, out, "level=WARN")
	assert.Contains(t, out, "maxmemory-policy=allkeys-lru")

	// A user who may not use CONFIG (managed services refuse it) is told
	// by INFO memory; one refused both runs on, unwarned.
	user := strings.NewReplacer(":", "-").Replace(prefix)
	limited := queue.LimitedPoolForTest(t, s.pool, s.url, user, "-config")
	lc := limited.Get()
	_, err = lc.Do("CONFIG", "GET", "maxmemory-policy")
	lc.Close()
	require.Error(t, err, "the limited user may not use CONFIG")
	out = run(t, []*redis.Pool{limited})
	assert.Contains(t, out, "level=WARN")
	assert.Contains(t, out, "maxmemory-policy=allkeys-lru")
	blind := queue.LimitedPoolForTest(t, s.pool, s.url, user+"-blind", "-config", "-info")
	assert.NotContains(t, run(t, []*redis.Pool{blind}), "level=WARN")
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// verifyNoLeak checks, after every other cleanup of the test (servers and
// pools closed), that the test left no goroutine behind.
func verifyNoLeak(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}
