package queue

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"
)

// worker runs the tasks of its OrderIDs on one goroutine: per OrderID one
// task at a time, in claim order. An OrderID whose task failed waits out its
// backoff while the worker goes on with its other OrderIDs.
type worker struct {
	s     *session
	index int
	wake  chan struct{} // signalled when tasks arrive

	mu       sync.Mutex
	orders   map[uint64]*orderLine
	runnable []*orderLine // OrderIDs with a task to start now, oldest first
	delayed  []*orderLine // OrderIDs waiting out a backoff
	free     []*orderLine // emptied orderLines kept for reuse
}

// orderLine holds the claimed tasks of one OrderID on a worker.
type orderLine struct {
	id        uint64
	tasks     []claimed // tasks[head] is the next (or running) one
	head      int       // tasks before it are done (and zeroed)
	state     lineState
	notBefore time.Time // while delayed
}

type lineState int

const (
	lineIdle     lineState = iota // in orders only (during a stop)
	lineRunnable                  // in runnable
	lineRunning                   // tasks[0] runs
	lineDelayed                   // in delayed
)

func newWorker(s *session, i int) *worker {
	return &worker{s: s, index: i, wake: make(chan struct{}, 1), orders: map[uint64]*orderLine{}}
}

// give adds claimed tasks, in claim order.
func (w *worker) give(ts []claimed) {
	w.mu.Lock()
	lines := 0
	for _, t := range ts {
		o := w.orders[t.OrderID]
		if o == nil {
			o = w.newOrder(t.OrderID)
			w.orders[t.OrderID] = o
			lines++
		}
		o.push(t)
		if o.state == lineIdle {
			o.state = lineRunnable
			w.runnable = append(w.runnable, o)
		}
	}
	w.mu.Unlock()
	w.s.lines.Add(int64(lines))
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// push appends t, first moving the tasks left to the front of a full
// buffer, so that a busy OrderID reuses its buffer.
func (o *orderLine) push(t claimed) {
	if o.head > 0 && len(o.tasks) == cap(o.tasks) {
		n := copy(o.tasks, o.tasks[o.head:])
		clear(o.tasks[n:])
		o.tasks, o.head = o.tasks[:n], 0
	}
	o.tasks = append(o.tasks, t)
}

// maxFreeOrders bounds the emptied orderLines a worker keeps, and
// maxFreeTasks the buffer each keeps, so an idle pool holds little.
const (
	maxFreeOrders = 256
	maxFreeTasks  = 64
)

// newOrder returns an empty orderLine for id, reusing a freed one.
func (w *worker) newOrder(id uint64) *orderLine {
	n := len(w.free)
	if n == 0 {
		return &orderLine{id: id}
	}
	o := w.free[n-1]
	w.free[n-1] = nil
	w.free = w.free[:n-1]
	o.id = id
	return o
}

// recycle keeps an emptied orderLine, deleted from orders, for reuse.
func (w *worker) recycle(o *orderLine) {
	if len(w.free) >= maxFreeOrders {
		return
	}
	tasks := o.tasks[:0]
	if cap(tasks) > maxFreeTasks {
		tasks = nil
	}
	*o = orderLine{tasks: tasks}
	w.free = append(w.free, o)
}

// takeAll removes and returns every task the worker holds except a running
// one, in no particular order.
func (w *worker) takeAll() []claimed {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []claimed
	for id, o := range w.orders {
		if o.state == lineRunning {
			out = append(out, o.tasks[o.head+1:]...)
			o.tasks = o.tasks[:o.head+1]
			continue
		}
		out = append(out, o.tasks[o.head:]...)
		delete(w.orders, id)
		w.s.lines.Add(-1)
	}
	w.runnable, w.delayed = nil, nil
	return out
}

// stopping reports whether the session stops (gracefully or with the
// lease lost): the worker starts nothing more.
func (w *worker) stopping() bool { return w.s.halted() }

// next returns the next OrderID to run and its task, marking it running,
// or when none is due, the time the earliest delayed one is due (zero if
// none).
func (w *worker) next(now time.Time) (*orderLine, claimed, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var due time.Time
	kept := w.delayed[:0]
	for _, o := range w.delayed {
		if !o.notBefore.After(now) {
			o.state = lineRunnable
			w.runnable = append(w.runnable, o)
			continue
		}
		if due.IsZero() || o.notBefore.Before(due) {
			due = o.notBefore
		}
		kept = append(kept, o)
	}
	clear(w.delayed[len(kept):])
	w.delayed = kept
	if len(w.runnable) == 0 {
		return nil, claimed{}, due
	}
	o := w.runnable[0]
	w.runnable[0] = nil
	w.runnable = w.runnable[1:]
	o.state = lineRunning
	return o, o.tasks[o.head], time.Time{}
}

func (w *worker) loop() {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for !w.stopping() {
		now := time.Now() // one clock read per task: it is not free on every VM
		o, t, due := w.next(now)
		if o != nil {
			if !w.s.leaseValid(now) {
				// The lease may be another owner's by now: start nothing.
				w.s.loseLease()
				continue
			}
			w.runOne(o, t, now)
			continue
		}
		var tc <-chan time.Time
		if !due.IsZero() {
			if timer == nil {
				timer = time.NewTimer(time.Until(due))
			} else {
				timer.Reset(time.Until(due))
			}
			tc = timer.C
		}
		select {
		case <-w.wake:
		case <-tc:
		case <-w.s.halt:
		}
	}
}

// runOne runs o's first task, picked at now, and settles its outcome.
func (w *worker) runOne(o *orderLine, t claimed, now time.Time) {
	s := w.s
	var err error
	if t.Attempt > s.cfg.MaxAttempts {
		err = fmt.Errorf("queue: delivery %d exceeds MaxAttempts %d", t.Attempt, s.cfg.MaxAttempts)
		t.Attempt = s.cfg.MaxAttempts // dead-letter it without running it
	} else {
		start := now
		if t.Attempt > 1 || t.recovered {
			if !w.recordStart(t) {
				return
			}
			start = time.Now() // recording took a round trip
		}
		err = s.analyse(t.Task, start)
		if s.cfg.OnDone != nil {
			s.cfg.OnDone(t.Task, time.Since(start), err)
		}
	}
	switch {
	case s.isLost():
		return // the next owner has it; drop everything
	case err == nil:
		s.acks.ack(t)
		if c := s.cfg.Counters; c != nil {
			(*c.processed.Load())[w.index].Add(1)
		}
		w.settle(o, true, time.Time{})
		s.release(t)
	case s.taskCtx.Err() != nil:
		// Interrupted by the end of a graceful stop: handed back, the
		// delivery counted.
		w.settle(o, false, time.Time{})
	case t.Attempt >= s.cfg.MaxAttempts:
		if !w.bury(t, err) {
			return
		}
		w.settle(o, true, time.Time{})
		s.release(t)
	default:
		s.cfg.OnError(&TaskError{ID: t.ID, OrderID: t.OrderID, Attempt: t.Attempt, Err: err})
		if _, ferr := s.st.fail(s.leaseCtx, t.Task, err); ferr != nil {
			if errors.Is(ferr, ErrLeaseLost) {
				s.loseLease()
				return
			}
			s.cfg.OnError(ferr) // retried all the same; a crash now counts one delivery less
		}
		w.settle(o, false, time.Now().Add(s.cfg.Backoff(t.Attempt)))
	}
}

// recordStart records, before a redelivered, retried or recovered task
// starts, that this delivery is made (see store.recordDelivery): a task
// seen again may be the one that crashes its owner, and a crash while it
// runs must count, while tasks claimed with it that never started must not
// pay for it. Costs one round trip, for those tasks only. It reports false
// when the lease is lost.
func (w *worker) recordStart(t claimed) bool {
	s := w.s
	err := s.st.recordDelivery(s.leaseCtx, t)
	if errors.Is(err, ErrLeaseLost) {
		s.loseLease()
		return false
	}
	if err != nil {
		s.cfg.OnError(err) // run it all the same; a crash now counts the delivery once less
	}
	return true
}

// bury moves a task that used up its attempts to the dead-letter store,
// retrying Redis errors until it succeeds or the lease is lost: its
// OrderID must not go on before it is safely stored. It reports success.
func (w *worker) bury(t claimed, cause error) bool {
	s := w.s
	var b backoff
	for {
		_, err := s.st.fail(s.leaseCtx, t.Task, cause)
		if err == nil {
			s.acks.finished(t)
			break
		}
		if errors.Is(err, ErrLeaseLost) {
			s.loseLease()
			return false
		}
		s.cfg.OnError(err)
		if b.wait(s.leaseCtx) != nil {
			return false
		}
	}
	s.cfg.OnError(&TaskError{ID: t.ID, OrderID: t.OrderID, Attempt: t.Attempt, Dead: true, Err: cause})
	if c := s.cfg.Counters; c != nil {
		(*c.failed.Load())[w.index].Add(1)
	}
	return true
}

// settle puts o back after its first task ran: done drops that task, else
// it stays first with its Attempt one higher; a non-zero retryAt delays the
// OrderID until then.
func (w *worker) settle(o *orderLine, done bool, retryAt time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if done {
		o.tasks[o.head] = claimed{}
		o.head++
	} else {
		o.tasks[o.head].Attempt++
	}
	switch {
	case o.head == len(o.tasks):
		delete(w.orders, o.id)
		w.recycle(o)
		w.s.lines.Add(-1)
	case w.stopping():
		o.state = lineIdle // takeAll hands it back
	case !retryAt.IsZero():
		o.state, o.notBefore = lineDelayed, retryAt
		w.delayed = append(w.delayed, o)
	default:
		o.state = lineRunnable
		w.runnable = append(w.runnable, o)
	}
}

// analyse runs fn on one delivery started at start, turning a panic into a
// *PanicError and a timeout into an error that says so.
func (s *session) analyse(t Task, start time.Time) (err error) {
	ctx := s.taskCtx
	if s.cfg.TaskTimeout > 0 {
		tc := newTaskContext(ctx, start.Add(s.cfg.TaskTimeout))
		defer tc.finish()
		ctx = tc
	}
	defer func() {
		if r := recover(); r != nil {
			err = &PanicError{Value: r, Stack: debug.Stack()}
		}
	}()
	err = s.fn(ctx, t)
	if err != nil && s.taskCtx.Err() == nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("queue: task timed out after %v: %w", s.cfg.TaskTimeout, err)
	}
	return err
}
