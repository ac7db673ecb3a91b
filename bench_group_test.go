package queue

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// BenchmarkGroupDrain compares three members of a consumer group over 12
// queues on one server with the same three processes (Queues of their
// own) given four analysers each by hand, in the same run: rounds
// alternate, each adds 100,000 tasks over 1,000 OrderIDs to running pools
// and times until every task is acknowledged. It reports both rates (the
// median round) and group/ids, the ratio of the medians.
func BenchmarkGroupDrain(b *testing.B) {
	logBackend(b)
	const procs, queues, perQueue = 3, 12, 4
	n := drainSize()
	servers := newTestServers(b, 1)
	var rates [2][]float64 // ids, group
	for i := 0; i < b.N; i++ {
		for mode := range 2 {
			rates[mode] = append(rates[mode], groupDrainRound(b, servers[0], procs, queues, perQueue, n, mode == 1))
		}
	}
	med := func(v []float64) float64 { s := slices.Clone(v); slices.Sort(s); return s[len(s)/2] }
	b.ReportMetric(med(rates[0]), "ids-tasks/s")
	b.ReportMetric(med(rates[1]), "group-tasks/s")
	b.ReportMetric(med(rates[1])/med(rates[0]), "group/ids")
	b.ReportMetric(0, "ns/op")
}

// groupDrainRound runs one round and returns its rate in tasks/s.
func groupDrainRound(b *testing.B, s *testServer, procs, queues, perQueue, n int, group bool) float64 {
	b.Helper()
	prefix := testPrefix(b)
	qs := make([]*Queue, procs)
	for i := range qs {
		pool := testPool(s.url)
		pool.MaxIdle = 64
		q, err := New([]*redis.Pool{pool}, Config{Prefix: prefix, Queues: queues})
		if err != nil {
			b.Fatal(err)
		}
		defer pool.Close()
		defer q.Close()
		qs[i] = q
	}
	defer func() {
		dropQueueKeys(qs[0])
		k := newGroupKeys(prefix, "bench")
		c := s.pool.Get()
		c.Do("DEL", k.members, k.info, k.assign, k.meta)
		c.Close()
	}()
	var done atomic.Int64
	fn := func(context.Context, Task) error { done.Add(1); return nil }
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, procs*perQueue)
	running := 0
	for i, q := range qs {
		pc := PoolConfig{Workers: 8, Logger: slog.New(slog.DiscardHandler), Owner: fmt.Sprint("m", i)} // a process each
		if group {
			running++
			go func() {
				errs <- q.JoinGroup(ctx, "bench", GroupConfig{Member: fmt.Sprint("m", i), Pool: pc}, fn)
			}()
			continue
		}
		for a := i * perQueue; a < (i+1)*perQueue; a++ {
			running++
			go func() { errs <- q.AnalysePool(ctx, a, pc, fn) }()
		}
	}
	// Every queue owned before the clock starts.
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := qs[0].Stats(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		owners := map[string]int{}
		for _, r := range st {
			if r.Owner != "" {
				owners[r.Owner]++
			}
		}
		if len(owners) == procs && func() bool {
			for _, c := range owners {
				if c != perQueue {
					return false
				}
			}
			return true
		}() {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("queues not owned: %v", owners)
		}
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	fill(b, qs[0], n)
	for done.Load() < int64(n) {
		time.Sleep(100 * time.Microsecond)
	}
	took := time.Since(start)
	cancel()
	for range running {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	return float64(n) / took.Seconds()
}
