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

// unidle removes w from the idle workers, if it is one.
func (ls *lineSet) unidle(w *worker) {
	i := w.idleAt
	if i < 0 {
		return
	}
	last := len(ls.idle) - 1
	ls.idle[i] = ls.idle[last]
	ls.idle[i].idleAt = i
	ls.idle[last] = nil
	ls.idle = ls.idle[:last]
	w.idleAt = -1
	if ls.timed == w {
		ls.timed = nil
	}
	if ls.s.elastic {
		ls.s.sizer.wentBusy()
	}
}

// wakeOne wakes the idle worker that went idle last.
func (ls *lineSet) wakeOne() { ls.wake(ls.idle[len(ls.idle)-1]) }

// wake makes the idle worker w look for a task again.
func (ls *lineSet) wake(w *worker) {
	ls.unidle(w)
	select {
	case w.wake <- struct{}{}:
	default:
	}
}
