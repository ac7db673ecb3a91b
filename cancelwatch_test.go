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
	where, err := q.Cancel(ctx, 1, behind)
	require.NoError(t, err)
	assert.Equal(t, StatePending, where)
	// The owner says it saw the mark (or finishes the task as cancelled,
	// which takes the mark away). Cancel waits cancelWait for that, and
	// returns the same whether or not it came, so the mark is asked,
	// not the call's duration: on a busy machine the owner's poll may
	// answer after the wait.
	require.Eventually(t, func() bool {
		mark, err := redis.String(try(servers[0], "HGET", k.cancels, behind))
		return errors.Is(err, redis.ErrNil) || err == nil && mark == cancelSeen
	}, 10*time.Second, 5*time.Millisecond, "the owner never said it saw the cancel")
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
