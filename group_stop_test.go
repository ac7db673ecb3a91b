package queue

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// heldBeat holds back a member's next heartbeat once armed, as a slow
// network would: the call waits for release before it reaches Redis, and
// a caller that stops waiting gets ctx's error while the command still
// goes out afterwards (what redigo's DoContext does).
type heldBeat struct {
	member          string
	armed           atomic.Bool
	caught, release chan struct{}
	landed          chan error
	// With kept, the held heartbeat is never answered nor sent by the
	// connection (one gone half-open): its arguments go to kept, for the
	// test to send when it likes, as the network may deliver it late.
	kept   chan []any
	passed atomic.Int64 // heartbeats of the member answered
}

// isBeat reports whether a call is a heartbeat of h's member: the beat
// script, its key count, its keys, then member, ..., op "beat".
func (h *heldBeat) isBeat(cmd string, args []any) bool {
	if cmd != "EVALSHA" || len(args) < 2 {
		return false
	}
	nkeys, ok := args[1].(int)
	at := 2 + nkeys // the member
	return ok && len(args) > at+5 && fmt.Sprint(args[at]) == h.member && fmt.Sprint(args[at+5]) == "beat"
}

// heldBeatConn is a connection whose heartbeats h may hold.
type heldBeatConn struct {
	redis.Conn
	h *heldBeat
}

func (c heldBeatConn) ReceiveContext(ctx context.Context) (any, error) {
	return redis.ReceiveContext(c.Conn, ctx)
}

func (c heldBeatConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	h := c.h
	beat := h.isBeat(cmd, args)
	if !beat || !h.armed.CompareAndSwap(true, false) {
		v, err := redis.DoContext(c.Conn, ctx, cmd, args...)
		if beat && err == nil {
			h.passed.Add(1)
		}
		return v, err
	}
	close(h.caught)
	if h.kept != nil {
		h.kept <- args
		<-ctx.Done()
		return nil, ctx.Err()
	}
	type reply struct {
		v   any
		err error
	}
	out := make(chan reply, 1)
	go func() {
		<-h.release
		v, err := c.Conn.Do(cmd, args...)
		h.landed <- err
		out <- reply{v, err}
	}()
	select {
	case r := <-out:
		return r.v, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TestJoinGroupLeaveAfterHeartbeatInFlight stops a member while one of
// its heartbeats is on its way to Redis: the member must be gone from the
// group once JoinGroup returned. A heartbeat given up on and landing after
// the leave would join it again for a whole session, its queues idle.
func TestJoinGroupLeaveAfterHeartbeatInFlight(t *testing.T) {
	skipOnCluster(t, "the held connection wraps one server's")
	servers := newTestServers(t, 1)
	hold := &heldBeat{member: "a", caught: make(chan struct{}), release: make(chan struct{}), landed: make(chan error, 1)}
	pool := servers[0].wrapPool(4, func(c redis.Conn) redis.Conn { return heldBeatConn{c, hold} })
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Queues: 2, Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- q.JoinGroup(ctx, "g", GroupConfig{Member: "a", SessionTTL: time.Second, Pool: PoolConfig{Workers: 1}},
			func(context.Context, Task) error { return nil })
	}()
	require.Eventually(t, func() bool { return settled(t, q, "g", "a") }, 5*time.Second, 5*time.Millisecond)
	hold.armed.Store(true)
	select {
	case <-hold.caught: // the next heartbeat (every 200ms) is held
	case <-time.After(5 * time.Second):
		t.Fatal("no heartbeat within 5s")
	}
	cancel()
	time.Sleep(100 * time.Millisecond) // a leave not waiting for the heartbeat goes out now
	close(hold.release)
	require.NoError(t, <-hold.landed)
	require.NoError(t, <-done)
	st, err := q.GroupStatus(context.Background(), "g")
	require.NoError(t, err)
	require.Empty(t, st.Members, "members after the only one left")
}

// TestJoinGroupGivenUpHeartbeatLandingAfterLeave has a member give up a
// heartbeat (no reply in half a session) and go on; once the member left,
// the heartbeat reaches Redis. It must join nothing: before, it joined
// the stopped member again for a whole session, its queues idle.
func TestJoinGroupGivenUpHeartbeatLandingAfterLeave(t *testing.T) {
	skipOnCluster(t, "the held connection wraps one server's")
	servers := newTestServers(t, 1)
	g := &heldBeat{member: "a", caught: make(chan struct{}), kept: make(chan []any, 1)}
	pool := servers[0].wrapPool(4, func(c redis.Conn) redis.Conn { return heldBeatConn{c, g} })
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Queues: 2, Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	cfg := GroupConfig{Member: "a", SessionTTL: time.Second, Pool: PoolConfig{Workers: 1}}
	fn := func(context.Context, Task) error { return nil }
	join := func() (context.CancelFunc, chan error) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- q.JoinGroup(ctx, "g", cfg, fn) }()
		return cancel, done
	}

	stop, done := join()
	require.Eventually(t, func() bool { return settled(t, q, "g", "a") }, 5*time.Second, 5*time.Millisecond)
	g.armed.Store(true)
	var held []any
	select {
	case held = <-g.kept:
	case <-time.After(5 * time.Second):
		t.Fatal("no heartbeat within 5s")
	}
	// Heartbeats of a member run one at a time: one answered after the
	// held one means the member gave that one up.
	n := g.passed.Load()
	require.Eventually(t, func() bool { return g.passed.Load() > n }, 10*time.Second, 5*time.Millisecond,
		"the member never beat again")
	stop()
	require.NoError(t, <-done)

	conn := servers[0].pool.Get()
	defer conn.Close()
	_, err = conn.Do("EVALSHA", held...)
	require.NoError(t, err, "the late heartbeat")
	st, err := q.GroupStatus(context.Background(), "g")
	require.NoError(t, err)
	require.Empty(t, st.Members, "a heartbeat given up on and landing after the leave joined the member again")

	// The member started again joins at once.
	stop, done = join()
	require.Eventually(t, func() bool { return settled(t, q, "g", "a") }, 5*time.Second, 5*time.Millisecond)
	stop()
	require.NoError(t, <-done)
}

// TestJoinGroupQueueBackAndForthWaitsForTheFirstPool moves a queue away
// from a member and back twice while the member's first pool on it is
// still stopping (a task runs): the member's last pool on the queue must
// not start before that first one returned. Before, the pool started in
// between, stopped while waiting, let the last one start at once, and the
// last pool waited on its own member's lease as a standby.
func TestJoinGroupQueueBackAndForthWaitsForTheFirstPool(t *testing.T) {
	q, _ := newTestQueue(t, 1, Config{Queues: 1})
	other, err := q.newGroupStore("g", time.Minute)
	require.NoError(t, err)
	assigned := make(chan []int, 16)
	started, release := make(chan struct{}, 1), make(chan struct{})
	logs := &logRecorder{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- q.JoinGroup(ctx, "g", GroupConfig{Member: "a", SessionTTL: time.Minute,
			Pool:     PoolConfig{Workers: 1, ShutdownTimeout: time.Minute, Logger: slog.New(logs)},
			OnAssign: func(a []int) { assigned <- a }},
			func(ctx context.Context, _ Task) error {
				started <- struct{}{}
				<-release
				return nil
			})
	}()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	require.Equal(t, []int{0}, <-assigned)
	_, err = q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	<-started

	// b, of far greater weight, takes the only queue; when it leaves, the
	// queue goes back to a. Each change nudges a.
	var gen int64
	for range 2 {
		b, err := other.beat(ctx, "b", maxGroupWeight, "beat", gen)
		require.NoError(t, err)
		gen = b.gen
		require.Equal(t, []int{0}, b.analysers)
		require.Empty(t, <-assigned)
		_, err = other.beat(ctx, "b", maxGroupWeight, "leave", 0)
		require.NoError(t, err)
		require.Equal(t, []int{0}, <-assigned)
	}
	// The first pool still runs its task, holding the lease: a pool of a
	// that looks for the lease now finds a as its holder.
	assert.Never(t, func() bool {
		for _, l := range logs.lines("waiting as a standby") {
			if l.attrs["holder"] == "a" {
				return true
			}
		}
		return false
	}, 300*time.Millisecond, 5*time.Millisecond, "a second pool of a ran on the queue while the first was stopping")
	close(release)
	require.Eventually(t, func() bool { return len(logs.lines("took the lease")) == 2 }, 5*time.Second, time.Millisecond)
}
