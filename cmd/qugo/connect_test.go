package main

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/qugo/queue"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestGlobalsValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		g     globals
		urls  []string
		parts int
		bad   string // in the error; "" for valid
	}{
		{"one", globals{"redis://h:1", 1, "qugo"}, []string{"redis://h:1"}, 1, ""},
		{"spaces trimmed", globals{" redis://a , rediss://b/2", 4, "p"}, []string{"redis://a", "rediss://b/2"}, 2, ""},
		{"cluster and sentinel host lists", globals{"redis+cluster://a:7000,b:7001,redis+sentinel://s1,s2/mp", 8, "p"},
			[]string{"redis+cluster://a:7000,b:7001", "redis+sentinel://s1,s2/mp"}, 2, ""},
		{"sentinel without a name", globals{"redis+sentinel://s1", 1, "p"}, nil, 0, "names no primary"},
		{"empty URL", globals{"redis://a,", 1, "p"}, nil, 0, "URL 2 of 2 is empty"},
		{"no URL", globals{"", 1, "p"}, nil, 0, "-redis: no URL given"},
		{"other scheme", globals{"tcp://a", 1, "p"}, nil, 0, "not redis://"},
		{"zero queues", globals{"redis://a", 0, "p"}, nil, 0, "-queues 0"},
		{"most queues a server", globals{"redis://a", 4096, "p"}, []string{"redis://a"}, 1, ""},
		{"too many queues a server", globals{"redis://a", 4097, "p"}, nil, 0, "-redis names 1 server of -queues 4097"},
		{"too many queues in all", globals{strings.TrimSuffix(strings.Repeat("redis://a,", 17), ","), 4096, "p"}, nil, 0, "17 servers of -queues 4096"},
		{"a count that would overflow", globals{"redis://a,redis://b", 1 << 62, "p"}, nil, 0, "-queues"},
		{"empty prefix", globals{"redis://a", 1, ""}, nil, 0, "-prefix"},
		{"brace in prefix", globals{"redis://a", 1, "a}"}, nil, 0, "-prefix"},
	} {
		err := tc.g.validate()
		if tc.bad != "" {
			var ue *usageError
			if assert.ErrorAs(t, err, &ue, tc.name) {
				assert.Contains(t, err.Error(), tc.bad, tc.name)
			}
			continue
		}
		require.NoError(t, err, tc.name)
		urls, err := tc.g.urls()
		require.NoError(t, err, tc.name)
		assert.Equal(t, tc.urls, urls, tc.name)
		assert.Equal(t, tc.parts, tc.g.partitions(), tc.name)
	}
}

func TestCheckAnalyser(t *testing.T) {
	t.Parallel()
	g := globals{redis: "redis://a,redis://b,redis://c", queues: 2, prefix: "p"}
	arg := func(n int) *numberArg { return &numberArg{n: n, set: true} }
	for a, ok := range map[int]bool{-1: false, -2: false, 0: true, 5: true, 6: false} {
		err := g.checkAnalyser(arg(a))
		if ok {
			assert.NoError(t, err, a)
		} else {
			var ue *usageError
			assert.ErrorAs(t, err, &ue, a)
		}
	}
	assert.EqualError(t, g.checkAnalyser(arg(6)), "-a 6: out of range: analysers are 0 to 5 (3 servers x 2 queues)")
	// -1 given is out of range, not missing.
	assert.EqualError(t, g.checkAnalyser(arg(-1)), "-a -1: out of range: analysers are 0 to 5 (3 servers x 2 queues)")
	assert.EqualError(t, g.checkAnalyser(&numberArg{}), "-a is required")
	one := globals{redis: "redis://a", queues: 1, prefix: "p"}
	assert.EqualError(t, one.checkAnalyser(arg(1)), "-a 1: out of range: analysers are 0 to 0 (1 server x 1 queue)")
}

func TestLayoutAdvice(t *testing.T) {
	t.Parallel()
	urls := []string{"redis://a", "redis://b"}
	for _, tc := range []struct {
		name      string
		partition int
		got, want string
		advice    string
	}{
		{"other Q", 0, "partitions=2 queues=4 index=0", "partitions=2 queues=1 index=0",
			"redis://a has recorded 2 servers x 4 queues, this server at place 1: use -queues 4 (or, to start afresh, another -prefix)"},
		{"other R", 0, "partitions=2 queues=1 index=0", "partitions=1 queues=1 index=0",
			"redis://a has recorded 2 servers x 1 queue, this server at place 1: use -redis with 2 URLs (1 given) (or, to start afresh, another -prefix)"},
		{"one server, not two", 0, "partitions=1 queues=2 index=0", "partitions=2 queues=2 index=0",
			"redis://a has recorded 1 server x 2 queues, this server at place 1: use -redis with 1 URL (2 given) (or, to start afresh, another -prefix)"},
		{"swapped", 1, "partitions=2 queues=1 index=0", "partitions=2 queues=1 index=1",
			"redis://b has recorded 2 servers x 1 queue, this server at place 1: use -redis with redis://b as URL 1 (it is URL 2 now) (or, to start afresh, another -prefix)"},
		{"unparsable", 1, "partitions= queues=3 index=", "partitions=2 queues=1 index=1",
			"redis://b has recorded partitions= queues=3 index=: give the -redis URLs in partition order and the -queues the queue was created with"},
	} {
		le := &queue.LayoutError{Partition: tc.partition, Got: tc.got, Want: tc.want}
		assert.Equal(t, tc.advice, layoutAdvice(le, urls), tc.name)
		le.Prefix = "orders"
		assert.Equal(t, strings.Replace(tc.advice, " has recorded", ` under -prefix "orders" has recorded`, 1), layoutAdvice(le, urls), tc.name)
	}
}

// A server that does not speak the Redis protocol gets a hint, not only
// redigo's "unexpected response line".
func TestNotRedisServer(t *testing.T) {
	t.Parallel()
	url := fakeServer(t, func(c net.Conn) { c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n")) })
	code, _, errOut := qugo(t, "-redis", url, "stats")
	assert.Equal(t, exitRuntime, code)
	assert.Contains(t, errOut, url+" does not answer in the Redis protocol: is it a Redis server, on the right port")
}

// A server that reads and hangs up without a word (another protocol's
// server, one that wants TLS) is named too, not left as a bare EOF.
func TestServerThatHangsUp(t *testing.T) {
	t.Parallel()
	url := fakeServer(t, func(c net.Conn) { c.Read(make([]byte, 64)) })
	code, _, errOut := qugo(t, "-redis", url, "stats")
	assert.Equal(t, exitRuntime, code)
	assert.Contains(t, errOut, url+" closed the connection without a Redis reply: is it a Redis server, on the right port")
}

// fakeServer listens on loopback until the test ends, runs serve on each
// connection and closes it; it returns the server's redis:// URL.
func fakeServer(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			serve(c)
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return "redis://" + l.Addr().String()
}

// A -prefix nothing has used shows empty queues, with a warning.
func TestUnusedPrefixWarns(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 2, 1)
	f.add(t, 0, 1)
	code, _, errOut := qugo(t, f.args("stats")...)
	assert.Equal(t, exitOK, code, errOut)
	assert.NotContains(t, errOut, "warning", "the prefix is in use")

	typo := []string{"-redis", strings.Join(f.urls, ","), "-prefix", f.prefix + "x"}
	code, out, errOut := qugo(t, append(typo, "stats")...)
	assert.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "ANALYSER", "the table is still shown")
	assert.Equal(t, fmt.Sprintf("qugo: warning: no producer or analyser has used prefix %q on these servers yet; "+
		"check -prefix (and -redis) if you expected tasks\n", f.prefix+"x"), errOut)
}

// Every layout a Queue can have opens, up to the bounds of R*Q and Q:
// the probe that tells whether -prefix is in use stays within them.
func TestLayoutsAtTheBoundsOpen(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ r, q int }{{32, 2048}, {17, 3855}, {16, 4096}, {1, 4096}, {2, 1}} {
		t.Run(fmt.Sprintf("%dx%d", tc.r, tc.q), func(t *testing.T) {
			if testRedisURL != "" && tc.r > 16 {
				t.Skip("a real server's partitions are its 16 databases")
			}
			f := newFixture(t, tc.r, tc.q)
			f.add(t, 0)
			code, _, errOut := qugo(t, f.args("pending", "-a", "0", "-json")...)
			assert.Equal(t, exitOK, code, "R=%d Q=%d: %s", tc.r, tc.q, errOut)
		})
	}
}

// A server that refuses the credentials says so, with what to put in the
// URL, and never with the password.
func TestRedisRefusesCredentials(t *testing.T) {
	t.Parallel()
	m := miniredis.RunT(t)
	m.RequireAuth("s3cret-pass")
	code, out, errOut := qugo(t, "-redis", "redis://"+m.Addr(), "stats")
	assert.Equal(t, exitRuntime, code)
	assert.Empty(t, out)
	assert.Contains(t, errOut, "NOAUTH")
	assert.Contains(t, errOut, "\nqugo: the server wants a password: put it in the -redis URL, redis://:password@host:port "+
		"(or redis://user:password@host:port for an ACL user)\n")

	code, _, errOut = qugo(t, "-redis", "redis://:wrong-pass@"+m.Addr(), "stats")
	assert.Equal(t, exitRuntime, code)
	assert.Contains(t, errOut, "WRONGPASS")
	assert.Contains(t, errOut, "\nqugo: Redis refused the credentials: check the user and password in the -redis URL; this does not clear by itself\n")
	assert.NotContains(t, errOut, "wrong-pass")

	// The dashboard comes up all the same, and says the refusal will
	// not clear by itself, not that Redis does not answer yet.
	_, _, logs := startServe(t, "-redis", "redis://:wrong-pass@"+m.Addr(), "serve", "-listen", "127.0.0.1:0")
	assert.Contains(t, logs.String(), `level=ERROR msg="Redis refused the credentials; this does not clear by itself`)
	assert.Contains(t, logs.String(), "WRONGPASS invalid username-password pair. Redis refused the credentials: check the user and password in the -redis URL")
	assert.NotContains(t, logs.String(), "does not answer yet")
	assert.NotContains(t, logs.String(), "wrong-pass")
}

func TestRedisHint(t *testing.T) {
	t.Parallel()
	timeout := &net.OpError{Op: "read", Net: "tcp", Err: timeoutError{}}
	for _, tc := range []struct {
		err  error
		flag string
		want string // in the hint; "" for none
	}{
		{errors.New("queue: dial partition 0: NOAUTH Authentication required."), "", "put it in the -redis URL, redis://:password@host:port"},
		{errors.New("queue: stats: NOAUTH Authentication required."), "-timeout", "redis://user:password@host:port"},
		{errors.New("queue: dial partition 0: WRONGPASS invalid username-password pair or user is disabled."), "", "refused the credentials"},
		{errors.New("queue: claim: NOPERM User qugo has no permissions to run the 'evalsha' command"), "", "(ACL NOPERM)"},
		{fmt.Errorf("queue: dial partition 0: %w", timeout), "", "no reply in time: check that the address is a Redis server's"},
		{fmt.Errorf("queue: dial partition 0: %w", timeout), "-timeout", "not overloaded; a slow one needs a longer -timeout"},
		{errors.New("queue: dial partition 0: read tcp 127.0.0.1:1->127.0.0.1:2: i/o timeout"), "", "no reply in time"},
		{errors.New("queue: dial partition 0: connection refused"), "", ""},
	} {
		got := redisHint(tc.err, tc.flag)
		if tc.want == "" {
			assert.Empty(t, got, tc.err)
			continue
		}
		assert.Contains(t, got, tc.want, tc.err)
		if tc.flag == "" {
			assert.NotContains(t, got, "-timeout", tc.err)
		}
	}
}

type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

// A server that takes the connection and never replies: the dashboard
// says what to check, and names -timeout.
func TestServeSilentServer(t *testing.T) {
	t.Parallel()
	_, _, logs := startServe(t, "-redis", silentURL(t), "serve", "-listen", "127.0.0.1:0", "-timeout", "200ms")
	assert.Contains(t, logs.String(), "Redis does not answer yet")
	assert.Contains(t, logs.String(), "No reply in time: check that the address is a Redis server's (the right port; rediss:// if it wants TLS) "+
		"and that the server is not overloaded; a slow one needs a longer -timeout.")
}
