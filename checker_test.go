package queue

import (
	"fmt"
	"math"
	"sort"
	"time"
)

// The checker reads the histories of a fault run (the children's files and
// the harness's own events) and counts what went wrong. Tasks are known by
// their (OrderID, seq) key, which the producer puts in the payload.

type taskKey struct {
	order uint64
	seq   int
}

// run is one analyse call of a task.
type run struct {
	pid        int
	analyser   int
	attempt    int
	start, end int64  // wall ns; end is the finish, the process's death, or +inf
	result     string // ok, error, panic, cancelled, or "" when it never finished
}

// effective reports whether the run may have had its effect: it did not
// fail (a failure is a retry, not a duplicate).
func (r *run) effective() bool { return r.result != "error" && r.result != "panic" }

type taskInfo struct {
	key     taskKey
	added   string // ok, error, unknown, or "" when no producer tried to add it
	addedAt int64  // when its add returned ok (wall ns; 0: it did not)
	due     int64  // when it was scheduled to fall due (wall ns; 0: added at once)
	id      string
	runs    []*run
	dead    bool
	deadAt  int64
	pending bool // pending in Redis at the fault

	cancels   []*cancelCall // Cancel calls naming it, in time order
	cancelFin int64         // the first call finishing it as cancelled (wall ns; 0: none)
}

// completedAt returns when the task was done (first ok finish, or death),
// and whether it was.
func (t *taskInfo) completedAt() (int64, bool) {
	at, done := int64(math.MaxInt64), false
	for _, r := range t.runs {
		if r.result == "ok" && r.end < at {
			at, done = r.end, true
		}
	}
	if t.dead && t.deadAt < at {
		at, done = t.deadAt, true
	}
	return at, done
}

// faultReport is what the checker found in one run.
type faultReport struct {
	Attempted, AddedOK, AddErrors, AddUnknown int // producer outcomes
	Completed                                 int // tasks finished ok or dead-lettered
	Runs, FailedRuns                          int // analyse calls, and those that failed
	Dead                                      int // tasks in the dead-letter store

	Lost        int // added ok, never completed
	Unexpected  int // run, but never added by any producer
	DupPending  int // run effectively twice or more, and pending at the fault
	DupOther    int // run effectively twice or more, not pending at the fault
	Reordered   int // first deliveries out of enqueue order, per OrderID
	EarlyStarts int // starts before an earlier task of the OrderID completed
	Overlap     int // runs of one OrderID at the same time (stopped time and zombie tails excluded)
	LateAcks    int // acks Redis accepted from a process whose lease had passed to another
	StaleStarts int // starts by a process whose lease had passed to another
	Refused     int // acks Redis refused as stale (the fencing at work)
	Quarantined int // malformed records found in Redis, in the dead-letter store with their raw bytes
	// ZombieTails counts calls in flight when their process was stopped,
	// that went on after it continued though it had lost its lease while
	// stopped; ZombieTailMax is the longest time such a call went on.
	ZombieTails   int
	ZombieTailMax time.Duration
	LeaseLosses   int // leases a live process reported lost (after a stop, or a stall the harness did not cause)
	EarlyLosses   int // of those, before the first fault: a stall the harness did not cause, an unplanned takeover

	UnknownDone, UnknownTwice int // unknown or error adds: completed, completed twice or more
	PendingAtFault            int

	Recovery   time.Duration // fault to the first start by another process (-1: none)
	Redelivery time.Duration // fault to the first start of a task pending at the fault (-1: none)

	// Scheduled tasks and cancels (checker_control_test.go).
	Scheduled      int // tasks added with a due time
	Cancels        int // Cancel calls
	CancelErrors   int // of those, calls that returned an error
	Cancelled      int // tasks added ok, not completed, finished as cancelled (so not lost)
	CancelledUnrun int // of those, never started
	CutByCancel    int // runs ended cancelled once their task's cancel was asked (no duplicate if run again)
	// RunAfterCancel counts starts of a task once a Cancel had reported it
	// scheduled (it must never run) or queued (StateUnknown: the claim
	// that meets it finishes it without running it), and starts after a
	// Cancel reported it pending that its cancel did not cut.
	RunAfterCancel int
	UnaskedCancels int // tasks finished as cancelled that no Cancel named
	// LateCancelStarts counts starts of a task after a Cancel reported it
	// pending (Cancel returns once the owner has seen the mark) whose run
	// its cancel cut (a worker that picked the task just before: it
	// starts with its ctx ended); a start after it that the cancel did
	// not cut counts in RunAfterCancel. LateCancelMax is the longest time
	// from that Cancel's return to such a start.
	LateCancelStarts int
	LateCancelMax    time.Duration

	// LostIDs are the IDs of the lost tasks ("" for one added in a batch).
	LostIDs []string
	// Seen describes the first few early starts and overlaps: which
	// tasks, which processes, when.
	Seen []string
}

// maxSeen bounds faultReport.Seen.
const maxSeen = 6

// see adds a description to r.Seen, up to maxSeen of them.
func (r *faultReport) see(format string, args ...any) {
	if len(r.Seen) < maxSeen {
		r.Seen = append(r.Seen, fmt.Sprintf(format, args...))
	}
}

// lastRun returns t's run that ended last, or nil when it has none.
func (t *taskInfo) lastRun() *run {
	var last *run
	for _, r := range t.runs {
		if last == nil || r.end > last.end {
			last = r
		}
	}
	return last
}

// describe names run x of task t for faultReport.Seen, its times in ms
// since base.
func describe(t *taskInfo, x *run, base int64) string {
	end := "-"
	if x.end != math.MaxInt64 {
		end = fmt.Sprintf("%.3f", float64(x.end-base)/1e6)
	}
	return fmt.Sprintf("order %d seq %d id %s pid %d analyser %d attempt %d ran %.3f..%s ms (%s)",
		t.key.order, t.key.seq, t.id, x.pid, x.analyser, x.attempt, float64(x.start-base)/1e6, end, x.result)
}

func (r faultReport) String() string {
	return fmt.Sprintf("attempted=%d ok=%d addErr=%d addUnknown=%d completed=%d runs=%d failedRuns=%d dead=%d "+
		"lost=%d unexpected=%d dupPending=%d dupOther=%d reordered=%d earlyStarts=%d overlap=%d "+
		"lateAcks=%d staleStarts=%d refusedAcks=%d quarantined=%d zombieTails=%d (longest %s) leaseLosses=%d earlyLosses=%d unknownDone=%d unknownTwice=%d pendingAtFault=%d recovery=%s redelivery=%s",
		r.Attempted, r.AddedOK, r.AddErrors, r.AddUnknown, r.Completed, r.Runs, r.FailedRuns, r.Dead,
		r.Lost, r.Unexpected, r.DupPending, r.DupOther, r.Reordered, r.EarlyStarts, r.Overlap,
		r.LateAcks, r.StaleStarts, r.Refused, r.Quarantined, r.ZombieTails, r.ZombieTailMax.Round(time.Millisecond), r.LeaseLosses, r.EarlyLosses, r.UnknownDone, r.UnknownTwice, r.PendingAtFault,
		fmtRecovery(r.Recovery), fmtRecovery(r.Redelivery)) + r.controls()
}

func fmtRecovery(d time.Duration) string {
	if d < 0 {
		return "none"
	}
	return d.Round(time.Millisecond).String()
}

// checkHistory computes the report of a run from all its events.
func checkHistory(events []faultEvent) faultReport {
	sort.SliceStable(events, func(i, j int) bool { return events[i].Wall < events[j].Wall })
	tasks := map[taskKey]*taskInfo{}
	byID := map[string]*taskInfo{}
	get := func(k taskKey) *taskInfo {
		t := tasks[k]
		if t == nil {
			t = &taskInfo{key: k}
			tasks[k] = t
		}
		return t
	}
	type batchKey struct{ pid, batch int }
	batches := map[batchKey][]*taskInfo{}
	death := map[int]int64{}        // pid -> when it was killed
	stopped := map[int][][2]int64{} // pid -> stopped intervals
	var faults []faultEvent
	type lease struct {
		pid   int
		token int64
		wall  int64
	}
	leases := map[int][]lease{} // analyser -> grants in time order
	open := map[string]*run{}   // pid/id/attempt -> running
	runKey := func(e faultEvent) string { return fmt.Sprintf("%d/%s/%d", e.Pid, e.ID, e.Attempt) }
	var rep faultReport
	var starts []faultEvent
	var acks []faultEvent
	var losses []int64               // when live processes reported a lost lease
	cancelFins := map[string]int64{} // task ID -> first call finishing it as cancelled

	for _, e := range events {
		k := taskKey{e.Order, e.Seq}
		switch e.Ev {
		case evAdd:
			t := get(k)
			if t.added == "" {
				t.added = "unknown"
			}
			if e.Due != 0 {
				t.due = e.Due * int64(time.Millisecond)
			}
			if e.Batch != 0 {
				bk := batchKey{e.Pid, e.Batch}
				batches[bk] = append(batches[bk], t)
			}
		case evAdded:
			t := get(k)
			t.added = e.Result
			if e.ID != "" {
				t.id = e.ID
			}
			if e.Result == "ok" {
				t.addedAt = e.Wall
			}
		case evBatch:
			for _, t := range batches[batchKey{e.Pid, e.Batch}] {
				t.added = e.Result
				if e.Result == "ok" {
					t.addedAt = e.Wall
				}
			}
		case evCancel, evCancelled:
			t := get(k)
			if t.id == "" {
				t.id = e.ID
			}
			t.cancelEvent(e)
		case evCancelFin:
			if _, ok := cancelFins[e.ID]; !ok {
				cancelFins[e.ID] = e.Wall // the first: events are in time order
			}
		case evStart:
			t := get(k)
			t.id = e.ID
			byID[e.ID] = t
			r := &run{pid: e.Pid, analyser: e.Analyser, attempt: e.Attempt, start: e.Wall, end: math.MaxInt64}
			t.runs = append(t.runs, r)
			open[runKey(e)] = r
			starts = append(starts, e)
		case evFinish:
			if r := open[runKey(e)]; r != nil {
				r.end, r.result = e.Wall, e.Result
				delete(open, runKey(e))
			}
		case evLease:
			leases[e.Analyser] = append(leases[e.Analyser], lease{e.Pid, e.Token, e.Wall})
		case evAck:
			acks = append(acks, e)
		case evKill:
			death[e.Pid] = e.Wall
			faults = append(faults, e)
		case evStop:
			stopped[e.Pid] = append(stopped[e.Pid], [2]int64{e.Wall, math.MaxInt64})
			faults = append(faults, e)
		case evCont:
			if s := stopped[e.Pid]; len(s) > 0 {
				s[len(s)-1][1] = e.Wall
			}
		case evTerm, evFault:
			faults = append(faults, e)
		case evQuarantined:
			rep.Quarantined++
		case evLost:
			rep.LeaseLosses++
			losses = append(losses, e.Wall)
		}
	}
	// Runs that never finished end with their process's death.
	for _, r := range open {
		if d, ok := death[r.pid]; ok && d >= r.start {
			r.end = d
		}
	}
	pendingIDs := map[string]bool{}
	for _, e := range events {
		switch e.Ev {
		case evPending:
			pendingIDs[e.ID] = true
		case evDeadRec:
			t := byID[e.ID]
			if t == nil {
				t = get(taskKey{e.Order, e.Seq}) // dead before any start
			}
			t.dead, t.deadAt = true, e.Wall
		}
	}
	rep.PendingAtFault = len(pendingIDs)

	// superseded reports whether, at time at, Redis had granted another
	// process a newer lease on analyser than pid's last one (or pid had none).
	superseded := func(pid, analyser int, at int64) bool {
		var mine int64 = -1
		newer := false
		for _, l := range leases[analyser] {
			if l.wall >= at {
				break
			}
			if l.pid == pid {
				mine, newer = l.token, false
			} else if l.token > mine {
				newer = true
			}
		}
		return newer || mine < 0
	}

	perOrder := map[uint64][]*taskInfo{}
	for _, t := range tasks {
		if t.id != "" && pendingIDs[t.id] {
			t.pending = true
		}
		if t.id != "" {
			t.cancelFin = cancelFins[t.id]
		}
		rep.countControls(t)
		switch t.added {
		case "ok":
			rep.AddedOK++
		case "error":
			rep.AddErrors++
		case "unknown":
			rep.AddUnknown++
		}
		if t.added != "" {
			rep.Attempted++
		}
		rep.Runs += len(t.runs)
		effective := 0
		for _, r := range t.runs {
			switch {
			case t.cutByCancel(r):
				rep.CutByCancel++
			case r.effective():
				effective++
			default:
				rep.FailedRuns++
			}
		}
		if t.dead {
			rep.Dead++
		}
		_, done := t.completedAt()
		if done {
			rep.Completed++
		}
		switch {
		case t.added == "ok" && !done && t.cancelledForGood():
			rep.Cancelled++
			if len(t.runs) == 0 {
				rep.CancelledUnrun++
			}
		case t.added == "ok" && !done:
			rep.Lost++
			rep.LostIDs = append(rep.LostIDs, t.id)
		case t.added == "" && (len(t.runs) > 0 || t.dead):
			rep.Unexpected++
		}
		if effective > 1 {
			if t.pending {
				rep.DupPending++
			} else {
				rep.DupOther++
			}
		}
		if t.added == "unknown" || t.added == "error" {
			okRuns := 0
			for _, r := range t.runs {
				if r.result == "ok" {
					okRuns++
				}
			}
			if done {
				rep.UnknownDone++
			}
			// A task pending in Redis at a fault may run once more after
			// it, whatever its add returned (DupPending counts it); a run
			// beyond that means an add that failed was carried out twice.
			allowed := 1
			if t.pending {
				allowed = 2
			}
			if okRuns > allowed {
				rep.UnknownTwice++
			}
		}
		if len(t.runs) > 0 || t.dead || t.cancelFin != 0 {
			perOrder[t.key.order] = append(perOrder[t.key.order], t)
		}
	}

	for _, all := range perOrder {
		// Order is checked between tasks added at once (by seq) and, for
		// a scheduled task, against those added before it fell due (see
		// checkScheduledOrder); overlap between all of them.
		ts := make([]*taskInfo, 0, len(all))
		for _, t := range all {
			if t.due == 0 {
				ts = append(ts, t)
			}
		}
		// Reordered: first deliveries out of seq order.
		byFirst := make([]*taskInfo, 0, len(ts))
		for _, t := range ts {
			if len(t.runs) > 0 {
				byFirst = append(byFirst, t)
			}
		}
		sort.Slice(byFirst, func(i, j int) bool { return byFirst[i].runs[0].start < byFirst[j].runs[0].start })
		maxSeq := -1
		for _, t := range byFirst {
			if t.key.seq < maxSeq {
				rep.Reordered++
			}
			maxSeq = max(maxSeq, t.key.seq)
		}
		// Early starts: a start before every earlier task completed.
		sort.Slice(ts, func(i, j int) bool { return ts[i].key.seq < ts[j].key.seq })
		var before int64 = math.MinInt64 // latest completion among earlier tasks
		var last *taskInfo               // the earlier task that completed latest
		for _, t := range ts {
			for _, r := range t.runs {
				if r.start < before {
					rep.EarlyStarts++
					if f := last.lastRun(); f != nil {
						rep.see("early start: %s, before %s completed", describe(t, r, f.start), describe(last, f, f.start))
					}
				}
			}
			if at := t.finishedAt(); at > before || last == nil {
				before, last = max(before, at), t
			}
		}
		rep.checkScheduledOrder(all)
		// Overlap: run segments (stopped time cut out) that intersect. A
		// call in flight when its process was stopped goes on when the
		// process continues, whatever happened meanwhile: if the process
		// lost its lease while stopped, the rest of that call is a zombie's
		// tail, which nothing outside the process can prevent (its ctx is
		// cancelled, its ack refused): counted apart, not as overlap.
		type seg struct {
			at [2]int64
			t  *taskInfo
			r  *run
		}
		var segs []seg
		for _, t := range all {
			for _, r := range t.runs {
				end := r.end
				for _, st := range stopped[r.pid] {
					if st[0] >= r.start && st[0] < end && st[1] < end && superseded(r.pid, r.analyser, st[1]) {
						rep.ZombieTails++
						rep.ZombieTailMax = max(rep.ZombieTailMax, time.Duration(end-st[1]))
						end = st[0]
						break
					}
				}
				for _, at := range cutStopped(r.start, end, stopped[r.pid]) {
					segs = append(segs, seg{at, t, r})
				}
			}
		}
		sort.Slice(segs, func(i, j int) bool { return segs[i].at[0] < segs[j].at[0] })
		var reach int64 = math.MinInt64
		var reacher seg
		for _, s := range segs {
			if s.at[0] < reach {
				rep.Overlap++
				base := reacher.r.start
				rep.see("overlap: %s, with %s", describe(s.t, s.r, base), describe(reacher.t, reacher.r, base))
			}
			if s.at[1] > reach {
				reach, reacher = s.at[1], s
			}
		}
	}

	// Fencing: a process acting after Redis granted another a newer lease.
	for _, a := range acks {
		switch a.Result {
		case "refused":
			rep.Refused++
		case "ok":
			if superseded(a.Pid, a.Analyser, a.Wall) {
				rep.LateAcks++
			}
		}
	}
	for _, s := range starts {
		if superseded(s.Pid, s.Analyser, s.Wall) {
			rep.StaleStarts++
		}
	}

	// Recovery: from the first fault of an analyser (or of the server) to
	// the first start by another process, and to the first start of a task
	// pending at the fault.
	analysers := map[int]bool{}
	for _, s := range starts {
		analysers[s.Pid] = true
	}
	for _, ls := range leases {
		for _, l := range ls {
			analysers[l.pid] = true
		}
	}
	rep.Recovery, rep.Redelivery = -1, -1
	var first *faultEvent
	for i, f := range faults {
		if f.Ev == evFault || analysers[f.Pid] {
			first = &faults[i]
			break
		}
	}
	for _, w := range losses {
		if first == nil || w < first.Wall {
			rep.EarlyLosses++
		}
	}
	if first != nil {
		f := *first
		for _, s := range starts {
			if s.Wall <= f.Wall || s.Pid == f.Pid {
				continue
			}
			if rep.Recovery < 0 {
				rep.Recovery = time.Duration(s.Wall - f.Wall)
			}
			if rep.Redelivery < 0 && pendingIDs[s.ID] {
				rep.Redelivery = time.Duration(s.Wall - f.Wall)
			}
		}
	}
	return rep
}

// cutStopped returns [start, end) without the stopped intervals.
func cutStopped(start, end int64, stops [][2]int64) [][2]int64 {
	out := [][2]int64{{start, end}}
	for _, st := range stops {
		var next [][2]int64
		for _, s := range out {
			if st[1] <= s[0] || st[0] >= s[1] {
				next = append(next, s)
				continue
			}
			if s[0] < st[0] {
				next = append(next, [2]int64{s[0], st[0]})
			}
			if st[1] < s[1] {
				next = append(next, [2]int64{st[1], s[1]})
			}
		}
		out = next
	}
	return out
}

// checkRetryPolicy checks the deliveries of each task against the retry
// policy of a run without crashes: attempts numbered 1, 2, ... with every
// run but the last failed; the last one ok, or failed at maxAttempts when
// the task is dead-lettered (and only then). It returns the violations.
func checkRetryPolicy(events []faultEvent, maxAttempts int) []string {
	runs := map[string][]faultEvent{} // task ID -> finish events in time order
	dead := map[string]bool{}
	sort.SliceStable(events, func(i, j int) bool { return events[i].Wall < events[j].Wall })
	for _, e := range events {
		switch e.Ev {
		case evFinish:
			runs[e.ID] = append(runs[e.ID], e)
		case evDeadRec:
			dead[e.ID] = true
		}
	}
	var bad []string
	for id, rs := range runs {
		for i, r := range rs {
			if r.Attempt != i+1 {
				bad = append(bad, fmt.Sprintf("%s: run %d has attempt %d", id, i+1, r.Attempt))
			}
			failed := r.Result == "error" || r.Result == "panic"
			last := i == len(rs)-1
			switch {
			case !last && !failed:
				bad = append(bad, fmt.Sprintf("%s: attempt %d ended %s and ran again", id, r.Attempt, r.Result))
			case last && dead[id] && (!failed || r.Attempt != maxAttempts):
				bad = append(bad, fmt.Sprintf("%s: dead after attempt %d (%s), want %d failed", id, r.Attempt, r.Result, maxAttempts))
			case last && !dead[id] && failed:
				bad = append(bad, fmt.Sprintf("%s: last attempt %d failed and the task is not dead", id, r.Attempt))
			}
		}
		delete(dead, id)
	}
	for id := range dead {
		bad = append(bad, fmt.Sprintf("%s: dead without a run", id))
	}
	sort.Strings(bad)
	return bad
}
