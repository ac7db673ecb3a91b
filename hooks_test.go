package queue

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"fmt"
	"github.com/alicebob/miniredis/v2"
	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"strconv"
	"strings"
	"sync/atomic"
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
// ExitOnEmpty returns, and nothing is left pending to run again. Order
// 1's tasks a and b and order 2's task c run on one worker; with failFirst
// a's first delivery fails.
func TestGoexitInHooks(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name      string
		hook      func(cfg *PoolConfig, a string, exit func())
		failFirst bool
	}{
		{"OnDone", func(cfg *PoolConfig, a string, exit func()) {
			cfg.OnDone = func(task Task, _ time.Duration, err error) {
				if task.ID == a {
					exit()
				}
			}
		}, false},
		{"OnError", func(cfg *PoolConfig, a string, exit func()) {
			cfg.OnError = func(err error) {
				if te := (*TaskError)(nil); errors.As(err, &te) {
					exit()
				}
			}
		}, true},
		{"Backoff", func(cfg *PoolConfig, a string, exit func()) {
			cfg.Backoff = func(int) time.Duration {
				exit()
				return time.Millisecond
			}
		}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			q, s, k := testQueue1(t)
			ctx, cancel := context.WithCancel(bounded(t))
			defer cancel()
			ids := addAll(t, q, []Task{
				{OrderID: 1, Payload: []byte("a")},
				{OrderID: 1, Payload: []byte("b")},
				{OrderID: 2, Payload: []byte("c")},
			})
			cfg := PoolConfig{Workers: 1, ExitOnEmpty: true, ShutdownTimeout: 100 * time.Millisecond,
				Backoff: func(int) time.Duration { return time.Millisecond }}
			var once sync.Once
			c.hook(&cfg, ids[0], func() { once.Do(runtime.Goexit) })
			var mu sync.Mutex
			var ran []string // order 1's payloads
			errc := runPool(ctx, q, cfg, func(ctx context.Context, task Task) error {
				if task.OrderID == 1 {
					mu.Lock()
					ran = append(ran, string(task.Payload))
					mu.Unlock()
				}
				if c.failFirst && task.ID == ids[0] && task.Attempt == 1 {
					return errors.New("first delivery fails")
				}
				return nil
			})
			returned := false
			select {
			case err := <-errc:
				require.NoError(t, err)
				returned = true
			case <-time.After(5 * time.Second):
				cancel() // a graceful stop
				require.NoError(t, receive(t, errc))
			}
			want := []string{"a", "b"}
			if c.failFirst {
				want = []string{"a", "a", "b"}
			}
			mu.Lock()
			assert.Equal(t, want, ran, "order 1 in order, a retried when it failed, then b")
			mu.Unlock()
			assert.True(t, returned, "ExitOnEmpty returned once the queue was drained")
			assert.Empty(t, pendingIDs(t, s, k), "nothing left pending after a drain")
			assert.Zero(t, stats0(t, q).Ready, "c ran too")
		})
	}
}

// OnAssign that calls runtime.Goexit ends no goroutine of the member:
// its pools run the tasks, and JoinGroup returns when told to stop.
func TestGoexitInOnAssign(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 1, Config{Queues: 2})
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	assigned := make(chan struct{}, 1)
	var ran sync.Map
	done := make(chan error, 1)
	go func() {
		done <- q.JoinGroup(ctx, "g", GroupConfig{Member: "m", Pool: PoolConfig{Workers: 1},
			OnAssign: func([]int) {
				notify(assigned)
				runtime.Goexit()
			}}, func(_ context.Context, task Task) error {
			ran.Store(task.ID, true)
			return nil
		})
	}()
	<-assigned
	ids := addAll(t, q, []Task{{OrderID: 0, Payload: []byte("a")}, {OrderID: 1, Payload: []byte("b")}})
	require.Eventually(t, func() bool {
		for _, id := range ids {
			if _, ok := ran.Load(id); !ok {
				return false
			}
		}
		return true
	}, 10*time.Second, time.Millisecond, "the member's pools ran the tasks")
	cancel()
	require.NoError(t, receive(t, done))
}

// Goexit in the AnalyseFunc of an elastic, rate-limited pool that grows
// and shrinks meanwhile, some Goexits coming after the task's timeout:
// every task runs, per OrderID in order and one at a time, nothing dead,
// the pool drains (ExitOnEmpty) and leaves no goroutine (TestMain's
// goleak).
func TestGoexitElasticRate(t *testing.T) {
	t.Parallel()
	for _, mode := range []DispatchMode{DispatchByOrder, DispatchFree} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			q, _, _ := testQueue1(t)
			ctx, cancel := context.WithCancel(bounded(t))
			defer cancel()
			const orders, per = 12, 6
			ids := addAll(t, q, orderTasks(orders, per))
			rec := newRecorder()
			fn := rec.fn(func(ctx context.Context, task Task) error {
				i := plIndex(task)
				if task.Attempt == 1 {
					switch (int(task.OrderID) + i) % 4 {
					case 0:
						runtime.Goexit()
					case 1:
						<-ctx.Done() // the task's timeout
						runtime.Goexit()
					}
				}
				time.Sleep(time.Millisecond)
				return nil
			})
			counters := &Counters{}
			var errs errLog
			errc := runPool(ctx, q, PoolConfig{MinWorkers: 1, MaxWorkers: 4, ScaleDownAfter: 20 * time.Millisecond,
				Dispatch: mode, Rate: 400, Burst: 4, TaskTimeout: 500 * time.Millisecond, MaxAttempts: 10,
				Backoff: func(int) time.Duration { return time.Millisecond }, ExitOnEmpty: true,
				Counters: counters, OnError: errs.add}, fn)
			require.NoError(t, receive(t, errc))
			// A delivery that returned nil past TaskTimeout (a loaded
			// machine that held it) failed, as it must: one run more.
			late := lateDeliveries(errs.all())
			if len(late) > 0 {
				t.Logf("%d tasks had deliveries come back past TaskTimeout (a loaded machine)", len(late))
			}
			for o := range orders {
				var want []string
				for i := range per {
					want = append(want, pl(o, i))
					if (o+i)%4 <= 1 {
						want = append(want, pl(o, i))
					}
					for range late[ids[i*orders+o]] {
						want = append(want, pl(o, i))
					}
				}
				assert.Equal(t, want, rec.order(uint64(o)), "OrderID %d", o)
			}
			assert.Zero(t, rec.overlap)
			s := stats0(t, q)
			assert.Zero(t, s.Ready+s.Pending+s.Dead, fmt.Sprintf("%+v", s))
			assert.Zero(t, counters.Workers())
		})
	}
}

// A graceful stop while Goexiting deliveries are under way in an elastic
// pool: nothing is lost or run out of order across the stop and a second
// pool that drains the rest.
func TestGoexitGracefulStop(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	const orders, per = 8, 8
	addAll(t, q, orderTasks(orders, per))
	rec := newRecorder()
	stop := make(chan struct{})
	var stopped atomic.Bool
	fn := rec.fn(func(ctx context.Context, task Task) error {
		i := plIndex(task)
		if i == per/2 && !stopped.Load() {
			select {
			case stop <- struct{}{}:
			default:
			}
		}
		if task.Attempt == 1 && (int(task.OrderID)+i)%3 == 0 {
			runtime.Goexit()
		}
		return nil
	})
	ctx, cancel := context.WithCancel(bounded(t))
	errc := runPool(ctx, q, PoolConfig{MinWorkers: 1, MaxWorkers: 3, ScaleDownAfter: 20 * time.Millisecond,
		Dispatch: DispatchFree, Backoff: func(int) time.Duration { return 5 * time.Millisecond }, MaxAttempts: 10}, fn)
	receive(t, stop)
	stopped.Store(true)
	cancel()
	require.NoError(t, receive(t, errc))
	ctx2, cancel2 := context.WithCancel(bounded(t))
	defer cancel2()
	require.NoError(t, receive(t, runPool(ctx2, q, PoolConfig{MinWorkers: 1, MaxWorkers: 3, Dispatch: DispatchByOrder,
		Backoff: func(int) time.Duration { return time.Millisecond }, MaxAttempts: 10, ExitOnEmpty: true}, fn)))
	for o := range orders {
		got := rec.order(uint64(o))
		var dedup []string
		for _, p := range got {
			if len(dedup) == 0 || dedup[len(dedup)-1] != p {
				dedup = append(dedup, p)
			}
		}
		var want []string
		for i := range per {
			want = append(want, pl(o, i))
		}
		assert.Equal(t, want, dedup, "OrderID %d: %v", o, got)
	}
	assert.Zero(t, rec.overlap)
	s := stats0(t, q)
	assert.Zero(t, s.Ready+s.Pending+s.Dead)
}

// plIndex returns i of a task whose payload is pl(o, i).
func plIndex(task Task) int {
	_, i, _ := strings.Cut(string(task.Payload), ":")
	n, _ := strconv.Atoi(i)
	return n
}

// Pool.OnError that calls runtime.Goexit for one of the group's own
// errors (a failed heartbeat) ends no goroutine of the member, as with
// OnAssign. (Called directly, it ended the member's loop without leaving
// or stopping its pools: JoinGroup never returned, and its pools went on
// running, holding their leases, after ctx ended.)
func TestGoexitInGroupOnError(t *testing.T) {
	m := miniredis.RunT(t)
	pool := testPool("redis://" + m.Addr())
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()

	assigned := make(chan struct{}, 1)
	exited := make(chan struct{}, 1)
	var once sync.Once
	var mu sync.Mutex
	ran := map[string]bool{}
	done := make(chan error, 1)
	gone := make(chan struct{}) // closed when the goroutine running JoinGroup ends, however
	go func() {
		defer close(gone)
		done <- q.JoinGroup(ctx, "g", GroupConfig{Member: "m", SessionTTL: 250 * time.Millisecond,
			Pool: PoolConfig{Workers: 1, OnError: func(err error) {
				if strings.Contains(err.Error(), "group") {
					once.Do(func() {
						exited <- struct{}{}
						runtime.Goexit() // t.FailNow in a test's OnError
					})
				}
			}},
			OnAssign: func([]int) {
				notify(assigned)
			}}, func(_ context.Context, task Task) error {
			mu.Lock()
			ran[string(task.Payload)] = true
			mu.Unlock()
			return nil
		})
	}()
	receive(t, assigned)
	m.SetError("ERR injected") // the next heartbeat fails
	receive(t, exited)
	m.SetError("")

	cancel()
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Fatal("JoinGroup did not return after ctx ended")
	}
	select {
	case err := <-done:
		require.NoError(t, err)
	default:
		t.Error("the goroutine running JoinGroup ended by the Goexit in OnError: the member neither left nor stopped its pools")
	}

	// Its pool still runs after ctx ended.
	_, err = q.AddTask(context.Background(), 0, []byte("after"))
	require.NoError(t, err)
	time.Sleep(500 * time.Millisecond)
	mu.Lock()
	assert.False(t, ran["after"], "a pool of the member ran a task after JoinGroup's ctx ended")
	mu.Unlock()
}
