// Command analyser consumes qugo queues and writes every task to Postgres.
//
// It runs one analyser pool per -id, each owning one queue (a second
// process started with the same id, and another -metrics address, waits
// as a hot standby), or joins the consumer group -group, whose members
// share all the queues, and writes each task as a row of the tasks table.
// Rows are batched, yet a task is acknowledged only once its row is
// committed, and rows of one OrderID are written in enqueue order. The
// write is idempotent (task_id is the primary key), so at-least-once
// delivery gives exactly one row per task. Dead-lettered tasks are
// recorded in failed_jobs. /metrics serves the queue's Prometheus
// metrics. SIGINT or SIGTERM stops it gracefully.
//
//	analyser -id 0-3 -worker 16 -redis redis://127.0.0.1:6379 -pg postgres://localhost/app
//	analyser -group billing -member billing-1 -worker 3-4 -pg postgres://localhost/app
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/qugo/queue"
)

// defaultRedis is the server without -redis and $REDIS_URL.
const defaultRedis = "redis://127.0.0.1:6379"

// config is what the flags say.
type config struct {
	IDs         idList
	Group       string // join this consumer group instead of serving IDs
	Member      string // the member name in Group; default host:pid
	Weight      int
	Workers     workerRange
	Redis       []string
	RedisFrom   string // where Redis came from, for errors: "-redis", or $REDIS_URL without it
	Queues      int
	Prefix      string
	PG          string
	Batch       int
	Linger      time.Duration
	Flushers    int
	Attempts    int
	TaskTimeout time.Duration
	Metrics     string
	LogEvery    time.Duration
}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "analyser: %v\nRun 'analyser -h' for its flags.\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(ctx, cfg, log, nil); err != nil {
		log.Error("analyser stopped", "err", err)
		os.Exit(1)
	}
}

// parseFlags reads the command line. It returns its errors, for the
// caller to print once, and prints the usage to out only when asked
// (-h).
func parseFlags(args []string, out io.Writer) (config, error) {
	var cfg config
	var redisURLs string
	fs := flag.NewFlagSet("analyser", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // the flag package would print each error, and the usage after it
	fs.Usage = func() {}
	fs.Var(&cfg.IDs, "id", "analyser `id` to run: N, a range A-B, or a comma list; may be repeated (this or -group)")
	fs.StringVar(&cfg.Group, "group", "", "join the consumer group `NAME`, whose members share all analysers (this or -id)")
	fs.StringVar(&cfg.Member, "member", "", "member `name` in -group; keep it across restarts to get the same queues back (default host:pid)")
	fs.IntVar(&cfg.Weight, "weight", 1, "this member's share of the analysers relative to the others' in -group")
	cfg.Workers = workerRange{8, 8}
	fs.Var(&cfg.Workers, "worker", "worker goroutines per analyser: `W`, or a range MIN-MAX that grows under a backlog and shrinks when idle")
	// The defaults from the environment are not flag defaults, which -h
	// would print with their passwords.
	fs.StringVar(&redisURLs, "redis", "", "comma-separated Redis `URLs`, in partition order (redis://, rediss://, redis+cluster://, redis+sentinel://) (default $REDIS_URL, else "+defaultRedis+")")
	fs.IntVar(&cfg.Queues, "queues", 1, "queues per Redis server")
	fs.StringVar(&cfg.Prefix, "prefix", "qugo", "Redis key prefix")
	fs.StringVar(&cfg.PG, "pg", "", "Postgres `URL` (default $DATABASE_URL)")
	fs.IntVar(&cfg.Batch, "batch", 500, "most rows per insert")
	fs.DurationVar(&cfg.Linger, "linger", 0, "how long a partly full batch waits for more rows; 0 flushes as soon as an insert slot is free")
	fs.IntVar(&cfg.Flushers, "flushers", 4, "inserts in flight at once")
	fs.IntVar(&cfg.Attempts, "attempts", 10, "deliveries of a task before it is dead-lettered")
	fs.DurationVar(&cfg.TaskTimeout, "task-timeout", time.Minute, "time limit of one delivery")
	fs.StringVar(&cfg.Metrics, "metrics", "127.0.0.1:9464", "listen `address` for /metrics; empty disables")
	fs.DurationVar(&cfg.LogEvery, "log-every", 10*time.Second, "how often per-worker counts are logged")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(out, "Usage of analyser:")
			fs.SetOutput(out)
			fs.PrintDefaults()
		}
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	cfg.RedisFrom = "-redis"
	if !set["redis"] {
		redisURLs = defaultRedis
		cfg.RedisFrom = defaultRedis + ", the default (no -redis or $REDIS_URL given)"
		if v := os.Getenv("REDIS_URL"); v != "" { // an empty one counts as unset
			redisURLs, cfg.RedisFrom = v, "$REDIS_URL (no -redis given)"
		}
	}
	if !set["pg"] {
		cfg.PG = os.Getenv("DATABASE_URL")
	}
	for _, u := range queue.SplitURLs(redisURLs) {
		if u != "" {
			cfg.Redis = append(cfg.Redis, u)
		}
	}
	switch {
	case len(cfg.IDs) == 0 && cfg.Group == "":
		return cfg, errors.New("-id or -group is required")
	case len(cfg.IDs) > 0 && cfg.Group != "":
		return cfg, errors.New("-id and -group exclude each other: a group's members share all analysers")
	case cfg.Group == "" && (cfg.Member != "" || cfg.Weight != 1):
		return cfg, errors.New("-member and -weight need -group")
	case cfg.Weight < 1 || cfg.Weight > 1000:
		return cfg, errors.New("-weight must be in [1, 1000]")
	case len(cfg.Redis) == 0:
		return cfg, fmt.Errorf("%s: no URL given", cfg.RedisFrom)
	case cfg.PG == "":
		return cfg, errors.New("-pg (or $DATABASE_URL) is required")
	case cfg.Workers.Min < 1 || cfg.Queues < 1 || cfg.Flushers < 1 || cfg.Attempts < 1:
		return cfg, errors.New("-worker, -queues, -flushers and -attempts must be at least 1")
	case cfg.Batch < 1 || cfg.Batch > 10000:
		return cfg, errors.New("-batch must be in [1, 10000]")
	case cfg.Linger < 0 || cfg.LogEvery <= 0 || cfg.TaskTimeout <= 0:
		return cfg, errors.New("-linger must not be negative, -log-every and -task-timeout must be positive")
	}
	for i, u := range cfg.Redis {
		if err := queue.CheckURL(u); err != nil { // it never quotes the URL, which may hold a password
			return cfg, fmt.Errorf("%s: URL %d of %d: %w", cfg.RedisFrom, i+1, len(cfg.Redis), err)
		}
	}
	if err := checkIDs(cfg.IDs, len(cfg.Redis), cfg.Queues); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// checkIDs refuses analyser ids beyond the r*q analysers of r servers
// with q queues each, naming the valid range.
func checkIDs(ids idList, r, q int) error {
	if len(ids) == 0 || ids[len(ids)-1] < r*q {
		return nil
	}
	valid := fmt.Sprintf("0..%d", r*q-1)
	if r*q == 1 {
		valid = "0"
	}
	return fmt.Errorf("-id %d: out of range: -id must be %s (%s x %s; raise -queues, or give more -redis URLs, as every process of this queue does)",
		ids[len(ids)-1], valid, plural(r, "Redis server"), plural(q, "queue"))
}

// plural says n of a thing in words: "1 queue", "2 queues".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// idList is the value of the repeatable -id flag: sorted, without
// duplicates.
type idList []int

func (l *idList) String() string {
	if l == nil {
		return ""
	}
	s := make([]string, len(*l))
	for i, id := range *l {
		s[i] = strconv.Itoa(id)
	}
	return strings.Join(s, ",")
}

// maxIDs bounds the analysers one process runs.
const maxIDs = 4096

// Set adds "N", "A-B" or a comma list of them.
func (l *idList) Set(v string) error {
	for _, part := range strings.Split(v, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return fmt.Errorf("bad analyser id %q", part)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return fmt.Errorf("bad analyser range %q", part)
			}
		}
		if b-a >= maxIDs || len(*l)+b-a >= maxIDs {
			return fmt.Errorf("more than %d analyser ids", maxIDs)
		}
		for id := a; id <= b; id++ {
			*l = append(*l, id)
		}
	}
	slices.Sort(*l)
	*l = slices.Compact(*l)
	return nil
}

// workerRange is the value of -worker: "W", or "MIN-MAX".
type workerRange struct{ Min, Max int }

func (w *workerRange) String() string {
	if w == nil {
		return ""
	}
	if w.Min == w.Max {
		return strconv.Itoa(w.Min)
	}
	return strconv.Itoa(w.Min) + "-" + strconv.Itoa(w.Max)
}

func (w *workerRange) Set(v string) error {
	lo, hi, isRange := strings.Cut(v, "-")
	a, err := strconv.Atoi(lo)
	b := a
	if err == nil && isRange {
		b, err = strconv.Atoi(hi)
	}
	if err != nil || a < 1 || b < a {
		return fmt.Errorf("bad worker count %q: want W or MIN-MAX, at least 1", v)
	}
	w.Min, w.Max = a, b
	return nil
}
