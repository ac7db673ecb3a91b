// Command ingest is an HTTP front end for a qugo queue: it accepts tasks
// as JSON, enqueues them, and reports their status from Redis and from the
// Postgres tables that the analyser example writes.
//
//	POST /v1/tasks                  one task or an array of them -> {"ids": [...]}
//	GET  /v1/tasks/{id}?order_id=N  -> {"id", "order_id", "status", "attempts", "last_error", "due"}
//	GET  /healthz                   Redis (and Postgres) reachable -> {"status": "ok"}
//
// See README.md for the flags and examples.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/qugo/queue"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(ctx, os.Args[1:], os.Stderr, log); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		log.Error("ingest", "err", err)
		os.Exit(1)
	}
}

// options are the command-line flags.
type options struct {
	listen    string
	redis     []string
	redisFrom string // where redis came from, for errors: "-redis", or $REDIS_URL without it
	queues    int
	prefix    string
	pg        string
	pgFrom    string // where pg came from, for errors: "-pg", or $DATABASE_URL without it
	maxBody   int64
	dedup     time.Duration
	statusTTL time.Duration
	retention time.Duration
	shutdown  time.Duration
}

func parseFlags(args []string, out io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("ingest", flag.ContinueOnError)
	fs.SetOutput(out)
	// $REDIS_URL is not the flag's default, which -h would print with its
	// password.
	redisURLs := fs.String("redis", "", "comma-separated Redis URLs, in partition order (redis://, rediss://, redis+cluster://, redis+sentinel://) (default $REDIS_URL, else "+defaultRedis+")")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8080", "address to serve HTTP on")
	fs.IntVar(&o.queues, "queues", 1, "queues per Redis server (must match the analysers)")
	fs.StringVar(&o.prefix, "prefix", "qugo", "Redis key prefix (must match the analysers)")
	fs.StringVar(&o.pg, "pg", "", "Postgres URL of the analysers' tables (default $DATABASE_URL); without either, or with -pg '', status is read from Redis only and done reads as queued")
	fs.Int64Var(&o.maxBody, "max-body", 1<<20, "largest request body in bytes; larger ones get 413")
	fs.DurationVar(&o.dedup, "dedup", 10*time.Minute, "idempotency window for order_id+idempotency_key; 0 disables it")
	fs.DurationVar(&o.statusTTL, "status-ttl", 24*time.Hour, "how long GET remembers the ids it issued; a task still queued after it reads as unknown (404)")
	fs.DurationVar(&o.retention, "retention", 0, "the analysers' queue.Config.Retention, for GET to read done and cancelled tasks from Redis; 0: the retention the analysers recorded, if any")
	fs.DurationVar(&o.shutdown, "shutdown-timeout", 10*time.Second, "how long to let requests in flight finish on SIGINT/SIGTERM")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	o.redisFrom = "-redis"
	if !set["redis"] {
		*redisURLs = defaultRedis
		o.redisFrom = defaultRedis + ", the default (no -redis or $REDIS_URL given)"
		if v := os.Getenv("REDIS_URL"); v != "" { // an empty one counts as unset
			*redisURLs, o.redisFrom = v, "$REDIS_URL (no -redis given)"
		}
	}
	o.pgFrom = "-pg"
	if !set["pg"] { // as the analyser reads it; -pg '' goes without
		o.pg, o.pgFrom = os.Getenv("DATABASE_URL"), "$DATABASE_URL (no -pg given)"
	}
	for _, u := range queue.SplitURLs(*redisURLs) {
		if u != "" {
			o.redis = append(o.redis, u)
		}
	}
	switch {
	case len(o.redis) == 0:
		return o, fmt.Errorf("%s: no URL given", o.redisFrom)
	case o.maxBody <= 0:
		return o, errors.New("-max-body must be positive")
	case o.dedup < 0:
		return o, errors.New("-dedup must not be negative")
	case o.statusTTL <= 0:
		return o, errors.New("-status-ttl must be positive")
	case o.retention < 0:
		return o, errors.New("-retention must not be negative")
	}
	return o, nil
}

// defaultRedis is the server without -redis and $REDIS_URL.
const defaultRedis = "redis://127.0.0.1:6379"

// app is a configured server and what it holds open.
type app struct {
	srv   *server
	close func()
}

// newApp dials Redis (and Postgres) and builds the server.
func newApp(ctx context.Context, o options, log *slog.Logger) (*app, error) {
	// The queue's payload limit follows -max-body, so every body that fits
	// the limit fits the queue too.
	maxPayload := int(min(o.maxBody, 256<<20))
	q, err := queue.Dial(ctx, o.redis, queue.Config{Prefix: o.prefix, Queues: o.queues, MaxPayload: maxPayload, Retention: o.retention})
	if err != nil {
		from := o.redisFrom
		if from == "" {
			from = "-redis"
		}
		return nil, fmt.Errorf("%s: %w", from, err) // Dial's errors name a URL by its index only
	}
	pools := make([]*redis.Pool, len(o.redis))
	for i := range pools {
		pools[i] = q.Pool(i)
	}
	closePools := func() { q.Close() }
	rec := &issued{pools: pools, route: q.Route, prefix: o.prefix, ttl: o.statusTTL, now: time.Now}
	a := &app{srv: &server{q: q, issued: rec, metrics: newMetrics(), maxBody: o.maxBody, dedup: o.dedup, log: log}}
	var pg *pgxpool.Pool
	if o.pg != "" {
		// Errors say where the URL came from: $DATABASE_URL may name a
		// database its user did not think of here.
		from := o.pgFrom
		if from == "" {
			from = "-pg"
		}
		if pg, err = pgxpool.New(ctx, o.pg); err != nil {
			closePools()
			return nil, fmt.Errorf("%s: %w", from, err)
		}
		if err := pg.Ping(ctx); err != nil {
			closePools()
			pg.Close()
			return nil, fmt.Errorf("%s: postgres: %w", from, err)
		}
		a.srv.store = &pgStore{pool: pg}
	}
	a.srv.health = func(ctx context.Context) error {
		if err := q.Ping(ctx); err != nil {
			return err
		}
		if pg != nil {
			if err := pg.Ping(ctx); err != nil {
				return fmt.Errorf("postgres: %w", err)
			}
		}
		return nil
	}
	err = a.srv.health(ctx)
	if err == nil {
		// Refuse a -redis order or -queues that disagrees with what the
		// servers have recorded, before serving wrong statuses.
		err = q.CheckLayout(ctx)
	}
	if err != nil {
		closePools()
		if pg != nil {
			pg.Close()
		}
		return nil, layoutAdvice(err, o.redis)
	}
	a.close = func() {
		closePools()
		if pg != nil {
			pg.Close()
		}
	}
	return a, nil
}

// layoutAdvice turns a layout mismatch into what the servers have
// recorded and which flag to change; other errors pass unchanged. The
// library's error stays its cause (errors.Is finds
// queue.ErrLayoutMismatch) but not its text, whose advice names
// queue.Config fields that have flags here.
func layoutAdvice(err error, urls []string) error {
	le, ok := errors.AsType[*queue.LayoutError](err)
	if !ok {
		return err
	}
	var r, q, i int
	server := fmt.Sprintf("the -redis URL at place %d under -prefix %q", le.Partition+1, le.Prefix) // not the URL: it may hold a password
	if _, scanErr := fmt.Sscanf(le.Got, "partitions=%d queues=%d index=%d", &r, &q, &i); scanErr != nil {
		return &layoutRefusal{err, fmt.Sprintf("layout mismatch: %s has recorded %s, not a layout this program reads: "+
			"give another -prefix (the analysers' too), or delete the record if nothing uses it", server, le.Got)}
	}
	return &layoutRefusal{err, fmt.Sprintf("layout mismatch: %s has recorded %s x %s with itself at place %d: "+
		"start with -queues %d and %s, this one at place %d, as the analysers do (or, to start afresh, another -prefix, the analysers' too)",
		server, plural(r, "Redis server"), plural(q, "queue"), i+1, q, plural(r, "-redis URL"), i+1)}
}

// layoutRefusal is a layout mismatch told in this program's flags.
type layoutRefusal struct {
	err error // the library's, a *queue.LayoutError or wrapping one
	msg string
}

func (e *layoutRefusal) Error() string { return e.msg }

func (e *layoutRefusal) Unwrap() error { return e.err }

// plural says n of a thing in words: "1 queue", "2 queues".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// run serves until ctx ends, then lets requests in flight finish.
func run(ctx context.Context, args []string, out io.Writer, log *slog.Logger) error {
	o, err := parseFlags(args, out)
	if err != nil {
		return err
	}
	a, err := newApp(ctx, o, log)
	if err != nil {
		return err
	}
	defer a.close()
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	hs := &http.Server{
		Handler:           a.srv.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		WriteTimeout:      time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	log.Info("ingest listening", "addr", ln.Addr().String(), "partitions", len(o.redis), "queues", o.queues,
		"prefix", o.prefix, "postgres", o.pg != "", "dedup", o.dedup, "max_body", o.maxBody, "retention", o.retention)
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("ingest shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdown)
	defer cancel()
	err = hs.Shutdown(sctx)
	<-errc
	return err
}
