package queue

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPoolOnDoneAndCounters(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 1, Config{})
	ctx := context.Background()
	var tasks []Task
	for i := 0; i < 40; i++ {
		tasks = append(tasks, Task{OrderID: uint64(i % 10), Payload: []byte{byte(i)}})
	}
	_, err := q.AddTasks(ctx, tasks)
	require.NoError(t, err)
	boom := errors.New("boom")
	var mu sync.Mutex
	var done, failed int
	counters := &Counters{}
	err = q.AnalysePool(ctx, 0, PoolConfig{
		Workers:     4,
		MaxAttempts: 1,
		ExitOnEmpty: true,
		Counters:    counters,
		OnError:     func(error) {},
		OnDone: func(task Task, took time.Duration, err error) {
			mu.Lock()
			defer mu.Unlock()
			assert.GreaterOrEqual(t, took, time.Duration(0))
			if err != nil {
				assert.ErrorIs(t, err, boom)
				failed++
			} else {
				done++
			}
		},
	}, func(ctx context.Context, task Task) error {
		if task.Payload[0]%8 == 0 {
			return boom
		}
		return nil
	})
	require.NoError(t, err)
	assert.Equal(t, 35, done)
	assert.Equal(t, 5, failed)
	sum := func(xs []int64) (n int64) {
		for _, x := range xs {
			n += x
		}
		return n
	}
	assert.Len(t, counters.Processed(), 4)
	assert.EqualValues(t, 35, sum(counters.Processed()))
	assert.EqualValues(t, 5, sum(counters.Failed()))
}
