package queue

import (
	"context"
	"fmt"
	"os"
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
	goleak.VerifyTestMain(m)
}

// testRedisURL names a real redis-server to test against; when empty, each
// test starts its own miniredis.
var testRedisURL = os.Getenv("QUEUE_TEST_REDIS_URL")

var prefixSeq atomic.Int64

// testPrefix gives every test its own key prefix, so tests can share a
// server and run in parallel.
func testPrefix(t testing.TB) string {
	name := strings.NewReplacer("/", ".", " ", "_", "{", "(", "}", ")").Replace(t.Name())
	return fmt.Sprintf("qt:%s:%d:%d", name, time.Now().UnixNano()%1e9, prefixSeq.Add(1))
}

// testServer is one Redis partition of a test.
type testServer struct {
	pool *redis.Pool
	mini *miniredis.Miniredis // nil on a real server
	url  string
}

// newTestServers returns n partitions: miniredis instances, or n logical
// databases of the real server.
func newTestServers(t testing.TB, n int) []*testServer {
	t.Helper()
	out := make([]*testServer, n)
	for i := range out {
		s := &testServer{}
		if testRedisURL == "" {
			s.mini = miniredis.RunT(t)
			s.url = "redis://" + s.mini.Addr()
		} else {
			s.url = fmt.Sprintf("%s/%d", strings.TrimRight(testRedisURL, "/"), i)
		}
		s.pool = testPool(s.url)
		t.Cleanup(func() { s.pool.Close() })
		out[i] = s
	}
	return out
}

func testPool(url string) *redis.Pool {
	return &redis.Pool{
		MaxIdle: 16,
		DialContext: func(ctx context.Context) (redis.Conn, error) {
			return redis.DialURLContext(ctx, url, redis.DialReadTimeout(10*time.Second))
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

func taskIDsOf(ts []Task) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.ID
	}
	return out
}

// statsOf returns the Stats row of analyser a.
func statsOf(t *testing.T, q *Queue, a int) AnalyserStats {
	t.Helper()
	st, err := q.Stats(context.Background())
	require.NoError(t, err)
	require.Greater(t, len(st), a)
	return st[a]
}
