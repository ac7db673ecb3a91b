package queue

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Status through a task's life, and the history that Config.Retention
// keeps.

// Many workers acknowledge at once: every task's status record is its own.
func TestStatusHistoryRecordsMatchTheirTasks(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 1, Config{Retention: time.Minute})
	ctx := bounded(t)
	const orders, per = 64, 6
	ids := addAll(t, q, orderTasks(orders, per))
	failOnce := func(i int) bool { return i%3 == 0 }
	index := map[string]int{}
	for i, id := range ids {
		index[id] = i
	}
	require.NoError(t, q.AnalysePool(ctx, 0, PoolConfig{Workers: 16, ExitOnEmpty: true, OnError: func(error) {},
		Backoff: func(int) time.Duration { return time.Millisecond }},
		func(_ context.Context, task Task) error {
			if failOnce(index[task.ID]) && task.Attempt == 1 {
				return fmt.Errorf("once")
			}
			return nil
		}))
	wrong := 0
	for i, id := range ids {
		st, err := q.Status(ctx, uint64(i%orders), id)
		require.NoError(t, err)
		want := 1
		if failOnce(i) {
			want = 2
		}
		if st.State != StateDone || st.Attempt != want {
			wrong++
			if wrong <= 5 {
				t.Errorf("task %d: %v after %d attempts, want done after %d", i, st.State, st.Attempt, want)
			}
		}
	}
	assert.Zero(t, wrong, "status records that are not their task's")
}

// The acker keeps each acknowledged task's status record beside its
// pending field, however many workers hand it tasks at once.
func TestAckerKeepsRecordsInStepWithFields(t *testing.T) {
	t.Parallel()
	a := newAcker(&session{st: &store{retention: time.Minute}})
	const workers, each = 8, 2000
	base := time.UnixMilli(1_700_000_000_000)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				n := w*each + i
				c := claimed{Task: Task{ID: fmt.Sprintf("%020d", n), AddedAt: base, Attempt: n}}
				c.field = c.ID
				a.ack(c, base)
			}
		}()
	}
	wg.Wait()
	fields, recs, _ := a.take(nil)
	require.Len(t, fields, workers*each)
	require.Len(t, recs, len(fields))
	wrong := 0
	for i, f := range fields {
		h, err := decodeHistory(recs[i])
		require.NoError(t, err)
		if fmt.Sprintf("%020d", h.attempts) != f {
			wrong++
		}
	}
	assert.Zero(t, wrong, "records beside another task's field")
}
