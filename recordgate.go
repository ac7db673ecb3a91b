package queue

import (
	"slices"
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
// The record gate runs the tasks charged a delivery by a crash (the
// suspects: recovery found their delivery recorded and not finished, and
// marked them) one at a time among the pools of a Queue (a crash takes
// every pool of the process down; the pools of another Queue have a gate
// of their own, as nothing in the package is global): a suspect records
// its delivery only once the outcome of the suspect before it is in Redis
// (acknowledged, failed or dead-lettered), or that one has run for
// recordRun. A task that crashes its process is a suspect from its first
// recorded crash on, and then crashes with no other suspect recorded or
// running (but one that ran recordRun already): a healthy task charged
// for its crash once is a suspect too, charged again only by the crash of
// a task on its first redelivery. The first redeliveries after a
// takeover, every pending task, are not held back: only the few tasks
// recorded when a process died are. But with MaxAttempts 1 a first
// redelivery is a task's last: a crash beside it would dead-letter it
// without a turn of its own, so then every task recovery marked records
// its delivery through the gate, one at a time (a recovery that costs a
// round trip or two a pending task, the price of "no retry" with nothing
// lost to another task's crash). A task whose delivery failed (here
// or under an earlier owner, handed back by a stop) is no suspect: a
// failure returned is no crash, and its delivery ended with its outcome
// in Redis.

// recordRun is how long a suspect runs alone before the next may start
// beside it. Its record's round trip holds the gate however long it takes
// (a loaded machine, a Redis that answers late): a suspect recorded
// meanwhile would pay for the crash of the one ahead of it, never having
// run. A record that never comes back ends with its lease (the renewer
// gives the lease up at its deadline, which ends the call), so a
// partition whose Redis hangs holds back the suspects of the process's
// other pools for a lease's time at most. recordLook is how often a
// suspect set aside behind a record looks again, should the hurry of the
// gate's freeing miss it.
const (
	recordRun  = 5 * time.Second
	recordLook = time.Second
)

// gate is a Queue's record gate (see above).
type gate struct {
	mu      sync.Mutex
	holder  *gateHold  // the hold of the suspect that holds the gate, or nil
	started time.Time  // when its task started (zero: it records first)
	waiting []*lineSet // sets with a suspect set aside for it, to hurry when it frees
}

// gateHold is one suspect's hold of the gate, from its take to its done
// (once its outcome is in Redis: an ack's, once confirmed). It is not of
// size zero: pointers to such values may all be equal.
type gateHold struct{ _ byte }

// Whether take let w in.
const (
	gateWait = iota // not yet: look again
	gateHeld        // w holds the gate: call done
)

// take takes the gate at now for a suspect of set ls (gateHeld, with the
// hold to give back to done), or returns the time to look again
// (gateWait) and the hold it waits for, ls's suspects set aside meanwhile
// being hurried should the gate free sooner.
func (g *gate) take(ls *lineSet, now time.Time) (again time.Time, got int, h, behind *gateHold) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.holder == nil:
	case !g.started.IsZero() && !now.Before(g.started.Add(recordRun)):
		// The holder's task has run alone long enough: it goes on
		// outside the gate.
	default:
		if !slices.Contains(g.waiting, ls) {
			g.waiting = append(g.waiting, ls)
		}
		if g.started.IsZero() { // its record's round trip: no end known
			return now.Add(recordLook), gateWait, nil, g.holder
		}
		return g.started.Add(recordRun), gateWait, nil, g.holder
	}
	h = &gateHold{}
	g.holder, g.started = h, time.Time{}
	return time.Time{}, gateHeld, h, nil
}

// heldBy reports whether h holds the gate still.
func (g *gate) heldBy(h *gateHold) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.holder == h
}

// start says that the task of hold h starts at t (h nil: none).
func (g *gate) start(h *gateHold, t time.Time) {
	g.mu.Lock()
	if h != nil && g.holder == h {
		g.started = t
	}
	g.mu.Unlock()
}

// done frees the gate if h holds it (its task's outcome is in Redis, or
// it will not start), and hurries the suspects set aside for it.
func (g *gate) done(h *gateHold) {
	g.mu.Lock()
	if h == nil || g.holder != h {
		g.mu.Unlock()
		return
	}
	g.holder, g.started = nil, time.Time{}
	hurry := g.takeWaiting()
	g.mu.Unlock()
	hurryGated(hurry)
}

// forget drops sets from those with suspects set aside: their session
// ended, and the Queue's gate must not keep it.
func (g *gate) forget(sets []*lineSet) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.waiting = slices.DeleteFunc(g.waiting, func(ls *lineSet) bool { return slices.Contains(sets, ls) })
}

// takeWaiting returns the sets with suspects set aside, and forgets them.
// g.mu is held.
func (g *gate) takeWaiting() []*lineSet {
	sets := g.waiting
	g.waiting = nil
	return sets
}

// hurryGated makes the suspects set aside in sets due now, to try the
// gate again. No gate's lock is held: a set's lock is never taken under
// it.
func hurryGated(sets []*lineSet) {
	if len(sets) == 0 {
		return
	}
	now := time.Now()
	for _, ls := range sets {
		ls.hurry(now, func(o *orderLine) bool { return o.gated })
	}
}

// gated reports whether the start of a task of that attempt, marked
// recovered or not, whose last delivery by this process started at
// started, waits for the record gate under MaxAttempts maxAttempts (its
// caller's task must not escape to the heap for it): a task that recovery
// found charged a delivery by a crash, not a retry after a failure in
// this process (see gate); and, with MaxAttempts 1, any task recovery
// marked, whose first redelivery is its last (see gate).
func gated(recovered bool, attempt, maxAttempts int, started time.Time) bool {
	return recovered && (attempt > 1 || attempt >= maxAttempts) && started.IsZero()
}

// awaitRecordTurn asks the record gate to let o's first task, picked at
// now, record its delivery, holding the gate (the hold it returns: give
// it to done once the task's outcome is in Redis). It reports false when the task is not to start now: the
// gate is shut (o is set aside until the gate frees, or until it is due
// to look again, while the worker goes on with other OrderIDs), the
// session stops (on a graceful stop o goes back with the unstarted
// tasks), or the lease's deadline passed.
func (w *worker) awaitRecordTurn(o *orderLine, now time.Time) (bool, *gateHold) {
	g := w.s.gate
	again, got, h, behind := g.take(w.set, now)
	if got == gateWait {
		if w.set.setAside(w, o, again) && !g.heldBy(behind) {
			// Freed before o was set aside: the gate's hurry missed it.
			hurryGated([]*lineSet{w.set})
		}
		w.releaseDone()
		return false, nil
	}
	if !w.mayStart(o, now) {
		g.done(h)
		return false, nil
	}
	return true, h
}
