package queue

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync/atomic"
	"time"
)

// worker is one worker goroutine of a pool: it takes tasks from its
// lineSet (its own, or under DispatchFree the pool's shared one) and runs
// them. Its slot, index, is where Counters count its work.
type worker struct {
	s     *session
	index int
	set   *lineSet
	wake  chan struct{}               // signalled when the worker, idle, is to look for a task again
	timer *time.Timer                 // for the worker's waits, made at the first (worker goroutine only)
	cur   atomic.Pointer[taskContext] // the ctx of the delivery it runs, for a cancel to end
	held  atomic.Pointer[string]      // the ID of the task it waits to start for the rate limit, for a cancel to wake it
	hold  *gateHold                   // the record gate's hold of its task, if it has one (worker's goroutine only)
	ctxs  []taskContext               // unused delivery contexts (worker goroutine only)

	// The task to run first, picked by the settle that a runtime.Goexit in
	// OnDone interrupted (worker goroutine only; see runOne).
	next   *orderLine
	nextT  claimed
	nextAt time.Time

	// Its streak: the tasks that follow the one it runs in its OrderID's
	// line, copied as it picked the OrderID, which it may run one after
	// another, each once the one before it is done, without taking the
	// set's lock between them (see streakNext); ran counts those run to
	// done and not settled yet (worker goroutine only; set.mu held to
	// copy and settle them).
	streak   []claimed
	streakAt int       // streak[streakAt] is its next task
	ran      int       // the line's tasks from head run to done, not settled
	pickedAt time.Time // when the streak began

	// The tasks run to done and acknowledged, not yet counted no longer
	// held (see releaseDone), and their size.
	doneHeld  int64
	doneBytes int64

	clockAt time.Time // the worker's last reading of both clocks (see now)

	// Under set.mu:
	idleAt int  // index in set.idle, or -1 while the worker is not idle
	woken  bool // woken from idle and not looking yet: the sizer counts it idle
	retire bool // the pool shrank: the worker ends once it holds no OrderID
	gone   bool // the worker's goroutine has ended, or has not started
}

func newWorker(s *session, i int, set *lineSet) *worker {
	return &worker{s: s, index: i, set: set, wake: make(chan struct{}, 1), idleAt: -1, gone: true}
}

// addSlot makes the worker of slot i, not started.
func (s *session) addSlot(i int) *worker {
	set := s.shared
	if set == nil {
		set = newLineSet(s, false)
	}
	w := newWorker(s, i, set)
	s.workers = append(s.workers, w)
	return w
}

// start starts w's goroutine; grown says the pool grew to start it. Its
// set's lock is held, or w's set is not in use yet.
func (s *session) start(w *worker, grown bool) {
	w.gone = false
	if s.elastic {
		// Idle until it first looks for a task, as a worker woken from
		// idle is (see lineSet.wake).
		w.woken = true
		s.sizer.wentIdle()
	}
	s.workWG.Add(1)
	n := s.addLive(1)
	if grown {
		s.cfg.Logger.Debug("queue: workers grown", "analyser", s.log.analyser, "workers", n)
	}
	go s.runWorker(w)
}

// runWorker runs w's loop on this goroutine. An analyse function that
// calls runtime.Goexit ends the goroutine, its delivery settled as failed
// (see goexited): a new goroutine then takes over as the same worker.
func (s *session) runWorker(w *worker) {
	returned := false
	defer func() {
		if !returned {
			go s.runWorker(w)
		}
	}()
	retired := w.loop()
	returned = true
	n := s.addLive(-1)
	if retired {
		s.cfg.Logger.Debug("queue: workers shrunk", "analyser", s.log.analyser, "workers", n)
	}
	s.workWG.Done()
}

// addLive counts d more live workers, and returns their number.
func (s *session) addLive(d int64) int64 {
	n := s.live.Add(d)
	if c := s.cfg.Counters; c != nil {
		c.workers.Add(d)
	}
	notify(s.resized)
	return n
}

// stopping reports whether the session stops (gracefully or with the
// lease lost): the worker starts nothing more.
func (w *worker) stopping() bool { return w.s.halted() }

// loop runs tasks until the session stops, or, when the worker retires,
// until it holds no OrderID; it reports whether it retired.
func (w *worker) loop() (retired bool) {
	defer func() {
		if !retired { // a retired worker released and stopped its timer as it went, and may be another goroutine's now
			w.releaseDone() // its tasks done before the lease was lost, if it was
			w.stopTimer()
		}
	}()
	// Picked with its task t at now by the last task's settle, if any.
	o, t, now := w.next, w.nextT, w.nextAt
	w.next, w.nextT = nil, claimed{}
	for {
		if w.stopping() {
			if o == nil || w.putBack(o) {
				return false
			}
		} else if o == nil {
			now = w.now()
			var due time.Time
			var exit bool
			o, t, due, exit = w.set.next(w, now)
			if exit {
				return true
			}
			if o == nil {
				var tc <-chan time.Time
				if !due.IsZero() {
					tc = w.timerFor(time.Until(due))
				}
				select {
				case <-w.wake:
				case <-tc:
				case <-w.s.halt:
				}
				continue
			}
		}
		if !w.s.leaseValid(now) {
			// The lease may be another owner's by now: start nothing.
			w.s.loseLease()
			o = nil
			continue
		}
		if w.s.pastStop(now) && !w.stopping() {
			// The pool's ctx has reached its deadline, and the stop is
			// due: put o back now for the stop to hand back, rather than
			// start its task, then wait for the stop.
			if w.unpickUntaken(o) {
				o = nil
			}
			<-w.s.halt
			continue
		}
		o, t, now = w.runOne(o, t, now)
	}
}

// now returns the time: from the monotonic clock alone, and the wall
// clock's reading of at most a second before. time.Now reads both, which
// is not free on every VM, and the worker reads the time once a task.
// Worker goroutine only.
func (w *worker) now() time.Time {
	if !w.clockAt.IsZero() {
		if d := time.Since(w.clockAt); d >= 0 && d < time.Second {
			return w.clockAt.Add(d)
		}
	}
	w.clockAt = bothClocks()
	return w.clockAt
}

// bothClocks returns a reading of the wall and monotonic clocks to carry
// forward by the monotonic one. time.Now reads the wall clock, then the
// monotonic clock: a thread descheduled between the two pairs the wall
// clock with a later monotonic reading (by milliseconds on a loaded host),
// and a worker would carry that error for a second. Of two readings, the
// one whose wall clock is furthest ahead of its monotonic one was paired
// more closely.
func bothClocks() time.Time {
	a, b := time.Now(), time.Now()
	if b.Round(0).Sub(a.Round(0)) > b.Sub(a) {
		return b
	}
	return a
}

// putBack puts back o, picked and its task (its first, or the next of the
// worker's streak) not started, as the session stops, and reports whether
// the worker is to leave it: it goes back with the unstarted tasks, unless
// the stop counted it as running already (see unpickUntaken: the worker
// starts it then); with the lease lost it is the next owner's.
func (w *worker) putBack(o *orderLine) bool {
	return w.s.isLost() || w.unpickUntaken(o)
}

// stopTimer stops the worker's timer, if it made one, and drops it. Only
// the worker's goroutine calls it.
func (w *worker) stopTimer() {
	if w.timer != nil {
		w.timer.Stop()
		w.timer = nil
	}
}

// timerFor returns the channel of the worker's timer, set to fire after d.
func (w *worker) timerFor(d time.Duration) <-chan time.Time {
	if w.timer == nil {
		w.timer = time.NewTimer(d)
	} else {
		w.timer.Reset(d) // a fire left unread from an earlier wait is dropped
	}
	return w.timer.C
}

// runOne runs t, o's task picked at now (its first, or the next of the
// worker's streak), and settles its outcome.
// When it settled a task done and another OrderID was runnable, it
// returns that one, picked at the time it returns, to run next.
func (w *worker) runOne(o *orderLine, t claimed, now time.Time) (next *orderLine, nt claimed, at time.Time) {
	s := w.s
	if t.cancelled || s.isMarked(t.ID) {
		w.cancelled(o, t, time.Time{})
		return
	}
	var err error
	var aborted bool
	var start, end time.Time
	if t.Attempt > s.cfg.MaxAttempts {
		err = fmt.Errorf("queue: delivery %d exceeds MaxAttempts %d", t.Attempt, s.cfg.MaxAttempts)
		t.Attempt = s.cfg.MaxAttempts // dead-letter it without running it
	} else {
		start = now
		if s.limit != nil {
			var ok bool
			if start, ok = w.awaitRate(o, t.ID, now); !ok {
				return
			}
			if s.isMarked(t.ID) { // cancelled during the wait
				w.cancelled(o, t, time.Time{})
				return
			}
		}
		if t.Attempt > 1 || t.recovered {
			if gated(t.recovered, t.Attempt, s.cfg.MaxAttempts, t.started) {
				var ok bool
				if ok, w.hold = w.awaitRecordTurn(o, now); !ok {
					return
				}
				defer w.releaseHold()
			}
			if !w.recordStart(t) {
				return
			}
			start = time.Now() // recording took a round trip
			if !s.leaseValid(start) {
				// The round trip outlasted the lease (a stall, a pause).
				s.loseLease()
				return
			}
			s.gate.start(w.hold, start)
		}
		// A runtime.Goexit in the analyse function or in OnDone ends the
		// worker's goroutine: the delivery is settled on the way out, and
		// runWorker starts another goroutine for the worker.
		exiting := exitAnalyse
		defer func() {
			switch exiting {
			case exitAnalyse:
				w.goexited(o, t, start)
			case exitOnDone: // the outcome is analyse's
				w.next, w.nextT, w.nextAt = w.settleOutcome(o, t, err, aborted, start, end)
			}
		}()
		err, aborted, end = s.analyse(w, t.Task, start)
		exiting = exitOnDone
		if err == errNotStarted {
			exiting = exitNone
			w.cancelled(o, t, time.Time{})
			return
		}
		if s.cfg.OnDone != nil {
			end = time.Time{} // read after it: the next start checks the lease at that time
			s.cfg.OnDone(t.Task, time.Since(start), err)
		}
		exiting = exitNone
	}
	return w.settleOutcome(o, t, err, aborted, start, end)
}

// Where runOne is when a runtime.Goexit ends the worker's goroutine.
const (
	exitNone    = iota
	exitAnalyse // in the analyse function
	exitOnDone  // in OnDone
)

// goexited settles t, picked from o and started at start, whose analyse
// function called runtime.Goexit: a failed delivery, as a panic is. The
// worker's goroutine ends after it, and runWorker starts another.
func (w *worker) goexited(o *orderLine, t claimed, start time.Time) {
	s := w.s
	if s.cfg.OnDone != nil {
		callHook(func() { s.cfg.OnDone(t.Task, time.Since(start), ErrGoexit) })
	}
	w.settleOutcome(o, t, ErrGoexit, false, start, time.Time{})
}

// settleOutcome settles the outcome err of t, picked from o and started
// at start (zero: it did not run) and ended at end (zero: not read);
// aborted says its cancel ended its ctx. When it settled t done and
// another OrderID was runnable, it returns that one, picked at the time it
// returns, to run next.
func (w *worker) settleOutcome(o *orderLine, t claimed, err error, aborted bool, start, end time.Time) (next *orderLine, nt claimed, at time.Time) {
	s := w.s
	switch {
	case s.isLost():
		return // the next owner has it; drop everything
	case err != nil && (aborted || s.isMarked(t.ID)) && s.tasks.ctx.Err() == nil:
		w.cancelled(o, t, start)
	case err == nil:
		if at = end; at.IsZero() {
			at = w.now()
		}
		if h := w.hold; h != nil {
			// A suspect holds the gate until Redis has its ack: a crash
			// before would charge it again.
			w.hold = nil
			s.acks.ackThen(t, start, func() { s.gate.done(h) })
		} else {
			s.acks.ack(t, start)
		}
		w.doneHeld++
		w.doneBytes += t.size()
		if c := s.cfg.Counters; c != nil {
			(*c.processed.Load())[w.index].Add(1)
		}
		if nt, ok := w.streakNext(o, at); ok {
			return o, nt, at
		}
		next, nt = w.settleNext(o, at)
	case s.tasks.ctx.Err() != nil:
		// Interrupted by the end of a graceful stop: handed back, the
		// delivery counted.
		w.settle(o, false, time.Time{}, start)
	case t.Attempt >= s.cfg.MaxAttempts:
		if !w.bury(t, err) {
			return
		}
		w.settle(o, true, time.Time{}, time.Time{})
		s.release(t)
	default:
		s.cfg.OnError(&TaskError{ID: t.ID, OrderID: t.OrderID, Attempt: t.Attempt, Err: err})
		retryAt := time.Now().Add(s.cfg.Backoff(t.Attempt))
		if _, ferr := s.st.fail(s.leaseCtx, t, err, retryAt, false); ferr != nil {
			if errors.Is(ferr, ErrLeaseLost) {
				s.loseLease()
				return
			}
			s.cfg.OnError(ferr) // retried all the same; a crash now counts one delivery less
		}
		w.settle(o, false, retryAt, start)
	}
	return next, nt, at
}

// releaseHold gives back the record gate's hold of w's task, if it has
// one still.
func (w *worker) releaseHold() {
	w.s.gate.done(w.hold)
	w.hold = nil
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
// retrying Redis errors until it succeeds, the lease is lost or a stop
// gives it up (see session.retry; it stays pending then): its OrderID
// must not go on before it is safely stored. It reports success.
func (w *worker) bury(t claimed, cause error) bool {
	s := w.s
	s.acks.confirmed(s.leaseCtx)
	var b backoff
	if !s.retry(1, &b, func(ctx context.Context) error {
		_, err := s.st.fail(ctx, t, cause, time.Time{}, false)
		return err
	}) {
		return false
	}
	s.cfg.OnError(&TaskError{ID: t.ID, OrderID: t.OrderID, Attempt: t.Attempt, Dead: true, Err: cause})
	if c := s.cfg.Counters; c != nil {
		(*c.failed.Load())[w.index].Add(1)
	}
	return true
}

// errNotStarted is analyse's answer for a task whose cancel it saw before
// it called fn: finish it as cancelled, not run.
var errNotStarted = errors.New("queue: cancelled before it started")

// analyse runs fn on one delivery started at start, on w, turning a panic
// into a *PanicError and a timeout into an error that says so; aborted
// reports that the task's cancel ended its ctx. A delivery that returns
// nil once its TaskTimeout has passed fails all the same: Go cannot stop
// a function that does not watch its ctx, but its outcome came too late
// (see PoolConfig.TaskTimeout). end is the time fn returned nil (the
// worker's one clock read a task), else zero. It returns errNotStarted,
// without calling fn, when the task's cancel is seen first.
func (s *session) analyse(w *worker, t Task, start time.Time) (err error, aborted bool, end time.Time) {
	var deadline time.Time
	if s.cfg.TaskTimeout > 0 {
		deadline = start.Add(s.cfg.TaskTimeout)
	}
	tc := w.nextTaskContext(s.tasks, deadline)
	tc.id = t.ID
	w.cur.Store(tc)
	// A cancel seen since the worker picked the task (during the rate
	// wait, or while its start was recorded): watchCancels stores the
	// marks before it reads cur, and the worker reads the marks after it
	// stored cur, so one of them sees the other. A task whose mark is
	// seen here does not start: Cancel may have returned already, and
	// promised that. One whose mark comes later has its ctx ended.
	if s.isMarked(t.ID) {
		w.cur.Store(nil)
		tc.finish()
		return errNotStarted, true, time.Time{}
	}
	defer func() {
		// cur keeps the ended ctx until the next delivery: a cancel that
		// finds it ends it again, which changes nothing, and the store a
		// task saved is a measurable part of a drain's cost.
		tc.finish()
		if r := recover(); r != nil {
			err = &PanicError{Value: r, Stack: debug.Stack()}
		}
		aborted = tc.aborted()
	}()
	err = callerErr(s.fn(tc, t)) // safe to turn into text from here on
	switch {
	case err != nil:
		if s.tasks.ctx.Err() == nil && errors.Is(tc.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("queue: task timed out after %v: %w", s.cfg.TaskTimeout, err)
		}
	case s.cfg.TaskTimeout > 0:
		end = w.now()
		if end.Sub(start) >= s.cfg.TaskTimeout && s.tasks.ctx.Err() == nil {
			err = &lateError{timeout: s.cfg.TaskTimeout, took: end.Sub(start)}
			end = time.Time{}
		}
	}
	return err, false, end
}

// lateError is the failure of a delivery whose analyse function returned
// nil after its TaskTimeout had ended its ctx.
type lateError struct{ timeout, took time.Duration }

func (e *lateError) Error() string {
	return fmt.Sprintf("queue: task timed out after %v: it returned nil %v after it started, its ctx ended (an analyse function must return when its ctx is done)",
		e.timeout, e.took.Round(time.Millisecond))
}

// Unwrap makes the failure a context.DeadlineExceeded, as a timeout
// that the function itself returned is.
func (e *lateError) Unwrap() error { return context.DeadlineExceeded }

// cancelled finishes t, whose cancel was asked, as cancelled: it started
// at started (zero: it did not run). Redis errors are retried as a dead
// letter's are (see bury): its OrderID goes on only once it is recorded.
func (w *worker) cancelled(o *orderLine, t claimed, started time.Time) {
	s := w.s
	s.acks.confirmed(s.leaseCtx)
	var b backoff
	if !s.retry(1, &b, func(ctx context.Context) error {
		return s.st.finishCancelled(ctx, t, started)
	}) {
		return
	}
	w.settle(o, true, time.Time{}, time.Time{})
	s.release(t)
}
