package queue

import (
	"context"
	"testing"
	"time"
)

// BenchmarkWorkerRun is the workers' side of a drain, on one goroutine:
// each of 64 workers runs the tasks one claim of 2,900 tasks of 1,000
// OrderIDs gave it under DispatchByOrder (handed over untimed), with an
// analyse function that does nothing, and the acker takes their acks
// meanwhile, as in a drain. ns/task is the library's own cost of running
// a task, next to BenchmarkDispatch's of handing it over.
func BenchmarkWorkerRun(b *testing.B) {
	const workers, orders, claim = 64, 1000, 2900
	cfg, err := PoolConfig{Workers: workers}.withDefaults()
	if err != nil {
		b.Fatal(err)
	}
	st := &store{acquired: time.Now(), part: &partition{}} // one server: no primary to watch
	cfg.LeaseTTL = time.Hour
	s := newSession(context.Background(), st, cfg, func(context.Context, Task) error { return nil })
	taken := make(chan struct{})
	go func() {
		defer close(taken)
		for {
			refs, _, _ := s.acks.take()
			if len(refs) == 0 {
				return
			}
			s.acks.taken.Add(-int64(len(refs)))
		}
	}()
	tasks := make([]claimed, claim)
	batch := &claimBatch{}
	for i := range tasks {
		tasks[i] = claimed{Task: Task{ID: "01234567890123456789", OrderID: uint64(i % orders), Payload: benchPayload, Attempt: 1}, seq: int64(i + 1), claim: batch, place: int32(i)}
	}
	ran := 0
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		s.dispatch(tasks)
		b.StartTimer()
		for _, w := range s.workers {
			now := w.now()
			o, t, _, _ := w.set.next(w, now)
			for o != nil {
				o, t, now = w.runOne(o, t, now)
				ran++
			}
		}
	}
	b.StopTimer()
	if ran != b.N*claim {
		b.Fatalf("ran %d tasks, want %d", ran, b.N*claim)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*claim), "ns/task")
	s.acks.close()
	<-taken
	s.cancelTask()
	s.cancelLease()
}
