package queue

import (
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
		refs, recs := a.take(nil)
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
