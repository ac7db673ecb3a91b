package queue

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An analyse function that calls runtime.Goexit (t.FailNow in a test,
// say) fails its delivery as a panic does, and its worker goes on: the
// task is retried, the OrderID's later tasks follow it, other OrderIDs
// are not held back, and the pool stops cleanly.
func TestPoolSurvivesGoexit(t *testing.T) {
	t.Parallel()
	for _, dispatch := range []DispatchMode{DispatchByOrder, DispatchFree} {
		t.Run(dispatch.String(), func(t *testing.T) {
			t.Parallel()
			q, _, _ := testQueue1(t)
			ctx, cancel := context.WithCancel(bounded(t))
			defer cancel()
			ids := addAll(t, q, []Task{
				{OrderID: 1, Payload: []byte(pl(1, 0))},
				{OrderID: 1, Payload: []byte(pl(1, 1))},
				{OrderID: 2, Payload: []byte(pl(2, 0))},
			})
			var mu sync.Mutex
			var ran []string // payloads, with the attempt for the first task
			fn := func(ctx context.Context, task Task) error {
				mu.Lock()
				ran = append(ran, string(task.Payload))
				mu.Unlock()
				if task.ID == ids[0] && task.Attempt == 1 {
					runtime.Goexit()
				}
				return nil
			}
			done := func() []string {
				mu.Lock()
				defer mu.Unlock()
				return append([]string(nil), ran...)
			}
			var errs errLog
			var doneCalls sync.Map // task ID -> error given to OnDone
			counters := &Counters{}
			errc := runPool(ctx, q, PoolConfig{Workers: 1, Dispatch: dispatch, OnError: errs.add, Counters: counters,
				Backoff: func(int) time.Duration { return time.Millisecond },
				OnDone: func(task Task, _ time.Duration, err error) {
					doneCalls.Store(task.ID+"/"+string(rune('0'+task.Attempt)), err)
				},
			}, fn)
			require.Eventually(t, func() bool { return len(done()) == 4 }, 10*time.Second, time.Millisecond,
				"the worker did not go on after the Goexit")
			got := done()
			assert.ElementsMatch(t, []string{pl(1, 0), pl(1, 0), pl(1, 1), pl(2, 0)}, got)
			var order1 []string
			for _, p := range got {
				if p != pl(2, 0) {
					order1 = append(order1, p)
				}
			}
			assert.Equal(t, []string{pl(1, 0), pl(1, 0), pl(1, 1)}, order1, "order 1 in order, its first task retried")
			require.Eventually(t, func() bool { s := stats0(t, q); return s.Ready == 0 && s.Pending == 0 }, 10*time.Second, time.Millisecond)

			require.Len(t, errs.all(), 1)
			var te *TaskError
			require.ErrorAs(t, errs.all()[0], &te)
			assert.Equal(t, ids[0], te.ID)
			assert.Equal(t, 1, te.Attempt)
			assert.ErrorIs(t, te.Err, ErrGoexit)
			v, ok := doneCalls.Load(ids[0] + "/1")
			require.True(t, ok, "OnDone saw the delivery that called Goexit")
			assert.ErrorIs(t, v.(error), ErrGoexit)
			assert.EqualValues(t, 1, counters.Workers(), "the worker is still there")

			cancel()
			require.NoError(t, receive(t, errc))
			assert.Zero(t, counters.Workers(), "no worker is left")
		})
	}
}

// A hook that calls runtime.Goexit, as a test's require inside OnDone,
// OnError or Backoff does, leaves no task unsettled: the OrderID goes on,
// ExitOnEmpty returns, and nothing is left pending to run again.

// hookRun runs order 1's tasks a, b and order 2's task c on one
// worker with ExitOnEmpty, and reports what ran and whether the pool
// returned within 5s. hook sets the hooks of cfg; fail says which
// deliveries fail.
func hookRun(t *testing.T, hook func(cfg *PoolConfig, ids []string), fail func(ids []string, task Task) error) (ran []string, returned bool, q *Queue, s *testServer, k queueKeys) {
	q, s, k = testQueue1(t)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	ids := addAll(t, q, []Task{
		{OrderID: 1, Payload: []byte("a")},
		{OrderID: 1, Payload: []byte("b")},
		{OrderID: 2, Payload: []byte("c")},
	})
	var mu sync.Mutex
	cfg := PoolConfig{Workers: 1, ExitOnEmpty: true, ShutdownTimeout: 100 * time.Millisecond,
		Backoff: func(int) time.Duration { return time.Millisecond }}
	hook(&cfg, ids)
	errc := runPool(ctx, q, cfg, func(ctx context.Context, task Task) error {
		mu.Lock()
		ran = append(ran, string(task.Payload))
		mu.Unlock()
		if fail != nil {
			return fail(ids, task)
		}
		return nil
	})
	select {
	case err := <-errc:
		require.NoError(t, err)
		returned = true
	case <-time.After(5 * time.Second):
		cancel() // a graceful stop
		require.NoError(t, receive(t, errc))
	}
	mu.Lock()
	defer mu.Unlock()
	return append([]string(nil), ran...), returned, q, s, k
}

func TestGoexitInOnDone(t *testing.T) {
	t.Parallel()
	var once sync.Once
	ran, returned, _, s, k := hookRun(t, func(cfg *PoolConfig, ids []string) {
		cfg.OnDone = func(task Task, _ time.Duration, err error) {
			if task.ID == ids[0] {
				once.Do(runtime.Goexit) // a require.X that fails in a test's OnDone
			}
		}
	}, nil)
	t.Logf("ran %v, pool returned by itself: %v, pending after the stop: %v", ran, returned, len(pendingIDs(t, s, k)))
	assert.ElementsMatch(t, []string{"a", "b", "c"}, ran, "order 1 went on after a")
	assert.True(t, returned, "ExitOnEmpty returned once the queue was drained")
	assert.Empty(t, pendingIDs(t, s, k), "nothing left pending after a drain")
}

func TestGoexitInOnError(t *testing.T) {
	t.Parallel()
	var once sync.Once
	ran, returned, _, s, k := hookRun(t, func(cfg *PoolConfig, ids []string) {
		cfg.OnError = func(err error) {
			var te *TaskError
			if errors.As(err, &te) {
				once.Do(runtime.Goexit) // a require.NoError in a test's OnError
			}
		}
	}, func(ids []string, task Task) error {
		if task.ID == ids[0] && task.Attempt == 1 {
			return errors.New("first delivery fails")
		}
		return nil
	})
	t.Logf("ran %v, pool returned by itself: %v, pending after the stop: %v", ran, returned, len(pendingIDs(t, s, k)))
	assert.Equal(t, []string{"a", "a", "b", "c"}, lastC(ran, "c"), "a retried, then b")
	assert.True(t, returned, "ExitOnEmpty returned once the queue was drained")
	assert.Empty(t, pendingIDs(t, s, k), "nothing left pending after a drain")
}

// lastC moves c's runs to the end, where other orders' places do not
// matter.
func lastC(ran []string, c string) []string {
	var out []string
	n := 0
	for _, r := range ran {
		if r == c {
			n++
			continue
		}
		out = append(out, r)
	}
	for range n {
		out = append(out, c)
	}
	return out
}

func TestGoexitInBackoff(t *testing.T) {
	t.Parallel()
	var once sync.Once
	ran, returned, _, s, k := hookRun(t, func(cfg *PoolConfig, ids []string) {
		cfg.Backoff = func(int) time.Duration {
			once.Do(runtime.Goexit) // a require.X in a test's Backoff
			return time.Millisecond
		}
	}, func(ids []string, task Task) error {
		if task.ID == ids[0] && task.Attempt == 1 {
			return errors.New("first delivery fails")
		}
		return nil
	})
	t.Logf("ran %v, pool returned by itself: %v, pending after the stop: %v", ran, returned, len(pendingIDs(t, s, k)))
	assert.Equal(t, []string{"a", "a", "b", "c"}, lastC(ran, "c"), "a retried, then b")
	assert.True(t, returned, "ExitOnEmpty returned once the queue was drained")
	assert.Empty(t, pendingIDs(t, s, k), "nothing left pending after a drain")
}
