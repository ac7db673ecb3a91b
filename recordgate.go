package queue

import (
	"sync"
	"time"
)

// A redelivered or recovered task's delivery is recorded in Redis before
// it starts (see worker.recordStart), so that a crash while it runs
// counts. A crash caused by another task can also come after the record
// and before the start: the task pays for a delivery it never had. After
// a crash every pending task comes back marked, and the next owner's
// workers record and start them all at once, so a task that crashes its
// process at once took the tasks recorded beside it along, each time,
// until they were dead-lettered without ever running.
//
// The record gate lets the tasks charged with a delivery before (by a
// crash, or a failure under an earlier owner: the suspects) start one at
// a time in the whole process (a crash takes every pool of the process
// down): a suspect records its delivery only once the suspect recorded
// before it finished, or has run for recordGap. A task that crashes its
// process is a suspect from its first recorded crash on, and then, as it
// starts, takes no other suspect along: a healthy task charged for its
// crash once is a suspect too, charged again only by a crash of a task
// on its first redelivery. The first redeliveries after a takeover,
// every pending task, are not held back: only the few tasks recorded
// when a process died are. Retries after a failure in the same process
// are not held either: a failure returned is no crash.
var recordGate = &gate{}

// recordGap is how long a recorded task runs alone before the next
// recorded task may start beside it, and recordHold how long its record's
// round trip may hold the gate: a partition whose Redis does not answer
// holds back the recorded starts of the process's other pools that long,
// once.
const (
	recordGap  = 20 * time.Millisecond
	recordHold = time.Second
)

// gate is the record gate (see recordGate).
type gate struct {
	mu      sync.Mutex
	holder  *worker   // the worker whose task holds the gate, or nil
	taken   time.Time // when it took the gate
	started time.Time // when its task started (zero: it records first)
	waiters []*worker // workers to wake when it frees
}

// take takes the gate for w at now, or returns the time to look again,
// w being woken should it free sooner.
func (g *gate) take(w *worker, now time.Time) (again time.Time, ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.holder == nil, g.holder == w:
	case g.started.IsZero() && !now.Before(g.taken.Add(recordHold)),
		!g.started.IsZero() && !now.Before(g.started.Add(recordGap)):
		// The holder's record is stuck, or its task has run alone long
		// enough: it goes on outside the gate.
	default:
		g.waiters = append(g.waiters, w)
		if g.started.IsZero() {
			return g.taken.Add(recordHold), false
		}
		return g.started.Add(recordGap), false
	}
	g.holder, g.taken, g.started = w, now, time.Time{}
	return time.Time{}, true
}

// start says that w's task, holding the gate, starts at t.
func (g *gate) start(w *worker, t time.Time) {
	g.mu.Lock()
	if g.holder == w {
		g.started = t
	}
	g.mu.Unlock()
}

// done frees the gate if w's task holds it (it finished, or will not
// start), and wakes the workers that wait for it.
func (g *gate) done(w *worker) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.holder != w {
		return
	}
	g.holder, g.started = nil, time.Time{}
	for i, x := range g.waiters {
		notify(x.wake)
		g.waiters[i] = nil
	}
	g.waiters = g.waiters[:0]
}

// leave drops w from the waiters, if it is one.
func (g *gate) leave(w *worker) {
	g.mu.Lock()
	defer g.mu.Unlock()
	kept := g.waiters[:0]
	for _, x := range g.waiters {
		if x != w {
			kept = append(kept, x)
		}
	}
	clear(g.waiters[len(kept):])
	g.waiters = kept
}

// gated reports whether t's start waits for the record gate: a task that
// was charged a delivery before, not a retry after a failure in this
// process (see recordGate).
func gated(t *claimed) bool {
	return t.Attempt > 1 && t.started.IsZero()
}

// awaitRecordTurn waits until the record gate lets o's first task t,
// picked at now, record its delivery, and takes the gate. Only o waits, as
// for the rate limit (see awaitRate). It reports false when the session
// stops meanwhile or the lease's deadline passed: the task does not start
// (on a graceful stop o goes back with the unstarted tasks), and the gate
// is not taken. A cancel of the task seen meanwhile ends the wait: the
// caller finishes it as cancelled (check isMarked), the gate not taken.
func (w *worker) awaitRecordTurn(o *orderLine, t *claimed, now time.Time) (time.Time, bool) {
	s := w.s
	again, ok := recordGate.take(w, now)
	if !ok {
		w.held.Store(&t.ID)
		w.set.toWaiting(o)
		for !ok && !s.isMarked(t.ID) {
			select {
			case <-w.timerFor(time.Until(again)):
			case <-w.wake:
			case <-s.halt:
			}
			if s.halted() {
				break
			}
			now = time.Now()
			again, ok = recordGate.take(w, now)
		}
		recordGate.leave(w)
		w.held.Store(nil)
		if !w.set.endWait(o) {
			if ok {
				recordGate.done(w)
			}
			return now, false
		}
		if !ok { // cancelled
			return now, true
		}
	}
	if !w.mayStart(o, now) {
		recordGate.done(w)
		return now, false
	}
	return now, true
}
