package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/qugo/queue"
)

// globals are the flags that name the queue: its servers, queue count and
// key prefix.
type globals struct {
	redis  string
	queues int
	prefix string
}

func defaultGlobals() globals {
	_, r := redisEnv()
	if r == "" {
		r = defaultRedis
	}
	return globals{redis: r, queues: 1, prefix: "qugo"}
}

// redisEnvVars are the variables that name the servers when no -redis is
// given, first match wins: qugo's own, then the one the examples read.
var redisEnvVars = []string{"QUEUE_REDIS", "REDIS_URL"}

// redisEnv returns the first of redisEnvVars that is set, and its value;
// an empty value counts as unset. With neither set it returns "", "".
func redisEnv() (name, value string) {
	for _, name := range redisEnvVars {
		if v := os.Getenv(name); v != "" {
			return name, v
		}
	}
	return "", ""
}

// register adds the global flags to fs, with their current values as
// defaults, so they may come before or after the command.
func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.redis, "redis", g.redis, "comma-separated Redis `URLs`, in partition order (redis://, rediss://, redis+cluster://, redis+sentinel://)")
	fs.IntVar(&g.queues, "queues", g.queues, "`Q`, the number of queues on each server")
	fs.StringVar(&g.prefix, "prefix", g.prefix, "key `prefix` of the queue")
}

// urls returns the -redis URLs, one per partition. Its errors name a URL
// by its place only (counted from 1, as layoutAdvice counts): URLs may
// hold passwords.
func (g *globals) urls() ([]string, error) {
	parts := queue.SplitURLs(g.redis)
	if len(parts) == 1 && parts[0] == "" {
		return nil, usagef("-redis: no URL given")
	}
	for i, u := range parts {
		if u == "" {
			return nil, usagef("-redis: URL %d of %d is empty", i+1, len(parts))
		}
		if err := queue.CheckURL(u); err != nil {
			return nil, usagef("-redis: URL %d of %d: %v", i+1, len(parts), err)
		}
	}
	return parts, nil
}

// validate checks the global flags without contacting Redis.
func (g *globals) validate() error {
	if _, err := g.urls(); err != nil {
		return err
	}
	if g.queues < 1 {
		return usagef("-queues %d: must be at least 1", g.queues)
	}
	if l := (queue.Layout{Partitions: g.partitions(), Queues: g.queues}); !l.Valid() {
		return usagef("-redis names %s of -queues %d: a queue has at most 4096 servers, 4096 queues a server and 65536 queues in all",
			plural(l.Partitions, "server"), g.queues)
	}
	if g.prefix == "" || strings.ContainsAny(g.prefix, "{}") {
		return usagef("-prefix %q: must be non-empty, without '{' or '}'", g.prefix)
	}
	return nil
}

// partitions returns R, the number of -redis URLs. Call validate first.
func (g *globals) partitions() int { return len(queue.SplitURLs(g.redis)) }

// dial connects to every partition and checks, without recording
// anything, that the layout the servers recorded is the flags' one. When
// no server has a layout recorded under -prefix, it warns on stderr: a
// mistyped -prefix would otherwise show empty queues as if all were well.
func (e *env) dial(ctx context.Context) (*queue.Queue, error) {
	return e.open(ctx, dialOptions{})
}

// dialOptions are what a command needs of its queue beyond the global
// flags.
type dialOptions struct {
	// retention is the queue's Config.Retention: Status reads the history
	// of finished tasks with it.
	retention time.Duration
	// writer refuses, with an error, servers that no producer or analyser
	// has used under -prefix, instead of warning: the command would write
	// state there (a pause, a cancel mark), and with it the flags' layout,
	// which could then refuse the producers and analysers of another
	// layout that come later.
	writer bool
}

// open is dial with o.
func (e *env) open(ctx context.Context, o dialOptions) (*queue.Queue, error) {
	q, used, err := e.connect(ctx, o.retention)
	if err != nil {
		return nil, err
	}
	switch {
	case !used && o.writer:
		q.Close()
		return nil, fmt.Errorf("no producer or analyser has used prefix %q on these servers yet: "+
			"refusing to write under it; check -prefix (and -redis)", e.prefix)
	case !used:
		fmt.Fprintf(e.stderr, "qugo: warning: no producer or analyser has used prefix %q on these servers yet; "+
			"check -prefix (and -redis) if you expected tasks\n", e.prefix)
	}
	return q, nil
}

// connect connects to every partition, checks without recording
// anything that the layout the servers recorded is the flags' one, and
// reports whether any server has a layout recorded under -prefix (see
// prefixUsed). It writes nothing to the outputs.
func (e *env) connect(ctx context.Context, retention time.Duration) (q *queue.Queue, used bool, err error) {
	urls, err := e.urls()
	if err != nil {
		return nil, false, err
	}
	q, err = queue.Dial(ctx, urls, queue.Config{Prefix: e.prefix, Queues: e.queues, Retention: retention})
	if err != nil {
		return nil, false, e.redisSource(explainDial(err, urls))
	}
	if err := q.CheckLayout(ctx); err != nil {
		q.Close()
		return nil, false, err
	}
	used, err = e.prefixUsed(ctx, urls)
	if err != nil {
		q.Close()
		return nil, false, err
	}
	return q, used, nil
}

// prefixUsed reports whether any server has a layout recorded under
// -prefix. CheckLayout passes a server with nothing recorded, so a queue
// with another queue count than the flags say, which no layout recorded
// for them can match, fails on a server exactly when it has one. The
// probe's count is one less (one more for a single queue), so that it
// stays within the bounds of every layout the flags may name.
func (e *env) prefixUsed(ctx context.Context, urls []string) (bool, error) {
	other := e.queues - 1
	if other == 0 {
		other = 2
	}
	probe, err := queue.Dial(ctx, urls, queue.Config{Prefix: e.prefix, Queues: other})
	if err != nil {
		return false, explainDial(err, urls)
	}
	defer probe.Close()
	err = probe.CheckLayout(ctx)
	if errors.Is(err, queue.ErrLayoutMismatch) {
		return true, nil
	}
	return false, err
}

// redisSource says, in a failure to reach the servers, where their URLs
// came from when no -redis was given: $QUEUE_REDIS or $REDIS_URL, or,
// with neither set, the default. Who did not mean to use the default
// learns there that nothing named a server.
func (e *env) redisSource(err error) error {
	if e.set["redis"] {
		return err
	}
	if name, _ := redisEnv(); name != "" {
		return fmt.Errorf("$%s (no -redis given): %w", name, err)
	}
	return fmt.Errorf("%s, the default (no -redis, $QUEUE_REDIS or $REDIS_URL given): %w", defaultRedis, err)
}

// explainDial adds a hint to an error of queue.Dial when the server
// answered with something other than the Redis protocol, or hung up
// without an answer (a server of another protocol that reads first).
func explainDial(err error, urls []string) error {
	msg := err.Error()
	what := "does not answer in the Redis protocol"
	switch {
	case strings.Contains(msg, "redigo: unexpected response") || strings.Contains(msg, "redigo: bad response") ||
		strings.Contains(msg, "malformed"):
	case strings.HasSuffix(msg, ": EOF") || strings.HasSuffix(msg, "connection reset by peer"):
		what = "closed the connection without a Redis reply"
	default:
		return err
	}
	where := strings.Join(urls, ", ")
	var n int
	if _, scanErr := fmt.Sscanf(msg, "queue: dial partition %d:", &n); scanErr == nil && n < len(urls) {
		where = urls[n]
	}
	return fmt.Errorf("%w (%s %s: is it a Redis server, on the right port, and does it want TLS (rediss://)?)", err, where, what)
}

// authRefused reports whether err is Redis refusing the credentials of
// a -redis URL, or a command to their user: it does not clear by itself.
func authRefused(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "NOAUTH") || strings.Contains(msg, "WRONGPASS") || strings.Contains(msg, "NOPERM")
}

// redisHint says what to do about err, a failed Redis call, when a
// server refused the credentials or did not reply in time; "" for any
// other error. timeoutFlag names the flag that bounds the command's
// Redis calls, "" when it has none.
func redisHint(err error, timeoutFlag string) string {
	msg := err.Error()
	ne, isNet := errors.AsType[net.Error](err)
	switch {
	case strings.Contains(msg, "NOAUTH"):
		return "the server wants a password: put it in the -redis URL, redis://:password@host:port " +
			"(or redis://user:password@host:port for an ACL user)"
	case strings.Contains(msg, "WRONGPASS"):
		return "Redis refused the credentials: check the user and password in the -redis URL; this does not clear by itself"
	case strings.Contains(msg, "NOPERM"):
		return "Redis refused a command to the -redis URL's user (ACL NOPERM): give the user the commands and keys the queue needs, " +
			"or use another; this does not clear by itself"
	case errors.Is(err, context.DeadlineExceeded) || isNet && ne.Timeout() || strings.Contains(msg, "i/o timeout"):
		hint := "no reply in time: check that the address is a Redis server's (the right port; rediss:// if it wants TLS) " +
			"and that the server is not overloaded"
		if timeoutFlag != "" {
			hint += "; a slow one needs a longer " + timeoutFlag
		}
		return hint
	}
	return ""
}

// layoutAdvice says, for a layout mismatch on the server le.Partition of
// urls, what that server recorded and which flag to change.
func layoutAdvice(le *queue.LayoutError, urls []string) string {
	var got, want [3]int // partitions, queues, index
	const format = "partitions=%d queues=%d index=%d"
	_, err1 := fmt.Sscanf(le.Got, format, &got[0], &got[1], &got[2])
	_, err2 := fmt.Sscanf(le.Want, format, &want[0], &want[1], &want[2])
	url := strconv.Itoa(le.Partition)
	if le.Partition >= 0 && le.Partition < len(urls) {
		url = queue.RedactURL(urls[le.Partition])
	}
	server := url
	if le.Prefix != "" {
		server += fmt.Sprintf(" under -prefix %q", le.Prefix)
	}
	if err1 != nil || err2 != nil {
		return fmt.Sprintf("%s has recorded %s: give the -redis URLs in partition order and the -queues the queue was created with", server, le.Got)
	}
	var fix []string
	if got[1] != want[1] {
		fix = append(fix, fmt.Sprintf("-queues %d", got[1]))
	}
	if got[0] != want[0] {
		fix = append(fix, fmt.Sprintf("-redis with %s (%d given)", plural(got[0], "URL"), want[0]))
	}
	if got[2] != want[2] {
		fix = append(fix, fmt.Sprintf("-redis with %s as URL %d (it is URL %d now)", url, got[2]+1, want[2]+1))
	}
	// URLs are counted from 1, as the examples' programs count them.
	return fmt.Sprintf("%s has recorded %s x %s, this server at place %d: use %s (or, to start afresh, another -prefix)",
		server, plural(got[0], "server"), plural(got[1], "queue"), got[2]+1, strings.Join(fix, " and "))
}

// numberArg is the value of a number flag whose absence a command tells
// from 0: -a (an analyser) and -partition.
type numberArg struct {
	n   int
	set bool
}

func (a *numberArg) String() string {
	if a == nil || !a.set {
		return ""
	}
	return strconv.Itoa(a.n)
}

func (a *numberArg) Set(v string) error {
	n, err := strconv.Atoi(v)
	if err != nil {
		return errors.New("not a number")
	}
	a.n, a.set = n, true
	return nil
}

// analyserFlag registers -a, the analyser a command works on.
func analyserFlag(fs *flag.FlagSet) *numberArg {
	a := &numberArg{}
	fs.Var(a, "a", "the analyser `N` (0 <= N < R*Q; see qugo route)")
	return a
}

// checkAnalyser checks -a against R*Q, without contacting Redis.
func (g *globals) checkAnalyser(a *numberArg) error {
	r := g.partitions()
	n := r * g.queues
	switch {
	case !a.set:
		return usagef("-a is required")
	case a.n < 0 || a.n >= n:
		return usagef("-a %d: out of range: analysers are 0 to %d (%s x %s)", a.n, n-1, plural(r, "server"), plural(g.queues, "queue"))
	}
	return nil
}
