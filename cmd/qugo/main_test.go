package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/gomodule/redigo/redis"
	"github.com/qugo/queue"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testRedisURL names a real redis-server to test against; when empty,
// every test starts its own miniredis servers.
var testRedisURL = os.Getenv("QUEUE_TEST_REDIS_URL")

var prefixSeq atomic.Int64

// fixture is a queue of r partitions and q queues under a key prefix of
// its own, with a Queue to set up data through the library.
type fixture struct {
	urls   []string
	minis  []*miniredis.Miniredis // nil on a real server
	prefix string
	queues int
	q      *queue.Queue
}

func newFixture(t *testing.T, r, q int) *fixture {
	t.Helper()
	f := &fixture{
		prefix: fmt.Sprintf("qugo-cli-test:%d:%d", time.Now().UnixNano()%1e9, prefixSeq.Add(1)),
		queues: q,
	}
	for i := 0; i < r; i++ {
		if testRedisURL == "" {
			m := miniredis.RunT(t)
			f.minis = append(f.minis, m)
			f.urls = append(f.urls, "redis://"+m.Addr())
		} else {
			f.urls = append(f.urls, fmt.Sprintf("%s/%d", strings.TrimRight(testRedisURL, "/"), i))
		}
	}
	var err error
	f.q, err = queue.Dial(context.Background(), f.urls, queue.Config{Prefix: f.prefix, Queues: q})
	require.NoError(t, err)
	t.Cleanup(func() {
		f.cleanup(t)
		f.q.Close()
	})
	return f
}

// cleanup deletes the fixture's keys from a real server.
func (f *fixture) cleanup(t *testing.T) {
	if f.minis != nil {
		return
	}
	for i := range f.urls {
		keys, _ := redis.Strings(f.do(t, i, "KEYS", "*"+f.prefix+"*"))
		for _, k := range keys {
			f.do(t, i, "DEL", k)
		}
	}
}

// keys returns the keys under the fixture's prefix on partition i.
func (f *fixture) keys(t *testing.T, i int) []string {
	t.Helper()
	keys, err := redis.Strings(f.do(t, i, "KEYS", "*"+f.prefix+"*"))
	require.NoError(t, err)
	return keys
}

// do runs one raw command on partition i.
func (f *fixture) do(t *testing.T, i int, cmd string, args ...any) (any, error) {
	t.Helper()
	c, err := redis.DialURL(f.urls[i])
	require.NoError(t, err)
	defer c.Close()
	return c.Do(cmd, args...)
}

// args returns the global flags naming the fixture's queue, then rest.
func (f *fixture) args(rest ...string) []string {
	return append([]string{"-redis", strings.Join(f.urls, ","), "-queues", strconv.Itoa(f.queues), "-prefix", f.prefix}, rest...)
}

// add enqueues one task per order ID, with payload "task-<id>".
// fixtureHeaders are the headers add gives a task of orderID: one for an
// odd orderID, none for an even one.
func fixtureHeaders(orderID uint64) map[string]string {
	if orderID%2 == 0 {
		return nil
	}
	return map[string]string{"order": fmt.Sprint(orderID)}
}

func (f *fixture) add(t *testing.T, orderIDs ...uint64) []string {
	t.Helper()
	tasks := make([]queue.Task, len(orderIDs))
	for i, id := range orderIDs {
		tasks[i] = queue.Task{OrderID: id, Payload: []byte(fmt.Sprintf("task-%d", id)), Headers: fixtureHeaders(id)}
	}
	ids, err := f.q.AddTasks(context.Background(), tasks)
	require.NoError(t, err)
	return ids
}

// consume takes the lease of analyser a, as "cli-test", with one attempt
// per task so that Fail dead-letters at once. The lease is released at
// cleanup.
func (f *fixture) consume(t *testing.T, a int) *queue.Consumer {
	t.Helper()
	c, err := f.q.Consume(context.Background(), a, queue.ConsumerConfig{Owner: "cli-test", MaxAttempts: 1, LeaseTTL: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { c.Release(context.Background()) })
	return c
}

// claimKilling claims n tasks with c and dead-letters the i-th (c's
// MaxAttempts is 1), returning the claimed tasks.
func claimKilling(t *testing.T, c *queue.Consumer, n, i int) []queue.Task {
	t.Helper()
	ctx := context.Background()
	claimed, err := c.Claim(ctx, n)
	require.NoError(t, err)
	require.Len(t, claimed, n)
	dead, err := c.Fail(ctx, claimed[i], errors.New("boom"))
	require.NoError(t, err)
	require.True(t, dead)
	return claimed
}

// qugo runs the command and returns its exit status and outputs.
func qugo(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// qugoJSON runs the command, requires success, and decodes its output.
func qugoJSON[T any](t *testing.T, args ...string) T {
	t.Helper()
	code, out, errOut := qugo(t, args...)
	require.Equal(t, exitOK, code, errOut)
	require.Equal(t, 1, strings.Count(out, "\n"), "one JSON document on one line: %s", out)
	var v T
	require.NoError(t, json.Unmarshal([]byte(out), &v), out)
	return v
}

// closedURL returns a redis:// URL on a loopback port nothing listens on.
func closedURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return "redis://" + addr
}

// tableRows splits a table's output into rows of whitespace-separated
// fields, the header first.
func tableRows(out string) [][]string {
	var rows [][]string
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		rows = append(rows, strings.Fields(line))
	}
	return rows
}

// syncBuffer is a bytes.Buffer safe to read while run writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	// Nothing listens here: a command that reached Redis would exit 1.
	redisFlag := []string{"-redis", closedURL(t)}
	for _, tc := range []struct {
		name string
		args []string
		want string // in stderr
	}{
		{"no command", nil, "no command given"},
		{"-redis without its URL", []string{"-redis", "stats"},
			`qugo: -redis needs a URL, and was given "stats", a command: give the URL after -redis (qugo -redis redis://HOST:PORT stats)`},
		{"-redis without its URL, flags after", []string{"-redis", "pending", "-a", "0"}, `-redis needs a URL, and was given "pending", a command`},
		{"-redis without its URL after the command", []string{"stats", "-redis", "help"}, `-redis needs a URL, and was given "help", a command`},
		{"-redis not a URL, no command", []string{"-redis", "localhost"},
			"qugo: no command given, and the value of -redis is no URL (-redis: URL 1 of 1: queue: bad config: URL has no scheme: "},
		{"-redis not a URL, no command (the end)", []string{"-redis", "localhost"}, "): does -redis lack its URL?\n"},
		{"unknown command", []string{"bogus"}, `unknown command "bogus"`},
		{"unknown global flag", []string{"-nope", "stats"}, "-nope"},
		{"unknown command flag", []string{"stats", "-nope"}, "-nope"},
		{"stats operand", []string{"stats", "extra"}, "no arguments"},
		{"watch too often", []string{"stats", "-watch", "1ms"}, "-watch"},
		{"watch not a duration", []string{"stats", "-watch", "soon"}, "-watch"},
		{"pending without -a", []string{"pending"}, "-a is required"},
		{"dead without -a", []string{"dead"}, "-a is required"},
		{"replay without -a", []string{"replay"}, "-a is required"},
		{"analyser too big", []string{"dead", "-a", "1"}, "analysers are 0 to 0"},
		{"analyser negative", []string{"pending", "-a", "-3"}, "-a -3: out of range"},
		{"analyser minus one", []string{"dead", "-a", "-1"}, "-a -1: out of range"},
		{"analyser not a number", []string{"dead", "-a", "x"}, "not a number"},
		{"analyser too big for R*Q", []string{"-queues", "2", "pending", "-a", "2"}, "analysers are 0 to 1"},
		{"pending operand", []string{"pending", "-a", "0", "x"}, "no arguments"},
		{"zero queues", []string{"-queues", "0", "stats"}, "-queues 0"},
		{"not a redis URL", []string{"-redis", "http://localhost", "stats"}, "not redis://"},
		{"empty URL", []string{"-redis", "redis://a,,redis://b", "stats"}, "empty"},
		{"bad prefix", []string{"-prefix", "a{b}", "stats"}, "-prefix"},
		{"purge everything without -all", []string{"purge", "-a", "0"}, "refusing to purge"},
		{"purge IDs and -all", []string{"purge", "-a", "0", "-all", "x"}, "not both"},
		{"group without a name", []string{"group"}, "one NAME, got 0"},
		{"group with two names", []string{"group", "a", "b"}, "one NAME, got 2"},
		{"group bad name", []string{"group", "a{b}"}, `name "a{b}"`},
		{"group name with a newline", []string{"group", "a\nb"}, `name "a\nb"`},
		{"group watch too often", []string{"group", "g", "-watch", "1ms"}, "-watch"},
		{"scheduled without -a", []string{"scheduled"}, "-a is required"},
		{"scheduled zero limit", []string{"scheduled", "-a", "0", "-limit", "0"}, "-limit 0: must be 1 to"},
		{"scheduled huge limit", []string{"scheduled", "-a", "0", "-limit", "100001"}, "-limit 100001"},
		{"scheduled negative offset", []string{"scheduled", "-a", "0", "-offset", "-1"}, "-offset -1"},
		{"scheduled operand", []string{"scheduled", "-a", "0", "x"}, "no arguments"},
		{"pause without a scope", []string{"pause"}, "pause needs one of -a N"},
		{"resume without a scope", []string{"resume"}, "resume needs one of -a N"},
		{"pause two scopes", []string{"pause", "-a", "0", "-all"}, "only one of -a, -partition and -all"},
		{"resume two scopes", []string{"resume", "-partition", "0", "-a", "0"}, "only one of"},
		{"pause analyser out of range", []string{"pause", "-a", "1"}, "analysers are 0 to 0"},
		{"pause partition out of range", []string{"pause", "-partition", "1"}, "-partition 1: out of range: servers are 0 to 0"},
		{"pause negative partition", []string{"resume", "-partition", "-1"}, "-partition -1: out of range"},
		{"pause partition not a number", []string{"pause", "-partition", "x"}, "not a number"},
		{"pause operand", []string{"pause", "-all", "x"}, "no arguments"},
		{"cancel without -order", []string{"cancel", "-id", "x"}, "-order is required"},
		{"cancel without -id", []string{"cancel", "-order", "1"}, "-id is required"},
		{"cancel bad order", []string{"cancel", "-order", "-1", "-id", "x"}, "not an order ID"},
		{"cancel id with a space", []string{"cancel", "-order", "1", "-id", "a b"}, "not a task ID"},
		{"status without -order", []string{"status", "-id", "x"}, "-order is required"},
		{"status negative retention", []string{"status", "-order", "1", "-id", "x", "-retention", "-1s"}, "-retention -1s"},
		{"status retention too long", []string{"status", "-order", "1", "-id", "x", "-retention", "2400h"}, "Retention"},
		{"status operand", []string{"status", "-order", "1", "-id", "x", "y"}, "no arguments"},
		{"route nothing", []string{"route"}, "ORDER-ID"},
		{"route not a number", []string{"route", "abc"}, "not an order ID"},
		{"route too big", []string{"route", "18446744073709551616"}, "not an order ID"},
		{"route negative", []string{"route", "-1"}, `route: "-1" is not an order ID: order IDs are unsigned`},
		{"route negative after a flag", []string{"route", "-json", "3", "-5"}, `"-5" is not an order ID: order IDs are unsigned`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// A later -redis in tc.args overrides the first.
			args := append(append([]string(nil), redisFlag...), tc.args...)
			code, out, errOut := qugo(t, args...)
			assert.Equal(t, exitUsage, code)
			assert.Empty(t, out)
			assert.True(t, strings.HasPrefix(errOut, "qugo: "), errOut)
			assert.Contains(t, errOut, tc.want)
			// The help to run is the command's, once it is known.
			help := "qugo -h"
			for i := 0; i < len(tc.args); i++ {
				a := tc.args[i]
				if a == "-redis" || a == "-queues" || a == "-prefix" {
					i++
					continue
				}
				if !strings.HasPrefix(a, "-") && slices.ContainsFunc(commands, func(c command) bool { return c.name == a }) {
					help = "qugo " + a + " -h"
				}
				break
			}
			assert.True(t, strings.HasSuffix(errOut, "\nRun '"+help+"' for usage.\n"), errOut)
		})
	}
}

// The exit statuses of qugo -h and of README.md's table say the same.
func TestExitStatusDocumented(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	var row string
	for _, line := range strings.Split(string(readme), "\n") {
		if strings.HasPrefix(line, "| 1 | runtime error") {
			row = strings.ReplaceAll(line, "`", "")
		}
	}
	require.NotEmpty(t, row, "README.md's exit status table has no row for 1")
	help := strings.Join(strings.Fields(usageText), " ")
	for _, cause := range []string{"Redis unreachable", "layout mismatch", "a failed Redis call",
		"a failed bench order check", "a bench -verify with nothing to verify", "-timeout ran out", "for serve, a -listen address it cannot listen on"} {
		assert.Contains(t, row, cause, "README.md")
		assert.Contains(t, help, cause, "qugo -h")
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"-h"}, {"-help"}, {"help"}} {
		code, out, errOut := qugo(t, args...)
		assert.Equal(t, exitOK, code, args)
		assert.Empty(t, errOut, args)
		for _, want := range []string{"Exit status", "0  success", "1  runtime error", "2  usage error", "QUEUE_REDIS", "REDIS_URL", "purge",
			"a failed bench order check", "nothing to verify"} {
			assert.Contains(t, out, want, args)
		}
	}
	for _, c := range commands {
		code, out, errOut := qugo(t, c.name, "-h")
		assert.Equal(t, exitOK, code, c.name)
		assert.Empty(t, errOut, c.name)
		assert.Contains(t, out, "Usage: qugo [global flags] "+c.name, c.name)
		assert.NotContains(t, out, "-prefix prefix", "global flags are not listed per command")
	}
	// Defaults are shown, as the README lists them; zero ones are not.
	for cmd, want := range map[string][]string{
		"bench":     {"-n N\n", "to add (default 100000)", "spread the tasks over (default 1000)", "give up after DURATION (default 10m0s)"},
		"serve":     {"(default 127.0.0.1:8081)", "(default 2s)", "(default 5s)", "(default 10m0s)"},
		"scheduled": {"(at most 100000) (default 100)"},
	} {
		_, out, _ := qugo(t, cmd, "-h")
		for _, w := range want {
			assert.Contains(t, out, w, cmd)
		}
		assert.NotContains(t, out, "(default 0", cmd)
		assert.NotContains(t, out, "(default false)", cmd)
	}
}

func TestUnreachable(t *testing.T) {
	t.Parallel()
	url := closedURL(t)
	for _, args := range [][]string{
		{"stats"}, {"stats", "-json"}, {"stats", "-watch", "1s"}, {"pending", "-a", "0"}, {"dead", "-a", "0"},
		{"replay", "-a", "0"}, {"purge", "-a", "0", "-all"}, {"group", "g"}, {"group", "g", "-watch", "1s", "-json"},
		{"scheduled", "-a", "0"}, {"pause", "-all"}, {"resume", "-a", "0"}, {"cancel", "-order", "1", "-id", "0123456789abcdefghij"},
		{"status", "-order", "1", "-id", "x"},
	} {
		code, out, errOut := qugo(t, append([]string{"-redis", url}, args...)...)
		assert.Equal(t, exitRuntime, code, args)
		assert.Empty(t, out, args)
		assert.True(t, strings.HasPrefix(errOut, "qugo: "), errOut)
		assert.Contains(t, errOut, "dial partition 0", args)
	}
}

func TestLayoutMismatch(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 2, 2)
	f.add(t, 0, 1) // records the layout on both servers
	swapped := f.urls[1] + "," + f.urls[0]
	for name, args := range map[string][]string{
		"other Q":         {"-redis", strings.Join(f.urls, ","), "-queues", "1", "-prefix", f.prefix, "stats"},
		"other R":         {"-redis", f.urls[0], "-queues", "2", "-prefix", f.prefix, "dead", "-a", "0"},
		"servers swapped": {"-redis", swapped, "-queues", "2", "-prefix", f.prefix, "purge", "-a", "0", "-all"},
	} {
		code, out, errOut := qugo(t, args...)
		assert.Equal(t, exitRuntime, code, name)
		assert.Empty(t, out, name)
		assert.Contains(t, errOut, fmt.Sprintf(" under -prefix %q has recorded ", f.prefix), name)
		assert.NotContains(t, errOut, "Config.", "said in flags: %s", name)
	}
	_, _, errOut := qugo(t, "-redis", strings.Join(f.urls, ","), "-queues", "1", "-prefix", f.prefix, "stats")
	assert.Equal(t, "qugo: "+f.urls[0]+fmt.Sprintf(" under -prefix %q", f.prefix)+" has recorded 2 servers x 2 queues, this server at place 1: use -queues 2 (or, to start afresh, another -prefix)\n", errOut)
	code, _, errOut := qugo(t, f.args("stats")...)
	assert.Equal(t, exitOK, code, errOut)
}

// An inspector run with the wrong layout on servers nothing has used must
// not record its layout there.
func TestInspectorRecordsNoLayout(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 2, 2)
	wrong := []string{"-redis", f.urls[0], "-queues", "3", "-prefix", f.prefix}
	for _, cmd := range [][]string{{"stats"}, {"pending", "-a", "0"}, {"dead", "-a", "0"}, {"replay", "-a", "0"}, {"purge", "-a", "0", "-all"},
		{"scheduled", "-a", "0"}, {"status", "-order", "0", "-id", "0123456789abcdefghij", "-retention", "1h"}} {
		code, _, errOut := qugo(t, append(append([]string(nil), wrong...), cmd...)...)
		assert.Equal(t, exitOK, code, errOut)
	}
	f.add(t, 0, 1, 2, 3) // would fail with a layout mismatch had qugo recorded one
}

// Global flags also work after the command, and flags after operands.
func TestFlagPlacement(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	code, _, errOut := qugo(t, append([]string{"stats"}, f.args()...)...)
	assert.Equal(t, exitOK, code, errOut)
	code, out, errOut := qugo(t, append([]string{"purge", "some-id"}, f.args("-a", "0")...)...)
	assert.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "purged 0 task(s) of analyser 0")
}

// Without -redis, QUEUE_REDIS names the servers.
func TestRedisFromEnv(t *testing.T) {
	f := newFixture(t, 2, 1)
	t.Setenv("QUEUE_REDIS", strings.Join(f.urls, ","))
	doc := qugoJSON[statsDoc](t, "-prefix", f.prefix, "stats", "-json")
	assert.Equal(t, 2, doc.Partitions)
	assert.Len(t, doc.Analysers, 2)
}

// A bad URL in QUEUE_REDIS is refused under that name, not as -redis,
// which the caller did not give; a bad -redis is refused as -redis.
func TestBadRedisFromEnv(t *testing.T) {
	t.Setenv("QUEUE_REDIS", "127.0.0.1:6379")
	code, out, errOut := qugo(t, "stats")
	assert.Equal(t, exitUsage, code)
	assert.Empty(t, out)
	assert.Contains(t, errOut, "qugo: $QUEUE_REDIS (no -redis given): URL 1 of 1: queue: bad config: URL has no scheme")
	assert.NotContains(t, errOut, "for usage", "the fix is the variable's, not in the command's flags")
	code, _, errOut = qugo(t, "-redis", "tcp://h", "stats")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "qugo: -redis: URL 1 of 1: ")
	assert.Contains(t, errOut, "\nRun 'qugo stats -h' for usage.\n")
}

// A server that cannot be reached is named by where its URL came from
// when no -redis was given: the variable, or the default when neither
// variable is set (someone who meant a server of their own learns that
// none was named).
func TestUnreachableFromEnvOrDefault(t *testing.T) {
	url := closedURL(t)
	t.Setenv("QUEUE_REDIS", "")
	t.Setenv("REDIS_URL", url)
	for _, args := range [][]string{{"stats"}, {"status", "-order", "1", "-id", "x"}, {"bench", "-n", "1"}} {
		code, out, errOut := qugo(t, args...)
		assert.Equal(t, exitRuntime, code, args)
		assert.Empty(t, out, args)
		assert.Contains(t, errOut, "qugo: $REDIS_URL (no -redis given): queue: dial partition 0: ", args)
	}
	code, _, errOut := qugo(t, "-redis", url, "stats")
	assert.Equal(t, exitRuntime, code)
	assert.True(t, strings.HasPrefix(errOut, "qugo: queue: dial partition 0: "), errOut)

	// The default, 127.0.0.1:6379, may well answer here: the wording is
	// checked on an error of its own.
	t.Setenv("REDIS_URL", "")
	e := &env{globals: defaultGlobals(), set: map[string]bool{}}
	assert.EqualError(t, e.redisSource(errors.New("queue: dial partition 0: refused")),
		"redis://127.0.0.1:6379, the default (no -redis, $QUEUE_REDIS or $REDIS_URL given): queue: dial partition 0: refused")
	e.set["redis"] = true
	assert.EqualError(t, e.redisSource(errors.New("queue: dial partition 0: refused")), "queue: dial partition 0: refused")
}

// Without -redis and QUEUE_REDIS (an empty one counts as unset),
// REDIS_URL names the servers, and a bad URL in it is refused under its
// name; QUEUE_REDIS, when set, comes first.
func TestRedisURLFromEnv(t *testing.T) {
	f := newFixture(t, 2, 1)
	t.Setenv("QUEUE_REDIS", "")
	t.Setenv("REDIS_URL", strings.Join(f.urls, ","))
	doc := qugoJSON[statsDoc](t, "-prefix", f.prefix, "stats", "-json")
	assert.Equal(t, 2, doc.Partitions)

	t.Setenv("REDIS_URL", "127.0.0.1:6379")
	code, out, errOut := qugo(t, "stats")
	assert.Equal(t, exitUsage, code)
	assert.Empty(t, out)
	assert.Contains(t, errOut, "qugo: $REDIS_URL (no -redis given): URL 1 of 1: queue: bad config: URL has no scheme")

	t.Setenv("QUEUE_REDIS", f.urls[0])
	doc = qugoJSON[statsDoc](t, "-prefix", f.prefix, "stats", "-json")
	assert.Equal(t, 1, doc.Partitions, "QUEUE_REDIS comes before REDIS_URL")
}

func TestParseInterspersed(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args     []string
		a        int
		all      bool
		operands []string
	}{
		{nil, -1, false, nil},
		{[]string{"-a", "2", "x", "y"}, 2, false, []string{"x", "y"}},
		{[]string{"x", "-a", "2", "y", "-all"}, 2, true, []string{"x", "y"}},
		{[]string{"x", "--", "-a", "2"}, -1, false, []string{"x", "-a", "2"}},
		{[]string{"-all", "--", "--"}, -1, true, []string{"--"}},
	} {
		fs := newFlagSet("t")
		a := fs.Int("a", -1, "")
		all := fs.Bool("all", false, "")
		operands, err := parseInterspersed(fs, tc.args)
		require.NoError(t, err, tc.args)
		assert.Equal(t, tc.operands, operands, tc.args)
		assert.Equal(t, tc.a, *a, tc.args)
		assert.Equal(t, tc.all, *all, tc.args)
	}
	fs := newFlagSet("t")
	_, err := parseInterspersed(fs, []string{"x", "-nope"})
	var ue *usageError
	assert.ErrorAs(t, err, &ue)
	_, err = parseInterspersed(newFlagSet("t"), []string{"-h"})
	assert.ErrorIs(t, err, flag.ErrHelp)
}
