package queue

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Benchmarks of the whole system under load: bursts, latency, memory per
// task, and scaling over several redis-servers (see bench_test.go).

// BenchmarkBurst is BenchmarkDrain with the pool already running, as in
// production: an idle AnalysePool (64 workers, waiting for work) gets
// 100,000 tasks over 1,000 OrderIDs from one AddTasks call, and the time
// runs from the call until every task has been analysed and Redis holds
// no pending record (the last ack; polled every 200µs). Claims start while
// the adds still go on.
func BenchmarkBurst(b *testing.B) {
	q, servers := benchQueue(b, 1)
	s := servers[0]
	k := newQueueKeys(q.cfg.Prefix, 0, 0)
	n := drainSize()
	tasks := make([]Task, n)
	for i := range tasks {
		tasks[i] = Task{OrderID: uint64(i % benchOrders), Payload: benchPayload}
	}
	var processed atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- q.AnalysePool(ctx, 0, PoolConfig{Workers: 64, OnError: func(err error) { b.Error(err) }},
			func(context.Context, Task) error { processed.Add(1); return nil })
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	}()
	settled := func(want int64) {
		for processed.Load() < want {
			time.Sleep(200 * time.Microsecond)
		}
		c := s.pool.Get()
		defer c.Close()
		for {
			// The count of tasks in claim records not finished, kept
			// by the scripts: one cheap read, not a read of the records.
			n, err := redis.Int(c.Do("HGET", k.meta, "pending"))
			if err == redis.ErrNil {
				err = nil
			}
			if err != nil {
				b.Fatal(err)
			}
			if n == 0 {
				return
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
	// Warm up: the pool holds the lease and the scripts are loaded.
	if _, err := q.AddTasks(ctx, tasks[:10]); err != nil {
		b.Fatal(err)
	}
	settled(10)
	cpu := newCPUMeter(q)
	var want int64 = 10
	var elapsed time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cpu.start()
		start := time.Now()
		if _, err := q.AddTasks(ctx, tasks); err != nil {
			b.Fatal(err)
		}
		want += int64(n)
		settled(want)
		elapsed += time.Since(start)
		cpu.stop()
	}
	b.StopTimer()
	reportRate(b, b.N*n, elapsed, "tasks/s")
	cpu.report(b, b.N*n)
	cpu.reportCores(b, elapsed)
}

// BenchmarkLatency measures the time from AddTask to the start of the
// analyse function on an idle pool, one task at a time, and reports its
// median and 99th percentile in microseconds. Compare with BenchmarkRawLatency.
func BenchmarkLatency(b *testing.B) {
	q, _ := benchQueue(b, 1)
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan time.Time, 1)
	done := make(chan error, 1)
	go func() {
		done <- q.AnalysePool(ctx, 0, PoolConfig{Workers: 8, OnError: func(err error) { b.Error(err) }},
			func(context.Context, Task) error { started <- time.Now(); return nil })
	}()
	defer func() { cancel(); <-done }()
	if _, err := q.AddTask(ctx, 0, benchPayload); err != nil {
		b.Fatal(err)
	}
	<-started
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := q.AddTask(ctx, uint64(i), benchPayload); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, (<-started).Sub(t0))
	}
	b.StopTimer()
	reportLatency(b, lat)
}

func reportLatency(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	us := func(p int) float64 { return float64(lat[(len(lat)-1)*p/100]) / float64(time.Microsecond) }
	b.ReportMetric(us(50), "p50-µs")
	b.ReportMetric(us(99), "p99-µs")
}

// usedMemory returns the server's INFO used_memory.
func usedMemory(b *testing.B, s *testServer) int64 {
	b.Helper()
	c := s.pool.Get()
	defer c.Close()
	info, err := redis.String(c.Do("INFO", "memory"))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Fatal("no used_memory in INFO memory")
	return 0
}

// BenchmarkMemory measures Redis's memory per queued task: used_memory
// before and after adding 100,000 tasks of 64-byte payloads, and after
// draining them. It needs a real server, and a quiet one: used_memory
// counts the whole server.
func BenchmarkMemory(b *testing.B) {
	if testRedisURL == "" {
		b.Skip("needs a real redis-server (QUEUE_TEST_REDIS_URL): miniredis has no INFO memory")
	}
	q, servers := benchQueue(b, 1)
	ctx := context.Background()
	const n = 100000
	tasks := benchTasks(n)
	cfg := PoolConfig{Workers: 8, ExitOnEmpty: true, OnError: func(err error) { b.Error(err) }}
	noop := func(context.Context, Task) error { return nil }
	if _, err := q.AddTasks(ctx, tasks[:10]); err != nil {
		b.Fatal(err)
	}
	if err := q.AnalysePool(ctx, 0, cfg, noop); err != nil {
		b.Fatal(err)
	}
	var perTask, residual float64
	var keys int
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		before := usedMemory(b, servers[0])
		if _, err := q.AddTasks(ctx, tasks); err != nil {
			b.Fatal(err)
		}
		full := usedMemory(b, servers[0])
		if err := q.AnalysePool(ctx, 0, cfg, noop); err != nil {
			b.Fatal(err)
		}
		after := usedMemory(b, servers[0])
		perTask += float64(full-before) / n
		residual += 100 * float64(after-before) / float64(before)
		c := servers[0].pool.Get()
		keys, _ = redis.Int(c.Do("EXISTS", queueKeyNames(q, 0)...))
		c.Close()
	}
	b.StopTimer()
	b.ReportMetric(perTask/float64(b.N), "bytes/task")
	b.ReportMetric(perTask/float64(b.N)-float64(len(benchPayload)), "overhead-bytes/task")
	b.ReportMetric(residual/float64(b.N), "residual-%")
	b.ReportMetric(float64(keys), "keys-left")
}

// BenchmarkScale measures the end-to-end run of BenchmarkDrain (64
// workers, 100,000 tasks per server) over R = 1, 2 and 3 redis-servers,
// one queue and one AnalysePool per server, all in this process. It
// starts its own servers on free loopback ports, and runs only when
// QUEUE_BENCH_SCALE=1 and redis-server is on the PATH.
func BenchmarkScale(b *testing.B) {
	if os.Getenv("QUEUE_BENCH_SCALE") != "1" {
		b.Skip("set QUEUE_BENCH_SCALE=1 to start 3 redis-servers and measure R=1..3")
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		b.Skip("redis-server is not on the PATH")
	}
	urls := startRedisServers(b, bin, 3)
	for r := 1; r <= len(urls); r++ {
		b.Run(fmt.Sprintf("R=%d", r), func(b *testing.B) {
			b.Logf("backend: %d redis-servers started by the benchmark", r)
			pools := make([]*redis.Pool, r)
			for i := range pools {
				pools[i] = testPool(urls[i])
				pools[i].MaxIdle = 128
			}
			q, err := New(pools, Config{Prefix: testPrefix(b)})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				dropQueueKeys(q)
				for _, p := range pools {
					p.Close()
				}
			})
			benchDrain(b, q, PoolConfig{Workers: 64}, 100000, nil)
		})
	}
}

// startRedisServers starts n redis-servers without persistence on free
// loopback ports and stops them (by pid) when b ends.
func startRedisServers(b *testing.B, bin string, n int) []string {
	b.Helper()
	var urls []string
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", b.TempDir())
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
		})
		url := fmt.Sprintf("redis://127.0.0.1:%d", port)
		p := testPool(url)
		deadline := time.Now().Add(10 * time.Second)
		for {
			c := p.Get()
			_, err := c.Do("PING")
			c.Close()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				p.Close()
				b.Fatalf("redis-server on port %d did not start: %v", port, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		p.Close()
		urls = append(urls, url)
	}
	return urls
}

// BenchmarkWaitReplicas measures what Config.WaitReplicas costs: AddTask
// from 1 and 64 goroutines, and the end-to-end run of BenchmarkDrain (64
// workers, 100,000 tasks), each with wait=0 and wait=1 in the same run, on
// a primary and one replica of it that it starts itself on free loopback
// ports (skipped without redis-server on the PATH).
func BenchmarkWaitReplicas(b *testing.B) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		b.Skip("redis-server is not on the PATH")
	}
	rs := startReplicated(b, false)
	b.Log("backend: a redis-server primary and one replica started by the benchmark")
	dial := func(b *testing.B, wait int) *Queue {
		q, err := Dial(context.Background(), []string{rs.primary.url()}, Config{Prefix: testPrefix(b), WaitReplicas: wait, MaxIdle: 128})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			dropQueueKeys(q)
			q.Close()
		})
		return q
	}
	for _, g := range []int{1, 64} {
		for _, wait := range []int{0, 1} {
			b.Run(fmt.Sprintf("op=add/goroutines=%d/wait=%d", g, wait), func(b *testing.B) {
				benchAddTask(b, dial(b, wait), g)
			})
		}
	}
	for _, wait := range []int{0, 1} {
		b.Run(fmt.Sprintf("op=drain/workers=64/wait=%d", wait), func(b *testing.B) {
			benchDrain(b, dial(b, wait), PoolConfig{Workers: 64}, 100000, nil)
		})
	}
}

// BenchmarkSlowOrder measures head-of-line blocking between OrderIDs. One
// op is two runs of a fresh pool of 8 workers (dispatch=byorder or
// dispatch=free) that gets 5,000 instant tasks over 1,000 OrderIDs, in 100
// batches 10ms apart: one run with one more OrderID whose 10 tasks take
// 100ms each, added first, and one without it. It reports the fast tasks'
// 99th percentile latency, from their AddTasks call to the start of their
// analyse call, with the slow OrderID (fast-p99-ms) and without
// (alone-p99-ms), and their ratio. Under DispatchByOrder the fast OrderIDs
// that hash to the slow one's worker wait behind its tasks; under
// DispatchFree none waits while a worker is free.
func BenchmarkSlowOrder(b *testing.B) {
	for _, mode := range []DispatchMode{DispatchByOrder, DispatchFree} {
		b.Run(mode.String(), func(b *testing.B) {
			q, _ := benchQueue(b, 1)
			// Check the layout and load the scripts.
			if _, err := q.AddTask(context.Background(), 0, benchPayload); err != nil {
				b.Fatal(err)
			}
			if err := q.AnalysePool(context.Background(), 0, PoolConfig{ExitOnEmpty: true, Logger: slog.New(slog.DiscardHandler)},
				func(context.Context, Task) error { return nil }); err != nil {
				b.Fatal(err)
			}
			var with, alone []time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				alone = append(alone, slowOrderRun(b, q, mode, false)...)
				with = append(with, slowOrderRun(b, q, mode, true)...)
			}
			b.StopTimer()
			p99 := func(lat []time.Duration) float64 {
				slices.Sort(lat)
				return float64(lat[(len(lat)-1)*99/100]) / float64(time.Millisecond)
			}
			w, a := p99(with), p99(alone)
			b.ReportMetric(w, "fast-p99-ms")
			b.ReportMetric(a, "alone-p99-ms")
			b.ReportMetric(w/a, "p99-ratio")
		})
	}
}

// slowOrderRun is one run of BenchmarkSlowOrder; it returns the fast
// tasks' latencies.
func slowOrderRun(b *testing.B, q *Queue, mode DispatchMode, withSlow bool) []time.Duration {
	const orders, batches, per, slowTasks = 1000, 100, 50, 10
	const slow = uint64(1 << 40)
	base := time.Now()
	var sent [batches]atomic.Int64 // when each batch was added, since base
	var mu sync.Mutex
	lat := make([]time.Duration, 0, batches*per)
	var slowDone atomic.Int64
	fastDone := make(chan struct{})
	fn := func(_ context.Context, t Task) error {
		if t.OrderID == slow {
			time.Sleep(100 * time.Millisecond)
			slowDone.Add(1)
			return nil
		}
		d := time.Since(base) - time.Duration(sent[binary.BigEndian.Uint32(t.Payload)].Load())
		mu.Lock()
		lat = append(lat, d)
		if len(lat) == batches*per {
			close(fastDone)
		}
		mu.Unlock()
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- q.AnalysePool(ctx, 0, PoolConfig{Workers: 8, Dispatch: mode, Logger: slog.New(slog.DiscardHandler),
			OnError: func(err error) { b.Error(err) }}, fn)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	}()
	if withSlow {
		ts := make([]Task, slowTasks)
		for i := range ts {
			ts[i] = Task{OrderID: slow, Payload: benchPayload}
		}
		if _, err := q.AddTasks(ctx, ts); err != nil {
			b.Fatal(err)
		}
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for j := range batches {
		ts := make([]Task, per)
		for i := range ts {
			ts[i] = Task{OrderID: uint64((j*per + i) % orders), Payload: binary.BigEndian.AppendUint32(nil, uint32(j))}
		}
		sent[j].Store(int64(time.Since(base)))
		if _, err := q.AddTasks(ctx, ts); err != nil {
			b.Fatal(err)
		}
		<-tick.C
	}
	<-fastDone
	for withSlow && slowDone.Load() < slowTasks {
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	return slices.Clone(lat)
}
