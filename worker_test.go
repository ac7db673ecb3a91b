package queue

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A process resumed after a pause longer than its lease (the zombie fault)
// has every goroutine runnable at once; a worker that came before the
// renewer started prefetched tasks that the next owner had already run.
// Workers now check the lease's deadline before each start.
func TestWorkerStartsNothingPastLeaseDeadline(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 1, Config{})
	ctx := context.Background()
	_, err := q.AddTask(ctx, 1, []byte("a"))
	require.NoError(t, err)
	c, err := q.Consume(ctx, 0, ConsumerConfig{LeaseTTL: time.Second})
	require.NoError(t, err)
	cfg, err := PoolConfig{Workers: 1, LeaseTTL: time.Second}.withDefaults()
	require.NoError(t, err)
	var started atomic.Int64
	s := newSession(context.Background(), c.st, cfg, func(context.Context, Task) error { started.Add(1); return nil })
	defer s.cancelTask()
	defer s.cancelLease()
	tasks, err := c.st.claim(ctx, 10, 1<<20, false, nil)
	require.NoError(t, err)
	require.Len(t, tasks, 1)

	s.setDeadline(time.Now().Add(-time.Millisecond)) // the pause outlived the lease
	s.workers[0].set.give(tasks)
	done := make(chan struct{})
	go func() { defer close(done); s.workers[0].loop() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		s.loseLease()
		<-done
		t.Fatal("the worker did not stop")
	}
	assert.Zero(t, started.Load(), "a task started after the lease deadline")
	assert.True(t, s.isLost(), "the session takes the lease as lost")
}
