package queue

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// With a retention, every batch the acker hands out pairs each pending
// field with its own task's status record, however the workers' acks and
// the acker's takes interleave.
func TestAckerKeepsEachFieldWithItsStatusRecord(t *testing.T) {
	t.Parallel()
	a := newAcker(&session{st: &store{retention: time.Hour}})
	const workers, per = 4, 20000
	var wg sync.WaitGroup
	for g := range workers {
		wg.Go(func() {
			for i := range per {
				n := g*per + i
				a.ack(g, claimed{Task: Task{ID: strconv.Itoa(n), Attempt: n + 1}, field: strconv.Itoa(n)}, time.Time{})
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); a.close(); close(done) }()
	seen, wrong := 0, 0
	for {
		refs, recs, _ := a.take()
		if len(refs) == 0 {
			break
		}
		require.Equal(t, len(refs), len(recs), "a batch's status records are not in step with its tasks")
		for i, f := range refs {
			n, err := strconv.Atoi(f.id)
			require.NoError(t, err)
			if recs[i].attempts != n+1 {
				wrong++
			}
		}
		seen += len(refs)
	}
	<-done
	assert.Equal(t, workers*per, seen)
	assert.Zero(t, wrong, "tasks acknowledged with another task's status record")
}

// A task a worker finished is acknowledged while the same worker runs a
// long task next: the ack does not wait for the worker to come back (a
// batch of acks a worker kept to itself would).
func TestFinishedTaskAcknowledgedWhileItsWorkerRunsAnother(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	addAll(t, q, []Task{{OrderID: 1, Payload: []byte("quick")}, {OrderID: 2, Payload: []byte("long")}})
	long, release := make(chan struct{}), make(chan struct{})
	errc := runPool(ctx, q, PoolConfig{Workers: 1, ExitOnEmpty: true}, func(_ context.Context, task Task) error {
		if string(task.Payload) == "long" {
			close(long)
			<-release
		}
		return nil
	})
	<-long
	stats := func() AnalyserStats {
		st, err := q.Stats(ctx)
		require.NoError(t, err)
		return st[0]
	}
	require.Eventually(t, func() bool { return stats().Processed == 1 }, 10*time.Second, 5*time.Millisecond,
		"the quick task is not acknowledged while the long one runs")
	assert.EqualValues(t, 1, stats().Pending, "the long task is pending")
	close(release)
	require.NoError(t, <-errc)
	assert.EqualValues(t, 2, stats().Processed)
	assert.Zero(t, stats().Pending)
}

// An acker that found nothing and waits is woken by the next ack, however
// the ack and its wait interleave: each ack here is taken before the next
// is made, so a wake lost once leaves take waiting for good.
func TestAckerWakesForEveryAck(t *testing.T) {
	t.Parallel()
	a := newAcker(&session{st: &store{}})
	const n = 20000
	taken := make(chan int, 1)
	go func() {
		for {
			refs, _, _ := a.take()
			if len(refs) == 0 {
				close(taken)
				return
			}
			taken <- len(refs)
		}
	}()
	for i := range n {
		a.ack(i, claimed{Task: Task{ID: strconv.Itoa(i)}}, time.Time{})
		select {
		case got := <-taken:
			require.Equal(t, 1, got)
		case <-time.After(30 * time.Second):
			t.Fatalf("ack %d was never taken", i)
		}
	}
	a.close()
	_, open := <-taken
	assert.False(t, open, "take returned tasks after the close")
}

// unconfirmed counts every ack Redis has not confirmed: those still with
// the workers' shards and those taken and on their way.
func TestAckerCountsUnconfirmedAcks(t *testing.T) {
	t.Parallel()
	a := newAcker(&session{st: &store{}})
	for i := range 5 {
		a.ack(i, claimed{Task: Task{ID: strconv.Itoa(i)}}, time.Time{})
	}
	assert.EqualValues(t, 5, a.unconfirmed(), "acks handed to the acker")
	refs, _, _ := a.take()
	require.Len(t, refs, 5)
	assert.EqualValues(t, 5, a.unconfirmed(), "acks taken, not confirmed")
	a.ack(0, claimed{Task: Task{ID: "6"}}, time.Time{})
	assert.EqualValues(t, 6, a.unconfirmed())
	a.taken.Add(-5) // what send does once Redis confirmed them
	assert.EqualValues(t, 1, a.unconfirmed())
}
