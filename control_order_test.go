package queue

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Scheduled tasks and the per-OrderID order: a scheduled task joins its
// OrderID's sequence when it falls due, whoever holds the queue then, and
// whether anyone does.

// drainConsumer claims every ready task of c's queue one at a time,
// acknowledging each, and returns their payloads in claim order.
func drainConsumer(t *testing.T, c *Consumer) []string {
	t.Helper()
	ctx := bounded(t)
	var out []string
	for {
		task, err := c.RemoveTask(ctx)
		if errors.Is(err, ErrNoTask) {
			return out
		}
		require.NoError(t, err)
		out = append(out, string(task.Payload))
		_, err = c.Ack(ctx, task.ID)
		require.NoError(t, err)
	}
}

// twinQueue returns a second producer on q's servers and prefix, as another
// process would be, whose task IDs sort before q's: its node is the
// lowest, q's the highest (IDs of one node sort by their counter).
func twinQueue(t *testing.T, q *Queue, servers []*testServer) *Queue {
	t.Helper()
	pools := make([]*redis.Pool, len(servers))
	for i, s := range servers {
		pools[i] = s.pool
	}
	q2, err := New(pools, Config{Prefix: q.cfg.Prefix, Queues: q.cfg.Queues})
	require.NoError(t, err)
	t.Cleanup(func() { q2.Close() })
	q.ids.mu.Lock()
	q.ids.node, q.ids.n = ^uint64(0), 1
	q.ids.mu.Unlock()
	q2.ids.mu.Lock()
	q2.ids.node, q2.ids.n = 0, 1
	q2.ids.mu.Unlock()
	return q2
}

// sleepPast sleeps until at has passed by d on this clock: the passing of
// a due time is what these tests are about.
func sleepPast(at time.Time, d time.Duration) { time.Sleep(time.Until(at) + d) }

func TestScheduledSameAndDifferentDueTimes(t *testing.T) {
	t.Parallel()
	q, servers := newTestQueue(t, 1, Config{})
	q2 := twinQueue(t, q, servers)
	ctx := bounded(t)
	due := time.Now().Add(time.Second)
	// Two producers schedule tasks of OrderID 1 for the same millisecond:
	// they join in the order Redis accepted them, whatever their IDs.
	_, err := q.AddTaskAt(ctx, 1, due, []byte("same-1"))
	require.NoError(t, err)
	_, err = q2.AddTaskAt(ctx, 1, due, []byte("same-2"))
	require.NoError(t, err)
	_, err = q.AddTaskAt(ctx, 1, due, []byte("same-3"))
	require.NoError(t, err)
	_, err = q2.AddTaskAt(ctx, 1, due.Add(-500*time.Millisecond), []byte("earlier"))
	require.NoError(t, err)
	_, err = q.AddTaskAt(ctx, 1, due.Add(50*time.Millisecond), []byte("later"))
	require.NoError(t, err)
	assert.Equal(t, int64(5), stats0(t, q).Scheduled)
	sched, err := q.Scheduled(ctx, 0, 0, 10)
	require.NoError(t, err)
	var listed []string
	for _, s := range sched {
		listed = append(listed, string(s.Payload))
		assert.Equal(t, uint64(1), s.OrderID)
	}
	assert.Equal(t, []string{"earlier", "same-1", "same-2", "same-3", "later"}, listed, "Scheduled lists them earliest due first")
	require.Len(t, sched, 5)
	for _, s := range sched[1:4] {
		assert.Equal(t, due.UnixMilli(), s.Due.UnixMilli(), "%s falls due when asked", s.Payload)
		st, err := q.Status(ctx, 1, s.ID)
		require.NoError(t, err)
		assert.Equal(t, StateScheduled, st.State)
		assert.Equal(t, due.UnixMilli(), st.Due.UnixMilli())
	}

	sleepPast(due.Add(50*time.Millisecond), 20*time.Millisecond)
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer c.Release(ctx)
	assert.Equal(t, []string{"earlier", "same-1", "same-2", "same-3", "later"}, drainConsumer(t, c))
}

func TestScheduledSameDueTimeWithAPool(t *testing.T) {
	t.Parallel()
	q, servers := newTestQueue(t, 1, Config{})
	q2 := twinQueue(t, q, servers)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	rec := newSeenLog()
	errc := runPool(ctx, q, PoolConfig{Workers: 4}, func(_ context.Context, t Task) error {
		rec.add(string(t.Payload))
		return nil
	})
	due := time.Now().Add(time.Second)
	for i := range 6 {
		p := q
		if i%2 == 1 {
			p = q2
		}
		_, err := p.AddTaskAt(ctx, 9, due, []byte(fmt.Sprint(i)))
		require.NoError(t, err)
	}
	rec.wait(t, "5")
	assert.Equal(t, []string{"0", "1", "2", "3", "4", "5"}, rec.list())
	cancel()
	require.NoError(t, <-errc)
}
