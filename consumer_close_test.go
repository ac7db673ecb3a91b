package queue

import (
	"errors"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A Consumer made before Close is refused with ErrClosed after it, as the
// Queue's own calls are, also on pools given to New (which Close leaves
// open): nothing is claimed, acknowledged or waited for.
func TestConsumerAfterClose(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	addAll(t, q, orderTasks(1, 2))
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	held, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Len(t, held, 1)
	require.NoError(t, q.Close())

	_, err = q.AddTask(ctx, 1, []byte("x"))
	assert.ErrorIs(t, err, ErrClosed, "AddTask")
	_, err = c.Claim(ctx, 1)
	assert.ErrorIs(t, err, ErrClosed, "Claim")
	_, err = c.RemoveTask(ctx)
	assert.ErrorIs(t, err, ErrClosed, "RemoveTask")
	_, err = c.Wait(ctx, 1)
	assert.ErrorIs(t, err, ErrClosed, "Wait")
	_, err = c.Ack(ctx, held[0].ID)
	assert.ErrorIs(t, err, ErrClosed, "Ack")
	_, err = c.Fail(ctx, held[0], assert.AnError)
	assert.ErrorIs(t, err, ErrClosed, "Fail")
	assert.ErrorIs(t, c.Requeue(ctx, held[0]), ErrClosed, "Requeue")
	assert.ErrorIs(t, c.Renew(ctx), ErrClosed, "Renew")
	assert.ErrorIs(t, c.Release(ctx), ErrClosed, "Release")

	// Nothing changed: one task ready, the claimed one still pending.
	assert.Len(t, readyTasks(t, s, k), 1)
	assert.Len(t, pendingIDs(t, s, k), 1)
}

// A Consume waiting as a standby ends with Close: it returns ErrClosed at
// once, and takes no lease when the holder lets it go.
func TestConsumeWaitingEndsWithClose(t *testing.T) {
	t.Parallel()
	holderQ, servers := newTestQueue(t, 1, Config{})
	s := servers[0]
	ctx := bounded(t)
	holder, err := holderQ.Consume(ctx, 0, ConsumerConfig{LeaseTTL: time.Minute, Owner: "holder"})
	require.NoError(t, err)
	q, err := New([]*redis.Pool{s.pool}, Config{Prefix: holderQ.cfg.Prefix})
	require.NoError(t, err)
	got := make(chan error, 1)
	go func() {
		c, err := q.Consume(ctx, 0, ConsumerConfig{LeaseTTL: 3 * time.Second, Owner: "standby"})
		if c != nil {
			err = errors.Join(err, errors.New("a Consumer came back"))
		}
		got <- err
	}()
	time.Sleep(100 * time.Millisecond) // waiting on the holder
	require.NoError(t, q.Close())
	select {
	case err := <-got:
		assert.ErrorIs(t, err, ErrClosed)
	case <-time.After(5 * time.Second):
		t.Fatal("Consume still waiting after Close")
	}
	require.NoError(t, holder.Release(ctx))
	time.Sleep(50 * time.Millisecond)
	assert.Empty(t, stats0(t, holderQ).Owner, "the closed Queue took no lease")
}
