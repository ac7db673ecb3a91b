package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// recorder collects what analyse functions saw, per OrderID.
type recorder struct {
	mu      sync.Mutex
	byOrder map[uint64][]string // payloads in start order
	running map[uint64]int
	overlap int
	starts  map[string]int // starts per task ID
}

func newRecorder() *recorder {
	return &recorder{byOrder: map[uint64][]string{}, running: map[uint64]int{}, starts: map[string]int{}}
}

func (r *recorder) begin(t Task) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.running[t.OrderID]++
	if r.running[t.OrderID] > 1 {
		r.overlap++
	}
	r.starts[t.ID]++
	r.byOrder[t.OrderID] = append(r.byOrder[t.OrderID], string(t.Payload))
}

func (r *recorder) end(t Task) {
	r.mu.Lock()
	r.running[t.OrderID]--
	r.mu.Unlock()
}

func TestPoolDrainsInOrder(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 1, Config{})
	ctx := context.Background()
	const orders, per = 50, 20
	var tasks []Task
	for i := 0; i < per; i++ {
		for o := 0; o < orders; o++ {
			tasks = append(tasks, Task{OrderID: uint64(o), Payload: []byte(fmt.Sprint(i))})
		}
	}
	_, err := q.AddTasks(ctx, tasks)
	require.NoError(t, err)
	rec := newRecorder()
	err = q.AnalysePool(ctx, 0, PoolConfig{Workers: 8, ExitOnEmpty: true}, func(ctx context.Context, task Task) error {
		rec.begin(task)
		defer rec.end(task)
		return nil
	})
	require.NoError(t, err)
	assert.Len(t, rec.byOrder, orders)
	for o, got := range rec.byOrder {
		want := make([]string, per)
		for i := range want {
			want[i] = fmt.Sprint(i)
		}
		assert.Equal(t, want, got, "order %d", o)
	}
	assert.Zero(t, rec.overlap)
	st, err := q.Stats(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, orders*per, st[0].Processed)
	assert.Zero(t, st[0].Pending)
	assert.Zero(t, st[0].Ready)
	_ = errors.New
	_ = time.Second
}
