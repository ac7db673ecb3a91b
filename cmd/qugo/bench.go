package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/qugo/queue"
)

// benchPrefix is the key prefix bench uses unless -prefix is given, so
// that it never drains a live queue by mistake; the layout is part of it,
// so that benches of other layouts do not trip over each other's.
func benchPrefix(r, q int) string { return fmt.Sprintf("qugo-bench-%dx%d", r, q) }

// A bench payload is benchMagic, then the task count of its OrderID and
// the task's 1-based place among them (uint32 each, big-endian), then the
// enqueue time in Unix nanoseconds (int64), then padding up to -size.
const (
	benchMagic  = "qgb1"
	benchHeader = len(benchMagic) + 4 + 4 + 8
)

// benchOptions are the flags of bench.
type benchOptions struct {
	n, orders, workers, producers, batch, size int
	rate                                       float64 // tasks/s to add at; 0: as fast as possible
	fill, verify, partial, asJSON              bool
	timeout                                    time.Duration
}

// benchDoc is the output of bench (with -json, one line).
type benchDoc struct {
	Mode       string `json:"mode"` // bench, fill or verify
	Prefix     string `json:"prefix"`
	Partitions int    `json:"partitions"`
	Queues     int    `json:"queues"`
	Tasks      int    `json:"tasks,omitempty"`   // added (bench, fill)
	Orders     int    `json:"orders"`            // OrderIDs the tasks were spread over (seen, for verify)
	Workers    int    `json:"workers,omitempty"` // per analyser (bench, verify)
	// AddSeconds is the time the adds took; AddPerSecond the tasks added
	// per second over it.
	AddSeconds   float64 `json:"add_seconds,omitempty"`
	AddPerSecond float64 `json:"add_per_second,omitempty"`
	// DrainSeconds runs from the first add (verify: from the start) to the
	// last task handled; DrainPerSecond is the tasks handled per second
	// over it.
	DrainSeconds   float64 `json:"drain_seconds,omitempty"`
	DrainPerSecond float64 `json:"drain_per_second,omitempty"`
	// LatencyMS is the time from a task's AddTasks call to the start of its
	// handling, in milliseconds (bench only).
	LatencyMS *latencyDoc `json:"latency_ms,omitempty"`
	Check     *orderCheck `json:"check,omitempty"` // bench and verify
	// Stopped says why the drain stopped before it was complete:
	// "-timeout D ran out", "interrupted" or benchForeignStop; "" when it
	// was not.
	Stopped string `json:"stopped,omitempty"`
}

// latencyDoc holds latency percentiles in milliseconds.
type latencyDoc struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
}

// orderCheck is what the drain saw.
type orderCheck struct {
	OK         bool  `json:"ok"`
	Handled    int64 `json:"handled"`      // deliveries handled
	Duplicates int64 `json:"duplicates"`   // deliveries of a task handled before
	OutOfOrder int64 `json:"out_of_order"` // tasks started before an earlier task of their OrderID
	Missing    int64 `json:"missing"`      // tasks never handled
	Foreign    int64 `json:"foreign"`      // tasks that qugo bench did not add
}

func benchFlags(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	var o benchOptions
	fs.IntVar(&o.n, "n", 100000, "`N` tasks to add")
	fs.IntVar(&o.orders, "orders", 1000, "`K` OrderIDs to spread the tasks over")
	fs.IntVar(&o.workers, "workers", 16, fmt.Sprintf("`W` worker goroutines per analyser (at most %d); one pool per analyser, R*Q pools", maxBenchWorkers))
	fs.IntVar(&o.producers, "producers", 4, "`P` goroutines adding tasks at once")
	fs.IntVar(&o.batch, "batch", 100, "`B` tasks per AddTasks call; with -rate, at most 10ms of the rate (at least 1)")
	fs.IntVar(&o.size, "size", 64, "`BYTES` of payload per task (at least 20)")
	fs.Float64Var(&o.rate, "rate", 0, "add `N` tasks per second over all producers, each batch when its first task is due, to see the latency at that load; 0 adds as fast as possible")
	fs.BoolVar(&o.fill, "fill", false, "only add the tasks, for another process (qugo bench -verify, your analysers) to drain")
	fs.BoolVar(&o.verify, "verify", false, "add nothing: drain the tasks there are and check their order and completeness; a task bench did not add stops it, and is left queued")
	fs.BoolVar(&o.partial, "partial", false, "with -verify: count each OrderID from the first task seen to the last, its earlier ones handled before (by a bench or verify stopped part way, by your analysers) and its later ones perhaps never added (by a bench or fill stopped part way); a loss of an OrderID's first or last remaining tasks goes unseen then")
	fs.BoolVar(&o.asJSON, "json", false, "print JSON instead of text")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up after `DURATION`")
	return func(ctx context.Context, e *env, args []string) error {
		if len(args) > 0 {
			return usagef("bench takes no arguments, got %q", args[0])
		}
		switch {
		case o.fill && o.verify:
			return usagef("-fill and -verify exclude each other")
		case o.partial && !o.verify:
			return usagef("-partial goes with -verify")
		case o.n < 1 || o.orders < 1 || o.workers < 1 || o.producers < 1 || o.batch < 1:
			return usagef("-n, -orders, -workers, -producers and -batch must be at least 1")
		case o.workers > maxBenchWorkers:
			return usagef("-workers %d: at most %d, the most queue.PoolConfig.Workers takes", o.workers, maxBenchWorkers)
		case o.size < benchHeader:
			return usagef("-size %d: must be at least %d", o.size, benchHeader)
		case o.timeout <= 0 || o.rate < 0:
			return usagef("-timeout must be positive and -rate not negative")
		}
		if !e.set["prefix"] {
			e.prefix = benchPrefix(e.partitions(), e.queues)
		}
		return e.bench(ctx, o)
	}
}

// maxBenchWorkers is the library's bound on PoolConfig.Workers: bench
// checks it before it adds anything, as a pool refused after the adds
// would leave every task queued. TestBenchWorkersBound ties the two.
const maxBenchWorkers = 4096

// benchForeignStop is the Stopped of a drain that met tasks bench did not
// add, and left them.
const benchForeignStop = "met tasks qugo bench did not add"

// bench runs one bench, fill or verify.
func (e *env) bench(ctx context.Context, o benchOptions) error {
	ctx, cancel := context.WithTimeoutCause(ctx, o.timeout, errBenchTimeout)
	defer cancel()
	urls, _ := e.urls()
	if _, fromEnv := redisEnv(); !e.set["redis"] && fromEnv == "" {
		// No server named: an embedded one, to try qugo with nothing
		// installed. Its figures are its own, not a Redis server's.
		mr, err := miniredis.Run()
		if err != nil {
			return err
		}
		defer mr.Close()
		urls = []string{"redis://" + mr.Addr()}
		fmt.Fprintln(e.stderr, "qugo: bench: no -redis, $QUEUE_REDIS or $REDIS_URL given: using an embedded miniredis; its figures say little about a Redis server's")
	}
	q, err := queue.Dial(ctx, urls, queue.Config{Prefix: e.prefix, Queues: e.queues, MaxPayload: max(o.size, 1<<20)})
	if err != nil {
		return benchErr(ctx, o, e.redisSource(explainDial(err, urls)))
	}
	defer q.Close()
	if err := q.CheckLayout(ctx); err != nil {
		return benchErr(ctx, o, err)
	}
	doc := benchDoc{Mode: "bench", Prefix: e.prefix, Partitions: e.partitions(), Queues: e.queues, Workers: o.workers}
	switch {
	case o.fill:
		doc.Mode, doc.Workers = "fill", 0 // no worker runs
	case o.verify:
		doc.Mode = "verify"
	}
	if o.verify {
		// A verify drains with pools, which record the layout and each
		// queue's state on servers that have none: on a prefix nothing
		// has used (a mistyped one), it would leave keys that the
		// producers and analysers of another layout are then refused by.
		// So it looks first, reading only, and stops there.
		used, err := e.prefixUsed(ctx, urls)
		if err != nil {
			return benchErr(ctx, o, err)
		}
		if !used {
			doc.Check = &orderCheck{}
			if err := e.printBench(doc, o.asJSON); err != nil {
				return err
			}
			return e.nothingToVerify()
		}
		if err := verifyOwn(ctx, q, e.prefix, o.partial); err != nil {
			return benchErr(ctx, o, err)
		}
	} else {
		if err := benchEmpty(ctx, q, !o.fill); err != nil {
			return benchErr(ctx, o, err)
		}
		doc.Tasks, doc.Orders = o.n, min(o.orders, o.n)
	}
	tr := newTracker(int64(o.n), !o.verify, o.partial)
	// The pools stop when ctx ends, by a plain cancel, as on SIGINT: a
	// deadline would cut their Redis calls in flight (a lease renewal,
	// the hand-back of unstarted tasks) instead of stopping them
	// gracefully, and leave tasks pending under a lease still held.
	poolCtx, stopPools := context.WithCancel(context.WithoutCancel(ctx))
	defer stopPools()
	defer context.AfterFunc(ctx, stopPools)()
	// The adds stop, too, when the drain meets a task bench did not add.
	addCtx, stopAdds := context.WithCancel(ctx)
	defer stopAdds()
	start := time.Now()
	var drained time.Duration
	var poolErr error
	var stopped string // why the drain stopped before it was complete
	drain := func() {
		poolErr = runPools(poolCtx, q, o, tr, e.stderr)
		drained = tr.lastAt().Sub(start)
		stopped = benchStopReason(ctx, o)
		if n, _ := tr.foreignLeft(); n > 0 {
			stopped = benchForeignStop
			stopAdds()
		}
	}
	var wg sync.WaitGroup
	if !o.fill {
		wg.Go(drain)
	}
	if !o.verify {
		added, addErr := addBenchTasks(addCtx, newBenchPlan(o), o.size, start, queueSend(q))
		took := time.Since(start)
		doc.AddSeconds, doc.AddPerSecond = took.Seconds(), float64(o.n)/took.Seconds()
		if addErr != nil {
			why := benchStopReason(ctx, o)
			cancel()
			wg.Wait()
			n, named := tr.foreignLeft()
			if n == 0 && why == "" {
				return addErr
			}
			if n > 0 {
				why = benchForeignStop
			}
			// What was handled and what is left were added, a batch whose
			// call was cut short (and so not counted) among them; the
			// counts, read once every producer and pool has stopped,
			// agree then.
			left, leftErr := benchLeftCount(q)
			added = min(addedAtLeast(added, tr.handledOnce(), left, leftErr), int64(o.n))
			if o.asJSON {
				doc.Tasks, doc.AddPerSecond = int(added), float64(added)/took.Seconds()
				if !o.fill {
					check := tr.check()
					check.OK = false
					doc.Check, doc.LatencyMS = &check, tr.latency()
					if drained > 0 {
						doc.DrainSeconds, doc.DrainPerSecond = drained.Seconds(), float64(check.Handled)/drained.Seconds()
					}
				}
				doc.Stopped = why
				if err := e.printBench(doc, true); err != nil {
					return err
				}
			}
			if n > 0 {
				return foreignError(n, named, e.prefix)
			}
			handled := ""
			if !o.fill {
				handled = fmt.Sprintf(" and %d handled", tr.check().Handled)
			}
			return fmt.Errorf("bench: %s after at least %d of %d tasks were added%s: %s%s",
				why, added, o.n, handled, benchTimeoutHint(why, " or a smaller -n"),
				benchLeftSay(left, leftErr, " before the next bench (or give another -prefix)"))
		}
	}
	wg.Wait()
	if o.fill {
		return e.printBench(doc, o.asJSON)
	}
	check := tr.check()
	if drained > 0 {
		doc.DrainSeconds, doc.DrainPerSecond = drained.Seconds(), float64(check.Handled)/drained.Seconds()
	}
	if o.verify {
		doc.Orders = tr.orderCount()
	} else {
		doc.LatencyMS = tr.latency()
	}
	doc.Check = &check
	if stopped != "" && (o.verify || !check.OK) {
		// A verify's check passes on the OrderIDs it saw, though the
		// queue holds more; a bench's misses the tasks not handled yet.
		// Either way the check is not done.
		doc.Stopped, check.OK = stopped, false
	}
	if err := e.printBench(doc, o.asJSON); err != nil {
		return err
	}
	switch {
	case stopped == benchForeignStop:
		n, named := tr.foreignLeft()
		return foreignError(n, named, e.prefix)
	case doc.Stopped != "":
		handled := fmt.Sprintf("%d of %d tasks", check.Handled, o.n)
		if o.verify {
			handled = fmt.Sprintf("%d tasks", check.Handled)
		}
		return fmt.Errorf("bench: %s before the drain was complete, after %s were handled: %s%s",
			stopped, handled, benchTimeoutHint(stopped, ""), benchLeft(q, ""))
	case poolErr != nil:
		return poolErr
	case check.Handled == 0 && o.verify:
		return e.nothingToVerify()
	case !check.OK:
		return errors.New("bench: order check failed")
	}
	return nil
}

// nothingToVerify is the error of a verify that found the queue empty.
func (e *env) nothingToVerify() error {
	return fmt.Errorf("bench: nothing to verify: the queue under prefix %q is empty (add tasks with qugo bench -fill, or check -prefix)", e.prefix)
}

// runPools drains the queue with one pool of o.workers per analyser, until
// every task is handled (bench), the queue is empty (verify), a task bench
// did not add is met (it is left: see benchforeign.go), or ctx ends.
func runPools(ctx context.Context, q *queue.Queue, o benchOptions, tr *tracker, stderr io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-tr.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	errs := make([]error, q.Analysers())
	var wg sync.WaitGroup
	for a := range q.Analysers() {
		wg.Go(func() {
			cfg := queue.PoolConfig{Workers: o.workers, ExitOnEmpty: o.verify, Logger: log, ShutdownTimeout: benchShutdown}
			errs[a] = q.AnalysePool(ctx, a, cfg, func(tctx context.Context, t queue.Task) error {
				if tr.handle(t.OrderID, t.Payload, time.Now()) {
					return nil
				}
				// Not bench's: stop every pool, and hold the task until
				// the stop ends its ctx; it is handed back, not
				// acknowledged.
				tr.leave(t)
				cancel()
				<-tctx.Done()
				return errForeign
			})
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (e *env) printBench(doc benchDoc, asJSON bool) error {
	if asJSON {
		return writeJSON(e.stdout, doc)
	}
	w := e.stdout
	workers := ""
	if doc.Workers > 0 {
		workers = ", " + plural(doc.Workers, "worker") + " per analyser"
	}
	fmt.Fprintf(w, "qugo bench (%s): prefix %q, %s x %s%s\n",
		doc.Mode, doc.Prefix, plural(doc.Partitions, "server"), plural(doc.Queues, "queue"), workers)
	if doc.Mode != "verify" {
		fmt.Fprintf(w, "add:     %d tasks over %d OrderIDs in %.2fs: %.0f tasks/s\n", doc.Tasks, doc.Orders, doc.AddSeconds, doc.AddPerSecond)
	}
	if doc.Check == nil {
		_, err := fmt.Fprintln(w, "the tasks wait in Redis; drain them with your analysers or qugo bench -verify")
		return err
	}
	c := doc.Check
	if doc.Mode == "verify" && c.Handled == 0 {
		return nil // nothing to verify: the error says so
	}
	// A bench drains beside the adds: the drain cannot outrun them, and
	// its rate is what producers and analysers carry together. A verify
	// drains alone: its rate is the analysers' ceiling.
	what := "from the first add to the last task started: with the adds, at most their rate"
	if doc.Mode == "verify" {
		what = "from the start to the last task started: the drain alone, the analysers' ceiling"
	}
	fmt.Fprintf(w, "drain:   %d tasks in %.2fs: %.0f tasks/s (%s)\n", c.Handled, doc.DrainSeconds, doc.DrainPerSecond, what)
	if l := doc.LatencyMS; l != nil {
		fmt.Fprintf(w, "latency: add to start of handling: p50 %.2fms  p90 %.2fms  p99 %.2fms  p99.9 %.2fms  max %.2fms\n",
			l.P50, l.P90, l.P99, l.P999, l.Max)
	}
	verdict := "ok: every task handled, in order per OrderID"
	switch {
	case doc.Stopped != "":
		verdict = "INCOMPLETE: " + doc.Stopped // the tasks not handled yet count as missing
	case !c.OK:
		verdict = "FAILED"
	}
	_, err := fmt.Fprintf(w, "order:   %s (OrderIDs %d, duplicates %d, out of order %d, missing %d, foreign %d)\n",
		verdict, doc.Orders, c.Duplicates, c.OutOfOrder, c.Missing, c.Foreign)
	return err
}
