package queue

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// stalledServer accepts connections and reads them, never replying: a
// Redis that has stopped answering. It returns a pool on it with no read
// timeout, so only a ctx can end a call.
func stalledServer(t *testing.T) *redis.Pool {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { io.Copy(io.Discard, c) })
		}
	})
	pool := &redis.Pool{DialContext: func(ctx context.Context) (redis.Conn, error) {
		return redis.DialContext(ctx, "tcp", ln.Addr().String())
	}}
	t.Cleanup(func() {
		pool.Close()
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return pool
}

// adderWaiting returns how many calls wait in a's line, and whether one
// waits for room.
func adderWaiting(a *adder) (int, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.waiting), a.room != nil
}

// startAdd runs a.add on its own goroutine and returns its result channel.
func startAdd(ctx context.Context, a *adder, pool *redis.Pool, entry []byte) chan error {
	done := make(chan error, 1)
	go func() { done <- a.add(ctx, pool, "k", entry) }()
	return done
}

// TestAdderReturnsWhenCtxEnds stalls a partition's Redis (no reply, no
// read timeout) and checks that every AddTask returns with its ctx's
// error: the leader in its round trip, calls waiting in line (they leave
// it, unsent), and calls taken into a round trip that every one of its
// calls gave up on.
func TestAdderReturnsWhenCtxEnds(t *testing.T) {
	t.Parallel()
	pool := stalledServer(t)
	var a adder
	entry := encodeTask(Task{ID: testID, Payload: []byte("x")}, 0)

	leadCtx, cancelLead := context.WithCancel(context.Background())
	defer cancelLead()
	lead := startAdd(leadCtx, &a, pool, entry)
	require.Eventually(t, func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.busy
	}, 10*time.Second, time.Millisecond)

	// Waiting calls: the first half give up while in line.
	const n = 8
	ctxs := make([]context.CancelFunc, n)
	results := make([]chan error, n)
	for i := range n {
		ctx, cancel := context.WithCancel(context.Background())
		ctxs[i] = cancel
		results[i] = startAdd(ctx, &a, pool, entry)
		require.Eventually(t, func() bool { w, _ := adderWaiting(&a); return w == i+1 }, 10*time.Second, time.Millisecond)
	}
	for i := range n / 2 {
		ctxs[i]()
		assert.ErrorIs(t, <-results[i], context.Canceled, "call %d in line", i)
	}
	w, _ := adderWaiting(&a)
	assert.Equal(t, n/2, w, "the calls that gave up left the line")

	// The leader gives up: its round trip is closed, and the next call
	// leads the rest into a round trip that stalls too.
	cancelLead()
	assert.ErrorIs(t, <-lead, context.Canceled, "leader")
	require.Eventually(t, func() bool { w, _ := adderWaiting(&a); return w == 0 }, 10*time.Second, time.Millisecond)
	// All taken: each waits for the round trip until every one gave up.
	for i := n / 2; i < n-1; i++ {
		ctxs[i]()
	}
	select {
	case err := <-results[n-1]:
		t.Fatalf("a call returned before its ctx ended: %v", err)
	default:
	}
	ctxs[n-1]()
	for i := n / 2; i < n; i++ {
		assert.ErrorIs(t, <-results[i], context.Canceled, "call %d in a round trip", i)
	}
	a.mu.Lock()
	assert.False(t, a.busy, "the adder went idle")
	a.mu.Unlock()
}

// TestAdderWaitingLineBounded fills a stalled partition's waiting line and
// checks that one more call waits for room, on its ctx, and gets in when a
// call leaves.
func TestAdderWaitingLineBounded(t *testing.T) {
	t.Parallel()
	pool := stalledServer(t)
	var a adder
	entry := encodeTask(Task{ID: testID, Payload: []byte("x")}, 0)
	ctx, cancelAll := context.WithCancel(context.Background())
	defer cancelAll()

	lead := startAdd(ctx, &a, pool, entry)
	require.Eventually(t, func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.busy
	}, 10*time.Second, time.Millisecond)
	first, cancelFirst := context.WithCancel(ctx)
	results := []chan error{startAdd(first, &a, pool, entry)}
	require.Eventually(t, func() bool { w, _ := adderWaiting(&a); return w == 1 }, 10*time.Second, time.Millisecond)
	for range maxAddWaiting - 1 {
		results = append(results, startAdd(ctx, &a, pool, entry))
	}
	require.Eventually(t, func() bool { w, _ := adderWaiting(&a); return w == maxAddWaiting }, 10*time.Second, time.Millisecond)

	// Over the bound: waits for room, and gives up with its ctx.
	over, cancelOver := context.WithCancel(ctx)
	overDone := startAdd(over, &a, pool, entry)
	require.Eventually(t, func() bool { _, r := adderWaiting(&a); return r }, 10*time.Second, time.Millisecond)
	w, _ := adderWaiting(&a)
	assert.Equal(t, maxAddWaiting, w, "the line does not grow past its bound")
	cancelOver()
	assert.ErrorIs(t, <-overDone, context.Canceled)

	// Over the bound again; a call leaving makes room for it.
	late := startAdd(ctx, &a, pool, entry)
	require.Eventually(t, func() bool { _, r := adderWaiting(&a); return r }, 10*time.Second, time.Millisecond)
	cancelFirst()
	assert.ErrorIs(t, <-results[0], context.Canceled)
	require.Eventually(t, func() bool {
		w, r := adderWaiting(&a)
		return w == maxAddWaiting && !r
	}, 10*time.Second, time.Millisecond, "the late call took the room")

	cancelAll()
	for _, c := range append(results[1:], lead, late) {
		err := <-c
		assert.True(t, errors.Is(err, context.Canceled), "got %v", err)
	}
}

// TestAdderWaitingLineBytes checks the byte bound: a call whose entry
// would take the line past maxAddWaitingBytes waits, unless the line is
// empty.
func TestAdderWaitingLineBytes(t *testing.T) {
	t.Parallel()
	var a adder
	big := maxAddWaitingBytes/2 + 1
	assert.True(t, a.hasRoom(maxAddWaitingBytes+1), "an empty line takes any call")
	a.waiting, a.bytes = []*addCall{{}}, big
	assert.True(t, a.hasRoom(maxAddWaitingBytes-big))
	assert.False(t, a.hasRoom(maxAddWaitingBytes-big+1))
}

// A write whose ctx has already ended returns ctx's error and writes
// nothing: a caller that retries on the error adds nothing twice.
func TestWritesWithAnEndedCtxWriteNothing(t *testing.T) {
	t.Parallel()
	ctx := bounded(t)
	// Every command the queue sends is recorded: redis.DoContext sends a
	// command whose ctx was cancelled before it now and then, on its own
	// goroutine, so the keys alone would show the write only sometimes.
	servers := newTestServers(t, 2)
	var log cmdLog
	q, err := New([]*redis.Pool{countingPool(t, servers[0], &log), countingPool(t, servers[1], &log)}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	sent := func() []string {
		log.mu.Lock()
		defer log.mu.Unlock()
		var cmds []string
		for _, c := range log.cmds {
			if c != "" { // a pool's flush of nothing, as it takes a connection back
				cmds = append(cmds, c)
			}
		}
		return cmds
	}
	// The layout recorded, a task queued and one dead, as a running
	// system has them.
	_, err = q.AddTasks(ctx, []Task{{OrderID: 0, Payload: []byte("a")}, {OrderID: 1, Payload: []byte("b")}})
	require.NoError(t, err)
	id, err := q.AddTask(ctx, 2, []byte("c"))
	require.NoError(t, err)
	dump := func() []keyDump {
		d := make([]keyDump, len(servers))
		for i, s := range servers {
			d[i] = dumpKeys(t, s, q.cfg.Prefix)
		}
		return d
	}
	ended, cancel := context.WithCancel(ctx)
	cancel()
	later := time.Now().Add(time.Hour)
	for _, c := range []struct {
		name string
		call func() error
	}{
		{"AddTask", func() error { _, err := q.AddTask(ended, 4, []byte("x")); return err }},
		{"AddTaskAt", func() error { _, err := q.AddTaskAt(ended, 4, later, []byte("x")); return err }},
		{"AddTasks", func() error {
			_, err := q.AddTasks(ended, []Task{{OrderID: 4, Payload: []byte("x")}, {OrderID: 5, Payload: []byte("y")}})
			return err
		}},
		{"AddTasks scheduled", func() error {
			_, err := q.AddTasks(ended, []Task{{OrderID: 4, Payload: []byte("x"), NotBefore: later}})
			return err
		}},
		{"AddTaskOnce", func() error { _, _, err := q.AddTaskOnce(ended, 4, "k", time.Minute, []byte("x")); return err }},
		{"Cancel", func() error { _, err := q.Cancel(ended, 2, id); return err }},
		{"Pause", func() error { return q.Pause(ended, AllQueues()) }},
		{"Replay", func() error { _, err := q.Replay(ended, 0); return err }},
		{"Purge", func() error { _, err := q.Purge(ended, 0); return err }},
	} {
		before := dump()
		log.reset()
		err := c.call()
		assert.ErrorIs(t, err, context.Canceled, c.name)
		assert.Empty(t, sent(), "%s sent commands", c.name)
		time.Sleep(100 * time.Millisecond) // nothing comes later either (a push left running)
		after := dump()
		for i := range servers {
			assert.Equal(t, before[i], after[i], "%s wrote to server %d", c.name, i)
		}
	}
}
