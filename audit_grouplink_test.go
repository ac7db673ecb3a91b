package queue

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/require"
)

// Links and connections that fail as networks do, for the audit of
// consumer groups (audit_group_test.go), and the tests of lost replies.

// stallLink is the network of one member: it can stall (every read and
// write waits, as a process stopped or a link that drops everything until
// it recovers, honouring read deadlines) and resume, or be cut (every
// connection closed, every dial refused) and mended.
type stallLink struct {
	mu      sync.Mutex
	cut     bool
	stalled chan struct{} // non-nil while stalled; closed at the resume
	conns   map[*stallConn]struct{}
}

var errLinkCut = fmt.Errorf("link cut by the test")

func newStallLink() *stallLink { return &stallLink{conns: map[*stallConn]struct{}{}} }

func (l *stallLink) stall() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stalled == nil {
		l.stalled = make(chan struct{})
	}
}

func (l *stallLink) resume() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stalled != nil {
		close(l.stalled)
		l.stalled = nil
	}
}

func (l *stallLink) setCut(cut bool) {
	l.mu.Lock()
	l.cut = cut
	var all []*stallConn
	if cut {
		for c := range l.conns {
			all = append(all, c)
		}
	}
	l.mu.Unlock()
	for _, c := range all {
		c.Close()
	}
}

// pool returns a pool of connections to url over l.
func (l *stallLink) pool(url string) *redis.Pool {
	return &redis.Pool{
		MaxIdle: 16,
		DialContext: func(ctx context.Context) (redis.Conn, error) {
			l.mu.Lock()
			cut := l.cut
			l.mu.Unlock()
			if cut {
				return nil, errLinkCut
			}
			var d net.Dialer
			return redis.DialURLContext(ctx, url, redis.DialReadTimeout(10*time.Second),
				redis.DialContextFunc(func(ctx context.Context, network, addr string) (net.Conn, error) {
					nc, err := d.DialContext(ctx, network, addr)
					if err != nil {
						return nil, err
					}
					c := &stallConn{Conn: nc, l: l, closed: make(chan struct{})}
					l.mu.Lock()
					l.conns[c] = struct{}{}
					l.mu.Unlock()
					return c, nil
				}))
		},
		TestOnBorrow: func(c redis.Conn, _ time.Time) error { return c.Err() },
	}
}

type stallConn struct {
	net.Conn
	l        *stallLink
	closed   chan struct{}
	once     sync.Once
	deadline atomic.Pointer[time.Time] // the read deadline
}

func (c *stallConn) wait(read bool) error {
	c.l.mu.Lock()
	ch, cut := c.l.stalled, c.l.cut
	c.l.mu.Unlock()
	if cut {
		return errLinkCut
	}
	if ch == nil {
		return nil
	}
	var timeout <-chan time.Time
	if d := c.deadline.Load(); read && d != nil && !d.IsZero() {
		tm := time.NewTimer(time.Until(*d))
		defer tm.Stop()
		timeout = tm.C
	}
	select {
	case <-ch:
		return c.wait(read)
	case <-c.closed:
		return net.ErrClosed
	case <-timeout:
		return os.ErrDeadlineExceeded
	}
}

func (c *stallConn) Read(p []byte) (int, error) {
	if err := c.wait(true); err != nil {
		return 0, err
	}
	n, err := c.Conn.Read(p)
	if werr := c.wait(true); werr != nil && err == nil {
		return 0, werr // what was read is lost with the connection
	}
	return n, err
}

func (c *stallConn) Write(p []byte) (int, error) {
	if err := c.wait(false); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

func (c *stallConn) SetDeadline(t time.Time) error {
	c.deadline.Store(&t)
	return c.Conn.SetDeadline(t)
}

func (c *stallConn) SetReadDeadline(t time.Time) error {
	c.deadline.Store(&t)
	return c.Conn.SetReadDeadline(t)
}

func (c *stallConn) Close() error {
	c.once.Do(func() {
		close(c.closed)
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// linkedQueue returns a queue over the same servers and prefix as q, all
// of whose connections go over a link of its own.
func linkedQueue(t *testing.T, q *Queue, servers []*testServer) (*Queue, *stallLink) {
	t.Helper()
	skipOnCluster(t, "the link wraps single servers' connections")
	l := newStallLink()
	pools := make([]*redis.Pool, len(servers))
	for i, s := range servers {
		pools[i] = l.pool(s.url)
		t.Cleanup(func() { pools[i].Close() })
	}
	q2, err := New(pools, Config{Queues: q.cfg.Queues, Prefix: q.cfg.Prefix})
	require.NoError(t, err)
	t.Cleanup(func() { q2.Close() })
	return q2, l
}

// lostWait swallows one blocking wait (cmd on key: a member's on its
// nudge list, a pool's on its ready list, a standby's for the lease), or
// one heartbeat of a member, once armed: the command is never answered,
// as on a connection that went half-open (a firewall or NAT that dropped
// the flow, a peer gone without a reset), until the connection's read
// timeout or the caller's ctx. Other commands go through.
type lostWait struct {
	cmd, key    string        // the blocking command and its key
	readTimeout time.Duration // the connection's
	lostBeat    bool          // swallow a heartbeat of the member instead
	armed       atomic.Bool
	caught      chan struct{}
	beats       atomic.Int64 // heartbeats of the member answered
	beat        *heldBeat    // to tell them (nil: none counted)
}

type lostWaitConn struct {
	redis.Conn
	w      *lostWait
	broken atomic.Bool
}

func (c *lostWaitConn) Err() error {
	if c.broken.Load() {
		return errLinkCut
	}
	return c.Conn.Err()
}

func (c *lostWaitConn) ReceiveContext(ctx context.Context) (any, error) {
	return redis.ReceiveContext(c.Conn, ctx)
}

func (c *lostWaitConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	w := c.w
	lose := strings.EqualFold(cmd, w.cmd) && len(args) > 0 && fmt.Sprint(args[0]) == w.key
	if w.lostBeat {
		lose = w.beat.isBeat(cmd, args)
	}
	if lose && w.armed.CompareAndSwap(true, false) {
		close(w.caught)
		c.broken.Store(true)
		tm := time.NewTimer(w.readTimeout)
		defer tm.Stop()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tm.C:
			return nil, os.ErrDeadlineExceeded
		}
	}
	v, err := redis.DoContext(c.Conn, ctx, cmd, args...)
	if err == nil && w.beat != nil && w.beat.isBeat(cmd, args) {
		w.beats.Add(1)
	}
	return v, err
}

// TestAuditGroupLostNudgeWaitKeepsTheMember loses the reply of a
// member's wait on its nudge list (a half-open connection): the member
// must beat again before its session runs out, not wait for its
// connection's read timeout, which may be far longer than a session (a
// pool of the caller's may have none at all). Before, the member was
// dropped from the group, its queues given to the other (who waited on
// their leases as standbys, the member still running them) and given
// back once the read timed out.
func TestAuditGroupLostNudgeWaitKeepsTheMember(t *testing.T) {
	lostReplyKeepsTheMember(t, false)
}

// lostReplyKeepsTheMember has one wait on its nudge list (or one
// heartbeat, lostBeat) of member b of two never answered.
func lostReplyKeepsTheMember(t *testing.T, lostBeat bool) {
	skipOnCluster(t, "the connection wraps one server's")
	servers := newTestServers(t, 1)
	prefix := testPrefix(t)
	w := &lostWait{cmd: "BLPOP", key: newGroupKeys(prefix, "g").nudge + "b", readTimeout: 10 * time.Second,
		lostBeat: lostBeat, caught: make(chan struct{}), beat: &heldBeat{member: "b"}}
	pool := servers[0].wrapPool(8, func(c redis.Conn) redis.Conn { return &lostWaitConn{Conn: c, w: w} })
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{servers[0].pool}, Config{Queues: 4, Prefix: prefix})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	qb, err := New([]*redis.Pool{pool}, Config{Queues: 4, Prefix: prefix})
	require.NoError(t, err)
	t.Cleanup(func() { qb.Close() })

	fn := func(context.Context, Task) error { return nil }
	cfg := GroupConfig{SessionTTL: 4 * time.Second, Pool: PoolConfig{Workers: 1}}
	a := joinMember(q, "g", "a", cfg, fn)
	b := joinMember(qb, "g", "b", cfg, fn)
	defer a.leave(t)
	defer b.leave(t)
	require.Eventually(t, func() bool { return settled(t, q, "g", "a", "b") }, 10*time.Second, 5*time.Millisecond)
	before, err := q.GroupStatus(context.Background(), "g")
	require.NoError(t, err)

	w.armed.Store(true)
	select {
	case <-w.caught:
	case <-time.After(10 * time.Second):
		t.Fatal("b did not wait on its nudge list (or beat) within 10s")
	}
	beats := w.beats.Load()
	require.Eventually(t, func() bool { return w.beats.Load() > beats }, 2*time.Minute, 5*time.Millisecond,
		"b never beat again")
	after, err := q.GroupStatus(context.Background(), "g")
	require.NoError(t, err)
	require.Equal(t, before.Generation, after.Generation,
		"the group was assigned anew: b's session ran out while it waited for a reply that never came")
	require.Equal(t, before.Members[1].Analysers, after.Members[1].Analysers)
}

// TestAuditGroupLostHeartbeatKeepsTheMember loses a member's heartbeat
// (a half-open connection): the member must send it again before its
// session runs out. Before, it waited for the reply a whole session.
func TestAuditGroupLostHeartbeatKeepsTheMember(t *testing.T) {
	lostReplyKeepsTheMember(t, true)
}
