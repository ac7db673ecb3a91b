package queue

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/alicebob/miniredis/v2/server"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Tests of the Sentinel client (sentinel.go) on miniredis: fake sentinels
// (a miniredis that answers SENTINEL GET-MASTER-ADDR-BY-NAME and publishes
// +switch-master) and fake primaries (a miniredis that answers ROLE). The
// tests on real servers, a failover among them, are in
// sentinel_real_test.go and sentinel_fault_test.go.

// fakeSentinel is a miniredis that plays a sentinel watching one primary.
type fakeSentinel struct {
	m     *miniredis.Miniredis
	name  string
	mu    sync.Mutex
	addr  string // the primary it names; none when empty
	asked atomic.Int64
}

func newFakeSentinel(t testing.TB, name, addr string) *fakeSentinel {
	t.Helper()
	return fakeSentinelOn(t, miniredis.RunT(t), name, addr)
}

// fakeSentinelOn makes m a fake sentinel.
func fakeSentinelOn(t testing.TB, m *miniredis.Miniredis, name, addr string) *fakeSentinel {
	t.Helper()
	f := &fakeSentinel{m: m, name: name, addr: addr}
	require.NoError(t, m.Server().Register("SENTINEL", func(c *server.Peer, _ string, args []string) {
		f.asked.Add(1)
		if len(args) != 2 || !strings.EqualFold(args[0], "GET-MASTER-ADDR-BY-NAME") {
			c.WriteError("ERR unknown sentinel subcommand")
			return
		}
		f.mu.Lock()
		addr := f.addr
		f.mu.Unlock()
		host, port, err := net.SplitHostPort(addr)
		if args[1] != f.name || err != nil {
			c.WriteNull()
			return
		}
		c.WriteStrings([]string{host, port})
	}))
	return f
}

func (f *fakeSentinel) Addr() string { return f.m.Addr() }

// name makes the sentinel name addr from now on, without announcing it.
func (f *fakeSentinel) setAddr(addr string) {
	f.mu.Lock()
	f.addr = addr
	f.mu.Unlock()
}

// failover names addr from now on and announces it on +switch-master as a
// sentinel does; it returns the number of subscribers that got it.
func (f *fakeSentinel) failover(addr string) int {
	f.mu.Lock()
	old := f.addr
	f.addr = addr
	f.mu.Unlock()
	oh, op, _ := net.SplitHostPort(old)
	nh, np, _ := net.SplitHostPort(addr)
	return f.m.Publish(switchMaster, fmt.Sprintf("%s %s %s %s %s", f.name, oh, op, nh, np))
}

// newRoleServer starts a miniredis that answers ROLE with role ("master",
// "slave"), as a primary or a replica does.
func newRoleServer(t testing.TB, role string) *miniredis.Miniredis {
	t.Helper()
	return withRole(t, miniredis.RunT(t), role)
}

func withRole(t testing.TB, m *miniredis.Miniredis, role string) *miniredis.Miniredis {
	t.Helper()
	require.NoError(t, m.Server().Register("ROLE", func(c *server.Peer, _ string, _ []string) {
		c.WriteLen(3)
		c.WriteBulk(role)
		c.WriteInt(0)
		c.WriteLen(0)
	}))
	return m
}

// sentinelURL is the redis+sentinel:// URL of primary name on sentinels.
func sentinelURL(name string, sentinels ...string) string {
	return "redis+sentinel://" + strings.Join(sentinels, ",") + "/" + name
}

// readyOn returns the ready list of the only queue of partition 0 on m.
func readyOn(t *testing.T, m *miniredis.Miniredis, q *Queue) []string {
	t.Helper()
	key := newQueueKeys(q.cfg.Prefix, 0, 0).ready
	if !m.Exists(key) {
		return nil
	}
	l, err := m.List(key)
	require.NoError(t, err)
	return l
}

// TestSentinelDialSkipsDownSentinel dials through a sentinel that is down
// and one that answers: the queue works on the primary the second names.
func TestSentinelDialSkipsDownSentinel(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary := newRoleServer(t, "master")
	s := newFakeSentinel(t, "mp", primary.Addr())
	q, err := Dial(ctx, []string{sentinelURL("mp", closedAddr(t), s.Addr())}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	defer q.Close()
	_, err = q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	assert.Len(t, readyOn(t, primary, q), 1)
	claimAckOne(t, q, 0)
}

// TestSentinelDialErrors checks what Dial says when the sentinels cannot
// name a primary: none answers, the name is unknown, the primary is down.
func TestSentinelDialErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cfg := Config{DialTimeout: 2 * time.Second}
	down := closedAddr(t)
	_, err := Dial(ctx, []string{sentinelURL("mp", down, closedAddr(t))}, cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `no sentinel named the primary "mp"`)
	assert.True(t, isConnErr(err), "a connection error: %v", err)

	s := newFakeSentinel(t, "other", newRoleServer(t, "master").Addr())
	_, err = Dial(ctx, []string{sentinelURL("mp", s.Addr())}, cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "watches no primary of that name")

	s = newFakeSentinel(t, "mp", down)
	_, err = Dial(ctx, []string{sentinelURL("mp", s.Addr())}, cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `primary "mp" at `+down)
	assert.Contains(t, err.Error(), "partition 0")
}

// TestSentinelRefusesReplica has a stale sentinel, asked first, name a
// replica: the connection is refused after ROLE, the next sentinel names
// the primary, and the stale one is asked last from then on (the
// subscription goes to the other).
func TestSentinelRefusesReplica(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary := newRoleServer(t, "master")
	replica := newRoleServer(t, "slave")
	stale := newFakeSentinel(t, "mp", replica.Addr())
	good := newFakeSentinel(t, "mp", primary.Addr())
	q, err := Dial(ctx, []string{sentinelURL("mp", stale.Addr(), good.Addr())}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	defer q.Close()
	_, err = q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	assert.Len(t, readyOn(t, primary, q), 1)
	assert.Empty(t, readyOn(t, replica, q))
	// The subscription goes to the sentinel that named the primary.
	assert.Eventually(t, func() bool { return good.m.PubSubNumSub(switchMaster)[switchMaster] > 0 }, 5*time.Second, time.Millisecond)
	assert.Zero(t, stale.m.PubSubNumSub(switchMaster)[switchMaster])

	// Every sentinel names a replica: Dial says so.
	good.setAddr(replica.Addr())
	_, err = Dial(ctx, []string{sentinelURL("mp", good.Addr(), stale.Addr())}, Config{Prefix: testPrefix(t)})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "which is not a primary (ROLE slave)")
}

// TestSentinelSwitchMaster announces a failover on +switch-master: the
// next add goes to the new primary, and the idle connections to the old
// one (still up, still answering ROLE master: only the announcement tells)
// are dropped when a borrow finds them.
func TestSentinelSwitchMaster(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	old, next := newRoleServer(t, "master"), newRoleServer(t, "master")
	s := newFakeSentinel(t, "mp", old.Addr())
	q, err := Dial(ctx, []string{sentinelURL("mp", s.Addr())}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	defer q.Close()
	// A few connections at once, left idle in the pool.
	ids, err := q.AddTasks(ctx, []Task{{OrderID: 1, Payload: []byte("a")}})
	require.NoError(t, err)
	require.Len(t, ids, 1)
	require.Eventually(t, func() bool { return s.m.Publish(switchMaster, "other 1 2 3 4") == 1 }, 5*time.Second, time.Millisecond,
		"the partition did not subscribe")
	require.Equal(t, 1, s.failover(next.Addr()))
	require.Eventually(t, func() bool {
		_, err := q.AddTask(ctx, 1, []byte("b"))
		require.NoError(t, err)
		return len(readyOn(t, next, q)) > 0
	}, 5*time.Second, time.Millisecond)
	before := len(readyOn(t, old, q))
	for range 10 {
		_, err := q.AddTask(ctx, 1, []byte("c"))
		require.NoError(t, err)
	}
	assert.Len(t, readyOn(t, old, q), before, "an add went to the old primary after the switch")
	assert.Eventually(t, func() bool { return old.CurrentConnectionCount() == 0 }, 5*time.Second, time.Millisecond,
		"connections to the old primary kept")
}

// TestSentinelAsksAgainAfterConnectionError kills the primary while the
// sentinel names another one without announcing it (the announcement was
// missed): the add that finds the old primary gone fails, as on a
// standalone server, and the next one asks the sentinels again, the one
// that answered first (not the one listed first, which knows no primary
// of that name).
func TestSentinelAsksAgainAfterConnectionError(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	old, next := newRoleServer(t, "master"), newRoleServer(t, "master")
	unknown := newFakeSentinel(t, "other", old.Addr())
	s := newFakeSentinel(t, "mp", old.Addr())
	q, err := Dial(ctx, []string{sentinelURL("mp", unknown.Addr(), s.Addr())}, Config{Prefix: testPrefix(t), DialTimeout: time.Second})
	require.NoError(t, err)
	defer q.Close()
	// The partition's follower asks too, as it subscribes: once it holds
	// its subscription (on s, the sentinel that answered) it asks no more,
	// and the counts below are the lookups' alone.
	require.Eventually(t, func() bool { return s.m.PubSubNumSub(switchMaster)[switchMaster] > 0 },
		10*time.Second, time.Millisecond, "the follower did not subscribe to the sentinel that answered")
	_, err = q.AddTask(ctx, 1, []byte("a"))
	require.NoError(t, err)
	s.setAddr(next.Addr())
	old.Close()
	_, err = q.AddTask(ctx, 1, []byte("b"))
	require.Error(t, err)
	assert.True(t, isConnErr(err), "a connection error: %v", err)
	asked, askedUnknown := s.asked.Load(), unknown.asked.Load()
	_, err = q.AddTask(ctx, 1, []byte("c"))
	require.NoError(t, err)
	assert.Len(t, readyOn(t, next, q), 1)
	assert.Equal(t, asked+1, s.asked.Load())
	assert.Equal(t, askedUnknown+1, unknown.asked.Load(), "one lookup asks every sentinel once")
}

// TestSentinelTakesTheMajoritysPrimary has the sentinels disagree, as they
// do for seconds during a failover: the leader names the promoted replica
// (already a primary) while the others name the old primary (still one
// too). A process that dials then takes the majority's word, so that it
// runs on the primary the processes already running use, and moves with
// them at +switch-master.
func TestSentinelTakesTheMajoritysPrimary(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	old, next := newRoleServer(t, "master"), newRoleServer(t, "master")
	leader := newFakeSentinel(t, "mp", next.Addr())
	a, b := newFakeSentinel(t, "mp", old.Addr()), newFakeSentinel(t, "mp", old.Addr())
	q, err := Dial(ctx, []string{sentinelURL("mp", leader.Addr(), a.Addr(), b.Addr())}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	defer q.Close()
	_, err = q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	assert.Len(t, readyOn(t, old, q), 1, "on the majority's primary")
	assert.Empty(t, readyOn(t, next, q))

	// +switch-master: every sentinel names the new primary.
	require.Eventually(t, func() bool {
		return a.m.PubSubNumSub(switchMaster)[switchMaster]+b.m.PubSubNumSub(switchMaster)[switchMaster] > 0
	}, 5*time.Second, time.Millisecond, "the follower subscribed to a sentinel of the majority")
	for _, s := range []*fakeSentinel{a, b} {
		s.failover(next.Addr())
	}
	require.Eventually(t, func() bool {
		_, err := q.AddTask(ctx, 1, []byte("y"))
		return err == nil && len(readyOn(t, next, q)) > 0
	}, 5*time.Second, 5*time.Millisecond)
}

// TestSentinelCredentialsAndTLS dials sentinels and a primary that each
// require their own user and password, over TLS with a private CA.
func TestSentinelCredentialsAndTLS(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	roots, cert := testCA(t)
	tlsServer := func() *miniredis.Miniredis {
		m, err := miniredis.RunTLS(&tls.Config{Certificates: []tls.Certificate{cert}})
		require.NoError(t, err)
		t.Cleanup(m.Close)
		return m
	}
	primary := withRole(t, tlsServer(), "master")
	primary.RequireUserAuth("app", sentinelPassword+"a")
	sm := tlsServer()
	sm.RequireUserAuth("watch", sentinelPassword+"s")
	s := fakeSentinelOn(t, sm, "mp", primary.Addr())
	u := "rediss+sentinel://app:" + sentinelPassword + "a@" + s.Addr() + "/mp?sentinel_user=watch&sentinel_password=" + sentinelPassword + "s"
	cfg := Config{Prefix: testPrefix(t), TLSConfig: &tls.Config{RootCAs: roots}, DialTimeout: 2 * time.Second}
	q, err := Dial(ctx, []string{u}, cfg)
	require.NoError(t, err)
	_, err = q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	assert.Len(t, readyOn(t, primary, q), 1)
	require.NoError(t, q.Close())

	for name, bad := range map[string]string{
		"wrong sentinel password": strings.Replace(u, sentinelPassword+"s", sentinelPassword+"x", 1),
		"wrong primary password":  strings.Replace(u, sentinelPassword+"a", sentinelPassword+"x", 1),
		"no primary password":     strings.Replace(u, "app:"+sentinelPassword+"a@", "", 1),
		"sentinels untrusted":     u,
	} {
		cfg := cfg
		if name == "sentinels untrusted" {
			cfg.TLSConfig = nil
		}
		_, err := Dial(ctx, []string{bad}, cfg)
		require.Error(t, err, name)
		assertNoSecret(t, err.Error(), name)
	}
}

// TestSentinelHangingSentinelIsNotWaitedFor has one sentinel of three take
// connections and never answer: once the other two agree, a lookup does
// not wait for it.
func TestSentinelHangingSentinelIsNotWaitedFor(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var held []net.Conn
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // read nothing, answer nothing
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	primary := newRoleServer(t, "master")
	a, b := newFakeSentinel(t, "mp", primary.Addr()), newFakeSentinel(t, "mp", primary.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	q, err := Dial(ctx, []string{sentinelURL("mp", l.Addr().String(), a.Addr(), b.Addr())},
		Config{Prefix: testPrefix(t), DialTimeout: time.Minute})
	require.NoError(t, err)
	defer q.Close()
	_, err = q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	assert.Less(t, time.Since(start), 10*time.Second, "waited for the sentinel that hangs (DialTimeout is a minute)")
	assert.Len(t, readyOn(t, primary, q), 1)
}

// TestSentinelResubscribeKeepsTheMajoritysPrimary has the subscribed
// sentinel go down while the sentinels disagree: the follower subscribes
// to the failover's leader, which names the promoted replica, and its
// word alone moves nothing: the next dial asks them all.
func TestSentinelResubscribeKeepsTheMajoritysPrimary(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	old, next := newRoleServer(t, "master"), newRoleServer(t, "master")
	leader := newFakeSentinel(t, "mp", next.Addr())
	a, b, c := newFakeSentinel(t, "mp", old.Addr()), newFakeSentinel(t, "mp", old.Addr()), newFakeSentinel(t, "mp", old.Addr())
	q, err := Dial(ctx, []string{sentinelURL("mp", leader.Addr(), a.Addr(), b.Addr(), c.Addr())}, Config{Prefix: testPrefix(t), DialTimeout: time.Second})
	require.NoError(t, err)
	defer q.Close()
	_, err = q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	require.Len(t, readyOn(t, old, q), 1, "on the majority's primary")
	require.Eventually(t, func() bool { return a.m.PubSubNumSub(switchMaster)[switchMaster] > 0 }, 5*time.Second, time.Millisecond)
	a.m.Close() // the subscription's sentinel goes down; b and c still name old
	require.Eventually(t, func() bool {
		return leader.m.PubSubNumSub(switchMaster)[switchMaster]+b.m.PubSubNumSub(switchMaster)[switchMaster]+c.m.PubSubNumSub(switchMaster)[switchMaster] > 0
	}, 10*time.Second, 5*time.Millisecond)
	time.Sleep(50 * time.Millisecond)
	_, err = q.AddTask(ctx, 1, []byte("y"))
	require.NoError(t, err)
	assert.Empty(t, readyOn(t, next, q), "no task on the primary only one of three answering sentinels names")
}

// TestSentinelPrimaryMovesCounts: a move is counted when the sentinels
// name another primary than the last, not at the first naming nor when
// they name the same one again.
func TestSentinelPrimaryMovesCounts(t *testing.T) {
	t.Parallel()
	s := &sentinelPrimary{sentinels: []string{"s1", "s2"}}
	name := func(addr string) uint32 {
		s.mu.Lock()
		s.named(addr, "s1")
		s.mu.Unlock()
		return s.moves.Load()
	}
	assert.Equal(t, uint32(0), name("10.0.0.1:6379"), "the first naming")
	assert.Equal(t, uint32(0), name("10.0.0.1:6379"), "the same primary again")
	assert.Equal(t, uint32(1), name("10.0.0.2:6379"), "a failover")
	assert.Equal(t, uint32(2), name("10.0.0.1:6379"), "and back")
}

// TestPoolResyncsWhenSentinelNamesAnotherPrimary: a pool runs a task and
// acknowledges it on primary a; the sentinels then promote b, which had
// the queue as it was before the ack (a's replica, that lost a's last
// writes), and announce it. The pool ends its tenure, takes the lease
// again on b and recovers: the task runs again. Before, the pool's next
// connections went to b without an error, it kept its lease, and the task
// stayed pending there, unseen, until a next owner.
func TestPoolResyncsWhenSentinelNamesAnotherPrimary(t *testing.T) {
	t.Parallel()
	m := &movable{a: newRoleServer(t, "master"), b: newRoleServer(t, "master"), logs: &logRecorder{},
		runs: map[string]int{}, ran: make(chan string, 100), unheld: make(chan struct{})}
	expireInRealTime(t, m.a)
	expireInRealTime(t, m.b)
	s := newFakeSentinel(t, "mp", m.a.Addr())
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	q, err := Dial(ctx, []string{sentinelURL("mp", s.Addr())}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	m.q, m.k = q, newQueueKeys(q.cfg.Prefix, 0, 0)

	id, err := q.AddTask(ctx, 1, []byte("lost ack"))
	require.NoError(t, err)
	errc := m.run(ctx)
	require.Equal(t, id, <-m.ran)
	m.copyKeys(t, "*") // the task pending, as b has it
	close(m.unheld)
	require.Eventually(t, func() bool { return m.a.HGet(m.k.meta, "processed") == "1" }, 10*time.Second, time.Millisecond,
		"the ack reached a")
	require.Empty(t, m.b.HGet(m.k.meta, "processed"), "b lacks it")
	require.Eventually(t, func() bool { return s.m.Publish(switchMaster, "other 1 2 3 4") == 1 }, 5*time.Second, time.Millisecond,
		"the partition did not subscribe")
	require.Equal(t, 1, s.failover(m.b.Addr()))
	m.requireRunAgain(t, ctx, cancel, errc, id, `Sentinel primary "mp"`)
}
