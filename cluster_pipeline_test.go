package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/alicebob/miniredis/v2/server"
	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// brokenConn is a node connection whose network fails while fail is set:
// from then on, like a redigo connection after a network error, every
// call returns the error.
type brokenConn struct {
	redis.Conn
	fail *atomic.Bool
	err  error
}

func (c *brokenConn) check() error {
	if c.err == nil && c.fail.Load() {
		c.err = errors.New("write tcp: connection reset by peer")
	}
	return c.err
}

func (c *brokenConn) Err() error {
	if c.err != nil {
		return c.err
	}
	return c.Conn.Err()
}

func (c *brokenConn) Send(cmd string, args ...any) error {
	if err := c.check(); err != nil {
		return err
	}
	return c.Conn.Send(cmd, args...)
}

func (c *brokenConn) Flush() error {
	if err := c.check(); err != nil {
		return err
	}
	return c.Conn.Flush()
}

func (c *brokenConn) Receive() (any, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	return c.Conn.Receive()
}

func (c *brokenConn) Do(cmd string, args ...any) (any, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	return c.Conn.Do(cmd, args...)
}

// oneNodeRouter returns a router whose map gives every slot to the
// server at addr, its node connections wrapped by wrap.
func oneNodeRouter(t *testing.T, addr string, wrap func(redis.Conn) redis.Conn) *clusterRouter {
	t.Helper()
	cfg, err := Config{}.withDefaults()
	require.NoError(t, err)
	r := &clusterRouter{cfg: cfg, nodes: map[string]*redis.Pool{}, wrap: wrap}
	m := newSlotMap()
	require.NoError(t, m.assign(0, clusterSlots-1, addr))
	r.mu.Lock()
	r.storeSlotsLocked(m)
	r.mu.Unlock()
	t.Cleanup(func() { r.close() })
	return r
}

// A pipeline whose node connection fails leaves nothing behind in the
// routed connection: the pool does not hand it out again with that node
// connection held and its replies pending, so the next pipeline goes on
// a new node connection and reads its own replies (after a primary's
// kill -9, a producer's coalesced adds failed on the dead connection for
// good, whatever the cluster did).
func TestRoutedConnDropsAFailedNodeConn(t *testing.T) {
	for _, at := range []string{"send", "flush"} {
		t.Run(at, func(t *testing.T) {
			m := miniredis.RunT(t)
			var fail atomic.Bool
			r := oneNodeRouter(t, m.Addr(), func(c redis.Conn) redis.Conn { return &brokenConn{Conn: c, fail: &fail} })
			pool := r.partitionPool(nil)
			pool.MaxIdle = 1 // the routed connection returned is the one handed out next
			defer pool.Close()

			c := pool.Get()
			require.NoError(t, c.Send("LPUSH", "{a}:l", "lost"), "nothing is written before Flush")
			if at == "send" {
				fail.Store(true) // the write fails
				require.NoError(t, c.Flush(), "a node's failure is its commands' reply")
			} else {
				require.NoError(t, c.Flush())
				fail.Store(true) // the reply is lost
			}
			_, err := c.Receive()
			require.Error(t, err)
			require.NoError(t, c.Err(), "the routed connection stays usable")
			c.Close()
			fail.Store(false)

			c = pool.Get()
			defer c.Close()
			require.NoError(t, c.Send("LPUSH", "{a}:l", "x"), "a new pipeline, on a new node connection")
			require.NoError(t, c.Send("LLEN", "{a}:l"))
			require.NoError(t, c.Flush())
			pushed, err := redis.Int(c.Receive())
			require.NoError(t, err)
			n, err := redis.Int(c.Receive())
			require.NoError(t, err)
			assert.Equal(t, n, pushed, "the replies are the new pipeline's")
			_, err = c.Receive()
			assert.Error(t, err, "no reply left")
		})
	}
}

// On a cluster, the AddTask calls one round trip carries are for queues
// that may live on several primaries: a primary that cannot be reached
// fails its own calls, not those for the others. (After a primary's
// kill -9, adds to queues on the healthy primaries failed with the dead
// one's "connection refused".)
func TestClusterAddsToHealthyPrimariesGoThrough(t *testing.T) {
	m := miniredis.RunT(t)
	// No failover comes: the map read again still names the dead node.
	m.Server().SetPreHook(func(p *server.Peer, cmd string, _ ...string) bool {
		if strings.EqualFold(cmd, "CLUSTER") {
			p.WriteError("ERR This instance has cluster support disabled")
			return true
		}
		return false
	})
	// The test's prefix is new each run: take one whose unreachable
	// queue shares its slot with neither the healthy queue nor the
	// layout hash (a random prefix does, about one run in 8,000).
	var prefix string
	var down int
	for {
		prefix = testPrefix(t)
		healthy, unreachable := newQueueKeys(prefix, 0, 0).ready, newQueueKeys(prefix, 0, 1).ready
		down = keySlot(unreachable)
		if down != keySlot(healthy) && down != keySlot(layoutKey(prefix)+":0") {
			break
		}
	}
	r := oneNodeRouter(t, m.Addr(), nil)
	sm := r.slots.Load()
	require.NoError(t, sm.assign(int64(down), int64(down), closedAddr(t)))

	log := &cmdLog{}
	pool := r.partitionPool(func(c redis.Conn) redis.Conn { return countingConn{Conn: c, log: log} })
	defer pool.Close()
	q, err := New([]*redis.Pool{pool}, Config{Prefix: prefix, Queues: 2})
	require.NoError(t, err)
	defer q.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, q.CheckLayout(ctx))

	// A first add holds the round trip, so that the next two share one.
	entered, release := make(chan struct{}), make(chan struct{})
	log.mu.Lock()
	log.gate = func() { close(entered); <-release }
	log.mu.Unlock()
	errs := make(chan error, 1)
	go func() { _, err := q.AddTask(ctx, 0, []byte("first")); errs <- err }()
	<-entered
	a := &q.adders[0]
	results := map[uint64]chan error{2: make(chan error, 1), 1: make(chan error, 1)} // queue 0, queue 1
	for i, id := range []uint64{2, 1} {
		go func() { _, err := q.AddTask(ctx, id, []byte("x")); results[id] <- err }()
		require.Eventually(t, func() bool {
			a.mu.Lock()
			defer a.mu.Unlock()
			return len(a.waiting) == i+1
		}, 5*time.Second, time.Millisecond)
	}
	close(release)
	require.NoError(t, <-errs)
	assert.NoError(t, <-results[2], "an add to a queue on a primary that answers")
	assert.Error(t, <-results[1], "an add to a queue on a primary that cannot be reached")
}

// A refresh is shared by the calls that need it, but the ctx it runs
// within is the one of the call that started it: when that ctx ends, the
// calls waiting with a ctx of their own still live get a refresh of
// their own, not the other call's context error.
func TestClusterRefreshOutlivesTheCtxThatStartedIt(t *testing.T) {
	m := miniredis.RunT(t)
	gate := make(chan struct{})
	var opened sync.Once
	open := func() { opened.Do(func() { close(gate) }) }
	// Run before miniredis's Close, which waits for the command held at
	// the gate: a failed assertion below would otherwise hang the test.
	t.Cleanup(open)
	var asked atomic.Int32
	m.Server().SetPreHook(func(_ *server.Peer, cmd string, _ ...string) bool {
		if strings.EqualFold(cmd, "CLUSTER") && asked.Add(1) == 1 {
			<-gate // the first reading hangs until its caller gave up
		}
		return false
	})
	r := oneNodeRouter(t, m.Addr(), nil)
	r.seeds = []string{m.Addr()}
	const slot = 42
	sm := newSlotMap()
	require.NoError(t, sm.assign(slot+1, clusterSlots-1, m.Addr()))
	r.slots.Store(sm) // slot has no primary: a call needs a refresh

	short, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := make(chan error, 1)
	go func() { _, err := r.addrFor(short, slot); first <- err }()
	require.Eventually(t, func() bool { return asked.Load() == 1 }, 5*time.Second, time.Millisecond)

	long, cancelLong := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelLong()
	second := make(chan error, 1)
	go func() {
		addr, err := r.addrFor(long, slot)
		if err == nil && addr != m.Addr() {
			err = fmt.Errorf("slot %d at %s, not %s", slot, addr, m.Addr())
		}
		second <- err
	}()
	time.Sleep(50 * time.Millisecond) // the second call waits for the first's refresh
	cancel()
	require.ErrorIs(t, <-first, context.Canceled)
	open()
	assert.NoError(t, <-second, "a call whose ctx lives gets the map, not another call's ctx error")
}

// The pools a router made are forgotten when it closes: a process that
// dials a cluster again and again keeps no router, map or pools of the
// closed ones.
func TestClusterPoolsForgottenOnClose(t *testing.T) {
	m := miniredis.RunT(t)
	r := oneNodeRouter(t, m.Addr(), nil)
	pools := []*redis.Pool{r.partitionPool(nil), r.partitionPool(nil)}
	for _, p := range pools {
		require.NotNil(t, routerOf(p))
	}
	require.NoError(t, r.close())
	for _, p := range pools {
		assert.Nil(t, routerOf(p), "a closed router's pool is still marked")
	}
}

// A command of a pipeline that could not be written to its primary does
// not go to a new primary when an earlier command of that primary was
// written and lost its reply: that one may have run, or may yet, and the
// later one must not run before it (two LPUSHes of one queue's tasks).
func TestRoutedConnKeepsOrderAfterALostReply(t *testing.T) {
	old, next := miniredis.RunT(t), miniredis.RunT(t)
	var fail atomic.Bool
	r := oneNodeRouter(t, old.Addr(), func(c redis.Conn) redis.Conn { return &brokenConn{Conn: c, fail: &fail} })
	pool := r.partitionPool(nil)
	defer pool.Close()
	c := pool.Get()
	defer c.Close()
	require.NoError(t, c.Send("LPUSH", "{a}:l", "first"))
	require.NoError(t, c.Flush())
	fail.Store(true) // the connection fails: first's reply is lost, second cannot be written
	require.NoError(t, c.Send("LPUSH", "{a}:l", "second"))
	require.NoError(t, c.Flush())
	fail.Store(false) // new connections work, to the new primary above all
	m := newSlotMap() // a failover: the map now names another primary
	require.NoError(t, m.assign(0, clusterSlots-1, next.Addr()))
	r.slots.Store(m)
	_, err := c.Receive()
	require.Error(t, err, "first's reply was lost")
	_, err = c.Receive()
	require.Error(t, err, "second fails with its node")
	assert.False(t, next.Exists("{a}:l"), "second ran on the new primary, perhaps before first")
}

// A command with no key whose node cannot be reached fails with the node,
// as a keyed one does.
func TestRoutedConnKeylessCommandToAnUnreachableNode(t *testing.T) {
	r := oneNodeRouter(t, closedAddr(t), nil)
	pool := r.partitionPool(nil)
	defer pool.Close()
	c := pool.Get()
	defer c.Close()
	require.NoError(t, c.Send("PING"))
	require.NoError(t, c.Flush())
	_, err := c.Receive()
	assert.ErrorIs(t, err, errNodeUnreachable)
}
