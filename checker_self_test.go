package queue

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Tests of the fault suite's checker (checker_test.go) on small hand-made
// histories, one per violation it counts or case it must not count.

// histBuilder makes small hand-written histories for the checker's tests.
type histBuilder struct {
	ev   []faultEvent
	wall int64
}

func (b *histBuilder) at(w int64) *histBuilder { b.wall = w; return b }

func (b *histBuilder) add(e faultEvent) *histBuilder {
	if e.Wall == 0 {
		b.wall++
		e.Wall = b.wall
	}
	b.ev = append(b.ev, e)
	return b
}

func (b *histBuilder) added(order uint64, seq int, id string) *histBuilder {
	b.add(faultEvent{Ev: evAdd, Pid: 1, Order: order, Seq: seq})
	return b.add(faultEvent{Ev: evAdded, Pid: 1, Order: order, Seq: seq, ID: id, Result: "ok"})
}

func (b *histBuilder) runTask(pid int, order uint64, seq int, id string, attempt int, result string) *histBuilder {
	b.add(faultEvent{Ev: evStart, Pid: pid, Order: order, Seq: seq, ID: id, Attempt: attempt})
	return b.add(faultEvent{Ev: evFinish, Pid: pid, Order: order, Seq: seq, ID: id, Attempt: attempt, Result: result})
}

func (b *histBuilder) lease(pid int, token int64) *histBuilder {
	return b.add(faultEvent{Ev: evLease, Pid: pid, Token: token})
}

func TestCheckerDetectsEachViolation(t *testing.T) {
	t.Parallel()
	// base: two tasks of order 1, run in order by pid 10, which holds the lease.
	base := func() *histBuilder {
		b := &histBuilder{}
		return b.lease(10, 1).added(1, 0, "a").added(1, 1, "b")
	}
	tests := []struct {
		name  string
		build func() *histBuilder
		want  func(r faultReport) int
	}{
		{"clean", func() *histBuilder {
			return base().runTask(10, 1, 0, "a", 1, "ok").runTask(10, 1, 1, "b", 1, "ok")
		}, func(r faultReport) int { return r.Lost + r.Unexpected + r.DupOther + r.Reordered + r.Overlap }},
		{"lost", func() *histBuilder {
			return base().runTask(10, 1, 0, "a", 1, "ok")
		}, func(r faultReport) int { return r.Lost }},
		{"lost: failed and never retried", func() *histBuilder {
			return base().runTask(10, 1, 0, "a", 1, "ok").runTask(10, 1, 1, "b", 1, "error")
		}, func(r faultReport) int { return r.Lost }},
		{"unexpected", func() *histBuilder {
			return base().runTask(10, 1, 0, "a", 1, "ok").runTask(10, 1, 1, "b", 1, "ok").runTask(10, 7, 0, "z", 1, "ok")
		}, func(r faultReport) int { return r.Unexpected }},
		{"duplicate, other", func() *histBuilder {
			return base().runTask(10, 1, 0, "a", 1, "ok").runTask(10, 1, 1, "b", 1, "ok").runTask(10, 1, 1, "b", 2, "ok")
		}, func(r faultReport) int { return r.DupOther }},
		{"duplicate, pending at the fault", func() *histBuilder {
			b := base().runTask(10, 1, 0, "a", 1, "ok")
			b.add(faultEvent{Ev: evStart, Pid: 10, Order: 1, Seq: 1, ID: "b", Attempt: 1})
			b.add(faultEvent{Ev: evKill, Pid: 10})
			b.add(faultEvent{Ev: evPending, ID: "b"})
			return b.lease(11, 2).runTask(11, 1, 1, "b", 2, "ok")
		}, func(r faultReport) int { return r.DupPending }},
		{"reordered", func() *histBuilder {
			return base().runTask(10, 1, 1, "b", 1, "ok").runTask(10, 1, 0, "a", 1, "ok")
		}, func(r faultReport) int { return r.Reordered }},
		{"early start: later task starts before a retry finished", func() *histBuilder {
			b := base().runTask(10, 1, 0, "a", 1, "error").runTask(10, 1, 1, "b", 1, "ok")
			return b.runTask(10, 1, 0, "a", 2, "ok")
		}, func(r faultReport) int { return r.EarlyStarts }},
		{"overlap across processes", func() *histBuilder {
			b := base()
			b.add(faultEvent{Ev: evStart, Pid: 10, Order: 1, Seq: 0, ID: "a", Attempt: 1})
			b.add(faultEvent{Ev: evStart, Pid: 11, Order: 1, Seq: 1, ID: "b", Attempt: 1})
			b.add(faultEvent{Ev: evFinish, Pid: 10, Order: 1, Seq: 0, ID: "a", Attempt: 1, Result: "ok"})
			return b.add(faultEvent{Ev: evFinish, Pid: 11, Order: 1, Seq: 1, ID: "b", Attempt: 1, Result: "ok"})
		}, func(r faultReport) int { return r.Overlap }},
		{"late ack accepted", func() *histBuilder {
			b := base().runTask(10, 1, 0, "a", 1, "ok").runTask(10, 1, 1, "b", 1, "ok").lease(11, 2)
			return b.add(faultEvent{Ev: evAck, Pid: 10, Token: 1, Result: "ok", N: 1})
		}, func(r faultReport) int { return r.LateAcks }},
		{"stale start", func() *histBuilder {
			return base().runTask(10, 1, 0, "a", 1, "ok").lease(11, 2).runTask(10, 1, 1, "b", 1, "ok")
		}, func(r faultReport) int { return r.StaleStarts }},
		{"lease lost before any fault", func() *histBuilder {
			b := base().runTask(10, 1, 0, "a", 1, "ok")
			b.add(faultEvent{Ev: evLost, Pid: 10})
			b.add(faultEvent{Ev: evKill, Pid: 10})
			return b.add(faultEvent{Ev: evLost, Pid: 11}).lease(11, 2).runTask(11, 1, 1, "b", 1, "ok")
		}, func(r faultReport) int { return r.EarlyLosses }},
		{"quarantined record, which is no task", func() *histBuilder {
			b := base().runTask(10, 1, 0, "a", 1, "ok").runTask(10, 1, 1, "b", 1, "ok")
			return b.add(faultEvent{Ev: evQuarantined, ID: "bad:7"})
		}, func(r faultReport) int { return r.Quarantined + r.Unexpected + r.Dead }},
		{"unknown add completed twice", func() *histBuilder {
			b := &histBuilder{}
			b.lease(10, 1).add(faultEvent{Ev: evAdd, Pid: 1, Order: 2, Seq: 0})
			return b.runTask(10, 2, 0, "u", 1, "ok").runTask(10, 2, 0, "u", 2, "ok")
		}, func(r faultReport) int { return r.UnknownTwice }},
		{"unknown add pending at the fault, completed three times", func() *histBuilder {
			b := &histBuilder{}
			b.lease(10, 1).add(faultEvent{Ev: evAdd, Pid: 1, Order: 2, Seq: 0})
			b.runTask(10, 2, 0, "u", 1, "ok").add(faultEvent{Ev: evKill, Pid: 10})
			b.add(faultEvent{Ev: evPending, ID: "u"})
			return b.lease(11, 2).runTask(11, 2, 0, "u", 2, "ok").runTask(11, 2, 0, "u", 3, "ok")
		}, func(r faultReport) int { return r.UnknownTwice }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := checkHistory(tc.build().ev)
			if tc.name == "clean" {
				assert.Zero(t, tc.want(r), "%v", r)
				assert.Zero(t, r.EarlyStarts+r.LateAcks+r.StaleStarts+r.DupPending, "%v", r)
				assert.Equal(t, 2, r.Completed)
				return
			}
			assert.Equal(t, 1, tc.want(r), "%v", r)
		})
	}
}

func TestCheckerStoppedTimeIsNotOverlap(t *testing.T) {
	t.Parallel()
	// pid 10 starts a, is stopped; pid 11 reruns a while 10 is stopped; 10
	// resumes and finishes after 11 did.
	b := &histBuilder{}
	b.lease(10, 1).added(1, 0, "a")
	b.add(faultEvent{Ev: evStart, Pid: 10, Order: 1, ID: "a", Attempt: 1})
	b.add(faultEvent{Ev: evStop, Pid: 10})
	b.add(faultEvent{Ev: evPending, ID: "a"})
	b.lease(11, 2).runTask(11, 1, 0, "a", 2, "ok")
	b.add(faultEvent{Ev: evCont, Pid: 10})
	b.add(faultEvent{Ev: evFinish, Pid: 10, Order: 1, ID: "a", Attempt: 1, Result: "cancelled"})
	b.add(faultEvent{Ev: evAck, Pid: 10, Token: 1, Result: "refused"})
	r := checkHistory(b.ev)
	assert.Zero(t, r.Overlap, "%v", r)
	assert.Zero(t, r.LateAcks)
	assert.Equal(t, 1, r.Refused)
	assert.Equal(t, 1, r.DupPending)
	assert.Equal(t, time.Duration(3), r.Recovery) // stop at wall 5, pid 11's start at 8
	assert.Equal(t, r.Recovery, r.Redelivery)

	// The same history with the resumed run going on beside pid 11's: the
	// rest of a call that pid 10 made before it was stopped and lost its
	// lease is a zombie's tail, counted apart.
	b2 := &histBuilder{}
	b2.lease(10, 1).added(1, 0, "a")
	b2.add(faultEvent{Ev: evStart, Pid: 10, Order: 1, ID: "a", Attempt: 1})
	b2.add(faultEvent{Ev: evStop, Pid: 10})
	b2.lease(11, 2).add(faultEvent{Ev: evStart, Pid: 11, Order: 1, ID: "a", Attempt: 2})
	b2.add(faultEvent{Ev: evCont, Pid: 10})
	b2.add(faultEvent{Ev: evFinish, Pid: 10, Order: 1, ID: "a", Attempt: 1, Result: "ok"}) // a tick after the cont
	b2.add(faultEvent{Ev: evFinish, Pid: 11, Order: 1, ID: "a", Attempt: 2, Result: "ok"})
	r2 := checkHistory(b2.ev)
	assert.Zero(t, r2.Overlap, "%v", r2)
	assert.Equal(t, 1, r2.ZombieTails)
	assert.Equal(t, time.Duration(1), r2.ZombieTailMax)

	// When pid 10 kept its lease while stopped, the same overlap counts:
	// pid 11 ran a beside it (a stale start, too).
	b3 := &histBuilder{}
	b3.lease(10, 1).added(1, 0, "a")
	b3.add(faultEvent{Ev: evStart, Pid: 10, Order: 1, ID: "a", Attempt: 1})
	b3.add(faultEvent{Ev: evStop, Pid: 10})
	b3.add(faultEvent{Ev: evCont, Pid: 10})
	b3.add(faultEvent{Ev: evStart, Pid: 11, Order: 1, ID: "a", Attempt: 2})
	b3.add(faultEvent{Ev: evFinish, Pid: 10, Order: 1, ID: "a", Attempt: 1, Result: "ok"})
	b3.add(faultEvent{Ev: evFinish, Pid: 11, Order: 1, ID: "a", Attempt: 2, Result: "ok"})
	r3 := checkHistory(b3.ev)
	assert.Equal(t, 1, r3.Overlap, "%v", r3)
	if assert.Len(t, r3.Seen, 1, "the overlap described") {
		assert.Contains(t, r3.Seen[0], "pid 11 analyser")
		assert.Contains(t, r3.Seen[0], "with order 1 seq 0 id a pid 10 analyser")
	}
	assert.Zero(t, r3.ZombieTails)
	assert.Equal(t, 1, r3.StaleStarts)
}

func TestCheckerKilledRunEndsAtDeath(t *testing.T) {
	t.Parallel()
	// A run cut short by kill -9 ends at the kill: the new owner's rerun
	// after it is no overlap, and the task is no early start either.
	b := &histBuilder{}
	b.lease(10, 1).added(1, 0, "a").added(1, 1, "b")
	b.add(faultEvent{Ev: evStart, Pid: 10, Order: 1, Seq: 0, ID: "a", Attempt: 1})
	b.add(faultEvent{Ev: evKill, Pid: 10})
	b.lease(11, 2).runTask(11, 1, 0, "a", 2, "ok").runTask(11, 1, 1, "b", 1, "ok")
	r := checkHistory(b.ev)
	assert.Zero(t, r.Overlap+r.EarlyStarts+r.Lost+r.Reordered+r.StaleStarts, "%v", r)
	assert.Equal(t, 1, r.DupOther, "a ran twice and was not reported pending") // no pending event given

	// A dead-lettered task counts as completed; runs after its death are fine.
	b2 := &histBuilder{}
	b2.lease(10, 1).added(1, 0, "a").added(1, 1, "b")
	b2.runTask(10, 1, 0, "a", 1, "error").runTask(10, 1, 0, "a", 2, "error")
	b2.add(faultEvent{Ev: evDeadRec, ID: "a"})
	b2.runTask(10, 1, 1, "b", 1, "ok")
	r2 := checkHistory(b2.ev)
	assert.Zero(t, r2.Lost+r2.EarlyStarts+r2.DupOther, "%v", r2)
	assert.Equal(t, 1, r2.Dead)
	assert.Equal(t, 2, r2.FailedRuns)
}

func TestReadHistorySkipsTornLastLine(t *testing.T) {
	t.Parallel()
	path := t.TempDir() + "/h.jsonl"
	require.NoError(t, os.WriteFile(path, []byte(`{"ev":"start","id":"a"}`+"\n"+`{"ev":"fin`), 0o644))
	ev, err := readHistory(path)
	require.NoError(t, err)
	assert.Len(t, ev, 1)
	require.NoError(t, os.WriteFile(path, []byte(`{"ev":"st`+"\n"+`{"ev":"start"}`+"\n"), 0o644))
	_, err = readHistory(path)
	assert.Error(t, err, "a bad line that is not the last is an error")
}

func TestCheckRetryPolicy(t *testing.T) {
	t.Parallel()
	fin := func(id string, attempt int, result string) faultEvent {
		return faultEvent{Ev: evFinish, ID: id, Attempt: attempt, Result: result, Wall: int64(attempt)}
	}
	tests := []struct {
		name string
		ev   []faultEvent
		bad  int
	}{
		{"ok at once", []faultEvent{fin("a", 1, "ok")}, 0},
		{"retried then ok", []faultEvent{fin("a", 1, "error"), fin("a", 2, "panic"), fin("a", 3, "ok")}, 0},
		{"dead at max", []faultEvent{fin("a", 1, "error"), fin("a", 2, "error"), fin("a", 3, "panic"), {Ev: evDeadRec, ID: "a", Wall: 9}}, 0},
		{"dead too early", []faultEvent{fin("a", 1, "error"), fin("a", 2, "error"), {Ev: evDeadRec, ID: "a", Wall: 9}}, 1},
		{"failed, not retried, not dead", []faultEvent{fin("a", 1, "error")}, 1},
		{"ran again after ok", []faultEvent{fin("a", 1, "ok"), fin("a", 2, "ok")}, 1},
		{"attempt skipped", []faultEvent{fin("a", 1, "error"), fin("a", 3, "ok")}, 1},
		{"dead without a run", []faultEvent{{Ev: evDeadRec, ID: "z"}}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Len(t, checkRetryPolicy(tc.ev, 3), tc.bad)
		})
	}
}

// An add that returned an error may still have been carried out; when its
// task was pending at a fault it runs once more after it, which is a
// redelivery (DupPending), not an add carried out twice.
func TestCheckerUnknownAddPendingAtFault(t *testing.T) {
	t.Parallel()
	b := &histBuilder{}
	b.lease(10, 1).add(faultEvent{Ev: evAdd, Pid: 1, Order: 2, Seq: 0})
	b.runTask(10, 2, 0, "u", 1, "ok").add(faultEvent{Ev: evKill, Pid: 10})
	b.add(faultEvent{Ev: evPending, ID: "u"})
	b.lease(11, 2).runTask(11, 2, 0, "u", 2, "ok")
	r := checkHistory(b.ev)
	assert.Zero(t, r.UnknownTwice, "%v", r)
	assert.Equal(t, 1, r.DupPending, "%v", r)
	assert.Equal(t, 1, r.UnknownDone, "%v", r)
}

// A dead record's DiedAt, stamped by a wall clock that stepped ahead
// mid-run, is put back on the suite's clock: before, a task buried after
// the step seemed to die after later tasks of its OrderID started.
func TestWallStepsPutDeathsOnTheSuiteClock(t *testing.T) {
	ms := int64(time.Millisecond)
	var w wallSteps
	w.note(1000*ms+7, 1000*ms)      // the first offset, 7ns: the base
	w.note(1020*ms+7+ms/2, 1020*ms) // jitter under a millisecond: not noted
	w.note(1540*ms+7, 1040*ms)      // the wall clock stepped 500ms ahead
	w.note(1560*ms+7, 1060*ms)      // the same step: not noted
	assert.Equal(t, 1010*ms, w.toSuite(1010*ms), "before the step, a time stays as it is")
	assert.Equal(t, 1050*ms, w.toSuite(1550*ms), "after it, it loses the step")
	assert.Equal(t, []int64{7, 500*ms + 7}, w.off, "the offsets noted: the first, and the step")

	// In the checker: a task whose last run failed at 1030ms, buried
	// at 1045ms (by the wall clock, 1545ms) before its successor started
	// at 1055ms.
	var none wallSteps
	none.note(0, 0)
	for _, c := range []struct {
		w     *wallSteps
		early int
	}{{&none, 1}, {&w, 0}} {
		b := &histBuilder{}
		b.at(1000*ms).lease(10, 1).added(1, 0, "a").added(1, 1, "b")
		b.at(1030*ms).runTask(10, 1, 0, "a", 1, "error")
		b.add(faultEvent{Ev: evDeadRec, ID: "a", Wall: c.w.toSuite(1545 * ms)})
		b.at(1055*ms).runTask(10, 1, 1, "b", 1, "ok")
		r := checkHistory(b.ev)
		assert.Equal(t, c.early, r.EarlyStarts, "%v", r)
		assert.Equal(t, 1, r.Dead)
	}
}
