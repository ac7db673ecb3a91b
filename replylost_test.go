package queue

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/require"
)

// replyLostConn runs a script (the acquire script unless name says
// another) in Redis and then loses its reply, once: it calls lost (to end
// the caller's ctx, say), then returns err.
type replyLostConn struct {
	redis.Conn
	lose *bool
	lost func()
	err  error
	name string
}

func (c replyLostConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	name := c.name
	if name == "" {
		name = "acquire"
	}
	if *c.lose && (cmd == "EVALSHA" && args[0] == scriptHash(name) || cmd == "EVAL" && args[0] == scriptSources[name]) {
		if _, err := c.Conn.Do(cmd, args...); err != nil { // Redis runs it (or asks for EVAL)
			return nil, err
		}
		*c.lose = false
		c.lost()
		return nil, c.err
	}
	return redis.DoContext(c.Conn, ctx, cmd, args...)
}

func (c replyLostConn) ReceiveContext(ctx context.Context) (any, error) {
	return redis.ReceiveContext(c.Conn, ctx)
}

// replyLostQueue returns a one-queue Queue whose first acquisition's
// reply is lost as replyLostConn says, its server and its keys.
func replyLostQueue(t *testing.T, lost func(), err error) (*Queue, *testServer, queueKeys) {
	return replyLostScript(t, "acquire", lost, err)
}

// replyLostScript is replyLostQueue for the script named.
func replyLostScript(t *testing.T, name string, lost func(), err error) (*Queue, *testServer, queueKeys) {
	t.Helper()
	_, servers := newTestQueue(t, 1, Config{})
	lose := true
	pool := servers[0].wrapPool(0, func(c redis.Conn) redis.Conn {
		return replyLostConn{Conn: c, lose: &lose, lost: lost, err: err, name: name}
	})
	t.Cleanup(func() { pool.Close() })
	q, qerr := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, qerr)
	t.Cleanup(func() { q.Close() })
	return q, servers[0], newQueueKeys(q.cfg.Prefix, 0, 0)
}

// A pool stopped while its acquisition's reply is on its way leaves no
// lease behind: the lease it took unknowingly is given up, with a
// wake-up, so that the next owner need not wait out a whole TTL.
func TestAcquireAbandonsALeaseTakenAsCtxEnded(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	q, s, k := replyLostQueue(t, cancel, context.Canceled)
	require.NoError(t, q.AnalysePool(ctx, 0, PoolConfig{Workers: 1}, func(context.Context, Task) error { return nil }))
	n, err := redis.Int(s.do(t, "EXISTS", k.lease), nil)
	require.NoError(t, err)
	require.Zero(t, n, "the lease is given up")
	wake, err := redis.Int(s.do(t, "LLEN", k.wake), nil)
	require.NoError(t, err)
	require.Equal(t, 1, wake, "a standby is woken")
}

// lateConn delivers the acquire script to Redis late, once: the caller's
// ctx ends as it goes out, and Redis runs it (on a connection of its own)
// only after the abandon script has run, or 50ms have passed if none
// comes. ran is closed once Redis has run it.
type lateConn struct {
	redis.Conn
	late    *atomic.Bool
	lost    func()
	side    *redis.Pool   // what the late command runs on
	abandon chan struct{} // closed when an abandon script has run
	ran     chan struct{}
}

func isScript(name, cmd string, args []any) bool {
	return cmd == "EVALSHA" && args[0] == scriptHash(name) || cmd == "EVAL" && args[0] == scriptSources[name]
}

func (c lateConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	if isScript("abandon", cmd, args) {
		defer func() {
			select {
			case <-c.abandon:
			default:
				close(c.abandon)
			}
		}()
	}
	if !isScript("acquire", cmd, args) || !c.late.CompareAndSwap(true, false) {
		return redis.DoContext(c.Conn, ctx, cmd, args...)
	}
	type reply struct {
		v   any
		err error
	}
	got := make(chan reply, 1)
	go func() {
		defer close(c.ran)
		select {
		case <-c.abandon:
		case <-time.After(50 * time.Millisecond):
		}
		conn := c.side.Get()
		defer conn.Close()
		// EVAL, not EVALSHA: the script may not be loaded yet.
		v, err := conn.Do("EVAL", append([]any{scriptSources["acquire"]}, args[1:]...)...)
		got <- reply{v, err}
	}()
	c.lost()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case r := <-got:
		return r.v, r.err
	}
}

func (c lateConn) ReceiveContext(ctx context.Context) (any, error) {
	return redis.ReceiveContext(c.Conn, ctx)
}

// A pool stopped while its acquisition is on its way to Redis, which
// runs it only later, leaves no lease behind either: an abandon sent at
// once would run first, find nothing to give up, and the lease taken
// after it would keep every standby waiting its whole TTL (for ever on a
// server whose clock stands still).
func TestAcquireAnsweredAfterCtxEndedLeavesNoLease(t *testing.T) {
	_, servers := newTestQueue(t, 1, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	side := servers[0].wrapPool(1, func(c redis.Conn) redis.Conn { return c })
	t.Cleanup(func() { side.Close() })
	var late atomic.Bool
	late.Store(true)
	ran, abandon := make(chan struct{}), make(chan struct{})
	pool := servers[0].wrapPool(0, func(c redis.Conn) redis.Conn {
		return lateConn{Conn: c, late: &late, lost: cancel, side: side, abandon: abandon, ran: ran}
	})
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	k := newQueueKeys(q.cfg.Prefix, 0, 0)
	require.NoError(t, q.AnalysePool(ctx, 0, PoolConfig{Workers: 1}, func(context.Context, Task) error { return nil }))
	<-ran
	n, err := redis.Int(servers[0].do(t, "EXISTS", k.lease), nil)
	require.NoError(t, err)
	require.Zero(t, n, "the lease is given up")
}

// After a try whose reply was lost, the next try takes the lease the
// first one took, at once, instead of waiting for it to expire.
func TestAcquireRetakesALeaseWhoseReplyWasLost(t *testing.T) {
	q, s, k := replyLostQueue(t, func() {}, errors.New("connection reset"))
	st, err := q.newStore(context.Background(), 0, 5*time.Second, 5, "me")
	require.NoError(t, err)
	var reported []error
	start := time.Now()
	require.NoError(t, st.acquire(context.Background(), func(err error) { reported = append(reported, err) }, nil))
	require.Less(t, time.Since(start), 4*time.Second, "not after the lease's expiry")
	require.Len(t, reported, 1, "the lost reply is reported and retried")
	v, err := redis.String(s.do(t, "GET", k.lease), nil)
	require.NoError(t, err)
	require.Equal(t, st.value(), v, "the retry took the lease over, with a value of its own")
	require.NoError(t, st.release(context.Background()))
}

// scriptHash is the SHA1 EVALSHA names the script name with.
func scriptHash(name string) string {
	return redis.NewScript(0, scriptSources[name]).Hash()
}

// A member whose first heartbeat's reply is lost as its ctx ends may be
// in the group all the same: it leaves, so that its share does not sit
// idle for a session.
func TestJoinGroupLeavesAfterAFirstBeatWhoseReplyWasLost(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	q, _, _ := replyLostScript(t, "group-beat", cancel, context.Canceled)
	require.NoError(t, q.JoinGroup(ctx, "g", GroupConfig{Member: "m"}, func(context.Context, Task) error { return nil }))
	st, err := q.GroupStatus(context.Background(), "g")
	require.NoError(t, err)
	require.Empty(t, st.Members, "the member left")
}

// twoLostConn runs the first acquire script and loses its reply, then
// fails the second without running it: the lease is held with the first
// try's value, which no reply ever told.
type twoLostConn struct {
	redis.Conn
	tries *int
}

func (c twoLostConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	if cmd == "EVALSHA" && args[0] == acquireScript.Hash() || cmd == "EVAL" && args[0] == scriptSources["acquire"] {
		switch *c.tries {
		case 0:
			if _, err := c.Conn.Do(cmd, args...); err != nil {
				return nil, err // NOSCRIPT: EVAL comes next
			}
			*c.tries++
			return nil, errors.New("connection reset")
		case 1:
			*c.tries++
			return nil, errors.New("connection refused")
		}
	}
	return redis.DoContext(c.Conn, ctx, cmd, args...)
}

func (c twoLostConn) ReceiveContext(ctx context.Context) (any, error) {
	return redis.ReceiveContext(c.Conn, ctx)
}

// Every try of one acquisition carries the same nonce, so a lease taken by
// any try whose reply was lost is the acquisition's, not only one taken
// by the last.
func TestAcquireRetakesALeaseAnEarlierLostTryTook(t *testing.T) {
	_, servers := newTestQueue(t, 1, Config{})
	tries := 0
	pool := servers[0].wrapPool(0, func(c redis.Conn) redis.Conn { return twoLostConn{c, &tries} })
	defer pool.Close()
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	defer q.Close()
	st, err := q.newStore(context.Background(), 0, 5*time.Second, 5, "me")
	require.NoError(t, err)
	start := time.Now()
	require.NoError(t, st.acquire(context.Background(), func(error) {}, nil))
	require.Less(t, time.Since(start), 4*time.Second, "not after the lease's expiry")
	require.Equal(t, 2, tries)
	v, err := redis.String(servers[0].do(t, "GET", newQueueKeys(q.cfg.Prefix, 0, 0).lease), nil)
	require.NoError(t, err)
	require.Equal(t, st.value(), v)
}

// An acquisition whose ctx has already ended sends nothing: sent, it
// would take a lease (a fencing token, a wake-up of the standbys) only
// to release it at once.
func TestAcquireAfterCtxEndedSendsNothing(t *testing.T) {
	q, srv, k := testQueue1(t)
	ctx, cancel := context.WithCancel(context.Background())
	_, err := q.AddTask(ctx, 1, []byte("x")) // the layout is known
	require.NoError(t, err)
	before := srv.do(t, "HGETALL", k.meta)
	cancel()
	_, err = q.Consume(ctx, 0, ConsumerConfig{})
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, before, srv.do(t, "HGETALL", k.meta), "no lease was taken")
	require.EqualValues(t, 0, srv.do(t, "EXISTS", k.lease))
}

// outlive's context ends grace after its parent, with the parent's
// cause, and at once when its stop func is called.
func TestOutlive(t *testing.T) {
	cause := errors.New("stopped")
	ctx, cancel := context.WithCancelCause(context.Background())
	c, stop := outlive(ctx, 20*time.Millisecond)
	defer stop()
	cancel(cause)
	<-c.Done()
	require.ErrorIs(t, context.Cause(c), cause)

	ctx, cancel = context.WithCancelCause(context.Background())
	c, stop = outlive(ctx, time.Hour)
	cancel(cause)
	time.Sleep(10 * time.Millisecond)
	require.NoError(t, c.Err(), "the grace is not over")
	stop()
	require.ErrorIs(t, c.Err(), context.Canceled, "stop ends it")
}
