package queue

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// BenchmarkRecovery measures what a new owner does before it takes new
// work after a crash: it reads a queue's pending tasks back and puts them
// back at the consuming end, in claim order. Each iteration claims
// pending tasks as a pool does (in place, 1000 a claim) and recovers them.
//
//	QUEUE_TEST_REDIS_URL=redis://127.0.0.1:6379 go test -run '^$' -bench Recovery -count 6
func BenchmarkRecovery(b *testing.B) {
	for _, n := range []int{1000, 8000} {
		b.Run("pending="+strconv.Itoa(n), func(b *testing.B) {
			q, _ := benchQueue(b, 1)
			ctx := context.Background()
			var busy time.Duration
			for b.Loop() {
				b.StopTimer()
				dropQueueKeys(q)
				fill(b, q, n)
				c, err := q.Consume(ctx, 0, ConsumerConfig{})
				if err != nil {
					b.Fatal(err)
				}
				c.st.native.Store(true)
				c.st.idsLater = true
				for got := 0; got < n; {
					ts, err := c.Claim(ctx, 1000)
					if err != nil || len(ts) == 0 {
						b.Fatalf("claim: %d tasks, %v", len(ts), err)
					}
					got += len(ts)
				}
				b.StartTimer()
				start := time.Now()
				back, _, err := c.st.recover(ctx)
				busy += time.Since(start)
				b.StopTimer()
				if err != nil || back != n {
					b.Fatalf("recovered %d of %d: %v", back, n, err)
				}
				if err := c.Release(ctx); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(n)*float64(b.N)/busy.Seconds(), "tasks/s")
		})
	}
}
