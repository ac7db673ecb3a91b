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
				a.ack(claimed{Task: Task{ID: strconv.Itoa(n), Attempt: n + 1}, field: strconv.Itoa(n)}, time.Time{})
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); a.close(); close(done) }()
	seen, wrong := 0, 0
	for {
		refs, recs, _ := a.take(nil)
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
