package queue

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Every call of the API on a Redis that has stopped answering returns an
// error that is its ctx's: errors.Is(err, context.DeadlineExceeded) when
// ctx's deadline ended it, context.Canceled when ctx was cancelled. A
// call whose ctx has a deadline reads its reply with that deadline as
// the connection's, and the read's "i/o timeout" must not hide the cause.
func TestAPIErrorsAreCtxErrors(t *testing.T) {
	t.Parallel()
	q, err := New([]*redis.Pool{stalledServer(t)}, Config{})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	calls := map[string]func(ctx context.Context) error{
		"AddTask": func(ctx context.Context) error { _, err := q.AddTask(ctx, 1, []byte("x")); return err },
		"AddTasks": func(ctx context.Context) error {
			_, err := q.AddTasks(ctx, []Task{{OrderID: 1, Payload: []byte("x")}})
			return err
		},
		"AddTaskAt": func(ctx context.Context) error {
			_, err := q.AddTaskAt(ctx, 1, time.Now().Add(time.Hour), []byte("x"))
			return err
		},
		"AddTaskOnce": func(ctx context.Context) error {
			_, _, err := q.AddTaskOnce(ctx, 1, "k", time.Minute, []byte("x"))
			return err
		},
		"Cancel":      func(ctx context.Context) error { _, err := q.Cancel(ctx, 1, testID); return err },
		"Status":      func(ctx context.Context) error { _, err := q.Status(ctx, 1, testID); return err },
		"State":       func(ctx context.Context) error { _, err := q.State(ctx, 1, testID); return err },
		"Ping":        func(ctx context.Context) error { return q.Ping(ctx) },
		"CheckLayout": func(ctx context.Context) error { return q.CheckLayout(ctx) },
		"Stats":       func(ctx context.Context) error { _, err := q.Stats(ctx); return err },
		"Pending":     func(ctx context.Context) error { _, err := q.Pending(ctx, 0); return err },
		"Scheduled":   func(ctx context.Context) error { _, err := q.Scheduled(ctx, 0, 0, 10); return err },
		"Dead":        func(ctx context.Context) error { _, err := q.Dead(ctx, 0); return err },
		"Replay":      func(ctx context.Context) error { _, err := q.Replay(ctx, 0, testID); return err },
		"Purge":       func(ctx context.Context) error { _, err := q.Purge(ctx, 0, testID); return err },
		"Pause":       func(ctx context.Context) error { return q.Pause(ctx, AllQueues()) },
		"Resume":      func(ctx context.Context) error { return q.Resume(ctx, AllQueues()) },
		"GroupStatus": func(ctx context.Context) error { _, err := q.GroupStatus(ctx, "g"); return err },
		"Consume":     func(ctx context.Context) error { _, err := q.Consume(ctx, 0, ConsumerConfig{}); return err },
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
			err := call(ctx)
			cancel()
			assert.ErrorIs(t, err, context.DeadlineExceeded)
			assertSaysOnce(t, err, name)

			ctx, cancel = context.WithCancel(context.Background())
			stop := time.AfterFunc(30*time.Millisecond, cancel)
			err = call(ctx)
			stop.Stop()
			cancel()
			assert.ErrorIs(t, err, context.Canceled)
			assert.False(t, errors.Is(err, context.DeadlineExceeded), "%v", err)
		})
	}
}

// The Consumer's calls, on a Redis whose replies stop coming after the
// consumer took its lease, return their ctx's error too.
func TestConsumerErrorsAreCtxErrors(t *testing.T) {
	t.Parallel()
	mini := miniredis.RunT(t)
	proxy := startProxy(t, mini.Addr())
	q, err := New([]*redis.Pool{testPool("redis://" + proxy.Addr())}, Config{})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	ctx := bounded(t)
	for i := range 4 {
		_, err := q.AddTask(ctx, 0, []byte{byte('a' + i)})
		require.NoError(t, err)
	}
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	tasks, err := c.Claim(ctx, 2)
	require.NoError(t, err)
	require.Len(t, tasks, 2)
	proxy.holdReplies()

	calls := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"Claim", func(ctx context.Context) error { _, err := c.Claim(ctx, 1); return err }},
		{"RemoveTask", func(ctx context.Context) error { _, err := c.RemoveTask(ctx); return err }},
		{"Ack", func(ctx context.Context) error { _, err := c.Ack(ctx, tasks[0].ID); return err }},
		{"Fail", func(ctx context.Context) error { _, err := c.Fail(ctx, tasks[0], errors.New("x")); return err }},
		{"Requeue", func(ctx context.Context) error { return c.Requeue(ctx, tasks[1]) }},
		{"Renew", func(ctx context.Context) error { return c.Renew(ctx) }},
		{"Release", func(ctx context.Context) error { return c.Release(ctx) }},
		// Pipelined reads: every reply fails alike once ctx ends.
		{"Pending", func(ctx context.Context) error { _, err := q.Pending(ctx, 0); return err }},
		{"Status", func(ctx context.Context) error { _, err := q.Status(ctx, 0, tasks[0].ID); return err }},
		{"State", func(ctx context.Context) error { _, err := q.State(ctx, 0, tasks[0].ID); return err }},
	}
	for _, tc := range calls {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		err := tc.call(ctx)
		cancel()
		assert.ErrorIs(t, err, context.DeadlineExceeded, tc.name)
		assertSaysOnce(t, err, tc.name)
	}
}

// assertSaysOnce checks that err, a call's ctx error, is one line that
// names its cause once (a pipeline's replies all fail alike when ctx
// ends; its error is still one).
func assertSaysOnce(t *testing.T, err error, name string) {
	t.Helper()
	if err == nil {
		return
	}
	msg := err.Error()
	assert.NotContains(t, msg, "\n", "%s: %q", name, msg)
	assert.Equal(t, 1, strings.Count(msg, context.DeadlineExceeded.Error()), "%s: %q", name, msg)
}

// A dial that ctx cuts short fails with the net package's "i/o timeout",
// which errors.Is takes for context.DeadlineExceeded without saying so: a
// call's error still names its cause, once. (On a loaded host the dial of
// TestAPIErrorsAreCtxErrors's calls is sometimes what ctx cuts short.)
func TestDialCutShortNamesItsCause(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	pool := &redis.Pool{DialContext: func(ctx context.Context) (redis.Conn, error) {
		<-ctx.Done() // the dial outlasts ctx
		return redis.DialContext(ctx, "tcp", ln.Addr().String())
	}}
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	for name, call := range map[string]func(ctx context.Context) error{
		"CheckLayout": func(ctx context.Context) error { return q.CheckLayout(ctx) },
		"AddTask":     func(ctx context.Context) error { _, err := q.AddTask(ctx, 1, []byte("x")); return err },
		"Status":      func(ctx context.Context) error { _, err := q.Status(ctx, 1, testID); return err },
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		err := call(ctx)
		cancel()
		require.ErrorIs(t, err, context.DeadlineExceeded, name)
		assert.Contains(t, err.Error(), "i/o timeout", "%s: the dial's own error is kept", name)
		assertSaysOnce(t, err, name)
	}
}
