package queue

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A delivery whose analyse function does not return when its ctx ends,
// and then returns nil, fails as TaskTimeout says: it is retried in
// place (its OrderID's next task waits for it), OnError gets a
// *TaskError that is a context.DeadlineExceeded, OnDone sees the
// failure, and the retry that returns in time is done.
func TestPoolNilPastTaskTimeoutFails(t *testing.T) {
	t.Parallel()
	for _, mode := range []DispatchMode{DispatchByOrder, DispatchFree} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			q, _ := newTestQueue(t, 1, Config{})
			ctx := bounded(t)
			ids := addAll(t, q, orderTasks(2, 2)) // 0:0, 1:0, 0:1, 1:1
			rec := newRecorder()
			var errs errLog
			var mu sync.Mutex
			done := map[string][]error{}
			// Long beside the tasks that return at once, which a loaded
			// host may stall for tens of milliseconds: late, they would
			// fail too.
			cfg := PoolConfig{Workers: 2, Dispatch: mode, TaskTimeout: 500 * time.Millisecond, MaxAttempts: 3,
				Backoff: func(int) time.Duration { return time.Millisecond }, ExitOnEmpty: true, OnError: errs.add,
				OnDone: func(task Task, _ time.Duration, err error) {
					mu.Lock()
					done[task.ID] = append(done[task.ID], err)
					mu.Unlock()
				}}
			late := ids[0]
			err := q.AnalysePool(ctx, 0, cfg, rec.fn(func(ctx context.Context, task Task) error {
				if task.ID == late && task.Attempt == 1 {
					<-ctx.Done() // its timeout, not watched
					time.Sleep(10 * time.Millisecond)
				}
				return nil
			}))
			require.NoError(t, err)
			assert.Zero(t, rec.overlap)
			assert.Equal(t, []string{pl(0, 0), pl(0, 0), pl(0, 1)}, rec.order(0), "retried in place")
			assert.Equal(t, []string{pl(1, 0), pl(1, 1)}, rec.order(1), "the other OrderID ran once each")

			got := errs.all()
			require.Len(t, got, 1, "%v", got)
			var te *TaskError
			require.ErrorAs(t, got[0], &te)
			assert.Equal(t, late, te.ID)
			assert.Equal(t, 1, te.Attempt)
			assert.False(t, te.Dead)
			assert.ErrorIs(t, got[0], context.DeadlineExceeded)
			assert.ErrorContains(t, got[0], "timed out after 500ms")
			assert.ErrorContains(t, got[0], "returned nil")

			mu.Lock()
			defer mu.Unlock()
			require.Len(t, done[late], 2)
			assert.ErrorIs(t, done[late][0], context.DeadlineExceeded, "OnDone sees the failure")
			assert.NoError(t, done[late][1])
			for _, id := range ids[1:] {
				assert.Equal(t, []error{nil}, done[id], "task %s", id)
			}
			s := stats0(t, q)
			assert.Zero(t, s.Ready+s.Pending+s.Dead, "%+v", s)
		})
	}
}

// A delivery that returns nil past its TaskTimeout every time is
// dead-lettered after MaxAttempts, with the timeout as its last error;
// one with no TaskTimeout (negative) may take as long as it likes.
func TestPoolNilPastTaskTimeoutDeadLetters(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 1, Config{})
	ctx := bounded(t)
	ids := addAll(t, q, orderTasks(1, 1))
	runs := 0
	slow := func(ctx context.Context, _ Task) error {
		runs++
		time.Sleep(30 * time.Millisecond)
		return nil
	}
	cfg := PoolConfig{Workers: 1, TaskTimeout: 10 * time.Millisecond, MaxAttempts: 2,
		Backoff: func(int) time.Duration { return time.Millisecond }, ExitOnEmpty: true, OnError: func(error) {}}
	require.NoError(t, q.AnalysePool(ctx, 0, cfg, slow))
	assert.Equal(t, 2, runs)
	dead, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, dead, 1)
	assert.Equal(t, ids[0], dead[0].ID)
	assert.Equal(t, 2, dead[0].Attempts)
	assert.Contains(t, dead[0].LastError, "timed out after 10ms")

	ids = addAll(t, q, orderTasks(1, 1))
	runs = 0
	cfg.TaskTimeout = -1
	require.NoError(t, q.AnalysePool(ctx, 0, cfg, slow))
	assert.Equal(t, 1, runs, "no timeout: done")
	s := stats0(t, q)
	assert.Zero(t, s.Ready+s.Pending, "%+v", s)
	assert.EqualValues(t, 1, s.Dead, "only the first task")
}
