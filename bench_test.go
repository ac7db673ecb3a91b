package queue

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Regression benchmarks. Against a real redis-server:
//
//	QUEUE_TEST_REDIS_URL=redis://127.0.0.1:6379 go test -run '^$' -bench . -count 6 | tee new.txt
//	go run golang.org/x/perf/cmd/benchstat@latest new.txt
//
// Without QUEUE_TEST_REDIS_URL they run against miniredis so that they stay
// runnable (CI runs them with -benchtime 1x); their figures then mean
// nothing. Every benchmark reports tasks/s; the Raw* benchmarks do the same
// work with bare redigo commands, so a ratio to Redis's own speed can be
// read from one run. BenchmarkScale starts its own redis-servers and runs
// only when QUEUE_BENCH_SCALE=1. docs/performance.md has the figures.

// benchPayload is the payload of every benchmark task.
var benchPayload = bytes.Repeat([]byte{'p'}, 64)

// benchOrders is the number of OrderIDs the benchmark tasks spread over.
const benchOrders = 1000

// logBackend says which server a benchmark measures.
func logBackend(b *testing.B) {
	b.Helper()
	if testRedisURL == "" {
		b.Log("backend: miniredis; figures are not meaningful (set QUEUE_TEST_REDIS_URL for a real redis-server)")
		return
	}
	b.Logf("backend: redis-server at %s", testRedisURL)
}

// benchQueue returns a queue over r test partitions, with pools large
// enough for 64 concurrent callers, and deletes its keys when b ends.
func benchQueue(b *testing.B, r int) (*Queue, []*testServer) {
	return benchQueueWith(b, r, Config{})
}

// benchQueueWith is benchQueue with cfg.
func benchQueueWith(b *testing.B, r int, cfg Config) (*Queue, []*testServer) {
	b.Helper()
	logBackend(b)
	q, servers := newTestQueue(b, r, cfg)
	for _, s := range servers {
		s.pool.MaxIdle = 128 // not used yet
	}
	b.Cleanup(func() { dropQueueKeys(q) })
	return q, servers
}

// queueKeyNames lists every key the queue can have on partition pi.
func queueKeyNames(q *Queue, pi int) []any {
	keys := []any{layoutKey(q.cfg.Prefix)}
	for qi := 0; qi < q.cfg.Queues; qi++ {
		k := newQueueKeys(q.cfg.Prefix, pi, qi)
		keys = append(keys, k.ready, k.pending, k.claims, k.dead, k.lease, k.meta, k.wake, k.sched, k.later, k.cancels, k.retries)
	}
	return keys
}

// dropQueueKeys deletes the queue's keys, so that benchmarks on a shared
// server leave nothing behind.
func dropQueueKeys(q *Queue) {
	for pi, p := range q.parts {
		c := p.pool.Get()
		c.Do("DEL", queueKeyNames(q, pi)...)
		c.Close()
	}
}

// benchTasks returns n tasks over benchOrders OrderIDs.
func benchTasks(n int) []Task {
	ts := make([]Task, n)
	for i := range ts {
		ts[i] = Task{OrderID: uint64(i % benchOrders), Payload: benchPayload}
	}
	return ts
}

// fill adds n tasks in batches of 10,000.
func fill(b *testing.B, q *Queue, n int) {
	b.Helper()
	ts := benchTasks(min(n, 10000))
	for n > 0 {
		k := min(n, len(ts))
		if _, err := q.AddTasks(context.Background(), ts[:k]); err != nil {
			b.Fatal(err)
		}
		n -= k
	}
}

// reportRate reports n tasks over d as tasks/s (named unit).
func reportRate(b *testing.B, n int, d time.Duration, unit string) {
	if d > 0 {
		b.ReportMetric(float64(n)/d.Seconds(), unit)
	}
}

// setGoroutines makes b.RunParallel use at least n goroutines.
func setGoroutines(b *testing.B, n int) {
	p := runtime.GOMAXPROCS(0)
	b.SetParallelism((n + p - 1) / p)
}

// BenchmarkAddTask measures AddTask from one goroutine and from 64 at once
// (which share pipelined round trips). Compare with BenchmarkRawLPUSH.
func BenchmarkAddTask(b *testing.B) {
	for _, g := range []int{1, 64} {
		b.Run(fmt.Sprintf("goroutines=%d", g), func(b *testing.B) {
			q, _ := benchQueue(b, 1)
			benchAddTask(b, q, g)
		})
	}
}

// benchAddTask measures b.N AddTask calls on q from g goroutines.
func benchAddTask(b *testing.B, q *Queue, g int) {
	ctx := context.Background()
	if _, err := q.AddTask(ctx, 0, benchPayload); err != nil { // checks the layout
		b.Fatal(err)
	}
	b.ReportAllocs()
	if g == 1 {
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := q.AddTask(ctx, uint64(i%benchOrders), benchPayload); err != nil {
				b.Fatal(err)
			}
		}
		reportRate(b, b.N, b.Elapsed(), "tasks/s")
		return
	}
	var seq atomic.Uint64
	setGoroutines(b, g)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := q.AddTask(ctx, seq.Add(1)%benchOrders, benchPayload); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportRate(b, b.N, b.Elapsed(), "tasks/s")
}

var benchBatches = []int{10, 100, 1000}

// BenchmarkAddTasks measures AddTasks in batches; b.N counts tasks.
// Compare with BenchmarkRawLPUSHBatch.
func BenchmarkAddTasks(b *testing.B) {
	for _, n := range benchBatches {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) {
			q, _ := benchQueue(b, 1)
			ctx := context.Background()
			ts := benchTasks(n)
			if _, err := q.AddTasks(ctx, ts[:1]); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for done := 0; done < b.N; {
				k := min(n, b.N-done)
				if _, err := q.AddTasks(ctx, ts[:k]); err != nil {
					b.Fatal(err)
				}
				done += k
			}
			reportRate(b, b.N, b.Elapsed(), "tasks/s")
		})
	}
}

var claimBatches = []int{1, 100, 1000}

// BenchmarkClaimAck measures the low-level Consumer: Claim up to batch
// tasks (moved into the pending record in one script), then Ack them (one
// script); b.N counts tasks. Compare with BenchmarkRawRPOP.
func BenchmarkClaimAck(b *testing.B) {
	for _, n := range claimBatches {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) {
			q, _ := benchQueue(b, 1)
			ctx := context.Background()
			fill(b, q, b.N)
			c, err := q.Consume(ctx, 0, ConsumerConfig{})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Release(ctx)
			ids := make([]string, 0, n)
			cpu := newCPUMeter(q)
			b.ReportAllocs()
			b.ResetTimer()
			cpu.start()
			for done := 0; done < b.N; {
				ts, err := c.Claim(ctx, min(n, b.N-done))
				if err != nil {
					b.Fatal(err)
				}
				if len(ts) == 0 {
					b.Fatalf("queue ran dry after %d of %d tasks", done, b.N)
				}
				ids = ids[:0]
				for _, t := range ts {
					ids = append(ids, t.ID)
				}
				if _, err := c.Ack(ctx, ids...); err != nil {
					b.Fatal(err)
				}
				done += len(ts)
			}
			cpu.stop()
			reportRate(b, b.N, b.Elapsed(), "tasks/s")
			cpu.report(b, b.N)
		})
	}
}

// drainSize is the number of tasks of one end-to-end run: 100,000 on a
// real server, 10,000 on miniredis (which only checks that it runs).
func drainSize() int {
	if testRedisURL == "" {
		return 10000
	}
	return 100000
}

// BenchmarkDrain measures the end-to-end path: 100,000 tasks over 1,000
// OrderIDs added with one AddTasks call, then drained by AnalysePool
// (ExitOnEmpty) with a no-op function. One op is one such run. It reports
// tasks/s from the first add to the last ack, drain-tasks/s for the drain
// alone, add-tasks/s for the AddTasks call alone, and the drain's
// allocations per task. Compare with BenchmarkRawDrain. Each worker count
// runs under both dispatch modes (dispatch=byorder, the default, and
// dispatch=free), with tasks without headers (headers=0) and with two
// (headers=2: benchHeaders, a W3C traceparent and a tenant, which the
// AnalyseFunc reads).
func BenchmarkDrain(b *testing.B) {
	for _, w := range []int{1, 8, 64} {
		for _, mode := range []DispatchMode{DispatchByOrder, DispatchFree} {
			for _, h := range []map[string]string{nil, benchHeaders} {
				b.Run(fmt.Sprintf("workers=%d/dispatch=%s/headers=%d", w, mode, len(h)), func(b *testing.B) {
					q, _ := benchQueue(b, 1)
					benchDrain(b, q, PoolConfig{Workers: w, Dispatch: mode}, drainSize(), h)
				})
			}
		}
	}
}

// benchHeaders are the headers of BenchmarkDrain's headers=2 tasks: what
// the otel module puts in a task, and one of the caller's own.
var benchHeaders = map[string]string{
	"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
	"tenant":      "acme",
}

// serverCPU returns the CPU time (user and system) the server of pool has
// used, from INFO cpu; false when it does not say (miniredis).
func serverCPU(pool *redis.Pool) (time.Duration, bool) {
	c := pool.Get()
	defer c.Close()
	info, err := redis.String(c.Do("INFO", "cpu"))
	if err != nil {
		return 0, false
	}
	var total float64
	found := 0
	for _, line := range strings.Split(info, "\r\n") {
		for _, f := range []string{"used_cpu_sys:", "used_cpu_user:"} {
			if v, ok := strings.CutPrefix(line, f); ok {
				x, _ := strconv.ParseFloat(v, 64)
				total += x
				found++
			}
		}
	}
	return time.Duration(total * float64(time.Second)), found == 2
}

// cpuMeter adds up the CPU time this process and the servers use.
type cpuMeter struct {
	pools       []*redis.Pool
	self, redis time.Duration
	selfOK      bool
	redisOK     bool
	t0, r0      time.Duration
}

func newCPUMeter(q *Queue) *cpuMeter {
	m := &cpuMeter{selfOK: true, redisOK: true}
	for _, p := range q.parts {
		r := p.router
		if r == nil {
			m.pools = append(m.pools, p.pool)
			continue
		}
		// A cluster: every primary's own CPU (once for all its partitions).
		for _, addr := range r.slots.Load().primaries {
			np, err := r.nodePool(addr)
			if err == nil && !slices.Contains(m.pools, np) {
				m.pools = append(m.pools, np)
			}
		}
	}
	return m
}

func (m *cpuMeter) redisNow() time.Duration {
	var sum time.Duration
	for _, p := range m.pools {
		d, ok := serverCPU(p)
		m.redisOK = m.redisOK && ok
		sum += d
	}
	return sum
}

func (m *cpuMeter) start() {
	var ok bool
	m.t0, ok = processCPU()
	m.selfOK = m.selfOK && ok
	m.r0 = m.redisNow()
}

func (m *cpuMeter) stop() {
	t1, ok := processCPU()
	m.selfOK = m.selfOK && ok
	m.self += t1 - m.t0
	m.redis += m.redisNow() - m.r0
}

// report reports the CPU time per task of this process and of the
// servers: figures that contention on a shared machine disturbs less than
// throughput.
func (m *cpuMeter) report(b *testing.B, tasks int) { m.reportAs(b, tasks, "") }

// reportAs is report with its metrics' names prefixed by prefix.
func (m *cpuMeter) reportAs(b *testing.B, tasks int, prefix string) {
	if m.selfOK {
		b.ReportMetric(float64(m.self)/float64(time.Microsecond)/float64(tasks), prefix+"cpu-µs/task")
	}
	if m.redisOK {
		b.ReportMetric(float64(m.redis)/float64(time.Microsecond)/float64(tasks), prefix+"redis-cpu-µs/task")
	}
}

// reportCores reports how many cores this process and the servers kept
// busy on average over wall: on a machine with C cores, a figure near C
// says the run was bound by CPU, whatever the number of servers.
func (m *cpuMeter) reportCores(b *testing.B, wall time.Duration) {
	if m.selfOK && m.redisOK && wall > 0 {
		b.ReportMetric(float64(m.self+m.redis)/float64(wall), "cores")
	}
}

// benchDrain runs b.N end-to-end runs of n tasks per analyser of q, one
// AnalysePool per analyser with cfg's workers and dispatch mode each.
// Each task has headers (nil: none); the analyse function reads them.
func benchDrain(b *testing.B, q *Queue, cfg PoolConfig, n int, headers map[string]string) {
	b.Helper()
	ctx := context.Background()
	a := q.Analysers()
	tasks := make([]Task, n*a)
	for i := range tasks {
		// Spread benchOrders OrderIDs over each analyser.
		tasks[i] = Task{OrderID: uint64(i % (benchOrders * a)), Payload: benchPayload, Headers: headers}
	}
	var processed atomic.Int64
	noop := func(_ context.Context, t Task) error {
		if len(t.Headers) != len(headers) {
			return fmt.Errorf("task %s has %d headers, want %d", t.ID, len(t.Headers), len(headers))
		}
		processed.Add(1)
		return nil
	}
	cfg.ExitOnEmpty = true
	cfg.OnError = func(err error) { b.Error(err) }
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler) // lease lines would break the benchmark's output lines
	}
	cpu, drainCPU := newCPUMeter(q), newCPUMeter(q)
	run := func(ts []Task) (added, drained time.Duration, allocs uint64) {
		cpu.start()
		defer cpu.stop()
		start := time.Now()
		if _, err := q.AddTasks(ctx, ts); err != nil {
			b.Fatal(err)
		}
		added = time.Since(start)
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		drainCPU.start()
		mid := time.Now()
		var wg sync.WaitGroup
		// The drain's goroutines carry the label phase=drain, so a CPU
		// profile of the benchmark can be read for the drain alone
		// (go tool pprof -tagfocus phase=drain).
		pprof.Do(ctx, pprof.Labels("phase", "drain"), func(ctx context.Context) {
			for i := 0; i < a; i++ {
				wg.Go(func() {
					if err := q.AnalysePool(ctx, i, cfg, noop); err != nil {
						b.Error(err)
					}
				})
			}
			wg.Wait()
		})
		drained = time.Since(mid)
		drainCPU.stop()
		runtime.ReadMemStats(&m1)
		return added, drained, m1.Mallocs - m0.Mallocs
	}
	run(tasks[:10*a]) // checks the layout and loads the scripts
	processed.Store(0)
	cpu, drainCPU = newCPUMeter(q), newCPUMeter(q)
	var adding, draining time.Duration
	var allocs uint64
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ad, dr, al := run(tasks)
		adding += ad
		draining += dr
		allocs += al
	}
	b.StopTimer()
	if got := processed.Load(); got != int64(b.N*len(tasks)) {
		b.Fatalf("analysed %d tasks, want %d", got, b.N*len(tasks))
	}
	total := b.N * len(tasks)
	reportRate(b, total, adding+draining, "tasks/s")
	reportRate(b, total, draining, "drain-tasks/s")
	reportRate(b, total, adding, "add-tasks/s")
	b.ReportMetric(float64(allocs)/float64(total), "drain-allocs/task")
	cpu.report(b, total)
	drainCPU.reportAs(b, total, "drain-")
	cpu.reportCores(b, adding+draining)
}
