package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
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
	if err != nil {
		return err
	}
	defer q.Close()
	if last := cfg.IDs[len(cfg.IDs)-1]; last >= q.Analysers() {
		return fmt.Errorf("analyser id %d: there are %d analysers (%d redis servers x %d queues)",
			last, q.Analysers(), len(cfg.Redis), cfg.Queues)
	}

	metrics := prom.NewCollector(q, prom.Options{Logger: log})
	if cfg.Metrics != "" {
		stop, err := serveMetrics(cfg.Metrics, metrics, log, onMetrics)
		if err != nil {
			return err
		}
		defer stop()
	}

	rows := newBatcher(batcherConfig{
		Max: cfg.Batch, Linger: cfg.Linger, Flushers: cfg.Flushers, Split: isServerError,
	}, func(ctx context.Context, rows []taskRow) error {
		return insertTasks(ctx, db, rows)
	})
	var bg sync.WaitGroup // the batcher and the mirror outlive the pools
	bg.Go(rows.Run)
	defer bg.Wait()
	defer rows.Close()

	mirror := newDeadMirror(q, db, log, cfg.IDs, deadSyncEvery)
	mirrorCtx, stopMirror := context.WithCancel(context.WithoutCancel(ctx))
	bg.Go(func() { mirror.Run(mirrorCtx) })
	defer stopMirror()

	return runPools(ctx, q, cfg, log, metrics, mirror, rows)
}

// runPools runs one AnalysePool per analyser id and joins them. A pool
// that fails (a layout mismatch) stops the others.
func runPools(ctx context.Context, q *queue.Queue, cfg config, log *slog.Logger,
	metrics *prom.Collector, mirror *deadMirror, rows *batcher[taskRow]) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	counters := make([]*queue.Counters, len(cfg.IDs))
	errs := make([]error, len(cfg.IDs))
	var wg sync.WaitGroup
	for i, a := range cfg.IDs {
		counters[i] = &queue.Counters{}
		pc := queue.PoolConfig{
			Workers:     cfg.Workers,
			MaxAttempts: cfg.Attempts,
			TaskTimeout: cfg.TaskTimeout,
			Counters:    counters[i],
			OnDone:      metrics.OnDone(a),
			OnError:     poolErrors(a, log, mirror),
			Logger:      log,
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
	log.Info("analyser started", "ids", cfg.IDs.String(), "workers", cfg.Workers, "redis", len(cfg.Redis), "queues", cfg.Queues)
	wg.Go(func() { logProgress(ctx, cfg, log, counters) })
	wg.Wait()
	logCounts(cfg, log, counters, nil)
	log.Info("analyser stopped")
	return errors.Join(errs...)
}

// poolErrors returns analyser a's OnError: retries are logged as
// warnings, deaths also mark the dead-letter store for the mirror.
func poolErrors(a int, log *slog.Logger, mirror *deadMirror) func(error) {
	return func(err error) {
		var te *queue.TaskError
		switch {
		case errors.As(err, &te) && te.Dead:
			log.Error("task dead-lettered", "analyser", a, "task", te.ID, "order", te.OrderID, "attempt", te.Attempt, "err", te.Err)
			mirror.Notify(a)
		case te != nil:
			log.Warn("task failed, will retry", "analyser", a, "task", te.ID, "order", te.OrderID, "attempt", te.Attempt, "err", te.Err)
		default:
			log.Error("queue error", "analyser", a, "err", err)
		}
	}
}

// logProgress logs each analyser's per-worker counts every cfg.LogEvery
// while they change, until ctx ends.
func logProgress(ctx context.Context, cfg config, log *slog.Logger, counters []*queue.Counters) {
	tick := time.NewTicker(cfg.LogEvery)
	defer tick.Stop()
	last := make([][]int64, len(counters))
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			logCounts(cfg, log, counters, last)
		}
	}
}

// logCounts logs per-worker processed and failed counts of every analyser
// whose processed counts differ from last (all when last is nil), and
// updates last.
func logCounts(cfg config, log *slog.Logger, counters []*queue.Counters, last [][]int64) {
	for i, c := range counters {
		processed := c.Processed()
		if last != nil {
			if slices.Equal(processed, last[i]) {
				continue
			}
			last[i] = processed
		}
		var total int64
		for _, n := range processed {
			total += n
		}
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
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if err := db.Ping(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("postgres: %w", err)
	}
	return db, nil
}

// serveMetrics serves /metrics on addr and returns a func that stops it.
func serveMetrics(addr string, c *prom.Collector, log *slog.Logger, onListen func(net.Addr)) (stop func(), err error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	ln, err := net.Listen("tcp", addr)
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
