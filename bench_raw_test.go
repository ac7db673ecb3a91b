package queue

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// The raw-Redis baselines: the work of the library's benchmarks done with
// bare redigo commands, so that one run gives the ratio to Redis's own
// speed (see bench_test.go).

// rawKey returns a key of the raw benchmarks' own, deleted when b ends.
func rawKey(b *testing.B, s *testServer) string {
	key := testPrefix(b) + ":raw"
	b.Cleanup(func() {
		c := s.pool.Get()
		c.Do("DEL", key)
		c.Close()
	})
	return key
}

// BenchmarkRawLPUSH is the baseline of BenchmarkAddTask: one bare LPUSH of
// the payload per call, a pooled connection per call, as a hand-written
// producer would do it.
func BenchmarkRawLPUSH(b *testing.B) {
	push := func(b *testing.B, pool *redis.Pool, key string) {
		c := pool.Get()
		_, err := c.Do("LPUSH", key, benchPayload)
		c.Close()
		if err != nil {
			b.Error(err)
		}
	}
	b.Run("goroutines=1", func(b *testing.B) {
		_, servers := benchQueue(b, 1)
		key := rawKey(b, servers[0])
		pool := servers[0].pool
		push(b, pool, key)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			push(b, pool, key)
		}
		reportRate(b, b.N, b.Elapsed(), "tasks/s")
	})
	b.Run("goroutines=64", func(b *testing.B) {
		_, servers := benchQueue(b, 1)
		key := rawKey(b, servers[0])
		pool := servers[0].pool
		push(b, pool, key)
		setGoroutines(b, 64)
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				push(b, pool, key)
			}
		})
		reportRate(b, b.N, b.Elapsed(), "tasks/s")
	})
}

// BenchmarkRawLPUSHBatch is the baseline of BenchmarkAddTasks: one
// variadic LPUSH of batch payloads per round trip; b.N counts tasks.
func BenchmarkRawLPUSHBatch(b *testing.B) {
	for _, n := range benchBatches {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) {
			_, servers := benchQueue(b, 1)
			key := rawKey(b, servers[0])
			pool := servers[0].pool
			args := []any{key}
			for i := 0; i < n; i++ {
				args = append(args, benchPayload)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for done := 0; done < b.N; {
				k := min(n, b.N-done)
				c := pool.Get()
				_, err := c.Do("LPUSH", args[:k+1]...)
				c.Close()
				if err != nil {
					b.Fatal(err)
				}
				done += k
			}
			reportRate(b, b.N, b.Elapsed(), "tasks/s")
		})
	}
}

// BenchmarkRawRPOP is the baseline of BenchmarkClaimAck: RPOP with a count
// from a list of payloads, with no pending record and no ack.
func BenchmarkRawRPOP(b *testing.B) {
	for _, n := range claimBatches {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) {
			q, servers := benchQueue(b, 1)
			key := rawKey(b, servers[0])
			pool := servers[0].pool
			rawFill(b, pool, key, b.N)
			cpu := newCPUMeter(q)
			b.ReportAllocs()
			b.ResetTimer()
			cpu.start()
			for done := 0; done < b.N; {
				c := pool.Get()
				vs, err := redis.ByteSlices(c.Do("RPOP", key, min(n, b.N-done)))
				c.Close()
				if err != nil {
					b.Fatal(err)
				}
				done += len(vs)
			}
			cpu.stop()
			reportRate(b, b.N, b.Elapsed(), "tasks/s")
			cpu.report(b, b.N)
		})
	}
}

// rawFill LPUSHes n payloads to key, 1000 per LPUSH, in one pipeline.
func rawFill(b *testing.B, pool *redis.Pool, key string, n int) {
	b.Helper()
	c := pool.Get()
	defer c.Close()
	sent := 0
	for n > 0 {
		k := min(n, 1000)
		args := []any{key}
		for i := 0; i < k; i++ {
			args = append(args, benchPayload)
		}
		if err := c.Send("LPUSH", args...); err != nil {
			b.Fatal(err)
		}
		sent++
		n -= k
	}
	if err := c.Flush(); err != nil {
		b.Fatal(err)
	}
	for ; sent > 0; sent-- {
		if _, err := c.Receive(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawDrain is the baseline of BenchmarkDrain: the same payloads
// pushed with pipelined LPUSHes of 1000, then taken with RPOP 1000 until
// the list is empty, with nothing recorded and nothing acknowledged.
func BenchmarkRawDrain(b *testing.B) {
	_, servers := benchQueue(b, 1)
	key := rawKey(b, servers[0])
	pool := servers[0].pool
	n := drainSize()
	var adding, draining time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		rawFill(b, pool, key, n)
		mid := time.Now()
		c := pool.Get()
		for got := 0; got < n; {
			vs, err := redis.ByteSlices(c.Do("RPOP", key, 1000))
			if err != nil {
				b.Fatal(err)
			}
			got += len(vs)
		}
		c.Close()
		adding += mid.Sub(start)
		draining += time.Since(mid)
	}
	reportRate(b, b.N*n, adding+draining, "tasks/s")
	reportRate(b, b.N*n, draining, "drain-tasks/s")
}

// BenchmarkRawLatency is the baseline of BenchmarkLatency: the time from
// an LPUSH to the return of a BRPOP blocked on another connection.
func BenchmarkRawLatency(b *testing.B) {
	_, servers := benchQueue(b, 1)
	key := rawKey(b, servers[0])
	pool := servers[0].pool
	popped := make(chan time.Time)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		c := pool.Get()
		defer c.Close()
		for {
			r, err := c.Do("BRPOP", key, "0.1")
			if err != nil {
				b.Error(err)
			}
			if r == nil { // timed out (or failed): look for the stop
				select {
				case <-stop:
					return
				default:
					continue
				}
			}
			select {
			case popped <- time.Now():
			case <-stop:
				return
			}
		}
	})
	defer wg.Wait()
	defer close(stop)
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		c := pool.Get()
		_, err := c.Do("LPUSH", key, benchPayload)
		c.Close()
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, (<-popped).Sub(t0))
	}
	b.StopTimer()
	reportLatency(b, lat)
}
