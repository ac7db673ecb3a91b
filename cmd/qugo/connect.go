package main

import (
	"context"
	"flag"
	"os"
	"strings"

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
	r := os.Getenv("QUEUE_REDIS")
	if r == "" {
		r = defaultRedis
	}
	return globals{redis: r, queues: 1, prefix: "qugo"}
}

// register adds the global flags to fs, with their current values as
// defaults, so they may come before or after the command.
func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.redis, "redis", g.redis, "comma-separated redis:// `URLs`, in partition order")
	fs.IntVar(&g.queues, "queues", g.queues, "`Q`, the number of queues on each server")
	fs.StringVar(&g.prefix, "prefix", g.prefix, "key `prefix` of the queue")
}

// urls returns the -redis URLs, one per partition. Its errors name a URL
// by its index only: URLs may hold passwords.
func (g *globals) urls() ([]string, error) {
	parts := strings.Split(g.redis, ",")
	for i, u := range parts {
		u = strings.TrimSpace(u)
		if u == "" {
			return nil, usagef("-redis: URL %d of %d is empty", i, len(parts))
		}
		if scheme := strings.ToLower(u[:min(len(u), len("rediss://"))]); !strings.HasPrefix(scheme, "redis://") && scheme != "rediss://" {
			return nil, usagef("-redis: URL %d is not redis:// or rediss://", i)
		}
		parts[i] = u
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
	if g.prefix == "" || strings.ContainsAny(g.prefix, "{}") {
		return usagef("-prefix %q: must be non-empty, without '{' or '}'", g.prefix)
	}
	return nil
}

// partitions returns R, the number of -redis URLs. Call validate first.
func (g *globals) partitions() int { return strings.Count(g.redis, ",") + 1 }

// dial connects to every partition and checks, without recording
// anything, that the layout the servers recorded is the flags' one.
func (e *env) dial(ctx context.Context) (*queue.Queue, error) {
	urls, err := e.urls()
	if err != nil {
		return nil, err
	}
	q, err := queue.Dial(ctx, urls, queue.Config{Prefix: e.prefix, Queues: e.queues})
	if err != nil {
		return nil, err
	}
	if err := q.CheckLayout(ctx); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

// analyserFlag registers -a, the analyser a command works on.
func analyserFlag(fs *flag.FlagSet) *int {
	return fs.Int("a", -1, "the analyser `N` (0 <= N < R*Q; see qugo route)")
}

// checkAnalyser checks -a against R*Q, without contacting Redis.
func (g *globals) checkAnalyser(a int) error {
	r := g.partitions()
	n := r * g.queues
	switch {
	case a == -1:
		return usagef("-a is required")
	case a < 0 || a >= n:
		return usagef("-a %d: analysers are 0 to %d (%d servers x %d queues)", a, n-1, r, g.queues)
	}
	return nil
}
