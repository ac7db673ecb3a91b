package queue

import (
	"context"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A link on which no long exchange ever gets through: every connection
// is cut once it has carried linkQuota bytes of commands or of replies,
// in the middle of the one that passes it. Recovery and claims must then
// go on in round trips that fit, rather than start over, whole, for
// ever: once connections churn faster than a step's largest reply or
// command takes, a queue that reads a thousand pending tasks of 4 KB in
// one reply (4 MB), or pushes them back in one script, makes no progress
// at all, though it loses nothing.
const linkQuota = 64 << 10

// cutLink returns two queues on one fresh partition under one prefix:
// one that reaches Redis directly, and one through a proxy that cuts
// every connection at linkQuota bytes either way, with the proxy.
// Both are made by Dial, whose pool checks a borrowed connection for a
// close by its peer.
func cutLink(t *testing.T) (direct, cut *Queue, s *testServer, p *faultProxy) {
	t.Helper()
	skipOnCluster(t, "the proxy stands for one server")
	s = newTestServers(t, 1)[0]
	u, err := url.Parse(s.url)
	require.NoError(t, err)
	p = startProxy(t, u.Host)
	via := *u
	via.Host = p.Addr()
	cfg := Config{Prefix: testPrefix(t)}
	ctx := bounded(t)
	direct, err = Dial(ctx, []string{s.url}, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { direct.Close() })
	cut, err = Dial(ctx, []string{via.String()}, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { cut.Close() })
	return direct, cut, s, p
}

// bigTasks adds orders × per tasks of size bytes each (the first bytes
// name the task: "order:index") and returns their payloads' names by
// order.
func bigTasks(t *testing.T, q *Queue, orders, per, size int) map[uint64][]string {
	t.Helper()
	want := map[uint64][]string{}
	var ts []Task
	for i := 0; i < per; i++ {
		for o := 1; o <= orders; o++ {
			name := pl(o, i)
			p := []byte(name + ";" + strings.Repeat("x", size-len(name)-1))
			ts = append(ts, Task{OrderID: uint64(o), Payload: p})
			want[uint64(o)] = append(want[uint64(o)], name)
		}
	}
	for len(ts) > 0 {
		n := min(len(ts), 200)
		_, err := q.AddTasks(bounded(t), ts[:n])
		require.NoError(t, err)
		ts = ts[n:]
	}
	return want
}

// drainTimeout bounds drainThrough. What it tells apart is a drain that
// makes progress from one that starts over, whole, for ever (and never
// ends): a thousand tasks of 4 KB through the link take some 2,000 round
// trips (claims, the recorded deliveries of recovered tasks, acks) and
// over a hundred reconnections: 7 s on a quiet machine, 20-25 s under the
// race detector on a loaded one, and over 45 s beside the package's other
// tests on a machine loaded well past its two cores. The bound is not
// what is tested: progress is.
const drainTimeout = 3 * time.Minute

// drainThrough runs a pool on q until the queue is empty, and returns
// what it ran, by order, in the order it ran it. It fails the test when
// the queue is not drained within drainTimeout.
func drainThrough(t *testing.T, q *Queue) map[uint64][]string {
	t.Helper()
	var mu sync.Mutex
	got := map[uint64][]string{}
	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	err := q.AnalysePool(ctx, 0, PoolConfig{ExitOnEmpty: true, LeaseTTL: time.Minute, OnError: func(error) {}},
		func(_ context.Context, task Task) error {
			name, _, _ := strings.Cut(string(task.Payload), ";")
			mu.Lock()
			got[task.OrderID] = append(got[task.OrderID], name)
			mu.Unlock()
			return nil
		})
	require.NoError(t, err)
	// A pool stopped by its ctx returns nil: the deadline is read here.
	require.NoError(t, ctx.Err(), "the pool did not drain the queue within %v", drainTimeout)
	mu.Lock()
	defer mu.Unlock()
	return got
}

// A new owner recovers a thousand pending tasks of 4 KB (4 MB of records)
// over the link, and then runs them, each once and in order.
func TestRecoveryOverALinkThatCutsLongReplies(t *testing.T) {
	t.Parallel()
	direct, cut, s, p := cutLink(t)
	want := bigTasks(t, direct, 50, 20, 4<<10)
	ctx := bounded(t)
	c, err := direct.Consume(ctx, 0, ConsumerConfig{LeaseTTL: time.Minute})
	require.NoError(t, err)
	claimed, err := c.Claim(ctx, 1000)
	require.NoError(t, err)
	require.Len(t, claimed, 1000)
	// The consumer's process dies: its lease is gone, its tasks pending.
	s.do(t, "DEL", newQueueKeys(direct.cfg.Prefix, 0, 0).lease)
	p.limitLink(linkQuota)
	got := drainThrough(t, cut)
	assert.Equal(t, want, got)
	assert.Positive(t, p.spent.Load(), "the link cut connections")
	st := stats0(t, direct)
	assert.Zero(t, st.Dead)
	assert.Zero(t, st.Pending)
}

// A pool whose claims' replies are lost, again and again, as long as they
// do not fit the link, claims less until they do; every claim whose
// reply it lost goes back, whole, in a read that fits too.
func TestClaimsOverALinkThatCutsLongReplies(t *testing.T) {
	t.Parallel()
	direct, cut, _, p := cutLink(t)
	want := bigTasks(t, direct, 50, 20, 4<<10)
	p.limitLink(linkQuota)
	got := drainThrough(t, cut)
	assert.Equal(t, want, got, "each task once, in order: a lost claim delivered nothing")
	assert.Positive(t, p.spent.Load(), "the link cut connections")
	st := stats0(t, direct)
	assert.Zero(t, st.Dead)
	assert.Zero(t, st.Pending)
}

// A new owner dead-letters a thousand pending tasks of 4 KB (4 MB of dead
// records) that used up their deliveries, over the link: the dead-letter
// scripts a cut stopped are made again, smaller, until they fit, and every
// task is dead-lettered once.
func TestBurialOverALinkThatCutsLongCommands(t *testing.T) {
	t.Parallel()
	direct, cut, s, p := cutLink(t)
	want := bigTasks(t, direct, 50, 20, 4<<10)
	ctx := bounded(t)
	lease := newQueueKeys(direct.cfg.Prefix, 0, 0).lease
	// Two owners claim the tasks and die: the second one's deliveries are
	// recorded (the first one's were not), and one is all they get.
	for range 2 {
		c, err := direct.Consume(ctx, 0, ConsumerConfig{LeaseTTL: time.Minute, MaxAttempts: 1})
		require.NoError(t, err)
		claimed, err := c.Claim(ctx, 1000)
		require.NoError(t, err)
		require.Len(t, claimed, 1000)
		s.do(t, "DEL", lease)
	}
	p.limitLink(linkQuota)
	c, err := cut.Consume(ctx, 0, ConsumerConfig{LeaseTTL: time.Minute, MaxAttempts: 1})
	require.NoError(t, err, "recovery over the link")
	require.NoError(t, c.Release(ctx))
	assert.Positive(t, p.spent.Load(), "the link cut connections")
	st := stats0(t, direct)
	assert.EqualValues(t, 1000, st.Dead)
	assert.Zero(t, st.Pending)
	assert.Zero(t, st.Ready)
	dead, err := direct.Dead(ctx, 0)
	require.NoError(t, err)
	got := map[uint64][]string{}
	for _, d := range dead {
		name, _, _ := strings.Cut(string(d.Payload), ";")
		got[d.OrderID] = append(got[d.OrderID], name)
	}
	for o := range got {
		slices.Sort(got[o])
	}
	for o := range want {
		slices.Sort(want[o])
	}
	assert.Equal(t, want, got, "each task dead-lettered once")
}
