package queue

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Benchmarks of one process with 64 idle pools (Workers 1) on the 64
// queues of one server, as a member of a group owning 64 queues runs
// them: waiter=shared is the partition's shared waiter, waiter=off each
// pool blocking on a connection of its own (what a server without
// tracking gets). They need a real redis-server:
//
//	QUEUE_TEST_REDIS_URL=redis://127.0.0.1:6471 go test -run '^$' -bench IdlePickup -benchtime 500x
//	QUEUE_TEST_REDIS_URL=redis://127.0.0.1:6471 go test -run '^$' -bench IdleCPU -benchtime 30x

// blockingConn hides ConnWithTimeout from the waiter, which then refuses
// the partition: each wait blocks on a connection of its own.
type blockingConn struct{ redis.Conn }

func (c blockingConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	return redis.DoContext(c.Conn, ctx, cmd, args...)
}

func (c blockingConn) ReceiveContext(ctx context.Context) (any, error) {
	return redis.ReceiveContext(c.Conn, ctx)
}

// idleModes are the setups the idle benchmarks compare: member is one
// group member given the 64 queues, with the shared waiter.
var idleModes = []struct {
	name          string
	shared, group bool
}{{"waiter=shared", true, false}, {"waiter=off", false, false}, {"member", true, true}}

// idleBench starts 64 idle pools over a pool of their own, and returns
// their queue, its server, the pool's open connections and where the
// pools send each task's start.
func idleBench(b *testing.B, shared, group bool) (*Queue, *testServer, *countedDialer, chan time.Time) {
	b.Helper()
	if testRedisURL == "" {
		b.Skip("needs a real redis-server (QUEUE_TEST_REDIS_URL)")
	}
	logBackend(b)
	s := newTestServers(b, 1)[0]
	pool, d := countedPool(s.url, 16)
	if !shared {
		dial := pool.DialContext
		pool.DialContext = func(ctx context.Context) (redis.Conn, error) {
			c, err := dial(ctx)
			if err != nil {
				return nil, err
			}
			return blockingConn{c}, nil
		}
	}
	started := make(chan time.Time, 64)
	q := idleAnalysers(b, pool, 64, group, func(int) { started <- time.Now() })
	keys := make([]any, 64)
	for qi := range keys {
		keys[qi] = newQueueKeys(q.cfg.Prefix, 0, qi).lease
	}
	for {
		if n, _ := redis.Int(s.do(b, "EXISTS", keys...), nil); n == 64 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // past the start: recovery, the first claims
	return q, s, d, started
}

// BenchmarkIdlePickup measures the time from AddTask to the start of the
// analyse function on one of 64 idle pools, a task at a time, each to the
// next queue in turn (so to a pool idle since its last one), and reports
// its median and 99th percentile in microseconds.
func BenchmarkIdlePickup(b *testing.B) {
	for _, m := range idleModes {
		b.Run(m.name, func(b *testing.B) {
			q, _, _, started := idleBench(b, m.shared, m.group)
			ctx := context.Background()
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				time.Sleep(2 * time.Millisecond) // let the last pool settle back into its wait
				t0 := time.Now()
				if _, err := q.AddTask(ctx, uint64(i%64), benchPayload); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, (<-started).Sub(t0))
			}
			b.StopTimer()
			reportLatency(b, lat)
		})
	}
}

// BenchmarkIdleCPU measures, with the 64 pools idle, the CPU time this
// process and the server use per second of wall time, the connections the
// pools hold (their pool's idle ones included: MaxIdle 16) and the
// server's blocked clients (the medians of a sample per op, one op every
// 100ms: run it with -benchtime 30x for 3s, on a server of its own).
func BenchmarkIdleCPU(b *testing.B) {
	for _, m := range idleModes {
		b.Run(m.name, func(b *testing.B) {
			q, s, d, _ := idleBench(b, m.shared, m.group)
			m := newCPUMeter(q)
			var conns, blocked []int
			b.ResetTimer()
			start := time.Now()
			m.start()
			for range b.N {
				time.Sleep(100 * time.Millisecond)
				conns = append(conns, d.count())
				blocked = append(blocked, blockedClients(b, s))
			}
			m.stop()
			wall := time.Since(start)
			b.StopTimer()
			if m.selfOK {
				b.ReportMetric(float64(m.self)/float64(time.Millisecond)/wall.Seconds(), "cpu-ms/s")
			}
			if m.redisOK {
				b.ReportMetric(float64(m.redis)/float64(time.Millisecond)/wall.Seconds(), "redis-cpu-ms/s")
			}
			slices.Sort(conns)
			slices.Sort(blocked)
			b.ReportMetric(float64(conns[len(conns)/2]), "conns")
			b.ReportMetric(float64(blocked[len(blocked)/2]), "blocked")
		})
	}
}

// blockedClients returns the server's INFO blocked_clients.
func blockedClients(b *testing.B, s *testServer) int {
	b.Helper()
	info, err := redis.String(s.do(b, "INFO", "clients"), nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "blocked_clients:"); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return -1
}
