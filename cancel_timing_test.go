package queue

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Cancel against the moments a held task passes on its way to running:
// the owner's handshake with Cancel leaves no start after Cancel returns,
// and no running task whose ctx still lasts then.

// TestCancelSeenWhileARetryStartIsRecorded: a retried task's start is
// recorded (a round trip) after its worker last looked at the marks.
// Cancel returns StatePending while that round trip is held up, so the
// task must not start after it: a function that ignores its ctx would
// have it acknowledged as done.
func TestCancelSeenWhileARetryStartIsRecorded(t *testing.T) {
	t.Parallel()
	servers := newTestServers(t, 1)
	var armed atomic.Bool
	entered, release := make(chan struct{}), make(chan struct{})
	pool := hookPool(servers[0], func(script string, _ []any) error {
		if script == "retry" && armed.CompareAndSwap(true, false) {
			close(entered)
			<-release
		}
		return nil
	})
	q := queueOnPool(t, pool)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	id, err := q.AddTask(ctx, 7, []byte("x"))
	require.NoError(t, err)
	rec := newRecorder()
	errc := runPool(ctx, q, PoolConfig{Workers: 1, Backoff: func(int) time.Duration { return time.Millisecond }},
		rec.fn(func(_ context.Context, t Task) error {
			if t.Attempt == 1 {
				armed.Store(true)
				return errors.New("first delivery fails")
			}
			return nil // ignores its ctx
		}))
	<-entered // the retry's start is being recorded
	where, err := q.Cancel(ctx, 7, id)
	close(release)
	require.NoError(t, err)
	assert.Equal(t, StatePending, where)
	require.Eventually(t, func() bool { return stats0(t, q).Pending == 0 }, 5*time.Second, time.Millisecond)
	cancel()
	require.NoError(t, <-errc)
	assert.Equal(t, []int{1}, rec.attemptsOf(id), "not started after Cancel returned")
	st := stats0(t, q)
	assert.Equal(t, int64(1), st.Cancelled)
	assert.Zero(t, st.Processed)
}

// afterScriptConn calls after once a script's call has returned.
type afterScriptConn struct {
	fullConn
	after func(script string)
}

func (c *afterScriptConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	v, err := c.fullConn.DoContext(ctx, cmd, args...)
	c.after(scriptName(cmd, args))
	return v, err
}

// TestCancelEndsARunningTasksCtxBeforeItReturns: once Cancel of a running
// task returns, its ctx has ended. The owner tells Cancel it saw the mark
// only after it ended the ctx; here the reply to that telling is held
// back, so an owner that ended the ctx after it would do so too late.
func TestCancelEndsARunningTasksCtxBeforeItReturns(t *testing.T) {
	t.Parallel()
	servers := newTestServers(t, 1)
	pool := servers[0].wrapPool(16, func(c redis.Conn) redis.Conn {
		return &afterScriptConn{fullConn: c.(fullConn), after: func(script string) {
			if script == "seen" {
				time.Sleep(300 * time.Millisecond)
			}
		}}
	})
	q := queueOnPool(t, pool)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	id, err := q.AddTask(ctx, 1, []byte("runs"))
	require.NoError(t, err)
	running := make(chan context.Context, 1)
	errc := runPool(ctx, q, PoolConfig{Workers: 1, TaskTimeout: -1}, func(tctx context.Context, _ Task) error {
		running <- tctx
		<-tctx.Done()
		return tctx.Err()
	})
	tctx := <-running
	where, err := q.Cancel(ctx, 1, id)
	require.NoError(t, err)
	assert.Equal(t, StatePending, where)
	assert.Error(t, tctx.Err(), "the running task's ctx ended by the time Cancel returned")
	require.Eventually(t, func() bool { return stats0(t, q).Cancelled == 1 }, 5*time.Second, time.Millisecond)
	cancel()
	require.NoError(t, <-errc)
}
