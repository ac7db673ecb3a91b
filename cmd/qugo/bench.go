package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
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
	Tasks      int    `json:"tasks"`  // added (bench, fill)
	Orders     int    `json:"orders"` // OrderIDs the tasks were spread over (seen, for verify)
	Workers    int    `json:"workers"`
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
	fs.IntVar(&o.workers, "workers", 16, "`W` worker goroutines per analyser; one pool per analyser, R*Q pools")
	fs.IntVar(&o.producers, "producers", 4, "`P` goroutines adding tasks at once")
	fs.IntVar(&o.batch, "batch", 100, "`B` tasks per AddTasks call")
	fs.IntVar(&o.size, "size", 64, "`BYTES` of payload per task (at least 20)")
	fs.Float64Var(&o.rate, "rate", 0, "add at most `N` tasks per second, to see the latency at a given load; 0 adds as fast as possible")
	fs.BoolVar(&o.fill, "fill", false, "only add the tasks, for another process (qugo bench -verify, your analysers) to drain")
	fs.BoolVar(&o.verify, "verify", false, "add nothing: drain the tasks there are and check their order and completeness")
	fs.BoolVar(&o.partial, "partial", false, "with -verify: count each OrderID from the first task seen, its earlier ones handled before (by a verify stopped part way, by your analysers); a loss of an OrderID's first remaining tasks goes unseen then")
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

// bench runs one bench, fill or verify.
func (e *env) bench(ctx context.Context, o benchOptions) error {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	urls, _ := e.urls()
	if !e.set["redis"] && os.Getenv("QUEUE_REDIS") == "" {
		// No server named: an embedded one, to try qugo with nothing
		// installed. Its figures are its own, not a Redis server's.
		mr, err := miniredis.Run()
		if err != nil {
			return err
		}
		defer mr.Close()
		urls = []string{"redis://" + mr.Addr()}
		fmt.Fprintln(e.stderr, "qugo bench: no -redis or QUEUE_REDIS given: using an embedded miniredis; its figures say little about a Redis server's")
	}
	q, err := queue.Dial(ctx, urls, queue.Config{Prefix: e.prefix, Queues: e.queues, MaxPayload: max(o.size, 1<<20)})
	if err != nil {
		return explainDial(err, urls)
	}
	defer q.Close()
	if err := q.CheckLayout(ctx); err != nil {
		return err
	}
	doc := benchDoc{Mode: "bench", Prefix: e.prefix, Partitions: e.partitions(), Queues: e.queues, Workers: o.workers}
	switch {
	case o.fill:
		doc.Mode = "fill"
	case o.verify:
		doc.Mode = "verify"
	}
	if !o.verify {
		if err := benchEmpty(ctx, q, !o.fill); err != nil {
			return err
		}
		doc.Tasks, doc.Orders = o.n, min(o.orders, o.n)
	}
	tr := newTracker(int64(o.n), !o.verify, o.partial)
	start := time.Now()
	var drained time.Duration
	var poolErr error
	drain := func() {
		poolErr = runPools(ctx, q, o, tr, e.stderr)
		drained = tr.lastAt().Sub(start)
	}
	var wg sync.WaitGroup
	if !o.fill {
		wg.Go(drain)
	}
	if !o.verify {
		addErr := addBenchTasks(ctx, q, o)
		took := time.Since(start)
		doc.AddSeconds, doc.AddPerSecond = took.Seconds(), float64(o.n)/took.Seconds()
		if addErr != nil {
			cancel()
			wg.Wait()
			return addErr
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
	if err := e.printBench(doc, o.asJSON); err != nil {
		return err
	}
	switch {
	case poolErr != nil:
		return poolErr
	case ctx.Err() != nil && !check.OK:
		return fmt.Errorf("bench: stopped before the drain was complete: %w", context.Cause(ctx))
	case check.Handled == 0 && o.verify:
		return errors.New("bench: nothing to verify: the queue is empty (add tasks with qugo bench -fill)")
	case !check.OK:
		return errors.New("bench: order check failed")
	}
	return nil
}

// benchEmpty refuses to run on a queue that holds tasks or, when drain is
// set, one that another process consumes: the figures and the order check
// would be wrong, and bench would eat someone's tasks.
func benchEmpty(ctx context.Context, q *queue.Queue, drain bool) error {
	stats, err := q.Stats(ctx)
	if err != nil {
		return err
	}
	for _, s := range stats {
		if s.Ready+s.Pending > 0 {
			return fmt.Errorf("bench: analyser %d's queue holds %d tasks: drain it (qugo bench -verify) or give another -prefix", s.Analyser, s.Ready+s.Pending)
		}
		if drain && s.Owner != "" {
			return fmt.Errorf("bench: analyser %d's queue is consumed by %s: give another -prefix", s.Analyser, s.Owner)
		}
	}
	return nil
}

// runPools drains the queue with one pool of o.workers per analyser, until
// every task is handled (bench), the queue is empty (verify), or ctx ends.
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
			cfg := queue.PoolConfig{Workers: o.workers, ExitOnEmpty: o.verify, Logger: log}
			errs[a] = q.AnalysePool(ctx, a, cfg, func(_ context.Context, t queue.Task) error {
				tr.handle(t.OrderID, t.Payload, time.Now())
				return nil
			})
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// addBenchTasks adds o.n tasks over o.orders OrderIDs (0 to K-1) with
// o.producers goroutines. Producer p adds the tasks of the OrderIDs k with
// k % P == p, each OrderID's in order, o.batch per AddTasks call.
func addBenchTasks(ctx context.Context, q *queue.Queue, o benchOptions) error {
	orders := min(o.orders, o.n)
	producers := min(o.producers, orders)
	total := func(k int) int { // tasks of OrderID k
		n := o.n / orders
		if k < o.n%orders {
			n++
		}
		return n
	}
	errs := make([]error, producers)
	start := time.Now()
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			buf := make([]byte, o.batch*o.size)
			batch := make([]queue.Task, 0, o.batch)
			added := 0
			flush := func() error {
				if o.rate > 0 { // this producer's share of the rate
					due := start.Add(time.Duration(float64(added) / (o.rate / float64(producers)) * float64(time.Second)))
					select {
					case <-time.After(time.Until(due)):
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				added += len(batch)
				now := time.Now().UnixNano()
				for _, t := range batch {
					binary.BigEndian.PutUint64(t.Payload[len(benchMagic)+8:], uint64(now))
				}
				_, err := q.AddTasks(ctx, batch)
				batch = batch[:0]
				return err
			}
			for seq := 1; seq <= total(0); seq++ {
				for k := p; k < orders; k += producers {
					if seq > total(k) {
						break // total(k) only falls as k grows
					}
					pl := buf[len(batch)*o.size : (len(batch)+1)*o.size]
					copy(pl, benchMagic)
					binary.BigEndian.PutUint32(pl[len(benchMagic):], uint32(total(k)))
					binary.BigEndian.PutUint32(pl[len(benchMagic)+4:], uint32(seq))
					batch = append(batch, queue.Task{OrderID: uint64(k), Payload: pl})
					if len(batch) == o.batch {
						if errs[p] = flush(); errs[p] != nil {
							return
						}
					}
				}
			}
			if len(batch) > 0 {
				errs[p] = flush()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// tracker records what the drain handled. It is safe for concurrent use.
type tracker struct {
	want    int64 // tasks to handle before done closes; 0: never closes
	partial bool  // an OrderID counts from the first task seen (verify -partial)
	done    chan struct{}
	mu      sync.Mutex
	order   map[uint64]*orderSeen
	counts  orderCheck
	unique  int64
	lats    []time.Duration
	last    time.Time
}

// orderSeen is what the drain saw of one OrderID.
type orderSeen struct {
	seen []bool // by place - 1
	last uint32 // the highest place started
	low  uint32 // the lowest place started
	n    int64  // distinct tasks handled
}

func newTracker(want int64, keepLatency, partial bool) *tracker {
	t := &tracker{done: make(chan struct{}), order: map[uint64]*orderSeen{}, partial: partial}
	if keepLatency {
		t.want = want
		t.lats = make([]time.Duration, 0, want)
	}
	return t
}

// handle records the start of one delivery.
func (t *tracker) handle(orderID uint64, payload []byte, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.counts.Handled++
	t.last = now
	if len(payload) < benchHeader || string(payload[:len(benchMagic)]) != benchMagic {
		t.counts.Foreign++
		return
	}
	total := binary.BigEndian.Uint32(payload[len(benchMagic):])
	place := binary.BigEndian.Uint32(payload[len(benchMagic)+4:])
	sent := int64(binary.BigEndian.Uint64(payload[len(benchMagic)+8:]))
	if place < 1 || place > total {
		t.counts.Foreign++
		return
	}
	o := t.order[orderID]
	if o == nil {
		o = &orderSeen{seen: make([]bool, total), low: 1}
		if t.partial {
			// The OrderID's tasks before the first one seen ran before
			// it started (an earlier verify, the caller's analysers);
			// from it on, every one must come, in order.
			o.last, o.low = place-1, place
		}
		t.order[orderID] = o
	}
	if int(place) > len(o.seen) {
		t.counts.Foreign++ // the count disagrees with an earlier task's
		return
	}
	if o.seen[place-1] {
		t.counts.Duplicates++
		return
	}
	o.seen[place-1] = true
	o.n++
	if place != o.last+1 {
		t.counts.OutOfOrder++
	}
	o.last, o.low = max(o.last, place), min(o.low, place)
	if t.lats != nil {
		t.lats = append(t.lats, now.Sub(time.Unix(0, sent)))
	}
	t.unique++
	if t.unique == t.want {
		close(t.done)
	}
}

// check returns the verdict: in bench mode tasks not handled count as
// missing; in verify mode those of the OrderIDs seen (with -partial, from
// the lowest place seen on).
func (t *tracker) check() orderCheck {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.counts
	if t.want > 0 {
		c.Missing = t.want - t.unique
	} else {
		for _, o := range t.order {
			c.Missing += int64(len(o.seen)-int(o.low)+1) - o.n
		}
	}
	c.OK = c.Missing == 0 && c.OutOfOrder == 0 && c.Foreign == 0 && c.Handled > 0
	return c
}

func (t *tracker) lastAt() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.last
}

func (t *tracker) orderCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.order)
}

// latency returns the percentiles of the recorded latencies, nil when none.
func (t *tracker) latency() *latencyDoc {
	t.mu.Lock()
	lats := slices.Clone(t.lats)
	t.mu.Unlock()
	if len(lats) == 0 {
		return nil
	}
	slices.Sort(lats)
	at := func(p float64) float64 {
		return float64(lats[int(p*float64(len(lats)-1))]) / float64(time.Millisecond)
	}
	return &latencyDoc{P50: at(0.50), P90: at(0.90), P99: at(0.99), P999: at(0.999), Max: at(1)}
}

func (e *env) printBench(doc benchDoc, asJSON bool) error {
	if asJSON {
		return writeJSON(e.stdout, doc)
	}
	w := e.stdout
	fmt.Fprintf(w, "qugo bench (%s): prefix %q, %d server(s) x %d queue(s), %d workers per analyser\n",
		doc.Mode, doc.Prefix, doc.Partitions, doc.Queues, doc.Workers)
	if doc.Mode != "verify" {
		fmt.Fprintf(w, "add:     %d tasks over %d OrderIDs in %.2fs: %.0f tasks/s\n", doc.Tasks, doc.Orders, doc.AddSeconds, doc.AddPerSecond)
	}
	if doc.Check == nil {
		_, err := fmt.Fprintln(w, "the tasks wait in Redis; drain them with your analysers or qugo bench -verify")
		return err
	}
	c := doc.Check
	from := "the first add"
	if doc.Mode == "verify" {
		from = "the start" // it added nothing
	}
	fmt.Fprintf(w, "drain:   %d tasks in %.2fs: %.0f tasks/s (from %s to the last task started)\n",
		c.Handled, doc.DrainSeconds, doc.DrainPerSecond, from)
	if l := doc.LatencyMS; l != nil {
		fmt.Fprintf(w, "latency: add to start of handling: p50 %.2fms  p90 %.2fms  p99 %.2fms  p99.9 %.2fms  max %.2fms\n",
			l.P50, l.P90, l.P99, l.P999, l.Max)
	}
	verdict := "ok: every task handled, in order per OrderID"
	if !c.OK {
		verdict = "FAILED"
	}
	_, err := fmt.Fprintf(w, "order:   %s (OrderIDs %d, duplicates %d, out of order %d, missing %d, foreign %d)\n",
		verdict, doc.Orders, c.Duplicates, c.OutOfOrder, c.Missing, c.Foreign)
	return err
}
