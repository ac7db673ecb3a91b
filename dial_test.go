package queue

import (
	"context"
	"fmt"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestPooledConnectionClosedByServer checks that a connection the server
// closed while it sat idle in a pool Dial made is replaced before anything
// is written on it: the caller's AddTask goes through on a new connection,
// once, whether the server reset the connection (a proxy, a crash) or
// closed it (a restart).
func TestPooledConnectionClosedByServer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	t.Run("reset", func(t *testing.T) {
		t.Parallel()
		skipOnCluster(t, "it puts a proxy before one server")
		s := newTestServers(t, 1)[0]
		target, err := parseRedisURL(s.url)
		require.NoError(t, err)
		proxy := startProxy(t, target.addr)
		u := fmt.Sprintf("redis://%s/%d", proxy.Addr(), target.db)
		q, err := Dial(ctx, []string{u}, Config{Prefix: testPrefix(t)})
		require.NoError(t, err)
		defer q.Close()
		checkReplaced(t, q, s, func() { require.Positive(t, proxy.resetAll()) })
	})
	t.Run("restart", func(t *testing.T) {
		t.Parallel()
		m := miniredis.RunT(t)
		q, err := Dial(ctx, []string{"redis://" + m.Addr()}, Config{Prefix: testPrefix(t)})
		require.NoError(t, err)
		defer q.Close()
		s := &testServer{pool: testPool("redis://" + m.Addr()), mini: m}
		defer s.pool.Close()
		checkReplaced(t, q, s, func() {
			m.Close() // closes every client connection
			require.NoError(t, m.Restart())
		})
	})
}

// checkReplaced adds a task (leaving its connection idle in the pool),
// lets kill close it from the server's side, and checks that the next
// AddTask succeeds and that each task is in Redis exactly once.
func checkReplaced(t *testing.T, q *Queue, s *testServer, kill func()) {
	t.Helper()
	ctx := context.Background()
	first, err := q.AddTask(ctx, 1, []byte("before"))
	require.NoError(t, err)
	require.Equal(t, 1, q.parts[0].pool.Stats().IdleCount)
	kill()
	second, err := q.AddTask(ctx, 1, []byte("after"))
	require.NoError(t, err, "the dead connection was written on")
	assert.Equal(t, []string{first, second}, readyIDs(t, s, newQueueKeys(q.cfg.Prefix, 0, 0).ready))
}

func TestRedactURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"redis://:s3cret@host:6379/2":                              "redis://host:6379/2",
		"rediss://user:s3cret@host:6380":                           "rediss://host:6380",
		"redis://s3cret@host":                                      "redis://host",
		"redis://host:6379":                                        "redis://host:6379",
		"redis://:s3cret%zz@host":                                  "(a URL that does not parse)",
		"redis+sentinel://:pw@s1,s2:26380/m?sentinel_password=spw": "redis+sentinel://s1,s2:26380/m?sentinel_password=redacted",
		"redis+cluster://u:pw@a:7000,b":                            "redis+cluster://a:7000,b",
		// A password with a '/', '?' or '#' not percent-encoded cuts the
		// authority short: none of it may be shown.
		"redis://:ab/cd@host:6379":             "(a URL that does not parse)",
		"redis://:1234/5678@host":              "(a URL that does not parse)",
		"redis://u:ab?cd@host":                 "(a URL that does not parse)",
		"redis://:12#34@host":                  "(a URL that does not parse)",
		"redis+cluster://:pa/ss@a:7000,b:7001": "(a URL that does not parse)",
		"redis://:ab%2Fcd%23@host:6379":        "redis://host:6379",
	} {
		assert.Equal(t, want, RedactURL(in), in)
	}
}
