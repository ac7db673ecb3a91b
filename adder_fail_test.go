package queue

import (
	"context"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The calls a failed round trip carried get its error, whatever their
// ctx: a ctx that can end, and has not, is no reason to report a task
// added that Redis never took.
func TestAdderReportsAFailedRoundTrip(t *testing.T) {
	t.Parallel()
	m := miniredis.RunT(t)
	s := &testServer{url: "redis://" + m.Addr(), mini: m}
	log := &cmdLog{}
	q, err := New([]*redis.Pool{countingPool(t, s, log)}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	defer q.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = q.AddTask(ctx, 0, []byte("warm-up")) // records the layout
	require.NoError(t, err)

	// A first add holds the round trip; two more wait for the next one.
	entered, release := make(chan struct{}), make(chan struct{})
	log.mu.Lock()
	log.gate = func() { close(entered); <-release }
	log.mu.Unlock()
	first := make(chan error, 1)
	go func() { _, err := q.AddTask(ctx, 0, []byte("first")); first <- err }()
	<-entered
	a := &q.adders[0]
	waiting := make([]chan error, 2)
	for i := range waiting {
		waiting[i] = make(chan error, 1)
		go func() { _, err := q.AddTask(ctx, uint64(i), []byte("waits")); waiting[i] <- err }()
		require.Eventually(t, func() bool {
			a.mu.Lock()
			defer a.mu.Unlock()
			return len(a.waiting) == i+1
		}, 5*time.Second, time.Millisecond)
	}
	m.Close() // Redis goes away: both round trips fail
	close(release)
	assert.Error(t, <-first)
	for i, w := range waiting {
		assert.Error(t, <-w, "call %d of the failed round trip", i)
	}
}
