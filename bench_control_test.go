package queue

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// BenchmarkRetention measures what keeping finished tasks' status costs:
// the end-to-end drain of BenchmarkDrain (64 workers) without a retention
// and with one, side by side in one run, and with one, the Redis memory
// each kept task takes (retained-bytes/task: MEMORY USAGE of the history
// hashes over the tasks they hold, on a real server).
func BenchmarkRetention(b *testing.B) {
	for _, keep := range []time.Duration{0, time.Hour} {
		b.Run(fmt.Sprintf("retention=%v", keep > 0), func(b *testing.B) {
			q, servers := benchQueueWith(b, 1, Config{Retention: keep})
			b.Cleanup(func() { dropHistory(q) })
			benchDrain(b, q, PoolConfig{Workers: 64}, drainSize(), nil)
			if keep == 0 || testRedisURL == "" {
				return
			}
			bytes, n := historyMemory(b, q, servers[0])
			if n > 0 {
				b.ReportMetric(float64(bytes)/float64(n), "retained-bytes/task")
			}
		})
	}
}

// historyKeys returns the history hashes of q's queues on s.
func historyKeys(q *Queue, s *testServer) []string {
	c := s.pool.Get()
	defer c.Close()
	var out []string
	for qi := range q.cfg.Queues {
		k := newQueueKeys(q.cfg.Prefix, 0, qi)
		keys, _ := redis.Strings(c.Do("KEYS", k.history+"*"))
		out = append(out, keys...)
	}
	return out
}

// historyMemory returns the bytes the history hashes of q take on s
// (MEMORY USAGE, every field counted), and how many records they hold.
func historyMemory(b *testing.B, q *Queue, s *testServer) (bytes, n int64) {
	c := s.pool.Get()
	defer c.Close()
	for _, key := range historyKeys(q, s) {
		m, err := redis.Int64(c.Do("MEMORY", "USAGE", key, "SAMPLES", 0))
		if err != nil {
			b.Fatal(err)
		}
		l, _ := redis.Int64(c.Do("HLEN", key))
		bytes += m
		n += l
	}
	return bytes, n
}

// dropHistory deletes the history hashes a benchmark left.
func dropHistory(q *Queue) {
	for _, p := range q.parts {
		c := p.pool.Get()
		for qi := range q.cfg.Queues {
			k := newQueueKeys(q.cfg.Prefix, p.index, qi)
			keys, _ := redis.Values(c.Do("KEYS", k.history+"*"))
			if len(keys) > 0 {
				c.Do("DEL", keys...)
			}
		}
		c.Close()
	}
}

// BenchmarkScheduleLateness measures how late scheduled tasks start on an
// idle pool: 200 tasks per op, due over the next second, each on its own
// OrderID, added while the pool waits; it reports the median and p99 of
// start less due time, in ms (late-p50-ms, late-p99-ms).
func BenchmarkScheduleLateness(b *testing.B) {
	q, _ := benchQueue(b, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var lateness []time.Duration
	due := map[string]time.Time{}
	started := make(chan struct{}, 1000)
	fn := func(_ context.Context, t Task) error {
		now := time.Now()
		mu.Lock()
		if d, ok := due[t.ID]; ok {
			lateness = append(lateness, now.Sub(d))
		}
		mu.Unlock()
		started <- struct{}{}
		return nil
	}
	errc := make(chan error, 1)
	go func() {
		errc <- q.AnalysePool(ctx, 0, PoolConfig{Workers: 8, Logger: slog.New(slog.DiscardHandler)}, fn)
	}()
	const perOp = 200
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		time.Sleep(50 * time.Millisecond) // the pool is idle
		base := time.Now().Add(20 * time.Millisecond)
		for j := range perOp {
			at := base.Add(time.Duration(j) * time.Second / perOp)
			mu.Lock() // the task may start before its ID is known here: hold fn back
			id, err := q.AddTaskAt(ctx, uint64(i*perOp+j), at, benchPayload)
			if err != nil {
				mu.Unlock()
				b.Fatal(err)
			}
			due[id] = time.UnixMilli(at.UnixMilli()) // as Redis holds it
			mu.Unlock()
		}
		for range perOp {
			<-started
		}
	}
	b.StopTimer()
	cancel()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	slices.Sort(lateness)
	if len(lateness) == 0 {
		b.Fatal("no task ran")
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(lateness[len(lateness)/2]), "late-p50-ms")
	b.ReportMetric(ms(lateness[len(lateness)*99/100]), "late-p99-ms")
	b.ReportMetric(ms(lateness[0]), "late-min-ms")
}
