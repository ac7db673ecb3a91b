package queue

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A claim that finds the ready list empty drops the marks of tasks that
// are nowhere any more, a bounded number at a time (scriptChunk): however
// many there are, no claim holds Redis for long, and the marks of pending
// tasks stay.
func TestEmptyClaimSweepsMarksInBoundedSteps(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	id, err := q.AddTask(ctx, 1, []byte("held"))
	require.NoError(t, err)
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer c.Release(ctx)
	ts, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Len(t, ts, 1)
	s.do(t, "HSET", k.cancels, id, "1")
	const stale = 3*scriptChunk + scriptChunk/2
	markStale(t, s, k, stale)

	left := int64(stale + 1)
	for left > 1 {
		ts, err := c.Claim(ctx, 10)
		require.NoError(t, err)
		require.Empty(t, ts)
		n, err := redis.Int64(s.do(t, "HLEN", k.cancels), nil)
		require.NoError(t, err)
		require.Less(t, n, left, "an empty claim dropped no stale mark")
		require.GreaterOrEqual(t, n, left-scriptChunk, "an empty claim swept more than scriptChunk marks")
		left = n
	}
	assert.Equal(t, int64(1), s.do(t, "HEXISTS", k.cancels, id), "the pending task's mark was dropped")
}

// A cancels hash of another type (written by hand) makes Cancel fail,
// and is left alone by the claims, which go on: on an empty queue as on
// a full one.
func TestClaimLeavesCancelsOfAnotherType(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	s.do(t, "SET", k.cancels, "not a hash")
	id, err := q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	_, err = q.Cancel(ctx, 1, id)
	require.ErrorIs(t, err, ErrWrongType)
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer c.Release(ctx)
	ts, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	require.Len(t, ts, 1)
	ts, err = c.Claim(ctx, 10) // the ready list is empty
	require.NoError(t, err)
	assert.Empty(t, ts)
	assert.Equal(t, "string", s.do(t, "TYPE", k.cancels))
}

// countConn counts the commands named cmd on key sent through it.
type countConn struct {
	redis.Conn
	cmd, key string
	n        *atomic.Int32
}

func (c *countConn) count(cmd string, args []any) {
	if strings.EqualFold(cmd, c.cmd) && len(args) > 0 && args[0] == c.key {
		c.n.Add(1)
	}
}

func (c *countConn) Do(cmd string, args ...any) (any, error) {
	c.count(cmd, args)
	return c.Conn.Do(cmd, args...)
}

func (c *countConn) Send(cmd string, args ...any) error {
	c.count(cmd, args)
	return c.Conn.Send(cmd, args...)
}

func (c *countConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	c.count(cmd, args)
	return c.Conn.(redis.ConnWithContext).DoContext(ctx, cmd, args...)
}

func (c *countConn) ReceiveContext(ctx context.Context) (any, error) {
	return c.Conn.(redis.ConnWithContext).ReceiveContext(ctx)
}

func (c *countConn) DoWithTimeout(d time.Duration, cmd string, args ...any) (any, error) {
	c.count(cmd, args)
	return c.Conn.(redis.ConnWithTimeout).DoWithTimeout(d, cmd, args...)
}

func (c *countConn) ReceiveWithTimeout(d time.Duration) (any, error) {
	return c.Conn.(redis.ConnWithTimeout).ReceiveWithTimeout(d)
}

// Cancel refuses, before it changes anything, a scheduled tasks hash of
// another type: the scheduled set keeps the task's ID.
func TestCancelChecksTheScheduledHashFirst(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	id, err := q.AddTaskAfter(ctx, 1, time.Hour, []byte("x"))
	require.NoError(t, err)
	s.do(t, "DEL", k.later)
	s.do(t, "SET", k.later, "not a hash")
	_, err = q.Cancel(ctx, 1, id)
	require.ErrorIs(t, err, ErrWrongType)
	assert.Equal(t, int64(1), s.do(t, "ZCARD", k.sched), "the task left the scheduled set")
}

// Cancel refuses, before it writes a mark, a pending or dead-letter hash
// of another type: no mark is left for a task it could not place.
func TestCancelChecksThePendingAndDeadHashesFirst(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	id, err := q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	for _, key := range []string{k.pending, k.dead, k.claims} {
		s.do(t, "SET", key, "not a hash")
		_, err = q.Cancel(ctx, 1, id)
		require.ErrorIs(t, err, ErrWrongType, "%s", key)
		assert.Zero(t, s.do(t, "EXISTS", k.cancels), "a mark was written with %s of another type", key)
		s.do(t, "DEL", key)
	}
	where, err := q.Cancel(ctx, 1, id)
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, where, "a queued task")
}

// markStale writes n cancel marks of task IDs that were never added, in
// one pipelined round trip.
func markStale(t *testing.T, s *testServer, k queueKeys, n int) {
	t.Helper()
	conn := s.pool.Get()
	defer conn.Close()
	for i := range n {
		require.NoError(t, conn.Send("HSET", k.cancels, fmt.Sprintf("%020d", i), "1"))
	}
	require.NoError(t, conn.Flush())
	for range n {
		_, err := conn.Receive()
		require.NoError(t, err)
	}
}

// A Cancel reads the claim records, then runs its script: a claim that
// takes the task in between is in a record the read did not see. The
// script answered "marked" (StateUnknown: "it is finished as cancelled,
// never run, when an analyser claims it"), though an analyser held the
// task already, and Cancel did not wait for it to see the mark.
func TestCancelRacingAClaimAnswersPending(t *testing.T) {
	t.Parallel()
	s := newTestServers(t, 1)[0]
	prefix := testPrefix(t)
	q2, err := New([]*redis.Pool{s.pool}, Config{Prefix: prefix})
	require.NoError(t, err)
	t.Cleanup(func() { q2.Close() })
	ctx := context.Background()
	id, err := q2.AddTask(ctx, 7, []byte("x"))
	require.NoError(t, err)
	c, err := q2.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer c.Release(ctx)

	var once sync.Once
	var claimed []Task
	var claimErr error
	hooked := hookPool(s, func(script string, _ []any) error {
		if script == "cancel" {
			once.Do(func() { claimed, claimErr = c.Claim(ctx, 1) })
		}
		return nil
	})
	t.Cleanup(func() { hooked.Close() })
	q, err := New([]*redis.Pool{hooked}, Config{Prefix: prefix})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })

	st, err := q.Cancel(ctx, 7, id)
	require.NoError(t, err)
	require.NoError(t, claimErr)
	require.Len(t, claimed, 1, "the claim ran between the read and the script")
	assert.Equal(t, StatePending, st)
}

// A Cancel whose wait for the owner ends early (its ctx ends) cannot say
// that the task will not start: it returns StatePending with the error.
// Its ctx ends as Cancel first reads whether the owner saw the mark
// (a Consumer never answers one): not at a set time, which a loaded
// host could reach before the mark is set.
func TestCancelWaitCutShortSaysSo(t *testing.T) {
	t.Parallel()
	q0, srv, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q0, orderTasks(1, 1))
	c := consumeFirst(t, q0) // holds the task; a Consumer never answers a mark
	got, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Len(t, got, 1)
	short, cancel := context.WithCancel(ctx)
	defer cancel()
	hooked := cmdHookPool(srv, func(cmd string, args []any) {
		// Status's read of the mark comes first, before the mark is set.
		if cmd == "HGET" && len(args) == 2 && args[0] == k.cancels {
			if n, _ := redis.Int(srv.do(t, "HEXISTS", k.cancels, args[1]), nil); n == 1 {
				cancel()
			}
		}
	})
	t.Cleanup(func() { hooked.Close() })
	q, err := New([]*redis.Pool{hooked}, Config{Prefix: q0.cfg.Prefix})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	st, err := q.Cancel(short, 0, ids[0])
	assert.Equal(t, StatePending, st)
	require.ErrorIs(t, err, context.Canceled)
	assert.Contains(t, err.Error(), "may still start")
	status, err := q0.Status(ctx, 0, ids[0])
	require.NoError(t, err)
	assert.True(t, status.CancelAsked)
	assert.False(t, status.CancelSeen, "a Consumer does not answer a mark")
}
