package queue

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Tasks waiting behind a blocked task of their OrderID used to count
// against Prefetch: a backlog of one slow or failing OrderID at the head of
// a queue filled the window, and every other OrderID waited with the
// workers idle. Prefetch now bounds OrderIDs in hand, and the backlog only
// MaxHeldTasks and MaxHeldBytes.
func TestBlockedOrderHoldsBackOnlyItself(t *testing.T) {
	t.Parallel()
	for _, failing := range []bool{false, true} {
		name := "slow"
		if failing {
			name = "failing"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			q, _, _ := testQueue1(t)
			ctx, cancel := context.WithCancel(bounded(t))
			defer cancel()
			const backlog, others, workers = 40, 30, 4
			var tasks []Task
			for i := 0; i < backlog; i++ {
				tasks = append(tasks, Task{OrderID: 1, Payload: []byte(pl(1, i))})
			}
			for i := 0; i < others; i++ {
				tasks = append(tasks, Task{OrderID: uint64(100 + i), Payload: []byte(pl(100+i, 0))})
			}
			addAll(t, q, tasks)
			release := make(chan struct{})
			rec := newRecorder()
			fn := rec.fn(func(ctx context.Context, task Task) error {
				if task.OrderID != 1 {
					return nil
				}
				select {
				case <-release:
					return nil
				default:
				}
				if failing {
					return errors.New("not yet")
				}
				select {
				case <-release:
				case <-ctx.Done():
				}
				return nil
			})
			errc := runPool(ctx, q, PoolConfig{Workers: workers, Prefetch: 8, ExitOnEmpty: true, MaxAttempts: 1000,
				OnError: func(error) {}, Backoff: func(int) time.Duration { return 5 * time.Millisecond }}, fn)
			require.Eventually(t, func() bool {
				for i := 0; i < others; i++ {
					id := uint64(100 + i)
					// A slow task keeps its worker busy: only OrderIDs on the
					// other workers can go on meanwhile. A failing one waits
					// out its backoff, and its worker goes on with the rest.
					if !failing && workerOf(id, workers) == workerOf(1, workers) {
						continue
					}
					if len(rec.order(id)) != 1 {
						return false
					}
				}
				return true
			}, 10*time.Second, time.Millisecond, "every other OrderID runs while OrderID 1 is blocked")
			assert.NotEmpty(t, rec.order(1))
			close(release)
			require.NoError(t, receive(t, errc))
			var want []string
			for i := 0; i < backlog; i++ {
				want = append(want, pl(1, i))
			}
			got := rec.order(1)
			dedup := got[:0:0]
			for _, p := range got {
				if len(dedup) == 0 || dedup[len(dedup)-1] != p {
					dedup = append(dedup, p)
				}
			}
			assert.Equal(t, want, dedup, "OrderID 1 in order, its retries in place")
		})
	}
}

// The pool holds at most MaxHeldTasks tasks and about MaxHeldBytes bytes:
// a backlog behind a blocked OrderID stops claims there.
func TestHeldTasksBounded(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  PoolConfig
		max  int
	}{
		{"tasks", PoolConfig{Workers: 2, Prefetch: 4, MaxHeldTasks: 10}, 10},
		{"bytes", PoolConfig{Workers: 2, Prefetch: 4, MaxHeldBytes: 5 * (1024 + 33)}, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q, s, k := testQueue1(t)
			ctx, cancel := context.WithCancel(bounded(t))
			defer cancel()
			var tasks []Task
			for i := 0; i < 50; i++ {
				tasks = append(tasks, Task{OrderID: 1, Payload: make([]byte, 1024)})
			}
			addAll(t, q, tasks)
			release := make(chan struct{})
			started := make(chan struct{}, 1)
			cfg := tc.cfg
			cfg.ExitOnEmpty = true
			errc := runPool(ctx, q, cfg, func(ctx context.Context, task Task) error {
				select {
				case started <- struct{}{}:
				default:
				}
				<-release
				return nil
			})
			receive(t, started)
			require.Eventually(t, func() bool {
				m, err := pendingRecords(func(cmd string, args ...any) (any, error) { return try(s, cmd, args...) }, k)
				return err == nil && len(m) > 0
			}, 5*time.Second, time.Millisecond)
			// Give the fetcher every chance to claim more than it may.
			time.Sleep(50 * time.Millisecond)
			n := int64(len(pendingOf(t, s, k)))
			assert.LessOrEqual(t, n, int64(tc.max), "held tasks")
			assert.Positive(t, n)
			close(release)
			require.NoError(t, receive(t, errc))
			assert.Zero(t, s.do(t, "LLEN", k.ready))
		})
	}
}

// Setting MaxHeldTasks alone works: the default Prefetch follows it.
func TestMaxHeldTasksAlone(t *testing.T) {
	t.Parallel()
	cfg, err := PoolConfig{MaxHeldTasks: 100}.withDefaults()
	require.NoError(t, err)
	assert.Equal(t, 100, cfg.Prefetch)
	cfg, err = PoolConfig{}.withDefaults()
	require.NoError(t, err)
	assert.Equal(t, 1024, cfg.Prefetch)
	assert.Equal(t, 16*1024, cfg.MaxHeldTasks)
	assert.EqualValues(t, 64<<20, cfg.MaxHeldBytes)
}

// The default Prefetch is 64 per worker, at least 1024 and at most the
// largest Prefetch; MaxHeldTasks, when set lower, bounds it.
func TestDefaultPrefetch(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		cfg  PoolConfig
		want int
	}{
		{PoolConfig{}, 1024},
		{PoolConfig{Workers: 16}, 1024},
		{PoolConfig{Workers: 64}, 4096},
		{PoolConfig{MinWorkers: 2, MaxWorkers: 100}, 6400},
		{PoolConfig{Workers: 4096}, 65536},
		{PoolConfig{Workers: 64, MaxHeldTasks: 500}, 500},
	} {
		cfg, err := tt.cfg.withDefaults()
		require.NoError(t, err)
		assert.Equal(t, tt.want, cfg.Prefetch, "%+v", tt.cfg)
	}
}
