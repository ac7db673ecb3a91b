package queue

import "testing"

// BenchmarkDispatch is the fetcher's hand-over of one claim to its
// workers under DispatchByOrder: 2,900 tasks of 1,000 OrderIDs to 64
// workers' sets, whose lines are emptied between claims (not timed).
func BenchmarkDispatch(b *testing.B) {
	const workers, orders, claim = 64, 1000, 2900
	s := &session{cfg: PoolConfig{MaxWorkers: workers, Prefetch: 4096}, n: workers}
	for i := range workers {
		s.workers = append(s.workers, &worker{s: s, index: i, set: newLineSet(s, false)})
	}
	tasks := make([]claimed, claim)
	for i := range tasks {
		tasks[i] = claimed{Task: Task{ID: "01234567890123456789", OrderID: uint64(i % orders), Payload: benchPayload}, seq: int64(i + 1)}
	}
	empty := func() {
		for _, w := range s.workers {
			ls := w.set
			for _, o := range ls.orders {
				clear(o.tasks)
				o.tasks, o.head, o.state = o.tasks[:0], 0, lineIdle
			}
			clear(ls.runnable)
			ls.runnable, ls.runHead = ls.runnable[:0], 0
		}
		s.lines.Store(0)
	}
	b.ReportAllocs()
	for b.Loop() {
		s.dispatch(tasks)
		b.StopTimer()
		empty()
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*claim), "ns/task")
}
