package queue

// The workers of a lineSet that wait for a task: idle ones are woken one
// at a time, the one that went idle last first, as OrderIDs become
// runnable. All under the set's lock.

// toIdle registers w as waiting for a task.
func (ls *lineSet) toIdle(w *worker) {
	w.idleAt = len(ls.idle)
	ls.idle = append(ls.idle, w)
	if ls.s.elastic {
		ls.s.sizer.wentIdle()
	}
}

// unidle removes w, looking for a task, from the idle workers, if it is
// one, and the sizer counts it busy: from now, or from when it was woken
// (see wake).
func (ls *lineSet) unidle(w *worker) {
	switch {
	case w.idleAt >= 0:
		ls.dropIdle(w)
	case w.woken:
		w.woken = false
	default:
		return
	}
	if ls.s.elastic {
		ls.s.sizer.wentBusy()
	}
}

// dropIdle removes w from the idle workers; it is one.
func (ls *lineSet) dropIdle(w *worker) {
	i := w.idleAt
	last := len(ls.idle) - 1
	ls.idle[i] = ls.idle[last]
	ls.idle[i].idleAt = i
	ls.idle[last] = nil
	ls.idle = ls.idle[:last]
	w.idleAt = -1
	if ls.timed == w {
		ls.timed = nil
	}
}

// wakeOne wakes the idle worker that went idle last.
func (ls *lineSet) wakeOne() { ls.wake(ls.idle[len(ls.idle)-1]) }

// wake makes the idle worker w look for a task again. It is no longer
// idle, so that no other wake-up picks it, but the sizer counts it idle
// until it looks (unidle): a worker woken and not yet running (its
// goroutine waiting for a thread, on a loaded machine) is no busy one
// to grow the pool past.
func (ls *lineSet) wake(w *worker) {
	if w.idleAt >= 0 {
		ls.dropIdle(w)
		w.woken = true
	}
	select {
	case w.wake <- struct{}{}:
	default:
	}
}
