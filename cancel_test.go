package queue

import (
	"context"
	"errors"
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

// A cancel asked while a task is pending, whose task then finishes
// otherwise (acknowledged: it returned nil; dead-lettered: its last
// delivery failed), goes with the task: the task is not reported
// cancelled, and a replay of the dead letter runs it, as Cancel's
// contract for dead letters says (it leaves them).
func TestCancelMarkGoesWithItsFinishedTask(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	done, err := q.AddTask(ctx, 1, []byte("done"))
	require.NoError(t, err)
	dead, err := q.AddTask(ctx, 2, []byte("dead"))
	require.NoError(t, err)
	_, err = q.AddTask(ctx, 3, []byte("behind")) // the ready list never empties
	require.NoError(t, err)

	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 1})
	require.NoError(t, err)
	ts, err := c.Claim(ctx, 2)
	require.NoError(t, err)
	require.Len(t, ts, 2)
	for _, id := range []string{done, dead} {
		where, err := q.Cancel(ctx, 0, id) // the Consumer does not watch marks
		require.NoError(t, err)
		require.Equal(t, StatePending, where)
	}
	n, err := c.Ack(ctx, done)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	wentDead, err := c.Fail(ctx, ts[1], errors.New("boom"))
	require.NoError(t, err)
	require.True(t, wentDead)

	assert.Zero(t, s.do(t, "HEXISTS", k.cancels, done), "the acknowledged task's mark is left")
	assert.Zero(t, s.do(t, "HEXISTS", k.cancels, dead), "the dead letter's mark is left")
	st, err := q.Status(ctx, 1, done)
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, st.State, "a task that ran to its end is reported %v", st.State)

	replayed, err := q.Replay(ctx, 0, dead)
	require.NoError(t, err)
	require.Equal(t, 1, replayed)
	ts, err = c.Claim(ctx, 10)
	require.NoError(t, err)
	var ids []string
	for _, t := range ts {
		ids = append(ids, t.ID)
	}
	assert.Contains(t, ids, dead, "the replayed dead letter was cancelled by a mark of its earlier life")
	require.NoError(t, c.Release(ctx))
}

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

// A pool that holds a few tasks, on a queue with many more cancel marks
// (a bulk cancel of a backlog, say), reads the marks of its own tasks
// only, not every mark every cancelPoll; its marked tasks are cancelled
// all the same, those waiting and those running.
func TestPoolReadsOnlyTheMarksOfItsTasks(t *testing.T) {
	t.Parallel()
	servers := newTestServers(t, 1)
	prefix := testPrefix(t)
	k := newQueueKeys(prefix, 0, 0)
	var hgetall atomic.Int32
	pool := servers[0].wrapPool(16, func(c redis.Conn) redis.Conn {
		return &countConn{Conn: c, cmd: "HGETALL", key: k.cancels, n: &hgetall}
	})
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: prefix})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()

	_, err = q.AddTask(ctx, 1, []byte("head"))
	require.NoError(t, err)
	behind, err := q.AddTask(ctx, 1, []byte("behind"))
	require.NoError(t, err)
	long, err := q.AddTask(ctx, 2, []byte("long"))
	require.NoError(t, err)
	const stale = 4 * scriptChunk
	markStale(t, servers[0], k, stale)

	rec := newSeenLog()
	release := make(chan struct{})
	started := make(chan string, 3)
	errc := runPool(ctx, q, PoolConfig{Workers: 2, TaskTimeout: -1}, func(tctx context.Context, t Task) error {
		started <- string(t.Payload)
		switch string(t.Payload) {
		case "head":
			<-release
		case "long":
			<-tctx.Done()
			rec.add("long-ended")
			return tctx.Err()
		}
		rec.add(string(t.Payload))
		return nil
	})
	for range 2 {
		<-started // head and long run; behind waits for head
	}
	asked := time.Now()
	where, err := q.Cancel(ctx, 1, behind)
	require.NoError(t, err)
	assert.Equal(t, StatePending, where)
	assert.Less(t, time.Since(asked), cancelWait, "the owner never said it saw the cancel")
	where, err = q.Cancel(ctx, 2, long)
	require.NoError(t, err)
	assert.Equal(t, StatePending, where)
	rec.wait(t, "long-ended")
	close(release)
	rec.wait(t, "head")
	require.Eventually(t, func() bool {
		s := stats0(t, q)
		return s.Pending == 0 && s.Cancelled == 2 && s.Processed == 1
	}, 5*time.Second, 10*time.Millisecond)
	cancel()
	require.NoError(t, <-errc)
	assert.NotContains(t, rec.list(), "behind")
	assert.Zero(t, hgetall.Load(), "the pool read every mark of the queue")
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
