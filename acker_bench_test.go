package queue

import (
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkAckerAdd measures a worker's hand-over of a finished task to
// the acker, with every worker of the machine's cores handing tasks over
// at once and the acker taking them, as in a drain: each worker its own
// OrderIDs, as DispatchByOrder gives them to 64 workers.
func BenchmarkAckerAdd(b *testing.B) {
	a := newAcker(&session{st: &store{}})
	const workers = 64
	orders := make([][]uint64, workers)
	for id := uint64(0); ; id++ {
		w := workerOf(id, workers)
		if len(orders[w]) < 16 {
			orders[w] = append(orders[w], id)
		}
		full := true
		for _, o := range orders {
			full = full && len(o) == 16
		}
		if full {
			break
		}
	}
	taken := make(chan struct{})
	go func() {
		defer close(taken)
		for {
			refs, _, _ := a.take()
			if len(refs) == 0 {
				return
			}
			a.taken.Add(-int64(len(refs)))
		}
	}()
	var next atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := int(next.Add(1)-1) % workers
		c := claimed{Task: Task{ID: "00000000000000000000"}}
		for i := 0; pb.Next(); i++ {
			c.OrderID = orders[w][i%16]
			a.ack(c, time.Time{})
		}
	})
	b.StopTimer()
	a.close()
	<-taken
}
