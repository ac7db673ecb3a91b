package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/qugo/queue"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sentBatch is one AddTasks call of a bench: when it was due and what it
// carried.
type sentBatch struct {
	due   time.Duration // after the start
	tasks []sentTask
}

type sentTask struct {
	order        uint64
	total, place uint32
}

// planBatches runs addBenchTasks with a send that records each batch
// instead of waiting and adding it.
func planBatches(t *testing.T, o benchOptions) []sentBatch {
	t.Helper()
	start := time.Unix(1e9, 0)
	var mu sync.Mutex
	var got []sentBatch
	added, err := addBenchTasks(context.Background(), newBenchPlan(o), o.size, start,
		func(_ context.Context, due time.Time, batch []queue.Task) error {
			b := sentBatch{due: due.Sub(start)}
			for _, task := range batch {
				b.tasks = append(b.tasks, sentTask{task.OrderID,
					binary.BigEndian.Uint32(task.Payload[len(benchMagic):]), binary.BigEndian.Uint32(task.Payload[len(benchMagic)+4:])})
			}
			mu.Lock()
			got = append(got, b)
			mu.Unlock()
			return nil
		})
	require.NoError(t, err)
	require.EqualValues(t, o.n, added)
	return got
}

// With -rate, the producers together hold the rate: the batches, taken
// by due time, follow each other at the rate, none early, whatever the
// number of producers; and each is small enough (10ms of the rate, or one
// task) that the load arrives smoothly.
func TestBenchPacing(t *testing.T) {
	t.Parallel()
	for _, o := range []benchOptions{
		{n: 2000, orders: 100, producers: 4, batch: 100, rate: 200},
		{n: 800, orders: 1000, producers: 8, batch: 100, rate: 100},
		{n: 1003, orders: 7, producers: 3, batch: 10, rate: 1000}, // uneven shares
		{n: 50000, orders: 1000, producers: 4, batch: 100, rate: 20000},
		{n: 30, orders: 30, producers: 4, batch: 100, rate: 5}, // under one task per 10ms
	} {
		name := fmt.Sprintf("n=%d/orders=%d/producers=%d/rate=%v", o.n, o.orders, o.producers, o.rate)
		o.size = benchHeader
		got := planBatches(t, o)
		slices.SortStableFunc(got, func(a, b sentBatch) int { return int(a.due - b.due) })
		most := max(1, min(o.batch, int(o.rate/100)))
		sent := 0
		for i, b := range got {
			// Due when its first task is, at the rate over all producers.
			want := time.Duration(float64(sent) / o.rate * float64(time.Second))
			if !assert.InDelta(t, want, b.due, float64(time.Microsecond), "%s: batch %d", name, i) {
				break
			}
			assert.LessOrEqual(t, len(b.tasks), most, "%s: batch %d", name, i)
			sent += len(b.tasks)
		}
		assert.Equal(t, o.n, sent, name)
		// The last batch is due about when the n-th task is: the add rate
		// is the -rate.
		last := got[len(got)-1].due
		assert.InDelta(t, float64(o.n-len(got[len(got)-1].tasks))/o.rate, last.Seconds(), 1e-6, name)
		checkPlanOrder(t, name, o, got)
	}
}

// Without -rate every batch is due at once, -batch tasks each but the
// last of a producer.
func TestBenchPlanUnpaced(t *testing.T) {
	t.Parallel()
	o := benchOptions{n: 1000, orders: 30, producers: 4, batch: 64, size: benchHeader}
	got := planBatches(t, o)
	full := 0
	for _, b := range got {
		assert.Zero(t, b.due)
		if len(b.tasks) == o.batch {
			full++
		}
	}
	assert.GreaterOrEqual(t, full, len(got)-o.producers)
	checkPlanOrder(t, "unpaced", o, got)
}

// checkPlanOrder checks that every task was sent once, each OrderID's in
// order of place, by the due times of their batches.
func checkPlanOrder(t *testing.T, name string, o benchOptions, got []sentBatch) {
	t.Helper()
	slices.SortStableFunc(got, func(a, b sentBatch) int { return int(a.due - b.due) })
	next := map[uint64]uint32{}
	for _, b := range got {
		for _, task := range b.tasks {
			next[task.order]++
			if task.place != next[task.order] {
				t.Errorf("%s: OrderID %d: place %d sent where %d was due", name, task.order, task.place, next[task.order])
				return
			}
		}
	}
	orders := min(o.orders, o.n)
	assert.Len(t, next, orders, name)
	for k, n := range next {
		assert.EqualValues(t, newBenchPlan(o).total(int(k)), n, "%s: OrderID %d", name, k)
	}
}

// The first failed send stops every producer, and is what is returned.
func TestBenchAddStopsAtTheFirstError(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	var mu sync.Mutex
	calls := 0
	o := benchOptions{n: 10000, orders: 100, producers: 4, batch: 10, size: benchHeader}
	added, err := addBenchTasks(context.Background(), newBenchPlan(o), o.size, time.Now(),
		func(ctx context.Context, _ time.Time, batch []queue.Task) error {
			mu.Lock()
			calls++
			n := calls
			mu.Unlock()
			switch {
			case n < 3:
				return nil
			case n == 3:
				return boom
			}
			// A batch sent after the error: it waits for the stop, which
			// must come (else the test times out), and adds nothing.
			<-ctx.Done()
			return ctx.Err()
		})
	assert.Equal(t, boom, err)
	assert.EqualValues(t, 2*o.batch, added, "the two batches before the error, none after")
}
