package queue

import (
	"fmt"
	"time"
)

// What the checker (checker_test.go) knows of scheduled tasks and of
// cancels.
//
// A cancelled task may never complete: it is not lost when a Cancel named
// it and the history shows the cancel took, which is a call that finished
// it as cancelled (recorded before it was sent), or, for a scheduled
// task, a Cancel that reported it scheduled (removed, never to run) or
// whose every answer was lost (it may have been removed). A run ended
// cancelled once its cancel was asked is no effective run: the task may
// run again after a crash without counting as a duplicate for it. A task
// that a Cancel reported scheduled must never run, and one it reported
// queued (StateUnknown: in the ready list, or finished) must not start
// after that report: the claim that meets it finishes it unrun. Its
// finishing holds back the next task of its OrderID as a completion does.
//
// A scheduled task joins its OrderID's sequence when the owner's claim
// moves it to the ready list, at or after its due time: so the tasks of
// its OrderID whose add returned before it fell due must run before it,
// and nothing else is asserted of its order (a task added after its due
// time, before the claim that moves it, runs first; two scheduled tasks
// may join in either order when the earlier is moved late or the later
// was added at once, its due time already past). Overlap is checked for
// every task of an OrderID, scheduled or not.

// cancelCall is one Cancel call of a task.
type cancelCall struct {
	asked, returned int64  // wall ns; returned is 0 when no answer was recorded
	result          string // the TaskState it reported, "error", or "" when unanswered
}

// cancelEvent records a Cancel call's start or return.
func (t *taskInfo) cancelEvent(e faultEvent) {
	if e.Ev == evCancel {
		t.cancels = append(t.cancels, &cancelCall{asked: e.Wall})
		return
	}
	for i := len(t.cancels) - 1; i >= 0; i-- {
		if c := t.cancels[i]; c.returned == 0 {
			c.returned, c.result = e.Wall, e.Result
			return
		}
	}
	t.cancels = append(t.cancels, &cancelCall{asked: e.Wall, returned: e.Wall, result: e.Result})
}

// reported reports whether a Cancel of t answered state.
func (t *taskInfo) reported(state string) bool {
	for _, c := range t.cancels {
		if c.result == state {
			return true
		}
	}
	return false
}

// cancelUnsure reports whether Cancels named t and none was answered
// (each returned an error, or its process died first): each may have
// taken or not.
func (t *taskInfo) cancelUnsure() bool {
	for _, c := range t.cancels {
		if c.result != "error" && c.result != "" {
			return false
		}
	}
	return len(t.cancels) > 0
}

// cancelTook reports whether a Cancel of t may have taken: one reported
// the task scheduled, pending, queued or cancelled, or none was answered.
// One that reported it done or dead changed nothing.
func (t *taskInfo) cancelTook() bool {
	return t.reported("scheduled") || t.reported("pending") || t.reported("unknown") || t.reported("cancelled") || t.cancelUnsure()
}

// cancelUnanswered reports whether a Cancel of t got no answer: it may
// have taken or not.
func (t *taskInfo) cancelUnanswered() bool {
	for _, c := range t.cancels {
		if c.result == "error" || c.result == "" {
			return true
		}
	}
	return false
}

// cancelledForGood reports whether t may never complete because it was
// cancelled: its cancel took, and the history shows it finished so, or,
// for a scheduled task, that a Cancel removed it or may have (a call
// whose answer was lost removes it all the same, and the next call finds
// it gone).
func (t *taskInfo) cancelledForGood() bool {
	if !t.cancelTook() {
		return false
	}
	if t.cancelFin != 0 || t.reported("cancelled") {
		return true
	}
	return t.due != 0 && (t.reported("scheduled") || t.cancelUnanswered())
}

// cutByCancel reports whether run r of t ended cancelled once t's cancel
// had been asked.
func (t *taskInfo) cutByCancel(r *run) bool {
	if r.result != "cancelled" || !t.cancelTook() {
		return false
	}
	for _, c := range t.cancels {
		if c.asked <= r.end {
			return true
		}
	}
	return false
}

// finishedAt returns when t stopped holding back the next task of its
// OrderID: its completion, or the first call that finished it as
// cancelled (MaxInt64: neither).
func (t *taskInfo) finishedAt() int64 {
	at, _ := t.completedAt()
	if t.cancelFin != 0 && t.cancelFin < at {
		at = t.cancelFin
	}
	return at
}

// countControls counts t's schedule and cancels.
func (rep *faultReport) countControls(t *taskInfo) {
	if t.due != 0 {
		rep.Scheduled++
	}
	rep.Cancels += len(t.cancels)
	for _, c := range t.cancels {
		if c.result == "error" {
			rep.CancelErrors++
		}
	}
	if t.cancelFin != 0 && len(t.cancels) == 0 {
		rep.UnaskedCancels++
	}
	for _, r := range t.runs {
		var late int64 = -1
		bad := false
		for _, c := range t.cancels {
			switch {
			case c.result == "scheduled":
				bad = true
			case c.result == "unknown" && r.start > c.returned:
				bad = true
			case c.result == "pending" && r.start > c.returned && !t.cutByCancel(r):
				// Cancel returned once the owner had seen the mark:
				// a start after that must have its ctx ended by it.
				bad = true
			case c.result == "pending" && r.start > c.returned:
				late = max(late, r.start-c.returned)
			}
		}
		switch {
		case bad:
			rep.RunAfterCancel++
		case late >= 0:
			rep.LateCancelStarts++
			rep.LateCancelMax = max(rep.LateCancelMax, time.Duration(late))
		}
	}
}

// checkScheduledOrder counts, among the tasks of one OrderID, the
// scheduled tasks that started before a task added before they fell due
// had finished (early starts), or were first delivered before it
// (reordered).
func (rep *faultReport) checkScheduledOrder(ts []*taskInfo) {
	for _, s := range ts {
		if s.due == 0 || len(s.runs) == 0 {
			continue
		}
		var before int64 = -1 << 63
		reordered := false
		for _, r := range ts {
			if r.due != 0 || r.addedAt == 0 || r.addedAt >= s.due {
				continue
			}
			before = max(before, r.finishedAt())
			if len(r.runs) > 0 && r.runs[0].start > s.runs[0].start {
				reordered = true
			}
		}
		for _, r := range s.runs {
			if r.start < before {
				rep.EarlyStarts++
			}
		}
		if reordered {
			rep.Reordered++
		}
	}
}

// controls renders the figures of scheduled tasks and cancels, when the
// run had any.
func (r faultReport) controls() string {
	if r.Scheduled == 0 && r.Cancels == 0 && r.Cancelled == 0 && r.UnaskedCancels == 0 && r.CutByCancel == 0 {
		return ""
	}
	return fmt.Sprintf(" scheduled=%d cancels=%d (errors %d) cancelled=%d (unrun %d) cutByCancel=%d runAfterCancel=%d unaskedCancels=%d lateCancelStarts=%d (longest %s)",
		r.Scheduled, r.Cancels, r.CancelErrors, r.Cancelled, r.CancelledUnrun, r.CutByCancel, r.RunAfterCancel, r.UnaskedCancels,
		r.LateCancelStarts, r.LateCancelMax.Round(time.Millisecond))
}
