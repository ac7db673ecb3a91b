package queue

import (
	"context"
	"errors"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPoolWorkerConfig(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name     string
		in       PoolConfig
		min, max int
		bad      bool
	}{
		{"zero", PoolConfig{}, 8, 8, false},
		{"fixed", PoolConfig{Workers: 3}, 3, 3, false},
		{"fixed, min and max agree", PoolConfig{Workers: 3, MinWorkers: 3, MaxWorkers: 3}, 3, 3, false},
		{"elastic", PoolConfig{MinWorkers: 3, MaxWorkers: 4}, 3, 4, false},
		{"max alone", PoolConfig{MaxWorkers: 16}, 1, 16, false},
		{"min alone is fixed", PoolConfig{MinWorkers: 5}, 5, 5, false},
		{"most", PoolConfig{MinWorkers: 1, MaxWorkers: 4096}, 1, 4096, false},
		{"workers with another max", PoolConfig{Workers: 3, MaxWorkers: 4}, 0, 0, true},
		{"workers with another min", PoolConfig{Workers: 3, MinWorkers: 2}, 0, 0, true},
		{"min over max", PoolConfig{MinWorkers: 5, MaxWorkers: 4}, 0, 0, true},
		{"negative workers", PoolConfig{Workers: -1}, 0, 0, true},
		{"negative min", PoolConfig{MinWorkers: -1, MaxWorkers: 4}, 0, 0, true},
		{"max over 4096", PoolConfig{MaxWorkers: 4097}, 0, 0, true},
		{"negative ScaleDownAfter", PoolConfig{ScaleDownAfter: -time.Second}, 0, 0, true},
		{"unknown Dispatch", PoolConfig{Dispatch: 2}, 0, 0, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.in.withDefaults()
			if tt.bad {
				assert.ErrorIs(t, err, ErrBadConfig)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.min, got.MinWorkers)
			assert.Equal(t, tt.max, got.MaxWorkers)
			assert.Equal(t, 5*time.Second, got.ScaleDownAfter)
			assert.Equal(t, min(max(64*tt.max, 1024), maxPrefetch), got.Prefetch, "Prefetch follows MaxWorkers")
		})
	}
}

// TestPoolWorkerConfigSays checks that a refused worker count names the
// fields the caller set, as they are spelt in PoolConfig.
func TestPoolWorkerConfigSays(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in   PoolConfig
		want string
	}{
		{PoolConfig{Workers: -1}, "Workers -1 not within [1, 4096]"},
		{PoolConfig{Workers: 5000}, "Workers 5000 not within [1, 4096]"},
		{PoolConfig{MinWorkers: 5, MaxWorkers: 4}, "MinWorkers 5 and MaxWorkers 4: want 1 <= MinWorkers <= MaxWorkers <= 4096"},
		{PoolConfig{MinWorkers: -1, MaxWorkers: 4}, "MinWorkers -1 and MaxWorkers 4"},
		{PoolConfig{MaxWorkers: 4097}, "MinWorkers 1 and MaxWorkers 4097"},
	} {
		_, err := tt.in.withDefaults()
		require.ErrorIs(t, err, ErrBadConfig)
		assert.Contains(t, err.Error(), tt.want)
	}
}

// goroutineID returns the calling goroutine's id, from the first line of
// its stack trace ("goroutine 42 [running]:"), or 0 if it cannot be read.
func goroutineID() uint64 {
	var buf [64]byte
	line := string(buf[:runtime.Stack(buf[:], false)])
	f := strings.Fields(line)
	if len(f) < 2 || f[0] != "goroutine" {
		return 0
	}
	id, _ := strconv.ParseUint(f[1], 10, 64)
	return id
}

// goroutines records the goroutine each task of an OrderID ran on, in
// start order.
type goroutines struct {
	mu      sync.Mutex
	byOrder map[uint64][]uint64
}

func (g *goroutines) add(orderID uint64) uint64 {
	id := goroutineID()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.byOrder == nil {
		g.byOrder = map[uint64][]uint64{}
	}
	g.byOrder[orderID] = append(g.byOrder[orderID], id)
	return id
}

func (g *goroutines) of(orderID uint64) []uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]uint64(nil), g.byOrder[orderID]...)
}

func (g *goroutines) reset() {
	g.mu.Lock()
	defer g.mu.Unlock()
	clear(g.byOrder)
}

// An elastic pool with a backlog grows to MaxWorkers and, once idle,
// shrinks back to MinWorkers, twice (the second growth reuses the retired
// worker's slot); per OrderID, order holds throughout, and under
// DispatchByOrder an OrderID in hand runs on one goroutine: every task of
// a round is in the pool's hands before any finishes, so each OrderID is
// in hand from its first task of the round to its last. (A task is in
// hand once dispatched, which follows its claim: a marker task claimed
// after the others shows that the fetcher has gone past them.)
func TestElasticPoolGrowsAndShrinks(t *testing.T) {
	t.Parallel()
	for _, mode := range []DispatchMode{DispatchByOrder, DispatchFree} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			q, srv, k := testQueue1(t)
			ctx, cancel := context.WithCancel(bounded(t))
			defer cancel()
			const orders, per, rounds = 30, 8, 2
			logs := &logRecorder{}
			counters := &Counters{}
			rec := newRecorder()
			var ran goroutines
			var gateMu sync.Mutex
			var gate chan struct{}
			const marker = uint64(1 << 40) // plus the round
			fn := rec.fn(func(ctx context.Context, task Task) error {
				if ran.add(task.OrderID) == 0 {
					t.Error("no goroutine id")
				}
				if task.OrderID >= marker {
					return nil
				}
				gateMu.Lock()
				g := gate
				gateMu.Unlock()
				select {
				case <-g:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			})
			errc := runPool(ctx, q, PoolConfig{MinWorkers: 3, MaxWorkers: 4, ScaleDownAfter: 200 * time.Millisecond,
				Dispatch: mode, Prefetch: 128, MaxHeldTasks: 1024, Counters: counters, Logger: slog.New(logs)}, fn)
			require.Eventually(t, func() bool { return counters.Workers() == 3 }, 10*time.Second, time.Millisecond)

			for round := range rounds {
				g := make(chan struct{})
				gateMu.Lock()
				gate = g
				gateMu.Unlock()
				ran.reset()
				tasks := func(from, to int) []Task {
					var ts []Task
					for i := from; i < to; i++ {
						for o := range orders {
							ts = append(ts, Task{OrderID: uint64(o), Payload: []byte(pl(o, round*per+i))})
						}
					}
					return ts
				}
				// Every worker is held up at the gate, with OrderIDs
				// waiting: the pool grows. The second half is claimed
				// after the resize, for OrderIDs in hand.
				addAll(t, q, tasks(0, per/2))
				require.Eventually(t, func() bool { return counters.Workers() == 4 }, 10*time.Second, time.Millisecond,
					"round %d: grown to 4", round)
				claimed := func() bool {
					n, err := redis.Int(try(srv, "LLEN", k.ready))
					return err == nil && n == 0
				}
				addAll(t, q, tasks(per/2, per))
				require.Eventually(t, claimed, 10*time.Second, time.Millisecond, "round %d: all claimed", round)
				addAll(t, q, []Task{{OrderID: marker + uint64(round), Payload: []byte("marker")}})
				require.Eventually(t, claimed, 10*time.Second, time.Millisecond, "round %d: all dispatched", round)
				require.Eventually(t, func() bool { return stats0(t, q).Workers == 4 }, 10*time.Second, time.Millisecond,
					"Stats shows the count")
				close(g)
				require.Eventually(t, func() bool { return rec.total() == (round+1)*(orders*per+1) }, 10*time.Second, time.Millisecond)
				require.Eventually(t, func() bool { return counters.Workers() == 3 }, 10*time.Second, time.Millisecond,
					"round %d: shrunk to 3 once idle", round)
				require.Eventually(t, func() bool { return stats0(t, q).Workers == 3 }, 10*time.Second, time.Millisecond)
				if mode == DispatchByOrder {
					for o := range orders {
						gs := ran.of(uint64(o))
						require.Len(t, gs, per)
						for _, g := range gs {
							assert.Equal(t, gs[0], g, "round %d: OrderID %d ran on two goroutines while in hand: %v", round, o, gs)
						}
					}
				}
			}
			cancel()
			require.NoError(t, receive(t, errc))

			for o := range orders {
				var want []string
				for i := range rounds * per {
					want = append(want, pl(o, i))
				}
				assert.Equal(t, want, rec.order(uint64(o)), "OrderID %d", o)
			}
			assert.Zero(t, rec.overlap)
			grown, shrunk := logs.lines("queue: workers grown"), logs.lines("queue: workers shrunk")
			assert.Len(t, grown, rounds)
			assert.Len(t, shrunk, rounds)
			for _, l := range grown {
				assert.Equal(t, slog.LevelDebug, l.level)
				assert.Equal(t, "4", l.attrs["workers"])
				assert.Equal(t, "0", l.attrs["analyser"])
			}
			for _, l := range shrunk {
				assert.Equal(t, "3", l.attrs["workers"])
			}
			assert.Zero(t, counters.Workers(), "a stopped pool has no worker")
			assert.Len(t, counters.Processed(), 4, "one count per slot")
			var sum int64
			for _, n := range counters.Processed() {
				sum += n
			}
			assert.EqualValues(t, rounds*(orders*per+1), sum)
			assert.Zero(t, stats0(t, q).Workers, "no holder, no count")
		})
	}
}

// idOn returns the first OrderID from first on that pick accepts.
func idOn(first uint64, pick func(uint64) bool) uint64 {
	for id := first; ; id++ {
		if pick(id) {
			return id
		}
	}
}

// Under DispatchByOrder, a worker retired while it holds an OrderID keeps
// it, with the tasks claimed for it meanwhile, until none is left, then
// ends; it takes no new OrderID meanwhile, and OrderIDs its hash would give
// it go to the others.
func TestRetiringWorkerKeepsItsOrderIDs(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	on := func(n, w int) func(uint64) bool { return func(id uint64) bool { return workerOf(id, n) == w } }
	// a[0..2] on each of 3 workers, a[3] behind a[0]: the pool grows.
	var a [4]uint64
	a[0] = idOn(1, on(3, 0))
	a[1] = idOn(1, on(3, 1))
	a[2] = idOn(1, on(3, 2))
	a[3] = idOn(a[0]+1, on(3, 0))
	// x on the fourth worker; y[i] would be on it with 4 workers, and are
	// on worker i with 3.
	x := idOn(1000, on(4, 3))
	var y [3]uint64
	for i := range y {
		y[i] = idOn(2000, func(id uint64) bool { return workerOf(id, 4) == 3 && workerOf(id, 3) == i })
	}
	isA := func(id uint64) bool { return id == a[0] || id == a[1] || id == a[2] || id == a[3] }

	gateA, gateX := make(chan struct{}), make(chan struct{})
	rec := newRecorder()
	var ran goroutines
	fn := rec.fn(func(ctx context.Context, task Task) error {
		ran.add(task.OrderID)
		var gate chan struct{}
		switch {
		case isA(task.OrderID):
			gate = gateA
		case task.OrderID == x && string(task.Payload) == pl(int(x), 0):
			gate = gateX
		default:
			return nil
		}
		select {
		case <-gate:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	logs := &logRecorder{}
	counters := &Counters{}
	errc := runPool(ctx, q, PoolConfig{MinWorkers: 3, MaxWorkers: 4, ScaleDownAfter: 500 * time.Millisecond,
		Counters: counters, Logger: slog.New(logs)}, fn)
	require.Eventually(t, func() bool { return counters.Workers() == 3 }, 10*time.Second, time.Millisecond)
	var tasks []Task
	for _, id := range a {
		tasks = append(tasks, Task{OrderID: id, Payload: []byte(pl(int(id), 0))})
	}
	addAll(t, q, tasks)
	require.Eventually(t, func() bool { return counters.Workers() == 4 }, 10*time.Second, time.Millisecond, "grown")

	xTask := func(i int) Task { return Task{OrderID: x, Payload: []byte(pl(int(x), i))} }
	addAll(t, q, []Task{xTask(0), xTask(1), xTask(2)})
	// rec sees a delivery before fn's ran.add does: wait for both.
	require.Eventually(t, func() bool { return len(rec.order(x)) == 1 && len(ran.of(x)) == 1 }, 10*time.Second, time.Millisecond)
	require.Empty(t, logs.lines("queue: workers retiring"), "the pool shrank before x was placed: too slow a machine for this test")
	gx := ran.of(x)[0]
	for _, id := range a[:3] {
		require.Len(t, ran.of(id), 1)
		require.NotEqual(t, ran.of(id)[0], gx, "x runs on the new worker")
	}

	// The three others go idle: the pool retires the fourth, which holds x.
	close(gateA)
	require.Eventually(t, func() bool { return len(logs.lines("queue: workers retiring")) == 1 }, 10*time.Second, time.Millisecond)
	assert.Equal(t, "3", logs.lines("queue: workers retiring")[0].attrs["workers"])
	tasks = []Task{xTask(3), xTask(4), xTask(5)}
	for _, id := range y {
		tasks = append(tasks, Task{OrderID: id, Payload: []byte(pl(int(id), 0))})
	}
	addAll(t, q, tasks)
	require.Eventually(t, func() bool {
		for _, id := range y {
			if len(rec.order(id)) != 1 || len(ran.of(id)) != 1 {
				return false
			}
		}
		return true
	}, 10*time.Second, time.Millisecond)
	for i, id := range y {
		assert.NotEqual(t, gx, ran.of(id)[0], "y[%d] went to the retiring worker", i)
	}
	assert.Len(t, rec.order(x), 1, "x waits for its first task")
	assert.Equal(t, 4, counters.Workers(), "the retiring worker holds x")
	assert.Empty(t, logs.lines("queue: workers shrunk"))

	close(gateX)
	require.Eventually(t, func() bool { return counters.Workers() == 3 }, 10*time.Second, time.Millisecond)
	var want []string
	for i := range 6 {
		want = append(want, pl(int(x), i))
	}
	assert.Equal(t, want, rec.order(x))
	for _, g := range ran.of(x) {
		assert.Equal(t, gx, g, "x stays on its worker while in hand: %v", ran.of(x))
	}
	shrunk := logs.lines("queue: workers shrunk")
	require.Len(t, shrunk, 1)
	assert.Equal(t, "3", shrunk[0].attrs["workers"])
	cancel()
	require.NoError(t, receive(t, errc))
	assert.Zero(t, rec.overlap)
}

// An elastic DispatchFree pool grows "each time tasks have waited for a
// worker for 10ms while every worker was busy" (PoolConfig.MinWorkers).
// A retry whose backoff has ended is such a task: its OrderID is due and
// waits for a worker. Here the pool's one worker (MinWorkers 1,
// MaxWorkers 2) runs X1, which fails (backoff 300ms), then Y1, which
// blocks. When X's backoff ends every worker is busy and X waits: the
// pool grows and runs X's retry on the new worker. (The scaler counted
// only runnable OrderIDs, and a due delayed one stays delayed until a
// worker looks: X's retry was stuck behind Y1 for as long as Y1 ran.)
func TestElasticFreeGrowsForDueRetry(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()

	const backoff = time.Second
	xFailed := make(chan time.Time, 1)
	yStarted := make(chan time.Time, 1)
	xRetried := make(chan struct{})
	var yWaited atomic.Bool
	counters := &Counters{}
	rec := newRecorder()
	fn := rec.fn(func(ctx context.Context, task Task) error {
		switch task.OrderID {
		case 1: // X
			if task.Attempt == 1 {
				return errors.New("x fails once")
			}
			close(xRetried)
			return nil
		default: // Y: holds its worker until X's retry ran, or 5s
			yStarted <- time.Now()
			select {
			case <-xRetried:
			case <-time.After(8 * time.Second):
				yWaited.Store(true)
			}
			return nil
		}
	})
	errc := runPool(ctx, q, PoolConfig{
		MinWorkers: 1, MaxWorkers: 2, Dispatch: DispatchFree, ScaleDownAfter: time.Hour,
		TaskTimeout: -1, Counters: counters,
		Backoff: func(int) time.Duration { return backoff },
		OnError: func(err error) {
			var te *TaskError
			if errors.As(err, &te) && te.OrderID == 1 {
				xFailed <- time.Now()
			}
		},
	}, fn)

	addAll(t, q, []Task{{OrderID: 1, Payload: []byte(pl(1, 0))}})
	failedAt := receive(t, xFailed)
	// X waits out its backoff; its worker is idle once it has recorded
	// the failure (OnError comes before: a Y1 that came then would wait
	// for the worker, and the pool grow for it). Y1 comes then and takes
	// the one worker.
	require.Eventually(t, func() bool { z := counters.sizer.Load(); return z != nil && z.idle.Load() == 1 }, 5*time.Second, time.Millisecond,
		"X's worker goes idle")
	addAll(t, q, []Task{{OrderID: 2, Payload: []byte(pl(2, 0))}})
	yAt := receive(t, yStarted)
	if yAt.Sub(failedAt) >= backoff {
		t.Skip("machine too slow: Y1 started after X's backoff ended")
	}
	require.Equal(t, 1, counters.Workers(), "no growth yet: nothing waited while every worker was busy")

	select {
	case <-xRetried:
	case <-time.After(6 * time.Second):
	}
	grown := counters.Workers()
	cancel()
	require.NoError(t, receive(t, errc))
	assert.False(t, yWaited.Load(),
		"X's retry, due %v after its failure, did not run while Y1 held the only worker (workers %d of MaxWorkers 2): the pool never grew for it",
		backoff, grown)
	assert.Equal(t, []string{pl(1, 0), pl(1, 0)}, rec.order(1))
}
