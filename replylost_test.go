package queue

import (
	"context"
	"errors"
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
