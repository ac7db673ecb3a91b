package queue

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/gomodule/redigo/redis"
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

// A connection Dial makes reads ahead through a buffer of its own. One
// put back idle with bytes read ahead holds no reply due: it is dropped
// when next borrowed, as one with bytes in its socket is, rather than
// hand the next command an old reply.
func TestPooledConnectionWithBytesReadAheadDropped(t *testing.T) {
	t.Parallel()
	m := miniredis.RunT(t)
	cfg, err := Config{}.withDefaults()
	require.NoError(t, err)
	d := newServerDialer(cfg, false, "", "", 0, cfg.ReadTimeout)
	var dialled []*watchedConn
	pool := poolOf(cfg, func(ctx context.Context) (*watchedConn, error) {
		w, err := d.dial(ctx, m.Addr())
		if err == nil {
			dialled = append(dialled, w)
		}
		return w, err
	}, nil, nil)
	defer pool.Close()

	c := pool.Get()
	require.NoError(t, c.Send("PING"))
	require.NoError(t, c.Flush())
	require.Len(t, dialled, 1)
	w := dialled[0]
	// A reply nobody waits for, longer than redigo's own buffer takes
	// and all read ahead: none of it is left in the socket.
	stale := strings.Repeat("s", readBuffer/2)
	_, err = fmt.Fprintf(w.tcp, "*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n", len(stale), stale)
	require.NoError(t, err)
	time.Sleep(50 * time.Millisecond) // both replies arrive: one read takes them
	got, err := redis.String(c.Receive())
	require.NoError(t, err)
	require.Equal(t, "PONG", got)
	require.Positive(t, w.tcp.r.Buffered(), "the unasked reply is read ahead")
	require.NoError(t, c.Close())

	c = pool.Get()
	defer c.Close()
	echo, err := redis.String(c.Do("ECHO", "fresh"))
	require.NoError(t, err)
	assert.Equal(t, "fresh", echo, "a command got a reply read ahead on an idle connection")
	assert.Len(t, dialled, 2, "the connection with bytes read ahead was kept")
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
		"redis://:s3cret@host:6379/2":                                   "redis://host:6379/2",
		"rediss://user:s3cret@host:6380":                                "rediss://host:6380",
		"redis://s3cret@host":                                           "redis://host",
		"redis://host:6379":                                             "redis://host:6379",
		"redis://:s3cret%zz@host":                                       "(a URL that Dial refuses)",
		"redis+sentinel://:pw@s1,s2:26380/m?sentinel_password=spw":      "redis+sentinel://s1,s2:26380/m?sentinel_password=redacted",
		"redis+cluster://u:pw@a:7000,b":                                 "redis+cluster://a:7000,b",
		"redis+sentinel://s1/m?sentinel_user=ops&sentinel_password=spw": "redis+sentinel://s1/m?sentinel_password=redacted&sentinel_user=redacted",
		"redis+sentinel://s1/m?sentinel_user=ops":                       "redis+sentinel://s1/m?sentinel_user=redacted",
		// A password with a '/', '?' or '#' not percent-encoded cuts the
		// authority short: none of it may be shown.
		"redis://:ab/cd@host:6379":             "(a URL that Dial refuses)",
		"redis://:1234/5678@host":              "(a URL that Dial refuses)",
		"redis://u:ab?cd@host":                 "(a URL that Dial refuses)",
		"redis://:12#34@host":                  "(a URL that Dial refuses)",
		"redis+cluster://:pa/ss@a:7000,b:7001": "(a URL that Dial refuses)",
		"http://127.0.0.1:6379":                "(a URL that Dial refuses)", // it parses; its scheme is not Redis's
		"redis://:ab%2Fcd%23@host:6379":        "redis://host:6379",
	} {
		assert.Equal(t, want, RedactURL(in), in)
	}
}

// TestURLHostMustParse checks that a host Dial could only misread is
// refused with ErrBadConfig, by CheckURL and by Dial before it connects,
// with a message that says what is wrong and quotes nothing of the URL:
// an IPv6 address without brackets (redis://::1:6394 would be read as
// the host "::1:6394" on port 6379) and a host holding a control
// character or a space. Bracketed IPv6 addresses work.
func TestURLHostMustParse(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"redis://::1:6394":                  "write an IPv6 address in brackets",
		"redis://fe80::1:6394/0":            "write an IPv6 address in brackets",
		"redis://:s3cret@::1:6394":          "write an IPv6 address in brackets",
		"rediss://u:s3cret@2001:db8::1":     "write an IPv6 address in brackets",
		"redis+cluster://a:7000,::1:7001":   "write an IPv6 address in brackets",
		"redis+sentinel://::1/mymaster":     "write an IPv6 address in brackets",
		"redis://127.0.0.1\x00:6394":        "control character or a space",
		"redis://:s3cret@127.0.0.1\x00":     "control character or a space",
		"redis://my\thost:6379":             "control character or a space",
		"redis://my host:6379":              "control character or a space",
		"redis://h\x7f:6379":                "control character or a space",
		"redis+cluster://a:7000,b\x01:7001": "control character or a space",
		"redis://127.0.0.1:+6394":           "host or port that does not parse",
		"redis://:s3cret@127.0.0.1:-1":      "host or port that does not parse",
		"redis+cluster://a:7000,b:+7001":    "host or port that does not parse",
	} {
		err := CheckURL(in)
		assert.ErrorIs(t, err, ErrBadConfig, "%q", in)
		if assert.Error(t, err, "%q", in) {
			assert.Contains(t, err.Error(), want, "%q", in)
			assert.NotContains(t, err.Error(), "s3cret", "%q", in)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = Dial(ctx, []string{in}, Config{DialTimeout: time.Second})
		cancel()
		assert.ErrorIs(t, err, ErrBadConfig, "Dial(%q)", in)
		assert.Equal(t, "(a URL that Dial refuses)", RedactURL(in), "%q", in)
	}
	for in, want := range map[string]redisURL{
		"redis://[::1]:6394":               {addr: "[::1]:6394"},
		"redis://:pw@[::1]":                {addr: "[::1]:6379", password: "pw"},
		"redis://[fe80::1]:6394/2":         {addr: "[fe80::1]:6394", db: 2},
		"redis+cluster://[::1]:7000,[::2]": {topo: cluster, addrs: []string{"[::1]:7000", "[::2]:6379"}},
	} {
		got, err := parseRedisURL(in)
		if assert.NoError(t, err, in) {
			assert.Equal(t, want, got, in)
		}
	}
}

// TestTLSToAPlainPort checks that rediss:// to a port without TLS says
// what is likely wrong, whether the server waits for the rest of what it
// takes for a command line (a plain redis-server) or answers in its own
// protocol, and that the error still unwraps.
func TestTLSToAPlainPort(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// serve accepts connections and, for each, reads what comes and
	// writes answer (nothing: it waits, as redis-server does for a line).
	serve := func(answer string) net.Listener {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					if answer != "" {
						c.Write([]byte(answer))
						return
					}
					io.Copy(io.Discard, c)
				}()
			}
		}()
		return l
	}
	cfg := Config{DialTimeout: 300 * time.Millisecond}
	silent, http := serve(""), serve("HTTP/1.1 400 Bad Request\r\n\r\n")
	for name, addr := range map[string]string{"silent": silent.Addr().String(), "http": http.Addr().String()} {
		_, err := Dial(ctx, []string{"rediss://" + addr}, cfg)
		require.Error(t, err, name)
		assert.Contains(t, err.Error(), "is TLS enabled on that port? rediss:// is for TLS, redis:// for plain connections", name)
		if name == "http" {
			var rh tls.RecordHeaderError
			assert.ErrorAs(t, err, &rh, "the error unwraps")
		}
	}
	// A refused connection is not a TLS matter.
	addr := http.Addr().String()
	http.Close()
	_, err := Dial(ctx, []string{"rediss://" + addr}, cfg)
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "is TLS enabled")
}
