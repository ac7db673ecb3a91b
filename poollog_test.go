package queue

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// logRecorder is a slog.Handler that keeps every record's message and
// attributes.
type logRecorder struct {
	mu   sync.Mutex
	recs []logLine
}

type logLine struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRecorder) WithGroup(string) slog.Handler            { return h }
func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l := logLine{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	r.Attrs(func(a slog.Attr) bool {
		l.attrs[a.Key] = a.Value.String()
		return true
	})
	h.mu.Lock()
	h.recs = append(h.recs, l)
	h.mu.Unlock()
	return nil
}

// lines returns the records whose message contains msg.
func (h *logRecorder) lines(msg string) []logLine {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []logLine
	for _, l := range h.recs {
		if strings.Contains(l.msg, msg) {
			out = append(out, l)
		}
	}
	return out
}

// A pool's log tells its story, each event once: a standby says whom it
// waits for, the takeover says after how long and what it recovered, a
// stop says what it handed back.
func TestPoolLogsTheStory(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	addAll(t, q, orderTasks(2, 3))
	c, err := q.Consume(ctx, 0, ConsumerConfig{Owner: "first", LeaseTTL: time.Minute})
	require.NoError(t, err)
	_, err = c.Claim(ctx, 2) // then it dies with them
	require.NoError(t, err)

	h := &logRecorder{}
	pctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	rec := newRecorder()
	started := make(chan struct{}, 10)
	errc := runPool(pctx, q, PoolConfig{Owner: "second", Logger: slog.New(h), LeaseTTL: time.Second},
		rec.fn(func(ctx context.Context, task Task) error { started <- struct{}{}; return nil }))
	require.Eventually(t, func() bool { return len(h.lines("waiting as a standby")) == 1 }, 5*time.Second, time.Millisecond)
	w := h.lines("waiting as a standby")[0]
	assert.Equal(t, slog.LevelInfo, w.level)
	assert.Equal(t, "first", w.attrs["holder"])
	lapse(t, s, k.lease)
	require.Eventually(t, func() bool { return rec.total() == 6 }, 5*time.Second, time.Millisecond)
	took := h.lines("took the lease")
	require.Len(t, took, 1)
	assert.Equal(t, slog.LevelInfo, took[0].level)
	assert.Equal(t, "2", took[0].attrs["recovered"])
	assert.NotEmpty(t, took[0].attrs["waited"])
	assert.NotEmpty(t, took[0].attrs["recovery"], "how long the recovery took")
	assert.Len(t, h.lines("waiting as a standby"), 1, "said once")
	cancel()
	require.NoError(t, receive(t, errc))
	stopping := h.lines("queue: stopping")
	require.Len(t, stopping, 1)
	assert.NotEmpty(t, stopping[0].attrs["held"], "what the workers still hold")
	stopped := h.lines("queue: stopped")
	require.Len(t, stopped, 1)
	assert.Equal(t, "0", stopped[0].attrs["left_pending"])
	for _, l := range h.recs {
		assert.Less(t, l.level, slog.LevelWarn, "nothing went wrong: %s %v", l.msg, l.attrs)
	}
}

// A Redis outage is told once when it begins and once when it ends, not
// by every goroutine at every retry. (The outage is a proxy that resets
// every connection: a miniredis restarted under a running pool now and
// then fails to compile a script, an error of its own.)
func TestPoolLogsAnOutageOnce(t *testing.T) {
	t.Parallel()
	q, p, _ := proxiedQueue(t)
	h := &logRecorder{}
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	rec := newRecorder()
	errc := runPool(ctx, q, PoolConfig{Logger: slog.New(h), LeaseTTL: 500 * time.Millisecond}, rec.fn(nil))
	_, err := q.AddTask(ctx, 1, []byte("a"))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return rec.total() == 1 }, 5*time.Second, time.Millisecond)
	p.setDown(true)
	require.Eventually(t, func() bool { return len(h.lines("lost redis")) >= 1 }, 5*time.Second, time.Millisecond)
	time.Sleep(2 * time.Second) // retries by the fetcher, the renewer, the standby...
	p.setDown(false)
	require.Eventually(t, func() bool { return len(h.lines("redis is back")) == 1 }, 15*time.Second, time.Millisecond, "%s", h)
	require.Eventually(t, func() bool { return len(h.lines("took the lease")) == 2 }, 15*time.Second, time.Millisecond, "%s", h)
	cancel()
	require.NoError(t, receive(t, errc))
	assert.Len(t, h.lines("lost redis"), 1, "%s", h)
	assert.Len(t, h.lines("redis is back"), 1)
	assert.Empty(t, h.lines("pool error"), "an outage is not an error per retry: %s", h)
	assert.Equal(t, slog.LevelWarn, h.lines("lost redis")[0].level)
}

// proxiedQueue returns a queue over a miniredis reached through a proxy
// that can cut it off, with the proxy and the server.
func proxiedQueue(t *testing.T) (*Queue, *faultProxy, *miniredis.Miniredis) {
	t.Helper()
	m := miniredis.RunT(t)
	p := startProxy(t, m.Addr())
	pool := testPool("redis://" + p.Addr())
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	return q, p, m
}

func (h *logRecorder) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	for _, l := range h.recs {
		b.WriteString(fmt.Sprint(l.level, " ", l.msg, " ", l.attrs, "\n"))
	}
	return b.String()
}

// A pool that gave its lease up for lost while Redis was out of reach
// takes it back at once when Redis returns with the lease still holding
// its value, rather than waiting the lease out as a standby of itself.
func TestPoolTakesItsOwnLeaseBack(t *testing.T) {
	t.Parallel()
	q, p, _ := proxiedQueue(t)
	h := &logRecorder{}
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	errc := runPool(ctx, q, PoolConfig{Logger: slog.New(h), LeaseTTL: 500 * time.Millisecond, OnError: func(error) {}},
		func(context.Context, Task) error { return nil })
	require.Eventually(t, func() bool { return len(h.lines("took the lease")) == 1 }, 5*time.Second, time.Millisecond)
	p.setDown(true)
	time.Sleep(time.Second) // past the lease's deadline: the pool gives it up
	// miniredis's clock stands still: the lease is still there, with the
	// value the pool had.
	p.setDown(false)
	require.Eventually(t, func() bool { return len(h.lines("took the lease")) == 2 }, 5*time.Second, time.Millisecond, "%s", h)
	assert.Empty(t, h.lines("waiting as a standby"), "not a standby of itself")
	took := h.lines("took the lease")
	assert.Equal(t, slog.LevelDebug, took[0].level, "a plain start, however long its round trips took")
	assert.Equal(t, slog.LevelInfo, took[1].level, "taken back: worth telling")
	cancel()
	require.NoError(t, receive(t, errc))
}

// A plain start logs its lease at debug level however slow its round
// trips: a newcomer's first run has nothing to be told.
func TestPoolPlainStartIsQuietOnASlowNetwork(t *testing.T) {
	t.Parallel()
	s := newTestServers(t, 1)[0]
	pool := hookPool(s, func(string, []any) error { time.Sleep(3 * time.Millisecond); return nil })
	defer pool.Close()
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	defer q.Close()
	h := &logRecorder{}
	require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{Logger: slog.New(h), ExitOnEmpty: true},
		func(context.Context, Task) error { return nil }))
	took := h.lines("took the lease")
	require.Len(t, took, 1)
	assert.Equal(t, slog.LevelDebug, took[0].level, "%s", h)
}

// A delivery that fails with a timeout, or with the analyse function's
// own network error (its database is down), is the task's failure, never
// a lost Redis: without OnError each failed delivery is logged, as a
// warning while it will be retried and as an error once dead-lettered,
// and no outage is told.
func TestPoolLogsATasksNetworkErrorAsItsOwn(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  PoolConfig
		fn   AnalyseFunc
	}{
		{"timeout", PoolConfig{TaskTimeout: 20 * time.Millisecond},
			func(ctx context.Context, _ Task) error { <-ctx.Done(); return ctx.Err() }},
		{"own net error", PoolConfig{}, func(context.Context, Task) error {
			return &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := tc.cfg
			cfg.MaxAttempts = 3
			cfg.Backoff = func(int) time.Duration { return time.Millisecond }
			h := logOfOneTask(t, cfg, tc.fn)
			assert.Empty(t, h.lines("lost redis"), "%s", h)
			assert.Empty(t, h.lines("pool error"), "%s", h)
			errs := h.lines("task failed")
			require.Len(t, errs, 3, "each failed delivery logged: %s", h)
			for _, l := range errs[:2] {
				assert.Equal(t, slog.LevelWarn, l.level, "a delivery that will be retried")
			}
			assert.Equal(t, slog.LevelError, errs[2].level)
			assert.Contains(t, errs[2].attrs["err"], "dead-lettered")
		})
	}
}

// A panic in the analyse function is logged with its stack (without
// OnError), so that its file and line are in the log.
func TestPoolLogsAPanicsStack(t *testing.T) {
	t.Parallel()
	h := logOfOneTask(t, PoolConfig{MaxAttempts: 1}, func(context.Context, Task) error { panic("boom") })
	errs := h.lines("task failed")
	require.Len(t, errs, 1, "%s", h)
	assert.Contains(t, errs[0].attrs["err"], "analyse panicked: boom")
	assert.Contains(t, errs[0].attrs["stack"], "TestPoolLogsAPanicsStack", "the panicking function in the stack")
}

// logOfOneTask runs a pool with cfg (ExitOnEmpty) and fn on a queue of
// one task, and returns what it logged.
func logOfOneTask(t *testing.T, cfg PoolConfig, fn AnalyseFunc) *logRecorder {
	t.Helper()
	q, _ := newTestQueue(t, 1, Config{})
	ctx := bounded(t)
	_, err := q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	h := &logRecorder{}
	cfg.Logger, cfg.ExitOnEmpty = slog.New(h), true
	require.NoError(t, q.AnalysePool(ctx, 0, cfg, fn))
	return h
}
