package queue

import (
	"sync"
	"sync/atomic"
	"time"
)

// lineSet holds the claimed tasks of the OrderIDs given to it, one
// orderLine each, and hands them to the workers that take from it: per
// OrderID one task at a time, in claim order. Under DispatchByOrder each
// worker has a set of its own; under DispatchFree all share one, and an
// OrderID's next task goes to whichever worker asks first. An OrderID
// whose task failed waits out its backoff while the workers go on with
// the others. A worker that picked an OrderID may run the tasks it held
// then one after another, each once the one before is done, and settle
// them at once: its streak (worker.streakNext), one lock for them all.
type lineSet struct {
	s      *session
	shared bool // DispatchFree: every worker takes from this set

	mu       sync.Mutex
	orders   map[uint64]*orderLine
	runnable []*orderLine // OrderIDs with a task to start now, oldest first from runHead
	runHead  int          // runnable[:runHead] were taken (and zeroed)
	delayed  []*orderLine // OrderIDs waiting out a backoff
	free     []*orderLine // emptied orderLines kept for reuse, each parked in orders
	maxFree  int          // the most kept in free
	idle     []*worker    // workers waiting for a task (worker.idleAt is the index)
	timed    *worker      // the idle worker whose timer waits for the earliest delayed OrderID, or nil
	timedDue time.Time    // when that timer fires
	taken    bool         // a stop took the tasks not running (takeAll)
}

// orderLine holds the claimed tasks of one OrderID.
type orderLine struct {
	id        uint64
	tasks     []claimed // tasks[head] is the next (or running) one
	head      int       // tasks before it are done (and zeroed)
	state     lineState
	notBefore time.Time // while delayed
	pinned    bool      // DispatchByOrder: on a worker other than its hash's under the current worker count
	gated     bool      // delayed for its first task's turn at the record gate (see setAside)
	freeAt    int       // while parked: its index in free

	// While running: how many of its tasks from head its worker has
	// taken to run (the running one and those of its streak run before
	// it; see worker.streak), or -1 once a stop took the rest. The worker
	// takes each next one of its streak with a compare-and-swap, without
	// the set's lock; a stop swaps in -1, and hands back what follows.
	step atomic.Int32
}

type lineState int

const (
	lineIdle     lineState = iota // in orders only (during a stop)
	lineRunnable                  // in runnable
	lineRunning                   // tasks[head] runs
	lineDelayed                   // in delayed
	lineWaiting                   // tasks[head], picked, waits for the rate limit: not started, a stop takes it
	// lineParked: emptied, in free, and left in orders under its last
	// OrderID, which holds no task: the OrderID's next task takes it
	// back without a map write. Nothing but give and newOrder sees it.
	// An emptied line past what free keeps is parked too, out of both:
	// a worker that waited on it (endWait) must not find it waiting.
	lineParked
)

func newLineSet(s *session, shared bool) *lineSet {
	ls := &lineSet{s: s, shared: shared, orders: map[uint64]*orderLine{}, maxFree: maxFreeOrders}
	if shared {
		// Every OrderID the pool holds has its line here: keep as many
		// as it may hold, or a drain of many OrderIDs makes two
		// allocations a task (the line and its buffer).
		ls.maxFree = max(maxFreeOrders, s.cfg.Prefetch)
	}
	return ls
}

// give adds claimed tasks, in claim order, and wakes idle workers for the
// OrderIDs that became runnable.
func (ls *lineSet) give(ts []claimed) {
	ls.mu.Lock()
	lines, woken := 0, 0
	for i := range ts {
		ls.giveOne(&ts[i], &lines, &woken)
	}
	ls.woke(lines, woken)
}

// giveChain is give of the tasks of ts at first, next[first], and so on
// to -1.
func (ls *lineSet) giveChain(ts []claimed, first int32, next []int32) {
	ls.mu.Lock()
	lines, woken := 0, 0
	for j := first; j >= 0; j = next[j] {
		ls.giveOne(&ts[j], &lines, &woken)
	}
	ls.woke(lines, woken)
}

// giveOne adds t, counting a line it made or took back in lines and one
// it made runnable in woken. ls.mu is held.
func (ls *lineSet) giveOne(t *claimed, lines, woken *int) {
	o := ls.orders[t.OrderID]
	switch {
	case o == nil:
		o = ls.newOrder(t.OrderID)
		ls.orders[t.OrderID] = o
		*lines++
	case o.state == lineParked:
		ls.unpark(o)
		*lines++
	}
	o.push(*t)
	if o.state == lineIdle {
		o.state = lineRunnable
		ls.pushRunnable(o)
		*woken++
	}
}

// woke ends a give: it wakes idle workers for the woken lines made
// runnable, unlocks ls.mu and counts the lines given.
func (ls *lineSet) woke(lines, woken int) {
	for ; woken > 0 && len(ls.idle) > 0; woken-- {
		ls.wakeOne()
	}
	ls.mu.Unlock()
	ls.s.lines.Add(int64(lines))
}

// giveHeld adds the tasks whose OrderID has a line in the set, in claim
// order, and appends the others to rejected, which it returns: only the
// fetcher makes lines, so an OrderID found without one here has none
// anywhere, and it is free to go to another worker.
func (ls *lineSet) giveHeld(ts, rejected []claimed) []claimed {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	woken := 0
	for _, t := range ts {
		o := ls.orders[t.OrderID]
		if o == nil || o.state == lineParked {
			rejected = append(rejected, t)
			continue
		}
		o.push(t)
		if o.state == lineIdle {
			o.state = lineRunnable
			ls.pushRunnable(o)
			woken++
		}
	}
	for ; woken > 0 && len(ls.idle) > 0; woken-- {
		ls.wakeOne()
	}
	return rejected
}

// push appends t, first moving the tasks left to the front of a full
// buffer, so that a busy OrderID reuses its buffer.
func (o *orderLine) push(t claimed) {
	if o.head > 0 && len(o.tasks) == cap(o.tasks) {
		n := copy(o.tasks, o.tasks[o.head:])
		clear(o.tasks[n:])
		o.tasks, o.head = o.tasks[:n], 0
	}
	o.tasks = append(o.tasks, t)
}

// maxFreeOrders bounds the emptied orderLines a set keeps (the shared
// set of DispatchFree keeps up to Prefetch), and maxFreeTasks the buffer
// each keeps (maxSpareTasks past the first maxFreeOrders), so an idle
// pool holds little.
const (
	maxFreeOrders = 256
	maxSpareTasks = 4
	maxFreeTasks  = 64
)

// newOrder returns an empty orderLine for id, not in orders yet, reusing
// a parked one (which leaves orders).
func (ls *lineSet) newOrder(id uint64) *orderLine {
	n := len(ls.free)
	if n == 0 {
		return &orderLine{id: id}
	}
	o := ls.free[n-1]
	ls.unpark(o)
	if ls.orders[o.id] == o {
		delete(ls.orders, o.id)
	}
	o.id = id
	return o
}

// unpark takes the parked o out of free, an idle empty line.
func (ls *lineSet) unpark(o *orderLine) {
	last := len(ls.free) - 1
	moved := ls.free[last]
	ls.free[o.freeAt], moved.freeAt = moved, o.freeAt
	ls.free[last] = nil
	ls.free = ls.free[:last]
	o.state, o.freeAt = lineIdle, 0
}

// drop takes an emptied orderLine out of hand. It stays in orders, parked
// for its OrderID's next task, while free has room: an OrderID that comes
// back, as most do in a drain, costs no map delete and insert a task. The
// lines beyond leave orders.
func (ls *lineSet) drop(o *orderLine) {
	if o.state != lineDelayed { // a delayed line was counted out as it began to wait
		ls.s.lines.Add(-1)
	}
	if o.pinned {
		ls.s.pinnedLines.Add(-1)
	}
	n := len(ls.free)
	if n >= ls.maxFree {
		delete(ls.orders, o.id)
		o.state = lineParked // out of hand (see lineParked)
		return
	}
	tasks := o.tasks[:0]
	if cap(tasks) > maxFreeTasks || n >= maxFreeOrders && cap(tasks) > maxSpareTasks {
		tasks = nil
	}
	*o = orderLine{id: o.id, tasks: tasks, state: lineParked, freeAt: n}
	ls.free = append(ls.free, o)
}

// held returns how many OrderIDs the set holds tasks of.
func (ls *lineSet) held() int { return len(ls.orders) - len(ls.free) }

// takeAll removes and returns every task the set holds except running
// ones, in no particular order.
func (ls *lineSet) takeAll() []claimed {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	ls.taken = true
	var out []claimed
	for _, o := range ls.orders {
		switch o.state {
		case lineParked:
			continue
		case lineRunning:
			// Its worker took step tasks from head: done, running, or
			// picked to run next. It settles them; the rest go back.
			// None is left to take when a stop took the rest before
			// (-1): its worker left it unsettled, the lease lost.
			n := int(o.step.Swap(-1))
			if n < 0 {
				continue
			}
			out = append(out, o.tasks[o.head+n:]...)
			o.tasks = o.tasks[:o.head+n]
			continue
		}
		out = append(out, o.tasks[o.head:]...)
		clear(o.tasks)
		ls.drop(o)
	}
	ls.runnable, ls.runHead, ls.delayed = nil, 0, nil
	return out
}

// next returns the next OrderID for w to run and its task, marking it
// running. When none is due it registers w as idle and returns the time
// the earliest delayed OrderID is due, if w is to wait for it (else
// zero). It returns exit when w is retiring and may go: under
// DispatchByOrder once its set holds no OrderID; under DispatchFree at
// once, a worker holding no OrderID between tasks.
func (ls *lineSet) next(w *worker, now time.Time) (o *orderLine, t claimed, due time.Time, exit bool) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	ls.unidle(w)
	if w.retire && (ls.shared || ls.held() == 0) {
		// Gone, w may get a new goroutine as soon as the lock is free
		// (see grow): this one leaves it nothing to touch.
		w.stopTimer()
		w.gone = true
		ls.handOn()
		return nil, claimed{}, time.Time{}, true
	}
	due = ls.dueDelayed(now)
	if ls.runnableLen() == 0 {
		ls.toIdle(w)
		if due.IsZero() || ls.timed != nil {
			return nil, claimed{}, time.Time{}, false // another idle worker waits for the delayed ones
		}
		ls.timed, ls.timedDue = w, due
		return nil, claimed{}, due, false
	}
	o, t = ls.pick(w, now)
	return o, t, time.Time{}, false
}

// dueDelayed makes the delayed OrderIDs due at now runnable, and returns
// when the earliest of the others is due (zero: none is left).
func (ls *lineSet) dueDelayed(now time.Time) (due time.Time) {
	kept := ls.delayed[:0]
	for _, o := range ls.delayed {
		if !o.notBefore.After(now) {
			o.state, o.gated = lineRunnable, false
			ls.pushRunnable(o)
			ls.s.lines.Add(1)
			continue
		}
		if due.IsZero() || o.notBefore.Before(due) {
			due = o.notBefore
		}
		kept = append(kept, o)
	}
	clear(ls.delayed[len(kept):])
	ls.delayed = kept
	return due
}

// pick takes the oldest runnable OrderID for w at now, marked running,
// and its task; there is one. The OrderID's later tasks, up to maxStreak, are
// w's streak.
func (ls *lineSet) pick(w *worker, now time.Time) (*orderLine, claimed) {
	o := ls.popRunnable()
	o.state = lineRunning
	ls.handOn()
	o.step.Store(1)
	w.beginStreak(o, now)
	return o, o.tasks[o.head]
}

// pushRunnable appends o to runnable, first moving the OrderIDs left to
// the front of a full buffer at least half taken (so that a move copies
// no more than the pushes since the last one): the queue reuses its
// buffer, where slicing taken ones off its front made an append allocate
// whenever it had emptied (a quarter of an allocation a task in a drain).
func (ls *lineSet) pushRunnable(o *orderLine) {
	if len(ls.runnable) == cap(ls.runnable) && ls.runHead > 0 && ls.runHead >= len(ls.runnable)/2 {
		n := copy(ls.runnable, ls.runnable[ls.runHead:])
		clear(ls.runnable[n:])
		ls.runnable, ls.runHead = ls.runnable[:n], 0
	}
	ls.runnable = append(ls.runnable, o)
}

// popRunnable takes the oldest runnable OrderID; there is one.
func (ls *lineSet) popRunnable() *orderLine {
	o := ls.runnable[ls.runHead]
	ls.runnable[ls.runHead] = nil
	ls.runHead++
	if ls.runHead == len(ls.runnable) {
		ls.runnable, ls.runHead = ls.runnable[:0], 0
	}
	return o
}

// runnableLen returns how many OrderIDs are runnable.
func (ls *lineSet) runnableLen() int { return len(ls.runnable) - ls.runHead }

// handOn wakes an idle worker when a worker leaves runnable OrderIDs
// behind (each woken worker wakes the next), or delayed ones that no idle
// worker waits for. Only under DispatchFree can both be.
func (ls *lineSet) handOn() {
	if len(ls.idle) > 0 && (ls.runnableLen() > 0 || len(ls.delayed) > 0 && ls.timed == nil) {
		ls.wakeOne()
	}
}

// settle puts o back after w's task of it ran (the tasks of w's streak
// before it settled done first): done drops that task, else it stays
// first with its Attempt one higher, and started (when not zero) as the
// start of its last delivery; a non-zero retryAt delays the OrderID until
// then.
func (ls *lineSet) settle(w *worker, o *orderLine, done bool, retryAt, started time.Time) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	ls.settleRan(o, w)
	ls.settleLocked(o, done, retryAt, started)
}

// settleNext settles w's task of o as done (the tasks of w's streak
// before it too) and, under the same lock, picks w's next OrderID as next
// would at now when one is runnable, so that a worker going from OrderID
// to OrderID takes the set's lock once each. It returns nil when next must
// be asked instead: none is runnable, w retires, or the session stops.
func (ls *lineSet) settleNext(o *orderLine, w *worker, now time.Time) (*orderLine, claimed) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	ls.settleRan(o, w)
	ls.settleLocked(o, true, time.Time{}, time.Time{})
	if w.retire || ls.s.halted() {
		return nil, claimed{}
	}
	ls.dueDelayed(now)
	if ls.runnableLen() == 0 {
		return nil, claimed{}
	}
	return ls.pick(w, now)
}

func (ls *lineSet) settleLocked(o *orderLine, done bool, retryAt, started time.Time) {
	if done {
		o.tasks[o.head] = claimed{}
		o.head++
	} else {
		o.tasks[o.head].Attempt++
		// Its delivery ended here, its outcome known: no crash's suspect
		// (see gate) should it go back.
		o.tasks[o.head].recovered = false
		if !started.IsZero() {
			o.tasks[o.head].started = started
		}
	}
	switch {
	case o.head == len(o.tasks):
		ls.drop(o)
	case ls.s.halted():
		o.state = lineIdle // takeAll hands it back
	case !retryAt.IsZero():
		ls.delay(o, retryAt)
	default:
		o.state = lineRunnable
		ls.pushRunnable(o)
	}
}

// delay has o, its first task not running, wait until due: a backoff,
// or a suspect's turn at the record gate. ls.mu is held.
func (ls *lineSet) delay(o *orderLine, due time.Time) {
	o.state, o.notBefore = lineDelayed, due
	ls.delayed = append(ls.delayed, o)
	// No task of o runs or is about to while it waits: it does not
	// count against Prefetch, which would have other OrderIDs wait
	// for its backoff once Prefetch OrderIDs wait one.
	ls.s.lines.Add(-1)
	if ls.s.room() >= ls.s.lowWater {
		notify(ls.s.freed)
	}
	if ls.timed != nil && due.Before(ls.timedDue) {
		ls.wake(ls.timed) // to wait for this one instead
	}
}

// setAside has o, picked by w and its first task a suspect the record
// gate holds back, wait until due, or until the gate frees (gate.done
// hurries it), while w goes on with other OrderIDs: a worker waiting for
// its turn would hold back the OrderIDs it serves. It reports whether it
// did: not when the session stops (then o goes back with the unstarted
// tasks, unless the lease is lost).
func (ls *lineSet) setAside(w *worker, o *orderLine, due time.Time) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	ls.settleRan(o, w)
	if ls.s.halted() {
		if !ls.s.isLost() {
			o.state = lineIdle // takeAll hands it back
		}
		return false
	}
	ls.delay(o, due)
	o.gated = true
	return true
}

// toWaiting marks o, picked, as waiting for the rate limit: its first
// task has not started, and a stop that takes the set's tasks meanwhile
// takes it with them, at once and in claim order.
func (ls *lineSet) toWaiting(w *worker, o *orderLine) {
	ls.mu.Lock()
	ls.settleRan(o, w)
	o.state = lineWaiting
	ls.mu.Unlock()
}

// endWait ends o's wait for the rate limit, and reports whether its first
// task may start: not when a stop took it meanwhile, nor when the session
// stops (then o is put back, for the stop to take, unless the lease is
// lost: the next owner has it). A stop that took the set's tasks before
// the wait began counted o as running, and handed back its later tasks;
// but a stop ends the wait before the task's token, and a start never
// comes before it: o is put back all the same, and goes back with the
// tasks the stop hands back once the running ones ended, still ahead of
// its later ones.
func (ls *lineSet) endWait(o *orderLine) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	switch {
	case o.state != lineWaiting:
		return false // taken by a stop
	case ls.s.isLost():
		return false
	case ls.s.halted():
		o.state = lineIdle
		return false
	}
	o.state = lineRunning
	return true
}

// unpickUntaken puts back o, picked by w and its task not started (the
// tasks of w's streak before it settled done), when the session stopped
// since (takeAll hands it back, its Attempt unchanged), unless the stop
// took the set's tasks already, and reports whether it did. The stop counted o as
// running then, and handed back its later tasks ahead of it: put back
// now, o's first task would go back only once every running task ended,
// ahead of the tasks claimed before it, where the stop hands back every
// unstarted task at once, in claim order. The worker starts it instead,
// as it would have a moment sooner.
func (ls *lineSet) unpickUntaken(w *worker, o *orderLine) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.taken {
		return false
	}
	ls.settleRan(o, w)
	o.state = lineIdle
	return true
}

// runnableCount returns how many OrderIDs wait for a worker to start
// their next task at now: the runnable ones, and those whose backoff has
// ended, which stay delayed until a worker looks (dueDelayed), so that
// with every worker busy nothing else would count them.
func (ls *lineSet) runnableCount(now time.Time) int {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	n := ls.runnableLen()
	for _, o := range ls.delayed {
		if !o.notBefore.After(now) {
			n++
		}
	}
	return n
}
