package queue

import (
	"context"
	"sync"
	"time"
)

// taskContext is the ctx of one delivery with a timeout: what
// context.WithDeadline(parent, deadline) gives, made lazily. A timer per
// task was a fifth of a pool's own CPU time, and most analyse functions
// never wait on ctx.Done: the timer and the Done channel are made only
// when someone asks for Done (or Value, through which the context package
// finds cancelable parents); until then Err reads the parent and the
// clock. Once Err has returned an error it keeps returning it.
type taskContext struct {
	parent   context.Context
	deadline time.Time

	mu     sync.Mutex
	inner  context.Context // the real context, once made; then it decides
	cancel context.CancelFunc
	err    error // set, while inner is nil, once the context has ended

	id        string // the delivered task's ID, for a cancel to find it
	cancelled bool   // abort was called: the task was cancelled
}

// newTaskContext returns the ctx of a delivery that starts now and may last
// until deadline (zero: no deadline). Call finish when the delivery ends.
func newTaskContext(parent context.Context, deadline time.Time) *taskContext {
	c := new(taskContext)
	c.init(parent, deadline)
	return c
}

// init sets up c, zero, as newTaskContext's result.
func (c *taskContext) init(parent context.Context, deadline time.Time) {
	if d, ok := parent.Deadline(); ok && (deadline.IsZero() || d.Before(deadline)) {
		deadline = d
	}
	c.parent, c.deadline = parent, deadline
}

// taskSlab is how many delivery contexts a worker allocates at once.
const taskSlab = 32

// nextTaskContext returns a new delivery ctx from the worker's slab: one
// allocation per taskSlab deliveries instead of one each. A slot is never
// used twice, so a ctx that an analyse function keeps after it returns
// stays ended (it keeps its slab, a few KB, from being freed). Only w's
// goroutine calls it.
func (w *worker) nextTaskContext(parent context.Context, deadline time.Time) *taskContext {
	if len(w.ctxs) == 0 {
		w.ctxs = make([]taskContext, taskSlab)
	}
	c := &w.ctxs[0]
	w.ctxs = w.ctxs[1:]
	c.init(parent, deadline)
	return c
}

// Deadline returns the delivery's deadline, if it has one.
func (c *taskContext) Deadline() (time.Time, bool) { return c.deadline, !c.deadline.IsZero() }

// Done returns a channel closed when the delivery's ctx ends.
func (c *taskContext) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.materialize()
	return c.inner.Done()
}

// materialize makes the real context if it is not made yet: one that ends
// at the deadline, or, when the ctx has already ended, one that has ended
// for the same reason. c.mu is held.
func (c *taskContext) materialize() {
	if c.inner != nil {
		return
	}
	if c.err == nil {
		if c.deadline.IsZero() {
			c.inner, c.cancel = context.WithCancel(c.parent)
		} else {
			c.inner, c.cancel = context.WithDeadline(c.parent, c.deadline)
		}
		return
	}
	inner, cancel := context.WithCancelCause(c.parent)
	cancel(c.err)
	c.inner = inner
}

// Err returns nil while the delivery's ctx lasts, then why it ended.
func (c *taskContext) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.err != nil:
	case c.inner != nil:
		return c.inner.Err()
	case c.parent.Err() != nil:
		c.err = c.parent.Err()
	case !c.deadline.IsZero() && !time.Now().Before(c.deadline):
		c.err = context.DeadlineExceeded
	}
	return c.err
}

// Value returns the value for key, from the parent. It makes the real
// context first, so that the context package (context.Cause, WithCancel
// and AfterFunc of this ctx) sees the one whose Done it gets.
func (c *taskContext) Value(key any) any {
	c.mu.Lock()
	c.materialize()
	inner := c.inner
	c.mu.Unlock()
	return inner.Value(key)
}

// abort ends the ctx, as finish does, while the delivery runs: its task
// was cancelled (see aborted).
func (c *taskContext) abort() {
	c.mu.Lock()
	c.cancelled = true
	c.mu.Unlock()
	c.finish()
}

// aborted reports whether abort was called.
func (c *taskContext) aborted() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cancelled
}

// finish ends the ctx as the cancel func of context.WithDeadline does.
func (c *taskContext) finish() {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.cancel != nil:
		c.cancel()
	case c.err == nil && c.inner == nil:
		c.err = context.Canceled
	}
}

// String names the ctx as context.WithDeadline's do, for debugging.
func (c *taskContext) String() string {
	return "queue.taskContext.WithDeadline(" + c.deadline.String() + ")"
}
