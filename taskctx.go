package queue

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// taskContext is the ctx of one delivery with a timeout: what
// context.WithDeadline(parent, deadline) gives, made lazily. A timer per
// task was a fifth of a pool's own CPU time, and most analyse functions
// never wait on ctx.Done: the timer and the Done channel are made only
// when someone asks for Done (or Value, through which the context package
// finds cancelable parents); until then Err reads the parent and the
// clock. Once Err has returned an error it keeps returning it.
//
// Its state beyond its parent and its deadline is one pointer: nil while
// the delivery runs and no one has asked for more than Err and Deadline,
// ctxFinished once it ended that way (the worker's path: one
// compare-and-swap a task, no lock), else a ctxState of its own, behind
// whose lock the real context is made. The parent, and the time its
// deadline counts from, are the session's (ctxParent): 40 bytes a
// delivery, allocated from the worker's slab. (Each byte a delivery
// allocates is paid again in a drain: 64-byte contexts drained measurably
// slower; see docs/performance.md.)
type taskContext struct {
	parent   *ctxParent
	deadline int64  // nanoseconds after parent.base; 0: none
	id       string // the delivered task's ID, for a cancel to find it
	state    atomic.Pointer[ctxState]
}

// ctxParent is what the delivery contexts of a session share: their parent
// and the time their deadlines count from.
type ctxParent struct {
	ctx  context.Context
	base time.Time // with a monotonic reading: deadlines are read by it
	// The parent's own deadline, as a taskContext's (0: none), and as it
	// gave it.
	deadline   int64
	deadlineAt time.Time
}

// newCtxParent returns the shared part of the delivery contexts made from
// parent.
func newCtxParent(parent context.Context) *ctxParent {
	p := &ctxParent{ctx: parent, base: time.Now()}
	if d, ok := parent.Deadline(); ok {
		p.deadline, p.deadlineAt = p.offset(d), d
	}
	return p
}

// offset returns d as a taskContext's deadline: never 0, which says none.
func (p *ctxParent) offset(d time.Time) int64 {
	if o := int64(d.Sub(p.base)); o != 0 {
		return o
	}
	return -1
}

// ctxState is a taskContext's state once it needs one: a Done channel or a
// value was asked for, its task was cancelled, or Err found it ended.
type ctxState struct {
	mu        sync.Mutex
	inner     context.Context         // the real context, once made; then it decides
	cancel    context.CancelCauseFunc // ends inner (when the deadline has not yet)
	stop      context.CancelFunc      // stops inner's deadline timer, if it has one
	err       error                   // set, while inner is nil, once the context has ended
	cancelled bool                    // abort was called: the task was cancelled
}

// ctxFinished is the state of every ctx that finish ended before it
// needed one of its own. It is never written: a ctx that needs its own
// state after it replaces it with one that ended the same way.
var ctxFinished = &ctxState{err: context.Canceled}

// newTaskContext returns the ctx of a delivery that starts now and may last
// until deadline (zero: no deadline). Call finish when the delivery ends.
func newTaskContext(parent context.Context, deadline time.Time) *taskContext {
	c := new(taskContext)
	c.init(newCtxParent(parent), deadline)
	return c
}

// init sets up c, zero, as newTaskContext's result.
func (c *taskContext) init(parent *ctxParent, deadline time.Time) {
	c.parent, c.deadline = parent, parent.deadline
	if !deadline.IsZero() {
		if d := parent.offset(deadline); c.deadline == 0 || d < c.deadline {
			c.deadline = d
		}
	}
}

// taskSlab is how many delivery contexts a worker allocates at once.
const taskSlab = 32

// nextTaskContext returns a new delivery ctx from the worker's slab: one
// allocation per taskSlab deliveries instead of one each. A slot is never
// used twice, so a ctx that an analyse function keeps after it returns
// stays ended (it keeps its slab, a few KB, from being freed). Only w's
// goroutine calls it.
func (w *worker) nextTaskContext(parent *ctxParent, deadline time.Time) *taskContext {
	if len(w.ctxs) == 0 {
		w.ctxs = make([]taskContext, taskSlab)
	}
	c := &w.ctxs[0]
	w.ctxs = w.ctxs[1:]
	c.init(parent, deadline)
	return c
}

// own returns c's own state, made (or, in place of ctxFinished, made
// ended alike) if c has none yet.
func (c *taskContext) own() *ctxState {
	for {
		p := c.state.Load()
		if p != nil && p != ctxFinished {
			return p
		}
		n := new(ctxState)
		if p == ctxFinished {
			n.err = context.Canceled
		}
		if c.state.CompareAndSwap(p, n) {
			return n
		}
	}
}

// Deadline returns the delivery's deadline, if it has one.
func (c *taskContext) Deadline() (time.Time, bool) {
	if c.deadline == 0 {
		return time.Time{}, false
	}
	return c.deadlineTime(), true
}

// deadlineTime returns the deadline, which c has, as a time.
func (c *taskContext) deadlineTime() time.Time {
	if c.deadline == c.parent.deadline {
		return c.parent.deadlineAt
	}
	return c.parent.base.Add(time.Duration(c.deadline))
}

// expired reports whether c has a deadline and it has passed.
func (c *taskContext) expired() bool {
	return c.deadline != 0 && int64(time.Since(c.parent.base)) >= c.deadline
}

// Done returns a channel closed when the delivery's ctx ends.
func (c *taskContext) Done() <-chan struct{} {
	p := c.own()
	p.mu.Lock()
	defer p.mu.Unlock()
	c.materialize(p)
	return p.inner.Done()
}

// materialize makes the real context if it is not made yet: one that ends
// at the deadline, or, when the ctx has already ended, one that has ended
// for the same reason. p, c's own state, is locked.
func (c *taskContext) materialize(p *ctxState) {
	if p.inner != nil {
		return
	}
	inner, cancel := context.WithCancelCause(c.parent.ctx)
	if p.err == nil {
		// A cancelable ctx with a cause, within it the deadline's: its
		// Err says which ended it, context.Cause whether a cancel did.
		p.inner, p.cancel = inner, cancel
		if c.deadline != 0 {
			p.inner, p.stop = context.WithDeadline(inner, c.deadlineTime())
		}
		return
	}
	cancel(p.cause())
	p.inner = inner
}

// cause is why the ctx ended: ErrCancelled once its task was cancelled,
// else its error. p, c's own state, is locked.
func (p *ctxState) cause() error {
	if p.cancelled {
		return ErrCancelled
	}
	return p.err
}

// Err returns nil while the delivery's ctx lasts, then why it ended.
func (c *taskContext) Err() error {
	switch p := c.state.Load(); {
	case p == ctxFinished:
		return context.Canceled
	case p == nil && c.parent.ctx.Err() == nil && !c.expired():
		return nil
	}
	// Ended, or with a state of its own: decided once, under its lock.
	p := c.own()
	p.mu.Lock()
	defer p.mu.Unlock()
	return c.ended(p)
}

// ended returns nil while the ctx lasts, then why it ended, deciding it
// once. p, c's own state, is locked.
func (c *taskContext) ended(p *ctxState) error {
	switch {
	case p.err != nil:
	case p.inner != nil:
		return p.inner.Err()
	case c.parent.ctx.Err() != nil:
		p.err = c.parent.ctx.Err()
	case c.expired():
		p.err = context.DeadlineExceeded
	}
	return p.err
}

// Value returns the value for key, from the parent. It makes the real
// context first, so that the context package (context.Cause, WithCancel
// and AfterFunc of this ctx) sees the one whose Done it gets.
func (c *taskContext) Value(key any) any {
	p := c.own()
	p.mu.Lock()
	c.materialize(p)
	inner := p.inner
	p.mu.Unlock()
	return inner.Value(key)
}

// abort ends the ctx, as finish does, while the delivery runs: its task
// was cancelled (see aborted). A ctx that has already ended, by finish
// (a worker's cur keeps its last ctx after the delivery), its deadline or
// its parent, stays as it ended: its Err and context.Cause do not change,
// however it was looked at before.
func (c *taskContext) abort() {
	if c.state.Load() == ctxFinished {
		return // ended before the cancel came, as the worker's path ends it
	}
	p := c.own()
	p.mu.Lock()
	if c.ended(p) != nil {
		p.mu.Unlock()
		return
	}
	p.cancelled = true
	p.mu.Unlock()
	c.finish()
}

// aborted reports whether abort was called.
func (c *taskContext) aborted() bool {
	p := c.state.Load()
	if p == nil || p == ctxFinished {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cancelled
}

// finish ends the ctx as the cancel func of context.WithDeadline does.
func (c *taskContext) finish() {
	if c.state.CompareAndSwap(nil, ctxFinished) {
		return // the worker's path: no one asked for more than Err
	}
	p := c.state.Load()
	if p == ctxFinished {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.cancel != nil:
		p.cancel(p.cause()) // nil but for a cancelled task: context.Canceled
		if p.stop != nil {
			p.stop()
		}
	case p.err == nil && p.inner == nil:
		p.err = context.Canceled
	}
}

// String names the ctx as context.WithDeadline's do, for debugging.
func (c *taskContext) String() string {
	d, _ := c.Deadline()
	return "queue.taskContext.WithDeadline(" + d.String() + ")"
}
