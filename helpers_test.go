package queue

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if runFaultRole() { // a child process of the fault suite (faultproc_test.go)
		return
	}
	// The pools the tests run log to slog's default logger; unless
	// QUEUE_TEST_LOG is set, those lines go nowhere, so that a failure
	// is not buried among a thousand of them. Tests that check a log
	// give their pool a logger of their own.
	if os.Getenv("QUEUE_TEST_LOG") == "" {
		slog.SetDefault(slog.New(slog.DiscardHandler))
	}
	goleak.VerifyTestMain(m)
}

// testRedisURL names a real redis-server to test against, or a Redis
// Cluster (redis+cluster://host:port,...); when empty, each test starts its
// own miniredis.
var testRedisURL = os.Getenv("QUEUE_TEST_REDIS_URL")

// testOnCluster reports whether the tests run on a Redis Cluster: each
// test's partitions are then partition pools over one slot router of the
// test's own, told apart by their key names (a cluster has database 0
// only), their queues spread over the cluster's primaries.
var testOnCluster = strings.HasSuffix(strings.ToLower(strings.SplitN(testRedisURL, "://", 2)[0]), "+cluster")

// skipOnCluster skips a test that needs what one server has and a
// cluster has not, said in why.
func skipOnCluster(t testing.TB, why string) {
	t.Helper()
	if testOnCluster {
		t.Skipf("skipped on a Redis Cluster: %s", why)
	}
}

var prefixSeq atomic.Int64

// testPrefix gives every test its own key prefix, so tests can share a
// server and run in parallel.
func testPrefix(t testing.TB) string {
	name := strings.NewReplacer("/", ".", " ", "_", "{", "(", "}", ")").Replace(t.Name())
	return fmt.Sprintf("qt:%s:%d:%d", name, time.Now().UnixNano()%1e9, prefixSeq.Add(1))
}

// testServer is one Redis partition of a test.
type testServer struct {
	pool   *redis.Pool
	mini   *miniredis.Miniredis // nil on a real server
	url    string
	router *clusterRouter // on a cluster: the test's router
}

// newTestServers returns n partitions: miniredis instances, n logical
// databases of the real server, or n partition pools on the cluster.
func newTestServers(t testing.TB, n int) []*testServer {
	t.Helper()
	if testOnCluster {
		return newClusterTestServers(t, n)
	}
	out := make([]*testServer, n)
	for i := range out {
		s := &testServer{}
		if testRedisURL == "" {
			s.mini = miniredis.RunT(t)
			s.url = "redis://" + s.mini.Addr()
			expireInRealTime(t, s.mini)
		} else {
			s.url = fmt.Sprintf("%s/%d", strings.TrimRight(testRedisURL, "/"), i)
		}
		s.pool = testPool(s.url)
		t.Cleanup(func() { s.pool.Close() })
		out[i] = s
	}
	return out
}

// expireInRealTime has m's keys expire as a real server's do: miniredis
// counts a TTL down only when told to, and a lease left behind (by a pool
// that lost it, on a loaded machine) would then keep every later pool and
// Consumer waiting for good.
func expireInRealTime(t testing.TB, m *miniredis.Miniredis) {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		last := time.Now()
		for {
			select {
			case <-done:
				return
			case now := <-tick.C:
				m.FastForward(now.Sub(last))
				last = now
			}
		}
	}()
	t.Cleanup(func() { // before miniredis closes: cleanups run last first
		close(done)
		<-stopped
	})
}

// newClusterTestServers returns n partitions on the cluster of
// testRedisURL, over one router that the test's end closes (after the
// pools: cleanups run last first).
func newClusterTestServers(t testing.TB, n int) []*testServer {
	t.Helper()
	u, err := parseRedisURL(testRedisURL)
	require.NoError(t, err)
	cfg, err := Config{MaxIdle: 16}.withDefaults()
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := newClusterRouter(ctx, u, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { r.close() })
	out := make([]*testServer, n)
	for i := range out {
		s := &testServer{url: testRedisURL, pool: r.partitionPool(nil), router: r}
		t.Cleanup(func() { s.pool.Close() })
		out[i] = s
	}
	return out
}

// wrapPool returns a pool of new connections to s, each wrapped by wrap
// (a test's recording or failing connection), keeping maxIdle of them. On
// a cluster it is a partition pool of the test's router, wrapping routed
// connections, which New knows for a cluster's.
func (s *testServer) wrapPool(maxIdle int, wrap func(redis.Conn) redis.Conn) *redis.Pool {
	if s.router != nil {
		p := s.router.partitionPool(wrap)
		p.MaxIdle = maxIdle
		return p
	}
	return &redis.Pool{
		MaxIdle: maxIdle,
		DialContext: func(ctx context.Context) (redis.Conn, error) {
			c, err := redis.DialURLContext(ctx, s.url, redis.DialReadTimeout(10*time.Second))
			if err != nil {
				return nil, err
			}
			return wrap(c), nil
		},
	}
}

// testPool returns a pool of connections to url that read as those Dial
// makes do, through a buffer of readBuffer bytes that a claim's read can
// tap: the benchmarks measure what a queue made by Dial does, and their
// Raw* baselines read alike.
func testPool(url string) *redis.Pool {
	var d net.Dialer
	return &redis.Pool{
		MaxIdle: 16,
		DialContext: func(ctx context.Context) (redis.Conn, error) {
			var tcp *bufferedReader
			buffered := redis.DialContextFunc(func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := d.DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				tcp = &bufferedReader{Conn: c, r: bufio.NewReaderSize(c, readBuffer)}
				return tcp, nil
			})
			c, err := redis.DialURLContext(ctx, url, redis.DialReadTimeout(10*time.Second), buffered)
			if err != nil {
				return nil, err
			}
			noteBorrowed(ctx, tcp)
			return &watchedConn{Conn: c, tcp: tcp, addr: url, tappable: true}, nil
		},
		TestOnBorrowContext: func(ctx context.Context, c redis.Conn, _ time.Time) error {
			w := c.(*watchedConn)
			if peerClosed(w.tcp.Conn) || w.tcp.r.Buffered() > 0 || w.tcp.tap != nil {
				return errPeerClosed // as Dial's pools: a connection the server closed is not lent
			}
			noteBorrowed(ctx, w.tcp)
			return nil
		},
	}
}

// newTestQueue returns a queue over r fresh partitions with cfg (its
// Prefix replaced by one of the test's own).
func newTestQueue(t testing.TB, r int, cfg Config) (*Queue, []*testServer) {
	t.Helper()
	servers := newTestServers(t, r)
	pools := make([]*redis.Pool, r)
	for i, s := range servers {
		pools[i] = s.pool
	}
	if cfg.Prefix == "" {
		cfg.Prefix = testPrefix(t)
	}
	q, err := New(pools, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	return q, servers
}

// do runs one command on a test server.
func (s *testServer) do(t testing.TB, cmd string, args ...any) any {
	t.Helper()
	c := s.pool.Get()
	defer c.Close()
	r, err := c.Do(cmd, args...)
	require.NoError(t, err)
	return r
}

// deadQueue returns a one-queue Queue, its server and its keys.
func deadQueue(t *testing.T) (*Queue, *testServer, queueKeys) {
	t.Helper()
	q, servers := newTestQueue(t, 1, Config{})
	return q, servers[0], newQueueKeys(q.cfg.Prefix, 0, 0)
}

// statsOf returns the Stats row of analyser a.
func statsOf(t *testing.T, q *Queue, a int) AnalyserStats {
	t.Helper()
	st, err := q.Stats(context.Background())
	require.NoError(t, err)
	require.Greater(t, len(st), a)
	return st[a]
}

// pl is the payload of task i of order o in these tests.
func pl(o, i int) string { return fmt.Sprintf("%d:%d", o, i) }

// lateDeliveries returns, by task ID, the attempts among the task
// failures in errs whose function returned nil past TaskTimeout (see
// lateError): on a loaded machine a task that returns at once may be held
// that long before the pool reads the clock, and it fails, as documented.
func lateDeliveries(errs []error) map[string][]int {
	late := map[string][]int{}
	for _, err := range errs {
		var te *TaskError
		var le *lateError
		if errors.As(err, &te) && errors.As(err, &le) {
			late[te.ID] = append(late[te.ID], te.Attempt)
		}
	}
	return late
}

// orderTasks returns per tasks for each of orders OrderIDs, interleaved
// (task 0 of every order, then task 1, ...), with payloads pl(o, i).
func orderTasks(orders, per int) []Task {
	var ts []Task
	for i := 0; i < per; i++ {
		for o := 0; o < orders; o++ {
			ts = append(ts, Task{OrderID: uint64(o), Payload: []byte(pl(o, i))})
		}
	}
	return ts
}

// addAll adds ts in order, in AddTasks calls of at most addChunk tasks:
// miniredis copies a whole list for each entry an LPUSH prepends, so one
// LPUSH of thousands onto a long list held it for seconds on a loaded
// machine, past the test pools' read timeout. AddTasks with large calls
// is tested on its own.
func addAll(t *testing.T, q *Queue, ts []Task) []string {
	t.Helper()
	const addChunk = 1000
	ids := make([]string, 0, len(ts))
	for len(ts) > 0 {
		n := min(len(ts), addChunk)
		more, err := q.AddTasks(context.Background(), ts[:n])
		require.NoError(t, err)
		ids = append(ids, more...)
		ts = ts[n:]
	}
	return ids
}

// addLong is addAll for a long ready list of the queue of k, which must
// be empty: miniredis prepends each entry an LPUSH pushes by copying the
// whole list, so adding tens of thousands of tasks onto one list cost
// tens of seconds of copying under the race detector, past the test
// pool's read timeout on a loaded machine. Each chunk goes onto an empty
// list, and the list is put together at the end with RPUSH, which
// appends: the same entries in the same order.
func addLong(t *testing.T, q *Queue, s *testServer, k queueKeys, ts []Task) []string {
	t.Helper()
	n, err := redis.Int(s.do(t, "LLEN", k.ready), nil)
	require.NoError(t, err)
	require.Zero(t, n, "addLong builds the ready list from empty")
	const chunk = 1000
	ids := make([]string, 0, len(ts))
	var parts [][]any // each chunk's entries, producing end first
	for len(ts) > 0 {
		m := min(len(ts), chunk)
		ids = append(ids, addAll(t, q, ts[:m])...)
		es, err := redis.Values(s.do(t, "LRANGE", k.ready, 0, -1), nil)
		require.NoError(t, err)
		require.Len(t, es, m)
		s.do(t, "DEL", k.ready)
		parts = append(parts, es)
		ts = ts[m:]
	}
	for i := len(parts) - 1; i >= 0; i-- { // the last added nearest the producing end
		s.do(t, "RPUSH", append([]any{k.ready}, parts[i]...)...)
	}
	return ids
}

// try runs one command without failing the test, for use inside
// assert.Eventually conditions.
func try(s *testServer, cmd string, args ...any) (any, error) {
	c := s.pool.Get()
	defer c.Close()
	return c.Do(cmd, args...)
}

// readyTasks returns the ready list in consuming order (the next claimed
// first), each with the Attempt its next delivery will have.
func readyTasks(t *testing.T, s *testServer, k queueKeys) []Task {
	t.Helper()
	raw, err := redis.ByteSlices(s.do(t, "LRANGE", k.ready, 0, -1), nil)
	require.NoError(t, err)
	out := make([]Task, 0, len(raw))
	for i := len(raw) - 1; i >= 0; i-- {
		task, deliveries, err := decodeEntry(raw[i])
		require.NoError(t, err)
		task.Attempt = deliveries + 1
		out = append(out, task)
	}
	return out
}

func taskIDs(ts []Task) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.ID
	}
	return out
}

// claimedIDs returns the IDs of claimed tasks, in order.
func claimedIDs(ts []claimed) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.ID
	}
	return out
}

func taskAttempts(ts []Task) []int {
	out := make([]int, len(ts))
	for i, t := range ts {
		out[i] = t.Attempt
	}
	return out
}

// lapse makes key (a lease) expire: miniredis is moved forward by its
// TTL, then the lease, if it still has the value it had, is deleted, on
// either server. A renewal that came between the read of its TTL and the
// expiry (on a real server, within the millisecond of a PEXPIRE 1)
// extended it again: the owner kept a lease the test meant to end.
func lapse(t *testing.T, s *testServer, key string) {
	t.Helper()
	old, err := redis.String(s.do(t, "GET", key), nil)
	require.NoError(t, err)
	if s.mini != nil {
		ms, err := redis.Int64(s.do(t, "PTTL", key), nil)
		require.NoError(t, err)
		require.Positive(t, ms, "%s has no TTL", key)
		s.mini.FastForward(time.Duration(ms+1) * time.Millisecond)
	}
	s.do(t, "EVAL", `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`, 1, key, old)
	// Gone, or already another's: a standby may take it the moment it
	// expires.
	v, err := redis.String(try(s, "GET", key))
	require.True(t, err == redis.ErrNil || err == nil && v != old, "the lease is still %q (%v)", v, err)
}

// queueState is everything Redis holds for one queue, but the lease's TTL.
type queueState struct {
	Ready                []string
	Pending, Order, Dead map[string]string
	Meta                 map[string]string
	Lease                string
}

func snapshot(t *testing.T, s *testServer, k queueKeys) queueState {
	t.Helper()
	var st queueState
	var err error
	st.Ready, err = redis.Strings(s.do(t, "LRANGE", k.ready, 0, -1), nil)
	require.NoError(t, err)
	st.Pending = pendingOf(t, s, k)
	st.Order, err = redis.StringMap(s.do(t, "HGETALL", k.claims), nil)
	require.NoError(t, err)
	st.Dead, err = redis.StringMap(s.do(t, "HGETALL", k.dead), nil)
	require.NoError(t, err)
	st.Meta, err = redis.StringMap(s.do(t, "HGETALL", k.meta), nil)
	require.NoError(t, err)
	st.Lease, _ = redis.String(s.do(t, "GET", k.lease), nil)
	return st
}

// pendingRecords reads, through do, the pending records of the queue of
// k by task ID ("bad:<place>" for an entry with no readable header): the
// entries of claim records whose place is not set, and the records of a
// pending hash of the earlier format.
func pendingRecords(do func(string, ...any) (any, error), k queueKeys) (map[string]string, error) {
	out, err := redis.StringMap(do("HGETALL", k.pending))
	if err != nil {
		return nil, err
	}
	claims, err := redis.StringMap(do("HGETALL", k.claims))
	if err != nil {
		return nil, err
	}
	m, err := redis.Values(do("HMGET", k.meta, endFirstField, endSizeField))
	if err != nil {
		return nil, err
	}
	endFirst, endSize := parseEnd(m[0], m[1])
	inEnd := map[string]bool{}
	for _, f := range endWalk(claims, endFirst, endSize) {
		inEnd[f] = true
	}
	for f, v := range claims {
		if _, list, _ := claimIDs(v); !list {
			continue
		}
		var entries [][]byte
		if inEnd[f] {
			// A claim in place: its entries at the ready list's end.
			first, _ := claimFirst(f)
			n, _ := recordCount(v)
			off := first - endFirst
			entries, err = redis.ByteSlices(do("LRANGE", k.ready, -(off + int64(n)), -(off + 1)))
			slices.Reverse(entries)
		} else {
			entries, err = redis.ByteSlices(do("LRANGE", claimListKey(k, f), 0, -1))
		}
		if err != nil {
			return nil, err
		}
		done, err := redis.Bytes(do("GET", claimDoneKey(k, f)))
		if err != nil && err != redis.ErrNil {
			return nil, err
		}
		for i, e := range entries {
			if !placeSet(done, i) {
				out[pendingField(bytes.TrimPrefix(e, []byte{accountedMark}), int64(i))] = string(e)
			}
		}
	}
	return out, nil
}

// pendingOf is pendingRecords on s.
func pendingOf(t testing.TB, s *testServer, k queueKeys) map[string]string {
	t.Helper()
	m, err := pendingRecords(func(cmd string, args ...any) (any, error) { return try(s, cmd, args...) }, k)
	require.NoError(t, err)
	return m
}

// pendingHas returns 1 when task id is pending on the queue of k, else 0.
func pendingHas(t testing.TB, s *testServer, k queueKeys, id string) int64 {
	t.Helper()
	if _, ok := pendingOf(t, s, k)[id]; ok {
		return 1
	}
	return 0
}

// pendingIDs returns the IDs of the tasks pending on the queue of k, sorted.
func pendingIDs(t testing.TB, s *testServer, k queueKeys) []string {
	t.Helper()
	ids := []string{}
	for id := range pendingOf(t, s, k) {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

func stats0(t *testing.T, q *Queue) AnalyserStats {
	t.Helper()
	st, err := q.Stats(context.Background())
	require.NoError(t, err)
	return st[0]
}

func testQueue1(t *testing.T) (*Queue, *testServer, queueKeys) {
	t.Helper()
	q, srv := newTestQueue(t, 1, Config{})
	return q, srv[0], newQueueKeys(q.cfg.Prefix, 0, 0)
}

// claimAckOne claims the one task of analyser's queue with a Consumer,
// acknowledges it, releases the lease, and returns the Consumer.
func claimAckOne(t *testing.T, q *Queue, analyser int) *Consumer {
	t.Helper()
	ctx := context.Background()
	c, err := q.Consume(ctx, analyser, ConsumerConfig{})
	require.NoError(t, err)
	tasks, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Len(t, tasks, 1)
	_, err = c.Ack(ctx, tasks[0].ID)
	require.NoError(t, err)
	require.NoError(t, c.Release(ctx))
	return c
}

// consumeFirst returns a Consumer of q's analyser 0, released when the
// test ends.
func consumeFirst(t *testing.T, q *Queue) *Consumer {
	t.Helper()
	c, err := q.Consume(context.Background(), 0, ConsumerConfig{})
	require.NoError(t, err)
	t.Cleanup(func() { c.Release(context.Background()) })
	return c
}

// queueOnPool returns a queue of one partition on pool, with a prefix of
// its own, closed with pool when t ends.
func queueOnPool(t *testing.T, pool *redis.Pool) *Queue {
	t.Helper()
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	return q
}

// dialMiniredis returns a miniredis of the test's own, which restartEmpty
// can restart, and a queue made by Dial over it under the test's prefix
// (closed at the test's end), with the prefix.
func dialMiniredis(t *testing.T) (*miniredis.Miniredis, *Queue, string) {
	t.Helper()
	m := miniredis.RunT(t)
	prefix := testPrefix(t)
	q, err := Dial(bounded(t), []string{"redis://" + m.Addr()}, Config{Prefix: prefix})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	return m, q, prefix
}

// restartEmpty restarts m as a server without persistence restarts: every
// connection and all the data go. With queues > 0, a process of that
// many queues (one partition) records its layout under prefix before
// anyone else reconnects. Unlike a real server, a restarted miniredis
// never answers a blocking command (BLPOP...: Close cancels the context
// those wait on, and Restart does not renew it), so a call that blocks
// after the restart waits out its read timeout.
func restartEmpty(t testing.TB, m *miniredis.Miniredis, prefix string, queues int) {
	t.Helper()
	m.Close()
	m.FlushAll()
	if queues > 0 {
		m.HSet(layoutKey(prefix), "partitions", "1", "queues", strconv.Itoa(queues), "index", "0")
	}
	require.NoError(t, m.Restart())
}
