package queue

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type ctxKey struct{}

// deadlineCtx is a context with a deadline and a func that ends it early,
// made either by the context package or as a taskContext.
type deadlineCtx func(parent context.Context, d time.Time) (context.Context, func())

var deadlineImpls = map[string]deadlineCtx{
	"context.WithDeadline": func(p context.Context, d time.Time) (context.Context, func()) {
		ctx, cancel := context.WithDeadline(p, d)
		return ctx, cancel
	},
	"taskContext": func(p context.Context, d time.Time) (context.Context, func()) {
		c := newTaskContext(p, d)
		return c, c.finish
	},
}

// TestTaskContextActsLikeWithDeadline runs the same scenarios on
// context.WithDeadline and on taskContext and checks that both behave as
// the context package documents.
func TestTaskContextActsLikeWithDeadline(t *testing.T) {
	t.Parallel()
	for name, mk := range deadlineImpls {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			t.Run("lives until finished", func(t *testing.T) {
				parent := context.WithValue(context.Background(), ctxKey{}, "v")
				ctx, finish := mk(parent, time.Now().Add(time.Hour))
				assert.NoError(t, ctx.Err())
				assert.Equal(t, "v", ctx.Value(ctxKey{}))
				d, ok := ctx.Deadline()
				assert.True(t, ok)
				assert.WithinDuration(t, time.Now().Add(time.Hour), d, time.Minute)
				finish()
				assert.ErrorIs(t, ctx.Err(), context.Canceled)
				assert.ErrorIs(t, context.Cause(ctx), context.Canceled)
				<-ctx.Done()
				finish() // twice is fine
				assert.ErrorIs(t, ctx.Err(), context.Canceled)
			})
			t.Run("Err reports the deadline without Done", func(t *testing.T) {
				ctx, finish := mk(context.Background(), time.Now().Add(20*time.Millisecond))
				defer finish()
				assert.Eventually(t, func() bool { return ctx.Err() != nil }, 5*time.Second, time.Millisecond)
				assert.ErrorIs(t, ctx.Err(), context.DeadlineExceeded)
				<-ctx.Done()
				assert.ErrorIs(t, ctx.Err(), context.DeadlineExceeded)
				assert.ErrorIs(t, context.Cause(ctx), context.DeadlineExceeded)
			})
			t.Run("Done closes at the deadline", func(t *testing.T) {
				ctx, finish := mk(context.Background(), time.Now().Add(20*time.Millisecond))
				defer finish()
				done := ctx.Done()
				assert.NoError(t, ctx.Err())
				<-done
				assert.ErrorIs(t, ctx.Err(), context.DeadlineExceeded)
				assert.ErrorIs(t, context.Cause(ctx), context.DeadlineExceeded)
			})
			t.Run("the parent's cancel ends it", func(t *testing.T) {
				for _, askDone := range []bool{false, true} {
					parent, cancel := context.WithCancelCause(context.Background())
					ctx, finish := mk(parent, time.Now().Add(time.Hour))
					if askDone {
						ctx.Done()
					}
					boom := errors.New("boom")
					cancel(boom)
					<-ctx.Done()
					assert.ErrorIs(t, ctx.Err(), context.Canceled)
					assert.ErrorIs(t, context.Cause(ctx), boom)
					finish()
					assert.ErrorIs(t, ctx.Err(), context.Canceled, "Err must not change")
				}
			})
			t.Run("an earlier parent deadline wins", func(t *testing.T) {
				parent, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				pd, _ := parent.Deadline()
				ctx, finish := mk(parent, time.Now().Add(time.Hour))
				defer finish()
				d, ok := ctx.Deadline()
				assert.True(t, ok)
				assert.Equal(t, pd, d)
			})
			t.Run("children and AfterFunc follow it", func(t *testing.T) {
				ctx, finish := mk(context.Background(), time.Now().Add(20*time.Millisecond))
				defer finish()
				child, cancel := context.WithCancel(ctx)
				defer cancel()
				ran := make(chan struct{})
				context.AfterFunc(ctx, func() { close(ran) })
				<-child.Done()
				<-ran
				assert.ErrorIs(t, child.Err(), context.DeadlineExceeded)
			})
			t.Run("ended before Done was asked", func(t *testing.T) {
				ctx, finish := mk(context.Background(), time.Now().Add(-time.Second))
				assert.ErrorIs(t, ctx.Err(), context.DeadlineExceeded)
				child, cancel := context.WithCancel(ctx)
				defer cancel()
				<-child.Done()
				assert.ErrorIs(t, child.Err(), context.DeadlineExceeded)
				assert.ErrorIs(t, context.Cause(ctx), context.DeadlineExceeded)
				finish()
				assert.ErrorIs(t, ctx.Err(), context.DeadlineExceeded, "Err must not change")
			})
		})
	}
}

// TestTaskContextConcurrentUse calls every method at once (for -race).
func TestTaskContextConcurrentUse(t *testing.T) {
	t.Parallel()
	c := newTaskContext(context.Background(), time.Now().Add(10*time.Millisecond))
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Go(func() {
			switch i % 4 {
			case 0:
				<-c.Done()
			case 1:
				assert.Eventually(t, func() bool { return c.Err() != nil }, 5*time.Second, time.Millisecond)
			case 2:
				c.Value(ctxKey{})
			case 3:
				c.Deadline()
			}
		})
	}
	wg.Wait()
	c.finish()
	require.ErrorIs(t, c.Err(), context.DeadlineExceeded)
}

// A worker's delivery contexts come from a slab, never one twice: a ctx
// kept after its delivery stays ended while the next deliveries run, and
// the slab costs one allocation per taskSlab deliveries.
func TestWorkerTaskContextsAreNeverReused(t *testing.T) {
	w := &worker{}
	parent := newCtxParent(context.Background())
	kept := w.nextTaskContext(parent, time.Time{})
	kept.finish()
	require.Error(t, kept.Err())
	seen := map[*taskContext]bool{kept: true}
	for range 3 * taskSlab {
		c := w.nextTaskContext(parent, time.Time{})
		require.False(t, seen[c], "a context handed out twice")
		seen[c] = true
		require.NoError(t, c.Err(), "a new delivery's ctx starts ended")
		c.finish()
	}
	require.Error(t, kept.Err(), "a kept ctx came back to life")
	allocs := testing.AllocsPerRun(10*taskSlab, func() {
		w.nextTaskContext(parent, time.Time{}).finish()
	})
	assert.Less(t, allocs, 0.1)
}

// A task's ctx carries the values of AnalysePool's ctx (a logger, a
// tenant, a trace), not its end: the stop that cancelling it starts lets
// the running task finish, within ShutdownTimeout, with its ctx alive.
func TestTaskCtxCarriesThePoolCtxValues(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	type key struct{}
	parent, stop := context.WithCancel(context.WithValue(bounded(t), key{}, "tenant-7"))
	defer stop()
	_, err := q.AddTask(parent, 1, []byte("x"))
	require.NoError(t, err)
	running, release := make(chan struct{}), make(chan struct{})
	var got any
	var errAfterStop error
	errc := runPool(parent, q, PoolConfig{Workers: 1, ShutdownTimeout: 10 * time.Second}, func(ctx context.Context, _ Task) error {
		got = ctx.Value(key{})
		close(running)
		<-release
		errAfterStop = ctx.Err()
		return nil
	})
	<-running
	stop()
	time.Sleep(50 * time.Millisecond) // the stop is under way
	close(release)
	require.NoError(t, <-errc)
	assert.Equal(t, "tenant-7", got, "the pool ctx's value in the task's ctx")
	assert.NoError(t, errAfterStop, "the task's ctx ended with the pool's ctx")
}

// BenchmarkTaskContext is a delivery's ctx as a worker uses it around an
// analyse function that reads its Err: made from the slab, finished,
// asked whether its task was cancelled.
func BenchmarkTaskContext(b *testing.B) {
	w := &worker{}
	parent, stop := context.WithCancel(context.Background())
	defer stop()
	p := newCtxParent(parent)
	deadline := time.Now().Add(time.Hour)
	b.ReportAllocs()
	for b.Loop() {
		c := w.nextTaskContext(p, deadline)
		w.cur.Store(c)
		if c.Err() != nil {
			b.Fatal("ended")
		}
		c.finish()
		if c.aborted() {
			b.Fatal("aborted")
		}
	}
}

// A cancelled task's ctx ends with context.Canceled and the cause
// ErrCancelled, whether its Done was asked before the cancel or after,
// with a deadline or none; a ctx finished or timed out keeps the
// context package's causes.
func TestTaskContextCauseOfACancel(t *testing.T) {
	t.Parallel()
	for _, deadline := range []time.Duration{0, time.Hour} {
		at := func() time.Time {
			if deadline == 0 {
				return time.Time{}
			}
			return time.Now().Add(deadline)
		}
		for _, asked := range []string{"none", "Err", "Done before", "Done after", "Value before"} {
			c := newTaskContext(context.Background(), at())
			switch asked {
			case "Err":
				require.NoError(t, c.Err())
			case "Done before":
				require.NotNil(t, c.Done())
			case "Value before":
				require.Nil(t, c.Value(ctxKey{}))
			}
			c.abort()
			if asked == "Done after" {
				<-c.Done()
			}
			assert.ErrorIs(t, c.Err(), context.Canceled, "deadline %v, %s", deadline, asked)
			assert.Equal(t, ErrCancelled, context.Cause(c), "deadline %v, %s", deadline, asked)
			<-c.Done()
			assert.True(t, c.aborted())
		}
	}
	finished := newTaskContext(context.Background(), time.Now().Add(time.Hour))
	_ = finished.Done()
	finished.finish()
	assert.Equal(t, context.Canceled, context.Cause(finished))
	late := newTaskContext(context.Background(), time.Now().Add(time.Millisecond))
	<-late.Done()
	assert.Equal(t, context.DeadlineExceeded, late.Err())
	assert.Equal(t, context.DeadlineExceeded, context.Cause(late))
	late.abort() // after its deadline: it stays timed out
	assert.Equal(t, context.DeadlineExceeded, late.Err())
}

// A delivery's ctx is 40 bytes, one slot of the worker's slab: each byte a
// delivery allocates costs a drain measurably (docs/performance.md).
func TestTaskContextIsSmall(t *testing.T) {
	assert.LessOrEqual(t, unsafe.Sizeof(taskContext{}), uintptr(40))
}

// A cancel that finds a delivery's ctx after it ended (a worker's cur
// keeps it until the next delivery) changes nothing: its Err and cause
// stay those of its end, and its task is not counted cancelled.
func TestTaskContextAbortAfterItEnded(t *testing.T) {
	w := &worker{}
	p := newCtxParent(context.Background())
	c := w.nextTaskContext(p, time.Now().Add(time.Hour))
	w.cur.Store(c)
	c.finish()
	w.cur.Load().abort()
	assert.ErrorIs(t, c.Err(), context.Canceled)
	assert.ErrorIs(t, context.Cause(c), context.Canceled)
	assert.NotErrorIs(t, context.Cause(c), ErrCancelled)
	assert.False(t, c.aborted())

	// While it runs, the same cancel ends it as cancelled.
	c = w.nextTaskContext(p, time.Now().Add(time.Hour))
	w.cur.Store(c)
	w.cur.Load().abort()
	assert.True(t, c.aborted())
	assert.ErrorIs(t, context.Cause(c), ErrCancelled)
}

// However a delivery's ctx ended (finished, timed out, its parent ended),
// and however it was looked at before (Err, Done, Value, nothing), a
// cancel that comes later, while the function still runs past its
// deadline or after the delivery, leaves its Err and its cause as they
// were and does not count it cancelled.
func TestTaskContextCancelAfterItEndedChangesNothing(t *testing.T) {
	t.Parallel()
	type end struct {
		name  string
		ended func(c *taskContext, parentCancel context.CancelFunc)
		err   error
	}
	ends := []end{
		{"finished", func(c *taskContext, _ context.CancelFunc) { c.finish() }, context.Canceled},
		{"timed out", func(c *taskContext, _ context.CancelFunc) {
			for !c.expired() {
				time.Sleep(time.Millisecond)
			}
		}, context.DeadlineExceeded},
		// Finished after its deadline, before anyone saw it pass: as with
		// context.WithDeadline, whose timer and cancel func race, either.
		{"timed out, then finished", func(c *taskContext, _ context.CancelFunc) {
			for !c.expired() {
				time.Sleep(time.Millisecond)
			}
			c.finish()
		}, nil},
		{"its parent ended", func(_ *taskContext, cancel context.CancelFunc) { cancel() }, context.Canceled},
	}
	looks := map[string]func(c *taskContext){
		"nothing": func(*taskContext) {},
		"Err":     func(c *taskContext) { _ = c.Err() },
		"Done":    func(c *taskContext) { <-c.Done() },
		"Value":   func(c *taskContext) { _ = c.Value(ctxKey{}) },
	}
	for _, e := range ends {
		for before, look := range looks {
			for after, lookAgain := range looks {
				parent, cancel := context.WithCancel(context.Background())
				w := &worker{}
				c := w.nextTaskContext(newCtxParent(parent), time.Now().Add(5*time.Millisecond))
				w.cur.Store(c)
				e.ended(c, cancel)
				look(c)
				err, cause := c.Err(), context.Cause(c)
				require.Error(t, err, "%s, then %s looked", e.name, before)
				if e.err != nil {
					require.ErrorIs(t, err, e.err, "%s, then %s looked", e.name, before)
				}
				w.cur.Load().abort()
				lookAgain(c)
				assert.Equal(t, err, c.Err(), "%s, %s looked, then a cancel, then %s", e.name, before, after)
				assert.Equal(t, cause, context.Cause(c), "%s, %s looked, then a cancel, then %s", e.name, before, after)
				assert.NotErrorIs(t, context.Cause(c), ErrCancelled, "%s, %s, %s", e.name, before, after)
				assert.False(t, c.aborted(), "%s, %s, %s", e.name, before, after)
				c.finish()
				assert.Equal(t, err, c.Err(), "%s, %s, %s: finished again", e.name, before, after)
				cancel()
			}
		}
	}
}

// Deadlines are kept as offsets from the session's base time: one at the
// base itself is still a deadline, and the worker's deadline comes back
// as it was given, to the nanosecond, by the monotonic clock.
func TestTaskContextDeadlineOffsets(t *testing.T) {
	w := &worker{}
	p := newCtxParent(context.Background())
	at := w.nextTaskContext(p, p.base)
	d, ok := at.Deadline()
	require.True(t, ok, "a deadline at the base time")
	assert.WithinDuration(t, p.base, d, time.Nanosecond) // kept 1 ns early: offset 0 says none
	assert.ErrorIs(t, at.Err(), context.DeadlineExceeded)

	want := time.Now().Add(1500 * time.Millisecond)
	c := w.nextTaskContext(p, want)
	d, ok = c.Deadline()
	require.True(t, ok)
	assert.Zero(t, d.Sub(want), "monotonic")
	assert.True(t, d.Equal(want), "wall clock")
	assert.NoError(t, c.Err())

	none := w.nextTaskContext(p, time.Time{})
	_, ok = none.Deadline()
	assert.False(t, ok)
	assert.NoError(t, none.Err())
}
