package queue

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// Tests of what the checker knows of cancels and scheduled tasks
// (checker_control_test.go), on small hand-made histories.

// cancel records a Cancel of task (order, seq, id) that reported result.
func (b *histBuilder) cancel(order uint64, seq int, id, result string) *histBuilder {
	b.add(faultEvent{Ev: evCancel, Pid: 1, Order: order, Seq: seq, ID: id})
	return b.add(faultEvent{Ev: evCancelled, Pid: 1, Order: order, Seq: seq, ID: id, Result: result})
}

// cancelFin records pid sending the call that finishes task id as cancelled.
func (b *histBuilder) cancelFin(pid int, id string) *histBuilder {
	return b.add(faultEvent{Ev: evCancelFin, Pid: pid, ID: id})
}

// scheduled records the add of task (order, seq, id) due at dueMS (ms
// since the epoch), returning ok.
func (b *histBuilder) scheduled(order uint64, seq int, id string, dueMS int64) *histBuilder {
	b.add(faultEvent{Ev: evAdd, Pid: 1, Order: order, Seq: seq, Due: dueMS})
	return b.add(faultEvent{Ev: evAdded, Pid: 1, Order: order, Seq: seq, ID: id, Result: "ok"})
}

func (b *histBuilder) start(pid int, order uint64, seq int, id string, attempt int) *histBuilder {
	return b.add(faultEvent{Ev: evStart, Pid: pid, Order: order, Seq: seq, ID: id, Attempt: attempt})
}

func (b *histBuilder) finish(pid int, order uint64, seq int, id string, attempt int, result string) *histBuilder {
	return b.add(faultEvent{Ev: evFinish, Pid: pid, Order: order, Seq: seq, ID: id, Attempt: attempt, Result: result})
}

// violations sums what no run may have, cancels or not.
func violations(r faultReport) int {
	return r.Lost + r.Unexpected + r.DupOther + r.DupPending + r.Reordered + r.EarlyStarts + r.Overlap +
		r.RunAfterCancel + r.UnaskedCancels
}

func TestCheckerAcceptsCancels(t *testing.T) {
	t.Parallel()
	// base: three tasks of order 1 and pid 10 holding the lease.
	base := func() *histBuilder {
		b := &histBuilder{}
		return b.lease(10, 1).added(1, 0, "a").added(1, 1, "b").added(1, 2, "c")
	}
	tests := []struct {
		name  string
		build func() *histBuilder
		check func(t *testing.T, r faultReport)
	}{
		{"queued task cancelled, never run", func() *histBuilder {
			b := base().cancel(1, 1, "b", "unknown").runTask(10, 1, 0, "a", 1, "ok")
			return b.cancelFin(10, "b").runTask(10, 1, 2, "c", 1, "ok")
		}, func(t *testing.T, r faultReport) {
			assert.Equal(t, 1, r.Cancelled)
			assert.Equal(t, 1, r.CancelledUnrun)
			assert.Equal(t, 2, r.Completed)
		}},
		{"running task cut by its cancel", func() *histBuilder {
			b := base().runTask(10, 1, 0, "a", 1, "ok").start(10, 1, 1, "b", 1).cancel(1, 1, "b", "pending")
			return b.finish(10, 1, 1, "b", 1, "cancelled").cancelFin(10, "b").runTask(10, 1, 2, "c", 1, "ok")
		}, func(t *testing.T, r faultReport) {
			assert.Equal(t, 1, r.Cancelled)
			assert.Zero(t, r.CancelledUnrun)
			assert.Equal(t, 1, r.CutByCancel)
		}},
		{"run, its owner killed, run again and cut: no duplicate", func() *histBuilder {
			// b ran ok on pid 10, which died before its ack; pid 11 runs it
			// again and the cancel cuts that run. No pending record was
			// read at the kill: only the cut keeps it from a duplicate.
			b := base().runTask(10, 1, 0, "a", 1, "ok").runTask(10, 1, 1, "b", 1, "ok")
			b.add(faultEvent{Ev: evKill, Pid: 10})
			b.lease(11, 2).start(11, 1, 1, "b", 2).cancel(1, 1, "b", "pending").finish(11, 1, 1, "b", 2, "cancelled")
			return b.cancelFin(11, "b").runTask(11, 1, 2, "c", 1, "ok")
		}, func(t *testing.T, r faultReport) {
			assert.Equal(t, 1, r.CutByCancel)
			assert.Equal(t, 3, r.Completed, "b ran ok before its cancel")
			assert.Zero(t, r.Cancelled)
		}},
		{"scheduled task cancelled", func() *histBuilder {
			b := base().scheduled(1, 3, "s", 1e6).cancel(1, 3, "s", "scheduled")
			return b.runTask(10, 1, 0, "a", 1, "ok").runTask(10, 1, 1, "b", 1, "ok").runTask(10, 1, 2, "c", 1, "ok")
		}, func(t *testing.T, r faultReport) {
			assert.Equal(t, 1, r.Scheduled)
			assert.Equal(t, 1, r.CancelledUnrun)
		}},
		{"scheduled task whose cancel got no answer", func() *histBuilder {
			b := base().scheduled(1, 3, "s", 1e6).cancel(1, 3, "s", "error").cancel(1, 3, "s", "error")
			return b.runTask(10, 1, 0, "a", 1, "ok").runTask(10, 1, 1, "b", 1, "ok").runTask(10, 1, 2, "c", 1, "ok")
		}, func(t *testing.T, r faultReport) {
			assert.Equal(t, 1, r.Cancelled)
			assert.Equal(t, 2, r.CancelErrors)
		}},
		{"scheduled task whose first cancel's answer was lost", func() *histBuilder {
			// The first call removed it; the second finds it nowhere and marks it.
			b := base().scheduled(1, 3, "s", 1e6).cancel(1, 3, "s", "error").cancel(1, 3, "s", "unknown")
			return b.runTask(10, 1, 0, "a", 1, "ok").runTask(10, 1, 1, "b", 1, "ok").runTask(10, 1, 2, "c", 1, "ok")
		}, func(t *testing.T, r faultReport) {
			assert.Equal(t, 1, r.Cancelled)
		}},
		{"cancel of a finished task", func() *histBuilder {
			b := base().runTask(10, 1, 0, "a", 1, "ok").cancel(1, 0, "a", "unknown")
			return b.runTask(10, 1, 1, "b", 1, "ok").runTask(10, 1, 2, "c", 1, "ok")
		}, func(t *testing.T, r faultReport) {
			assert.Equal(t, 3, r.Completed)
			assert.Zero(t, r.Cancelled)
		}},
		{"a held task starting after its cancel, which cuts it, is late, not wrong", func() *histBuilder {
			b := base().cancel(1, 0, "a", "pending")
			return b.at(b.wall+300).runTask(10, 1, 0, "a", 1, "cancelled").cancelFin(10, "a").
				runTask(10, 1, 1, "b", 1, "ok").runTask(10, 1, 2, "c", 1, "ok")
		}, func(t *testing.T, r faultReport) {
			assert.Equal(t, 1, r.LateCancelStarts)
			assert.Equal(t, 301*time.Nanosecond, r.LateCancelMax)
			assert.Equal(t, 1, r.Cancelled)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := checkHistory(tc.build().ev)
			assert.Zero(t, violations(r), "%v", r)
			tc.check(t, r)
		})
	}
}

func TestCheckerFlagsViolationsNextToCancels(t *testing.T) {
	t.Parallel()
	base := func() *histBuilder {
		b := &histBuilder{}
		return b.lease(10, 1).added(1, 0, "a").added(1, 1, "b").added(1, 2, "c")
	}
	tests := []struct {
		name  string
		build func() *histBuilder
		want  func(r faultReport) int
	}{
		{"lost beside a cancelled task", func() *histBuilder {
			return base().cancel(1, 1, "b", "unknown").runTask(10, 1, 0, "a", 1, "ok").cancelFin(10, "b")
		}, func(r faultReport) int { return r.Lost }},
		{"lost: a cancel that reported it queued, and nothing finished it", func() *histBuilder {
			return base().cancel(1, 1, "b", "unknown").runTask(10, 1, 0, "a", 1, "ok").runTask(10, 1, 2, "c", 1, "ok")
		}, func(r faultReport) int { return r.Lost }},
		{"lost: a cancel that found it done", func() *histBuilder {
			return base().cancel(1, 1, "b", "done").runTask(10, 1, 0, "a", 1, "ok").runTask(10, 1, 2, "c", 1, "ok")
		}, func(r faultReport) int { return r.Lost }},
		{"lost: an unanswered cancel excuses no task added at once", func() *histBuilder {
			return base().cancel(1, 1, "b", "error").runTask(10, 1, 0, "a", 1, "ok").runTask(10, 1, 2, "c", 1, "ok")
		}, func(r faultReport) int { return r.Lost }},
		{"duplicate beside a cancelled task", func() *histBuilder {
			b := base().cancel(1, 0, "a", "unknown").cancelFin(10, "a")
			return b.runTask(10, 1, 1, "b", 1, "ok").runTask(10, 1, 2, "c", 1, "ok").runTask(10, 1, 2, "c", 2, "ok")
		}, func(r faultReport) int { return r.DupOther }},
		{"a held task run to its end after Cancel reported it pending", func() *histBuilder {
			b := base().cancel(1, 0, "a", "pending")
			return b.at(b.wall+300).runTask(10, 1, 0, "a", 1, "ok").runTask(10, 1, 1, "b", 1, "ok").runTask(10, 1, 2, "c", 1, "ok")
		}, func(r faultReport) int { return r.RunAfterCancel }},
		{"duplicate of a cancelled task: both runs ok", func() *histBuilder {
			b := base().cancel(1, 0, "a", "pending").runTask(10, 1, 0, "a", 1, "ok").runTask(10, 1, 0, "a", 2, "ok")
			return b.runTask(10, 1, 1, "b", 1, "ok").runTask(10, 1, 2, "c", 1, "ok")
		}, func(r faultReport) int { return r.DupOther }},
		{"a task cancelled while scheduled runs", func() *histBuilder {
			b := base().scheduled(1, 3, "s", 1e6).cancel(1, 3, "s", "scheduled")
			b.runTask(10, 1, 0, "a", 1, "ok").runTask(10, 1, 1, "b", 1, "ok").runTask(10, 1, 2, "c", 1, "ok")
			return b.runTask(10, 1, 3, "s", 1, "ok")
		}, func(r faultReport) int { return r.RunAfterCancel }},
		{"a task cancelled while queued starts", func() *histBuilder {
			b := base().cancel(1, 0, "a", "unknown").runTask(10, 1, 0, "a", 1, "cancelled").cancelFin(10, "a")
			return b.runTask(10, 1, 1, "b", 1, "ok").runTask(10, 1, 2, "c", 1, "ok")
		}, func(r faultReport) int { return r.RunAfterCancel }},
		{"a task finished as cancelled that no one cancelled", func() *histBuilder {
			b := base().runTask(10, 1, 0, "a", 1, "ok").cancelFin(10, "b")
			return b.runTask(10, 1, 2, "c", 1, "ok")
		}, func(r faultReport) int { return r.UnaskedCancels }},
		{"early start: the next task starts before the cancelled one is finished", func() *histBuilder {
			b := base().runTask(10, 1, 0, "a", 1, "ok").start(10, 1, 1, "b", 1).cancel(1, 1, "b", "pending")
			b.finish(10, 1, 1, "b", 1, "cancelled").runTask(10, 1, 2, "c", 1, "ok")
			return b.cancelFin(10, "b")
		}, func(r faultReport) int { return r.EarlyStarts }},
		{"overlap with a run cut by its cancel", func() *histBuilder {
			b := base().runTask(10, 1, 0, "a", 1, "ok").start(10, 1, 1, "b", 1).cancel(1, 1, "b", "pending")
			b.start(10, 1, 2, "c", 1).finish(10, 1, 1, "b", 1, "cancelled").cancelFin(10, "b")
			return b.finish(10, 1, 2, "c", 1, "ok")
		}, func(r faultReport) int { return r.Overlap }},
		{"reordered around a cancelled task", func() *histBuilder {
			b := base().cancel(1, 1, "b", "unknown").runTask(10, 1, 2, "c", 1, "ok").cancelFin(10, "b")
			return b.runTask(10, 1, 0, "a", 1, "ok")
		}, func(r faultReport) int { return r.Reordered }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := checkHistory(tc.build().ev)
			assert.Equal(t, 1, tc.want(r), "%v", r)
		})
	}
}

func TestCheckerScheduledOrder(t *testing.T) {
	t.Parallel()
	const ms = int64(time.Millisecond)
	// a is added at 10ms, s is due at 20ms, b is added at 30ms: a must
	// run before s; b may run before or after it.
	base := func() *histBuilder {
		b := &histBuilder{}
		b.lease(10, 1)
		b.at(10*ms).added(1, 0, "a")
		b.at(15*ms).scheduled(1, 1, "s", 20)
		return b.at(30*ms).added(1, 2, "b")
	}
	ok := []struct {
		name  string
		build func() *histBuilder
	}{
		{"in due order", func() *histBuilder {
			return base().runTask(10, 1, 0, "a", 1, "ok").runTask(10, 1, 1, "s", 1, "ok").runTask(10, 1, 2, "b", 1, "ok")
		}},
		{"a task added after the due time runs first", func() *histBuilder {
			return base().runTask(10, 1, 0, "a", 1, "ok").runTask(10, 1, 2, "b", 1, "ok").runTask(10, 1, 1, "s", 1, "ok")
		}},
		{"moved late, after a later scheduled task added once due", func() *histBuilder {
			b := base()
			b.at(40*ms).scheduled(1, 3, "t", 35) // due already: added at once
			return b.runTask(10, 1, 0, "a", 1, "ok").runTask(10, 1, 2, "b", 1, "ok").runTask(10, 1, 3, "t", 1, "ok").runTask(10, 1, 1, "s", 1, "ok")
		}},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			r := checkHistory(tc.build().ev)
			assert.Zero(t, violations(r), "%v", r)
			assert.Positive(t, r.Scheduled)
		})
	}
	bad := []struct {
		name  string
		build func() *histBuilder
		want  func(r faultReport) int
	}{
		{"before a task added before it fell due", func() *histBuilder {
			return base().runTask(10, 1, 1, "s", 1, "ok").runTask(10, 1, 0, "a", 1, "ok").runTask(10, 1, 2, "b", 1, "ok")
		}, func(r faultReport) int { return r.Reordered }},
		{"while a task added before it fell due waits for its retry", func() *histBuilder {
			b := base().runTask(10, 1, 0, "a", 1, "error").runTask(10, 1, 1, "s", 1, "ok")
			return b.runTask(10, 1, 0, "a", 2, "ok").runTask(10, 1, 2, "b", 1, "ok")
		}, func(r faultReport) int { return r.EarlyStarts }},
		{"beside a task added after it fell due", func() *histBuilder {
			b := base().runTask(10, 1, 0, "a", 1, "ok").start(10, 1, 1, "s", 1).start(11, 1, 2, "b", 1)
			return b.finish(10, 1, 1, "s", 1, "ok").finish(11, 1, 2, "b", 1, "ok")
		}, func(r faultReport) int { return r.Overlap }},
		{"lost", func() *histBuilder {
			return base().runTask(10, 1, 0, "a", 1, "ok").runTask(10, 1, 2, "b", 1, "ok")
		}, func(r faultReport) int { return r.Lost }},
		{"run twice", func() *histBuilder {
			b := base().runTask(10, 1, 0, "a", 1, "ok").runTask(10, 1, 1, "s", 1, "ok").runTask(10, 1, 1, "s", 2, "ok")
			return b.runTask(10, 1, 2, "b", 1, "ok")
		}, func(r faultReport) int { return r.DupOther }},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			r := checkHistory(tc.build().ev)
			assert.Equal(t, 1, tc.want(r), "%v", r)
		})
	}
}
