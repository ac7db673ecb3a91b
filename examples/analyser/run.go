package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/qugo/queue"
	"github.com/qugo/queue/prom"
)

// deadSyncEvery is how often the dead-letter stores are mirrored into
// failed_jobs besides when a pool reports a death.
const deadSyncEvery = time.Minute

// run serves cfg.IDs until ctx ends, then stops gracefully: the pools hand
// back unstarted tasks and finish running ones, the last rows are
// committed and acknowledged, and everything started is joined. onMetrics,
// when set, is told the address /metrics listens on.
func run(ctx context.Context, cfg config, log *slog.Logger, onMetrics func(net.Addr)) error {
	db, err := openDB(ctx, cfg)
	if err != nil {
		return err
	}
	defer db.Close()
	if err := migrate(ctx, db); err != nil {
		return err
	}
	q, err := queue.Dial(ctx, cfg.Redis, queue.Config{Prefix: cfg.Prefix, Queues: cfg.Queues})
	if err != nil && cfg.RedisFrom != "" {
		return fmt.Errorf("%s: %w", cfg.RedisFrom, err) // Dial's errors name a URL by its index only
	}
	if err != nil {
		return err
	}
	defer q.Close()
	if err := checkIDs(cfg.IDs, q.Analysers()/cfg.Queues, cfg.Queues); err != nil {
		return err // parseFlags checked them; a config made otherwise may not be
	}
	// A wrong -queues or -redis fails here, before anything says started.
	if err := q.CheckLayout(ctx); err != nil {
		return layoutAdvice(err, cfg.Redis)
	}

	owner, ids := ownerName(), cfg.IDs
	if cfg.Group != "" {
		// A member may be given any analyser, and holds its leases under
		// its member name.
		ids = make(idList, q.Analysers())
		for a := range ids {
			ids[a] = a
		}
		if cfg.Member != "" {
			owner = cfg.Member
		}
	}
	collector := prom.NewCollector(q, prom.Options{Logger: log, Owner: owner})
	own := newMetrics(ids)
	if cfg.Metrics != "" {
		stop, err := serveMetrics(cfg.Metrics, log, onMetrics, append(own.collectors(), collector)...)
		if err != nil {
			return err
		}
		defer stop()
	}

	rows := newBatcher(batcherConfig{
		Max: cfg.Batch, Linger: cfg.Linger, Flushers: cfg.Flushers, Split: isServerError,
	}, timeInsert(own, func(ctx context.Context, rows []taskRow) error {
		return insertTasks(ctx, db, rows)
	}))
	var bg sync.WaitGroup // the batcher and the mirror outlive the pools
	bg.Go(rows.Run)
	defer bg.Wait()
	defer rows.Close()

	mirror := newDeadMirror(q, db, log, ids, deadSyncEvery)
	mirrorCtx, stopMirror := context.WithCancel(context.WithoutCancel(ctx))
	bg.Go(func() { mirror.Run(mirrorCtx) })
	defer stopMirror()

	hooks := poolHooks{owner, collector, own}
	if cfg.Group != "" {
		return runGroup(ctx, q, cfg, log, hooks, mirror, rows)
	}
	return runPools(ctx, q, cfg, log, hooks, mirror, rows)
}

// poolHooks are what every pool of the process shares: the lease owner
// name and the metrics.
type poolHooks struct {
	owner     string
	collector *prom.Collector
	metrics   *metrics
}

// ownerName is the name this process's pools hold their leases under,
// "host:pid" as the queue's default, set here so that the collector knows
// which leases are this process's.
func ownerName() string {
	host, _ := os.Hostname()
	return host + ":" + strconv.Itoa(os.Getpid())
}

// layoutAdvice turns a layout mismatch into what the servers have
// recorded and which flags to change; other errors pass unchanged. The
// library's error stays its cause (errors.Is finds
// queue.ErrLayoutMismatch) but not its text, whose advice names
// queue.Config fields that have flags here.
func layoutAdvice(err error, urls []string) error {
	le, ok := errors.AsType[*queue.LayoutError](err)
	if !ok {
		return err
	}
	var r, q, i int
	server := fmt.Sprintf("partition %d", le.Partition)
	if le.Partition >= 0 && le.Partition < len(urls) {
		server = queue.RedactURL(urls[le.Partition])
	}
	server += fmt.Sprintf(" under -prefix %q", le.Prefix)
	if _, scanErr := fmt.Sscanf(le.Got, "partitions=%d queues=%d index=%d", &r, &q, &i); scanErr != nil {
		return &layoutRefusal{err, fmt.Sprintf("layout mismatch: %s has recorded %s, not a layout this program reads: "+
			"give another -prefix, or delete the record if nothing uses it", server, le.Got)}
	}
	return &layoutRefusal{err, fmt.Sprintf("layout mismatch: %s has recorded %s x %s with itself at place %d: "+
		"start with -queues %d and %s, this one at place %d (or, to start afresh, another -prefix)",
		server, plural(r, "Redis server"), plural(q, "queue"), i+1, q, plural(r, "-redis URL"), i+1)}
}

// layoutRefusal is a layout mismatch told in this program's flags.
type layoutRefusal struct {
	err error // the library's, a *queue.LayoutError or wrapping one
	msg string
}

func (e *layoutRefusal) Error() string { return e.msg }

func (e *layoutRefusal) Unwrap() error { return e.err }

// runPools runs one AnalysePool per analyser id and joins them. A pool
// that fails (a layout mismatch) stops the others.
func runPools(ctx context.Context, q *queue.Queue, cfg config, log *slog.Logger,
	hooks poolHooks, mirror *deadMirror, rows *batcher[taskRow]) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	counters := make([]*queue.Counters, len(cfg.IDs))
	errs := make([]error, len(cfg.IDs))
	var wg sync.WaitGroup
	for i, a := range cfg.IDs {
		counters[i] = &queue.Counters{}
		pc := queue.PoolConfig{
			MinWorkers:  cfg.Workers.Min,
			MaxWorkers:  cfg.Workers.Max,
			MaxAttempts: cfg.Attempts,
			TaskTimeout: cfg.TaskTimeout,
			Counters:    counters[i],
			OnDone:      hooks.collector.OnDone(a),
			OnError:     poolErrors(a, log, mirror, hooks.metrics),
			Logger:      log,
			Owner:       hooks.owner,
		}
		wg.Go(func() {
			err := q.AnalysePool(ctx, a, pc, func(ctx context.Context, t queue.Task) error {
				// Returns once the row is committed: only then is the task acknowledged.
				return rows.Add(ctx, newTaskRow(t, a))
			})
			if err != nil {
				errs[i] = fmt.Errorf("analyser %d: %w", a, err)
				cancel()
			}
		})
	}
	log.Info("analyser started", "ids", cfg.IDs.String(), "workers", cfg.Workers.String(), "redis", len(cfg.Redis), "queues", cfg.Queues)
	wg.Go(func() { logProgress(ctx, cfg, log, counters) })
	wg.Wait()
	logCounts(cfg, log, counters, make([]int64, len(counters)))
	err := errors.Join(errs...)
	if err == nil {
		log.Info("analyser stopped")
	}
	return err
}

// poolErrors returns analyser a's OnError: it counts the error; retries
// are logged as warnings, deaths also mark the dead-letter store for the
// mirror. Other errors (Redis's) are logged once, then again only when
// they change or every repeatEvery with how many came meanwhile: a pool
// retries a failing call every few hundred milliseconds, and the library
// itself logs when Redis goes and comes back.
func poolErrors(a int, log *slog.Logger, mirror *deadMirror, m *metrics) func(error) {
	var (
		mu       sync.Mutex
		last     string
		lastAt   time.Time
		repeated int
	)
	return func(err error) {
		te := m.poolError(a, err)
		switch {
		case te != nil && te.Dead:
			log.Error("task dead-lettered", "analyser", a, "task", te.ID, "order", te.OrderID, "attempt", te.Attempt, "err", te.Err)
			mirror.Notify(a)
		case te != nil:
			log.Warn("task failed, will retry", "analyser", a, "task", te.ID, "order", te.OrderID, "attempt", te.Attempt, "err", te.Err)
		default:
			mu.Lock()
			defer mu.Unlock()
			now := time.Now()
			if msg := err.Error(); msg != last || now.Sub(lastAt) >= repeatEvery {
				log.Error("queue error", "analyser", label(a), "err", err, "repeated", repeated)
				last, lastAt, repeated = msg, now, 0
				return
			}
			repeated++
		}
	}
}

// repeatEvery is how often poolErrors logs an error that keeps coming.
const repeatEvery = 10 * time.Second

// logProgress logs each analyser's per-worker counts every cfg.LogEvery
// while they grow, until ctx ends.
func logProgress(ctx context.Context, cfg config, log *slog.Logger, counters []*queue.Counters) {
	tick := time.NewTicker(cfg.LogEvery)
	defer tick.Stop()
	logged := make([]int64, len(counters))
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			logCounts(cfg, log, counters, logged)
		}
	}
}

// logCounts logs per-worker processed and failed counts of every analyser
// whose total differs from logged, and updates logged. A standby, which
// processes nothing, logs nothing.
func logCounts(cfg config, log *slog.Logger, counters []*queue.Counters, logged []int64) {
	for i, c := range counters {
		processed := c.Processed()
		var total int64
		for _, n := range processed {
			total += n
		}
		if total == logged[i] {
			continue
		}
		logged[i] = total
		log.Info("processed", "analyser", cfg.IDs[i], "total", total, "per_worker", processed, "failed_per_worker", c.Failed())
	}
}

// openDB connects to Postgres, with enough connections for the flushers
// and the failed-jobs mirror.
func openDB(ctx context.Context, cfg config) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(cfg.PG)
	if err != nil {
		return nil, fmt.Errorf("postgres url: %w", err)
	}
	pc.MaxConns = max(pc.MaxConns, int32(cfg.Flushers+2))
	db, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", oneLine{err})
	}
	if err := db.Ping(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("postgres: %w", oneLine{err})
	}
	return db, nil
}

// oneLine is an error whose message, of several lines, is shown on one,
// so that a log line holds it readably: pgx puts each address it tried
// on a line of its own ("failed to connect to ...:\n\t127.0.0.1:5432
// ...\n\t[::1]:5432 ..."), which a text log would show with the escapes.
type oneLine struct{ err error }

func (e oneLine) Error() string {
	var parts []string
	for _, l := range strings.Split(e.err.Error(), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	if len(parts) > 1 && strings.HasSuffix(parts[0], ":") {
		return parts[0] + " " + strings.Join(parts[1:], "; ")
	}
	return strings.Join(parts, "; ")
}

func (e oneLine) Unwrap() error { return e.err }

// serveMetrics serves /metrics of cs on addr and returns a func that
// stops it.
func serveMetrics(addr string, log *slog.Logger, onListen func(net.Addr), cs ...prometheus.Collector) (stop func(), err error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(cs...)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	ln, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		// Most likely another analyser on this machine, the one a
		// standby (same -id) backs up: metrics are per process.
		return nil, fmt.Errorf("metrics: %w: give this process another -metrics address (or -metrics \"\" for none)", err)
	}
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	if onListen != nil {
		onListen(ln.Addr())
	}
	log.Info("serving metrics", "addr", "http://"+ln.Addr().String()+"/metrics")
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	}, nil
}
