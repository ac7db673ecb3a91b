package queue

import "time"

// Streaks: a worker that picked an OrderID runs the tasks held behind its
// first one after another, each once the one before is done, without
// taking its set's lock between them, and settles them at once (see
// lineSet). The line keeps them until then; a stop takes what follows
// the one the worker runs through the line's step, which the worker
// advances by a compare-and-swap as it takes each next task.

// maxStreak bounds a streak's tasks, and streakSpan how long it goes on
// taking its next one: what the other OrderIDs of a shared set may wait
// for a turn of the worker (see streakNext).
const (
	maxStreak  = 32
	streakSpan = time.Millisecond
)

// streakRelease is the size of a streak's done tasks that it counts no
// longer held before its next task starts.
const streakRelease = 64 << 10

// beginStreak copies the tasks that follow o's first, picked at now, as the
// worker's streak: none where the pool's rate limit, whose wait a stop
// must find in the line (toWaiting), may hold them. set.mu is held.
func (w *worker) beginStreak(o *orderLine, now time.Time) {
	w.endStreak()
	w.ran, w.pickedAt = 0, now
	if w.s.limit != nil {
		return
	}
	if n := min(len(o.tasks), o.head+maxStreak) - o.head - 1; n > 0 {
		w.streak = append(w.streak[:0], o.tasks[o.head+1:o.head+1+n]...)
	}
}

// endStreak drops what is left of the streak.
func (w *worker) endStreak() {
	clear(w.streak[w.streakAt:])
	w.streak, w.streakAt = w.streak[:0], 0
}

// streakNext returns the next task of the streak of o, whose task the
// worker just ran to done at now, and takes it to run: not once the
// streak is maxStreak tasks or streakSpan old, nor when the session
// stops, nor for a task whose start is recorded first (a delivery before
// this one), cancelled, or past a stop that took it. The done task stays
// in o until the streak is settled.
func (w *worker) streakNext(o *orderLine, now time.Time) (claimed, bool) {
	if w.streakAt == len(w.streak) || now.Sub(w.pickedAt) >= streakSpan || w.s.halted() {
		return claimed{}, false
	}
	t := &w.streak[w.streakAt]
	if t.Attempt > 1 || t.recovered || t.cancelled || !o.step.CompareAndSwap(int32(w.ran+1), int32(w.ran+2)) {
		return claimed{}, false
	}
	next := *t
	*t = claimed{}
	w.streakAt++
	w.ran++
	// The done ones, acknowledged, are held no longer: counted so in a
	// lump once they are streakRelease bytes, or with the settle (at most
	// maxStreak small tasks counted held a while longer, if the next runs
	// long), not one count a task, which the fetcher's core reads.
	if w.doneBytes >= streakRelease {
		w.releaseDone()
	}
	return next, true
}

// releaseDone counts the tasks the worker ran to done and acknowledged
// no longer held: before the next task of its streak starts, or once the
// line is settled (after it, so that the fetcher, told of the room, finds
// the line settled).
func (w *worker) releaseDone() {
	if w.doneHeld == 0 {
		return
	}
	w.s.releaseHeld(w.doneHeld, w.doneBytes)
	w.doneHeld, w.doneBytes = 0, 0
}

// settle, settleNext, unpickUntaken and toWaiting are the set's, the
// worker's streak settled with them, then its done tasks released.
func (w *worker) settle(o *orderLine, done bool, retryAt, started time.Time) {
	w.set.settle(w, o, done, retryAt, started)
	w.releaseDone()
}

func (w *worker) settleNext(o *orderLine, now time.Time) (*orderLine, claimed) {
	next, t := w.set.settleNext(o, w, now)
	w.releaseDone()
	return next, t
}

func (w *worker) unpickUntaken(o *orderLine) bool {
	ok := w.set.unpickUntaken(w, o)
	w.releaseDone()
	return ok
}

func (w *worker) toWaiting(o *orderLine) {
	w.set.toWaiting(w, o)
	w.releaseDone()
}

// settleRan settles the tasks of o that w ran to done in its streak and
// has not settled yet. ls.mu is held.
func (ls *lineSet) settleRan(o *orderLine, w *worker) {
	if w.ran > 0 {
		if n := o.step.Load(); n > 0 { // not taken by a stop: count from the new head
			o.step.Store(n - int32(w.ran))
		}
		for ; w.ran > 0; w.ran-- {
			o.tasks[o.head] = claimed{}
			o.head++
		}
	}
	w.endStreak()
}
