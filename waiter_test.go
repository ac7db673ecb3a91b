package queue

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// needRealRedis skips a test of the waiter: miniredis has no tracking,
// and a cluster connection carries none.
func needRealRedis(t testing.TB) {
	t.Helper()
	if testRedisURL == "" {
		t.Skip("needs a real redis-server (QUEUE_TEST_REDIS_URL): miniredis has no client tracking")
	}
	skipOnCluster(t, "the waiter tracks keys with CLIENT TRACKING, which a cluster connection does not carry: idle pools wait on their own connections there")
}

// countedDialer counts the connections a pool holds open, and knows their
// local addresses, as CLIENT LIST shows them.
type countedDialer struct {
	mu   sync.Mutex
	open map[string]bool // local address -> open
}

type countedConn struct {
	net.Conn
	d    *countedDialer
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.d.mu.Lock()
		delete(c.d.open, c.LocalAddr().String())
		c.d.mu.Unlock()
	})
	return c.Conn.Close()
}

func (d *countedDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.open[c.LocalAddr().String()] = true
	d.mu.Unlock()
	return &countedConn{Conn: c, d: d}, nil
}

func (d *countedDialer) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.open)
}

func (d *countedDialer) has(addr string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.open[addr]
}

// countedPool is a pool over url whose open connections d counts.
func countedPool(url string, maxIdle int) (*redis.Pool, *countedDialer) {
	d := &countedDialer{open: map[string]bool{}}
	return &redis.Pool{
		MaxIdle: maxIdle,
		DialContext: func(ctx context.Context) (redis.Conn, error) {
			return redis.DialURLContext(ctx, url, redis.DialReadTimeout(10*time.Second), redis.DialContextFunc(d.dial))
		},
	}, d
}

// waiterClients returns the IDs of the waiter connections that d holds,
// from CLIENT LIST.
func waiterClients(t testing.TB, s *testServer, d *countedDialer) []string {
	t.Helper()
	list, err := redis.String(s.do(t, "CLIENT", "LIST"), nil)
	require.NoError(t, err)
	var ids []string
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		f := map[string]string{}
		for _, kv := range strings.Fields(line) {
			k, v, _ := strings.Cut(kv, "=")
			f[k] = v
		}
		if f["name"] == waiterName && d.has(f["addr"]) { // addr: the client's end
			ids = append(ids, f["id"])
		}
	}
	return ids
}

// idlePools starts n pools of Workers 1 on the n queues of a one-server
// queue over pool, each calling ran with its analyser for every task.
func idlePools(t testing.TB, pool *redis.Pool, n int, ran func(analyser int)) *Queue {
	return idleAnalysers(t, pool, n, false, ran)
}

// idleAnalysers runs n pools as idlePools does, or, with group, as the
// only member of a group, which gives it all n.
func idleAnalysers(t testing.TB, pool *redis.Pool, n int, group bool, ran func(analyser int)) *Queue {
	t.Helper()
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t), Queues: n})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		dropQueueKeys(q)
		q.Close()
		pool.Close()
	})
	pc := PoolConfig{Workers: 1, Logger: slog.New(slog.DiscardHandler), OnError: func(err error) { t.Error(err) }}
	if group {
		wg.Go(func() {
			err := q.JoinGroup(ctx, "idle", GroupConfig{Member: "m", Pool: pc},
				func(_ context.Context, task Task) error { ran(q.AnalyserOf(task.OrderID)); return nil })
			assert.NoError(t, err)
		})
		return q
	}
	for a := range n {
		wg.Go(func() {
			err := q.AnalysePool(ctx, a, pc, func(_ context.Context, task Task) error { ran(a); return nil })
			assert.NoError(t, err)
		})
	}
	return q
}

// 64 idle pools of one process on one server wait through two shared
// connections, not a blocking connection each, and still pick up work.
func TestWaiterIdlePoolsShareConnections(t *testing.T) { testIdleShareConnections(t, false) }

// So do those of a group member given 64 queues (plus its wait for
// nudges).
func TestWaiterIdleMemberSharesConnections(t *testing.T) { testIdleShareConnections(t, true) }

func testIdleShareConnections(t *testing.T, group bool) {
	needRealRedis(t)
	s := newTestServers(t, 1)[0]
	pool, d := countedPool(s.url, 4)
	ran := make(chan int, 64)
	q := idleAnalysers(t, pool, 64, group, func(a int) { ran <- a })
	keys := make([]any, 64)
	for qi := range keys {
		keys[qi] = newQueueKeys(q.cfg.Prefix, 0, qi).lease
	}
	require.Eventually(t, func() bool { n, _ := redis.Int(s.do(t, "EXISTS", keys...), nil); return n == 64 },
		10*time.Second, 10*time.Millisecond, "every pool holds its lease")
	require.Eventually(t, func() bool { return len(waiterClients(t, s, d)) == 2 }, 5*time.Second, 10*time.Millisecond,
		"the waiter's two connections")
	time.Sleep(200 * time.Millisecond) // past the start: recovery, the first claims

	// Over a few re-checks (every second), count what the pools hold.
	var counts []int
	for range 60 {
		counts = append(counts, d.count())
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("connections held by 64 idle pools: %v", counts)
	// At rest they are the waiter's two and the pool's idle ones (MaxIdle
	// 4); a claim or a renewal that finds none idle dials one more for
	// the moment.
	slices.Sort(counts)
	limit := 6
	if group {
		limit++ // the member's wait for nudges
	}
	assert.LessOrEqual(t, counts[len(counts)/2], limit, "the median of the connections of 64 idle pools, sampled every 50ms")
	assert.Len(t, waiterClients(t, s, d), 2)

	for a := range 64 {
		_, err := q.AddTask(context.Background(), uint64(a), []byte("x")) // R=1: OrderID a goes to queue a
		require.NoError(t, err)
		select {
		case got := <-ran:
			assert.Equal(t, a, got)
		case <-time.After(5 * time.Second):
			t.Fatalf("the task added to queue %d did not run", a)
		}
	}
}

// A server without tracking (miniredis here; a proxy, an ACL)
// makes the waiter refuse, once per partition: each wait falls back to a
// blocking command, as before, and the waiter holds nothing.
func TestWaiterFallsBackWithoutTracking(t *testing.T) {
	t.Parallel()
	mini := miniredis.RunT(t)
	pool := testPool("redis://" + mini.Addr())
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	w := q.waiters[0].retain()
	key := newQueueKeys(q.cfg.Prefix, 0, 0).ready
	never := func(int64) bool { return false }
	start := time.Now()
	_, err = w.await(context.Background(), "LLEN", key, start.Add(5*time.Second), never)
	assert.ErrorIs(t, err, errNoTracking)
	assert.Less(t, time.Since(start), 2*time.Second, "a refusal is told at once, not at the deadline")
	_, err = w.await(context.Background(), "LLEN", key, time.Now().Add(5*time.Second), never)
	assert.ErrorIs(t, err, errNoTracking, "the refusal holds for the partition")
	w.mu.Lock()
	assert.Nil(t, w.run, "nothing runs once refused")
	assert.Empty(t, w.watches)
	w.mu.Unlock()
	w.release()

	// The store's waits fall back: a pool's wait sees a task pushed.
	st, err := q.newStore(context.Background(), 0, 0, 0, "")
	require.NoError(t, err)
	st.waiter = q.waiters[0].retain()
	defer st.waiter.release()
	go func() {
		time.Sleep(50 * time.Millisecond)
		mini.Lpush(key, "task")
	}()
	ok, err := st.wait(context.Background(), 3*time.Second)
	require.NoError(t, err)
	assert.True(t, ok)
}

// The last user's release, and Queue.Close, stop the waiter's goroutines
// and connections (goleak checks that none is left).
func TestWaiterStopsWithItsLastUser(t *testing.T) {
	needRealRedis(t)
	s := newTestServers(t, 1)[0]
	pool, d := countedPool(s.url, 4)
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { pool.Close() })
	key := newQueueKeys(q.cfg.Prefix, 0, 0).ready
	never := func(int64) bool { return false }
	w1, w2 := q.waiters[0].retain(), q.waiters[0].retain()
	end, err := w1.await(context.Background(), "LLEN", key, time.Now().Add(50*time.Millisecond), never)
	require.NoError(t, err)
	assert.Equal(t, awokeTimeout, end)
	assert.Len(t, waiterClients(t, s, d), 2)
	w1.release()
	assert.Len(t, waiterClients(t, s, d), 2, "one user left")
	w2.release()
	assert.Empty(t, waiterClients(t, s, d), "the last user stopped it")

	w3 := q.waiters[0].retain()
	_, err = w3.await(context.Background(), "LLEN", key, time.Now().Add(50*time.Millisecond), never)
	require.NoError(t, err)
	assert.Len(t, waiterClients(t, s, d), 2, "a new user started it again")
	require.NoError(t, q.Close())
	assert.Empty(t, waiterClients(t, s, d), "Close stopped it")
	_, err = w3.await(context.Background(), "LLEN", key, time.Now().Add(50*time.Millisecond), never)
	assert.ErrorIs(t, err, errNoTracking, "a closed queue's waits fall back (and fail there)")
	w3.release()
}
