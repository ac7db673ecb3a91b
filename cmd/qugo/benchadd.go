package main

import (
	"context"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qugo/queue"
)

// benchSmooth is the most of the -rate one AddTasks call carries: a batch
// of more would arrive as a burst the latency figures then measure.
const benchSmooth = 10 * time.Millisecond

// benchPlan is how bench adds its tasks: which producer adds which, in
// batches of how many, and when each batch is due.
//
// Producer p adds the tasks of the OrderIDs k with k % P == p, each
// OrderID's in order, round by round (every OrderID's first task, then
// every second one, ...). With a rate, the producers take turns: the
// batches, in the order round by round (the first batch of every
// producer, then every second one, ...), cover the run's tasks one after
// another, and a batch is due when its first task is, at rate tasks a
// second over all producers. So the load arrives one batch at a time,
// each worth at most benchSmooth, whatever the number of producers.
type benchPlan struct {
	n, orders, producers int
	batch                int     // tasks per AddTasks call
	rate                 float64 // tasks/s over all producers; 0: no pacing
	counts               []int   // tasks each producer adds
}

func newBenchPlan(o benchOptions) benchPlan {
	pl := benchPlan{n: o.n, orders: min(o.orders, o.n), batch: o.batch, rate: o.rate}
	pl.producers = min(o.producers, pl.orders)
	if pl.rate > 0 {
		pl.batch = max(1, min(pl.batch, int(pl.rate*benchSmooth.Seconds())))
	}
	pl.counts = make([]int, pl.producers)
	for k := range pl.orders {
		pl.counts[k%pl.producers] += pl.total(k)
	}
	return pl
}

// total returns the number of tasks of OrderID k.
func (pl benchPlan) total(k int) int {
	n := pl.n / pl.orders
	if k < pl.n%pl.orders {
		n++
	}
	return n
}

// due returns when producer p's j-th batch (from 0) is due, after the
// start; 0 without a rate. It is the time the batch's first task is due
// at: the tasks of the batches before it in the producers' turns, over
// the rate.
func (pl benchPlan) due(p, j int) time.Duration {
	if pl.rate <= 0 {
		return 0
	}
	before := 0
	for q, c := range pl.counts {
		before += min(c, j*pl.batch) // the earlier rounds
		if q < p {
			before += min(max(c-j*pl.batch, 0), pl.batch) // this round
		}
	}
	return time.Duration(float64(before) / pl.rate * float64(time.Second))
}

// benchSend adds one batch of tasks once its due time has come.
type benchSend func(ctx context.Context, due time.Time, batch []queue.Task) error

// addBenchTasks adds the tasks of pl with pl.producers goroutines, each
// batch through send with its due time after start, and returns how many
// were added (send returned nil). The first error stops every producer
// and is returned.
func addBenchTasks(ctx context.Context, pl benchPlan, size int, start time.Time, send benchSend) (added int64, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		count  atomic.Int64
		failed sync.Once
		first  error
		wg     sync.WaitGroup
	)
	for p := range pl.producers {
		wg.Go(func() {
			buf := make([]byte, pl.batch*size)
			batch := make([]queue.Task, 0, pl.batch)
			j := 0 // batches sent
			flush := func() bool {
				if err := send(ctx, start.Add(pl.due(p, j)), batch); err != nil {
					failed.Do(func() { first = err; cancel() })
					return false
				}
				count.Add(int64(len(batch)))
				batch, j = batch[:0], j+1
				return true
			}
			for seq := 1; seq <= pl.total(0); seq++ {
				for k := p; k < pl.orders; k += pl.producers {
					if seq > pl.total(k) {
						break // total(k) only falls as k grows
					}
					payload := benchFill(buf[len(batch)*size:(len(batch)+1)*size], uint32(pl.total(k)), uint32(seq))
					batch = append(batch, queue.Task{OrderID: uint64(k), Payload: payload})
					if len(batch) == cap(batch) && !flush() {
						return
					}
				}
			}
			if len(batch) > 0 {
				flush()
			}
		})
	}
	wg.Wait()
	return count.Load(), first
}

// benchFill writes a bench payload (see benchMagic) into p, the enqueue
// time left for the sender to stamp, and returns p.
func benchFill(p []byte, total, place uint32) []byte {
	copy(p, benchMagic)
	binary.BigEndian.PutUint32(p[len(benchMagic):], total)
	binary.BigEndian.PutUint32(p[len(benchMagic)+4:], place)
	return p
}

// queueSend returns the send of a real bench: it waits for the due time,
// stamps the enqueue time into every payload and adds the batch to q.
func queueSend(q *queue.Queue) benchSend {
	return func(ctx context.Context, due time.Time, batch []queue.Task) error {
		if wait := time.Until(due); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		}
		now := time.Now().UnixNano()
		for _, t := range batch {
			binary.BigEndian.PutUint64(t.Payload[len(benchMagic)+8:], uint64(now))
		}
		_, err := q.AddTasks(ctx, batch)
		return err
	}
}
