package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// One OrderID's task blocks, with 8 workers. Under DispatchByOrder the
// OrderIDs that hash to its worker wait behind it, with the 7 others
// idle; under DispatchFree every other OrderID runs all its tasks while
// it blocks. Both are facts, not timings: the blocked task ends only when
// the test says so.
func TestSlowOrderIDAndOthers(t *testing.T) {
	t.Parallel()
	inEachDispatch(t, func(t *testing.T, mode DispatchMode, q *Queue, ctx context.Context, cancel context.CancelFunc) {
		const workers, fast, per = 8, 200, 3
		const slow = uint64(1 << 40)
		tasks := []Task{{OrderID: slow, Payload: []byte("slow 0")}, {OrderID: slow, Payload: []byte("slow 1")}}
		tasks = append(tasks, orderTasks(fast, per)...)
		var behind []uint64 // fast OrderIDs on the slow one's worker under DispatchByOrder
		for o := range fast {
			if workerOf(uint64(o), workers) == workerOf(slow, workers) {
				behind = append(behind, uint64(o))
			}
		}
		require.NotEmpty(t, behind)
		release := make(chan struct{})
		rec := newRecorder()
		errc := runPool(ctx, q, PoolConfig{Workers: workers, Dispatch: mode}, rec.fn(func(ctx context.Context, task Task) error {
			if task.OrderID != slow {
				return nil
			}
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}))
		addAll(t, q, tasks)
		done := func(ids ...uint64) bool {
			for _, id := range ids {
				if len(rec.order(id)) != per {
					return false
				}
			}
			return true
		}
		var others []uint64
		for o := range fast {
			if workerOf(uint64(o), workers) != workerOf(slow, workers) {
				others = append(others, uint64(o))
			}
		}
		require.Eventually(t, func() bool { return done(others...) }, 10*time.Second, time.Millisecond)
		if mode == DispatchFree {
			require.Eventually(t, func() bool { return done(behind...) }, 10*time.Second, time.Millisecond,
				"no OrderID waits behind the slow one")
		} else {
			// They are behind the slow task on its worker, which took it
			// first: none can have started.
			for _, id := range behind {
				assert.Empty(t, rec.order(id), "OrderID %d ran on the slow one's worker", id)
			}
		}
		assert.Equal(t, []string{"slow 0"}, rec.order(slow), "the slow task still blocks")
		close(release)
		require.Eventually(t, func() bool { return done(behind...) && len(rec.order(slow)) == 2 }, 10*time.Second, time.Millisecond)
		cancel()
		require.NoError(t, receive(t, errc))
		for o := range fast {
			var want []string
			for i := range per {
				want = append(want, pl(o, i))
			}
			assert.Equal(t, want, rec.order(uint64(o)))
		}
		assert.Equal(t, []string{"slow 0", "slow 1"}, rec.order(slow))
		assert.Zero(t, rec.overlap)
	})
}

// inEachDispatch runs f in a parallel subtest per dispatch mode, each with
// a queue of its own and a ctx that the subtest's end cancels.
func inEachDispatch(t *testing.T, f func(t *testing.T, mode DispatchMode, q *Queue, ctx context.Context, cancel context.CancelFunc)) {
	for _, mode := range []DispatchMode{DispatchByOrder, DispatchFree} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			q, _, _ := testQueue1(t)
			ctx, cancel := context.WithCancel(bounded(t))
			defer cancel()
			f(t, mode, q, ctx, cancel)
		})
	}
}

// Under DispatchFree the OrderIDs waiting out a backoff share one list,
// and one idle worker waits for the earliest: a retry due sooner than the
// one it waits for wakes it.
func TestFreeDispatchRetryDueSoonerWakesAWorker(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	firstBackoff := make(chan struct{})
	var calls atomic.Int32
	backoff := func(int) time.Duration {
		if calls.Add(1) == 1 {
			defer close(firstBackoff)
			return time.Hour
		}
		return 20 * time.Millisecond
	}
	rec := newRecorder()
	fn := rec.fn(func(ctx context.Context, task Task) error {
		switch {
		case task.OrderID == 1 && task.Attempt == 1:
			return errors.New("in an hour")
		case task.OrderID == 2 && task.Attempt == 1:
			select {
			case <-firstBackoff:
			case <-ctx.Done():
			}
			return errors.New("soon")
		}
		return nil
	})
	errc := runPool(ctx, q, PoolConfig{Workers: 4, Dispatch: DispatchFree, OnError: func(error) {}, Backoff: backoff}, fn)
	addAll(t, q, []Task{{OrderID: 1, Payload: []byte("1")}, {OrderID: 2, Payload: []byte("2")}})
	require.Eventually(t, func() bool { return len(rec.order(2)) == 2 }, 10*time.Second, time.Millisecond,
		"the retry due in 20ms ran")
	assert.Len(t, rec.order(1), 1, "the other waits its hour")
	cancel()
	require.NoError(t, receive(t, errc))
}

// An OrderID whose task waits out a backoff holds back no other OrderID,
// whatever Prefetch: it has no task running or about to, and does not
// count against it. (With as many OrderIDs retrying as Prefetch, the
// next one waited out their whole backoff.)
func TestRetryBackoffHoldsBackNoOtherOrder(t *testing.T) {
	t.Parallel()
	inEachDispatch(t, func(t *testing.T, mode DispatchMode, q *Queue, ctx context.Context, cancel context.CancelFunc) {
		var tasks []Task
		for o := uint64(1); o <= 3; o++ {
			tasks = append(tasks, Task{OrderID: o, Payload: []byte("failing")})
		}
		for i := range 5 {
			tasks = append(tasks, Task{OrderID: 100, Payload: fmt.Appendf(nil, "healthy %d", i)})
		}
		addAll(t, q, tasks)
		healthy := make(chan struct{}, 5)
		errc := runPool(ctx, q, PoolConfig{
			Workers: 4, Prefetch: 3, Dispatch: mode,
			Backoff: func(int) time.Duration { return time.Hour },
			Logger:  slog.New(slog.DiscardHandler), OnError: func(error) {},
		}, func(_ context.Context, tk Task) error {
			if tk.OrderID != 100 {
				return errors.New("downstream refused this order")
			}
			healthy <- struct{}{}
			return nil
		})
		for i := range 5 {
			select {
			case <-healthy:
			case <-time.After(30 * time.Second):
				t.Fatalf("%d of OrderID 100's 5 tasks ran: the retrying OrderIDs held it back", i)
			}
		}
		cancel()
		require.NoError(t, receive(t, errc))
	})
}
