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

func TestState(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 2, Config{Queues: 2})
	ctx := context.Background()
	const order = 7
	id, err := q.AddTask(ctx, order, []byte("x"))
	require.NoError(t, err)
	st, err := q.State(ctx, order, id)
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, st, "queued tasks are not tracked per task")

	c, err := q.Consume(ctx, q.AnalyserOf(order), ConsumerConfig{MaxAttempts: 1})
	require.NoError(t, err)
	task, err := c.RemoveTask(ctx)
	require.NoError(t, err)
	require.Equal(t, id, task.ID)
	st, err = q.State(ctx, order, id)
	require.NoError(t, err)
	assert.Equal(t, StatePending, st)

	dead, err := c.Fail(ctx, task, errors.New("boom"))
	require.NoError(t, err)
	require.True(t, dead)
	st, err = q.State(ctx, order, id)
	require.NoError(t, err)
	assert.Equal(t, StateDead, st)
	assert.Equal(t, "dead", st.String())
	require.NoError(t, c.Release(ctx))

	// A scheduled task is in a record of its own, as Status says.
	later, err := q.AddTaskAfter(ctx, order, time.Hour, []byte("later"))
	require.NoError(t, err)
	st, err = q.State(ctx, order, later)
	require.NoError(t, err)
	assert.Equal(t, StateScheduled, st)
	full, err := q.Status(ctx, order, later)
	require.NoError(t, err)
	assert.Equal(t, full.State, st, "State and Status agree")
}

func TestReplayPurgeCheckLayout(t *testing.T) {
	t.Parallel()
	q, servers := newTestQueue(t, 1, Config{})
	ctx := context.Background()
	_, err := q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	// A process that believes in two queues must not touch the store.
	other, err := New([]*redis.Pool{servers[0].pool}, Config{Prefix: q.cfg.Prefix, Queues: 2})
	require.NoError(t, err)
	_, err = other.Replay(ctx, 0)
	assert.ErrorIs(t, err, ErrLayoutMismatch)
	_, err = other.Purge(ctx, 0)
	assert.ErrorIs(t, err, ErrLayoutMismatch)
}

// midReadConn runs the function in between, once, just before a Status or
// State sends its reads of a claim list (its second round trip).
type midReadConn struct {
	redis.Conn
	between *atomic.Pointer[func()]
}

func (c *midReadConn) Send(cmd string, args ...any) error {
	if cmd == "LINDEX" || cmd == "EVAL" { // EVAL: findScript
		if f := c.between.Swap(nil); f != nil {
			(*f)()
		}
	}
	return c.Conn.Send(cmd, args...)
}

func (c *midReadConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	return c.Conn.(redis.ConnWithContext).DoContext(ctx, cmd, args...)
}

func (c *midReadConn) ReceiveContext(ctx context.Context) (any, error) {
	return c.Conn.(redis.ConnWithContext).ReceiveContext(ctx)
}

func (c *midReadConn) DoWithTimeout(d time.Duration, cmd string, args ...any) (any, error) {
	return c.Conn.(redis.ConnWithTimeout).DoWithTimeout(d, cmd, args...)
}

func (c *midReadConn) ReceiveWithTimeout(d time.Duration) (any, error) {
	return c.Conn.(redis.ConnWithTimeout).ReceiveWithTimeout(d)
}

// State and Status read a claimed task's place in a round trip after the
// one that reads the dead-letter store and the history: a task finished
// in between (acknowledged, or dead-lettered) was in neither read, and
// they reported it unknown, which it never was.
func TestStatusSeesATaskFinishedBetweenItsReads(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		ack    bool // else dead-lettered
		status bool // else State
		want   TaskState
		lazy   bool // the claim's record holds no IDs (a pool's claim, idsLater)
	}{
		{"Status/acknowledged", true, true, StateDone, false},
		{"Status/dead-lettered", false, true, StateDead, false},
		{"State/dead-lettered", false, false, StateDead, false},
		{"Status/acknowledged/no IDs", true, true, StateDone, true},
		{"Status/dead-lettered/no IDs", false, true, StateDead, true},
		{"State/dead-lettered/no IDs", false, false, StateDead, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q, srv := newTestQueue(t, 1, Config{Retention: time.Hour})
			ctx := context.Background()
			id, err := q.AddTask(ctx, 3, []byte("x"))
			require.NoError(t, err)
			c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 1})
			require.NoError(t, err)
			c.st.idsLater = tc.lazy
			task, err := c.RemoveTask(ctx)
			require.NoError(t, err)

			var between atomic.Pointer[func()]
			finish := func() {
				if tc.ack {
					_, err = c.Ack(ctx, id)
				} else {
					_, err = c.Fail(ctx, task, errors.New("boom"))
				}
			}
			between.Store(&finish)
			pool := srv[0].wrapPool(1, func(cn redis.Conn) redis.Conn { return &midReadConn{Conn: cn, between: &between} })
			t.Cleanup(func() { pool.Close() })
			reader, err := New([]*redis.Pool{pool}, Config{Prefix: q.cfg.Prefix, Retention: time.Hour})
			require.NoError(t, err)
			t.Cleanup(func() { reader.Close() })

			var got TaskState
			if tc.status {
				st, serr := reader.Status(ctx, 3, id)
				require.NoError(t, serr)
				got = st.State
			} else {
				got, err = reader.State(ctx, 3, id)
				require.NoError(t, err)
			}
			require.Nil(t, between.Load(), "the claim list was read")
			require.NoError(t, err, "finishing the task")
			assert.Equal(t, tc.want, got)
			require.NoError(t, c.Release(ctx))
		})
	}
}

// A task whose failure is recorded while Status reads it is retrying with
// its next attempt, never with the entry from before the failure (its
// attempt one short): the retry record is read before the entry. The
// failure lands between two of Status's reads about one run in a hundred
// under -race, so the test runs the race many times.
func TestStatusRetryingNeverOneDeliveryShort(t *testing.T) {
	t.Parallel()
	for range 30 {
		q, _, _ := testQueue1(t)
		ctx, cancel := context.WithCancel(context.Background())
		id, err := q.AddTask(ctx, 0, []byte("p"))
		require.NoError(t, err)
		done := make(chan error, 1)
		go func() {
			done <- q.AnalysePool(ctx, 0, PoolConfig{Workers: 1, OnError: func(error) {}, Backoff: func(int) time.Duration { return time.Hour }},
				func(context.Context, Task) error { return errors.New("down") })
		}()
		var st TaskStatus
		require.Eventually(t, func() bool {
			st, err = q.Status(context.Background(), 0, id)
			require.NoError(t, err)
			return st.State == StateRetrying
		}, 10*time.Second, time.Millisecond)
		assert.Equal(t, 2, st.Attempt, "the next attempt: %+v", st)
		cancel()
		require.NoError(t, <-done)
	}
}

// A task handed back while it waited out a backoff (a graceful stop) is
// queued, and the next owner runs it when it claims it: Status never says
// it is retrying later while it waits in the ready list or runs, whether
// a pool's stop or a Consumer's recovery put it back, and it still tells
// the last error.
func TestStatusOfARetryHandedBack(t *testing.T) {
	t.Parallel()
	q, servers := newTestQueue(t, 1, Config{})
	k := newQueueKeys(q.cfg.Prefix, 0, 0)
	ctx := bounded(t)
	fail := func(t *testing.T) string {
		id, err := q.AddTask(ctx, 7, []byte("p"))
		require.NoError(t, err)
		pctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			done <- q.AnalysePool(pctx, 0, PoolConfig{OnError: func(error) {}, Backoff: func(int) time.Duration { return time.Minute }},
				func(context.Context, Task) error { return errors.New("boom") })
		}()
		require.Eventually(t, func() bool {
			st, err := q.Status(ctx, 7, id)
			return err == nil && st.State == StateRetrying
		}, 5*time.Second, time.Millisecond)
		stop()
		require.NoError(t, <-done)
		return id
	}

	id := fail(t)
	st, err := q.Status(ctx, 7, id)
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, st.State, "handed back by the stop: queued")
	running := make(chan struct{})
	release := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- q.AnalysePool(ctx, 0, PoolConfig{ExitOnEmpty: true}, func(context.Context, Task) error {
			close(running)
			<-release
			return nil
		})
	}()
	<-running
	st, err = q.Status(ctx, 7, id)
	require.NoError(t, err)
	close(release)
	require.NoError(t, <-done)
	assert.Equal(t, StatePending, st.State, "running, not waiting out a backoff")
	assert.Equal(t, "boom", st.LastError, "the failure before the hand-back is still told")
	assert.Zero(t, servers[0].do(t, "EXISTS", k.retries), "its ack took the record")

	// A retry left pending by a crash goes back with the next owner's
	// recovery, and its record with it.
	id = fail(t)
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	ts, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, []string{id}, taskIDs(ts))
	// Failed as a pool fails a task: its retry due in a minute.
	_, err = c.st.fail(ctx, c.claimedOf(ts[0]), errors.New("boom again"), time.Now().Add(time.Minute), false)
	require.NoError(t, err)
	st, err = q.Status(ctx, 7, id)
	require.NoError(t, err)
	require.Equal(t, StateRetrying, st.State)
	lapse(t, servers[0], k.lease)
	c2, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	st, err = q.Status(ctx, 7, id)
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, st.State, "put back by recovery: queued")
	ts, err = c2.Claim(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, []string{id}, taskIDs(ts))
	st, err = q.Status(ctx, 7, id)
	require.NoError(t, err)
	assert.Equal(t, StatePending, st.State)
	assert.Equal(t, "boom again", st.LastError)
}

// flushBeforeConn runs between once, when it is given the command cmd,
// after Redis has run every command sent before it (their replies are
// kept for the caller): between's writes land between two reads of one
// pipeline, as another client's may.
type flushBeforeConn struct {
	midReadConn
	cmd     string
	sent    int   // commands sent and not yet answered
	replies []any // replies read ahead, for the caller
	errs    []error
}

func (c *flushBeforeConn) Send(cmd string, args ...any) error {
	if f := c.between.Load(); f != nil && cmd == c.cmd {
		if err := c.Conn.Flush(); err != nil {
			return err
		}
		for ; c.sent > 0; c.sent-- {
			r, err := c.Conn.Receive()
			c.replies, c.errs = append(c.replies, r), append(c.errs, err)
		}
		c.between.Store(nil)
		(*f)()
	}
	c.sent++
	return c.Conn.Send(cmd, args...)
}

func (c *flushBeforeConn) ReceiveContext(ctx context.Context) (any, error) {
	if len(c.replies) > 0 {
		r, err := c.replies[0], c.errs[0]
		c.replies, c.errs = c.replies[1:], c.errs[1:]
		return r, err
	}
	c.sent--
	return c.midReadConn.ReceiveContext(ctx)
}

func (c *flushBeforeConn) Receive() (any, error) { return c.ReceiveContext(context.Background()) }

// A scheduled task that a claim takes between Status's reads went from
// the scheduled set into a claim record in one step: Status read the
// claim records before the scheduled set, found it in neither, and said
// unknown, which it never was. State reads the scheduled set first.
func TestStatusSeesAScheduledTaskClaimedBetweenItsReads(t *testing.T) {
	t.Parallel()
	for _, status := range []bool{true, false} {
		name := "State"
		if status {
			name = "Status"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			q, srv := newTestQueue(t, 1, Config{})
			ctx := context.Background()
			at := time.Now().Add(20 * time.Millisecond)
			id, err := q.AddTaskAt(ctx, 3, at, []byte("x"))
			require.NoError(t, err)
			for d := time.Until(at); d >= 0; d = time.Until(at) {
				time.Sleep(d + time.Millisecond) // due by the clock the claim reads
			}
			c, err := q.Consume(ctx, 0, ConsumerConfig{})
			require.NoError(t, err)
			t.Cleanup(func() { c.Release(context.Background()) })

			var between atomic.Pointer[func()]
			var claimed Task
			var cerr error
			claim := func() { claimed, cerr = c.RemoveTask(ctx) }
			between.Store(&claim)
			// The claim goes after the reads sent before the scheduled
			// set's (Status) or before the claim records' (State).
			cmd := "ZSCORE"
			if !status {
				cmd = "HGETALL"
			}
			pool := srv[0].wrapPool(1, func(cn redis.Conn) redis.Conn {
				return &flushBeforeConn{midReadConn: midReadConn{Conn: cn, between: &between}, cmd: cmd}
			})
			t.Cleanup(func() { pool.Close() })
			reader, err := New([]*redis.Pool{pool}, Config{Prefix: q.cfg.Prefix})
			require.NoError(t, err)
			t.Cleanup(func() { reader.Close() })

			var got TaskState
			if status {
				st, err := reader.Status(ctx, 3, id)
				require.NoError(t, err)
				got = st.State
			} else {
				got, err = reader.State(ctx, 3, id)
				require.NoError(t, err)
			}
			require.Nil(t, between.Load(), "the claim ran between the reads")
			require.NoError(t, cerr)
			require.Equal(t, id, claimed.ID)
			assert.Contains(t, []TaskState{StateScheduled, StatePending}, got, "seen where it was or where it went")
		})
	}
}
