package queue

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The shared set of DispatchFree holds a line per OrderID the pool holds,
// up to Prefetch: it keeps as many emptied lines, so that a drain of many
// OrderIDs reuses them instead of allocating a line and a buffer a task.
// A worker's own set keeps maxFreeOrders. Past maxFreeOrders a kept line
// keeps a small buffer only, so an idle pool still holds little.
func TestLineSetKeepsLinesForReuse(t *testing.T) {
	s := &session{cfg: PoolConfig{Prefetch: 1024}}
	for _, tc := range []struct {
		shared bool
		keep   int
	}{{true, 1024}, {false, maxFreeOrders}} {
		ls := newLineSet(s, tc.shared)
		fill := func() {
			for i := range uint64(1100) {
				o := ls.newOrder(i)
				o.push(claimed{})
				ls.orders[i] = o
			}
		}
		fill()
		// One line with a large buffer (an OrderID with a long run of tasks).
		for range maxFreeTasks {
			ls.orders[0].push(claimed{})
		}
		for i := range uint64(1100) {
			ls.drop(ls.orders[i])
		}
		assert.Len(t, ls.free, tc.keep, "shared %v", tc.shared)
		for i, o := range ls.free {
			assert.LessOrEqual(t, cap(o.tasks), maxFreeTasks, "line %d", i)
			if i >= maxFreeOrders {
				assert.LessOrEqual(t, cap(o.tasks), maxSpareTasks, "line %d", i)
			}
		}
		if tc.shared {
			allocs := testing.AllocsPerRun(1, func() {
				for i := range uint64(1000) {
					o := ls.newOrder(i)
					o.push(claimed{})
					ls.orders[i] = o
				}
				for i := range uint64(1000) {
					ls.drop(ls.orders[i])
				}
			})
			assert.Zero(t, allocs, "allocations reusing the kept lines")
		}
	}
}

// An emptied line stays in orders, parked, for its OrderID's next task:
// nothing but give sees it (a held task of another worker is not
// mistaken for one here, a stop hands nothing back, a retiring worker
// holds nothing), and the OrderID's next task takes it back: a task of
// an OrderID that comes back allocates nothing in the set.
func TestLineSetParksEmptiedLines(t *testing.T) {
	s := &session{cfg: PoolConfig{Prefetch: 1024}}
	ls := newLineSet(s, false)
	w := newWorker(s, 0, ls)
	task := []claimed{{Task: Task{OrderID: 7}}}
	cycle := func() *orderLine {
		ls.give(task)
		o, _, _, _ := ls.next(w, time.Now())
		ls.settle(w, o, true, time.Time{}, time.Time{})
		return o
	}
	o := cycle()
	assert.Equal(t, lineParked, o.state)
	assert.Same(t, o, ls.orders[7])
	assert.Zero(t, ls.held())
	assert.Zero(t, s.lines.Load())
	rejected := ls.giveHeld([]claimed{{Task: Task{OrderID: 7}}}, nil)
	assert.Len(t, rejected, 1, "a parked line holds no task")
	assert.Empty(t, ls.takeAll())
	assert.Equal(t, lineParked, o.state)

	assert.Same(t, o, cycle(), "the parked line is taken back")
	assert.Zero(t, testing.AllocsPerRun(100, func() { cycle() }))

	// A new OrderID takes a parked line, which leaves orders.
	ls.give([]claimed{{Task: Task{OrderID: 8}}})
	assert.Same(t, o, ls.orders[8])
	assert.NotContains(t, ls.orders, uint64(7))
	assert.Equal(t, 1, ls.held())
	assert.EqualValues(t, 1, s.lines.Load())
}

// The runnable queue hands OrderIDs out oldest first while it reuses its
// buffer, pushes and pops interleaved.
func TestLineSetRunnableOrder(t *testing.T) {
	ls := newLineSet(&session{}, false)
	lines := make([]orderLine, 100)
	next, want := 0, 0
	for round := range 20 {
		for range round%7 + 1 {
			ls.pushRunnable(&lines[next%len(lines)])
			next++
		}
		for range round%5 + 1 {
			if ls.runnableLen() == 0 {
				break
			}
			assert.Same(t, &lines[want%len(lines)], ls.popRunnable(), "round %d", round)
			want++
		}
		assert.Equal(t, next-want, ls.runnableLen())
	}
	assert.LessOrEqual(t, cap(ls.runnable), 2*(next-want)+8, "the buffer stays near its contents")
}

// settleNext settles a done task and picks the worker's next OrderID
// under the same lock, oldest runnable first, as next would: the task's
// own OrderID goes behind the ones that waited. It picks nothing when
// none is runnable (next then registers the worker idle), when the
// worker retires (next lets it go), or when the session stops (takeAll
// hands the runnable ones back).
func TestLineSetSettleNext(t *testing.T) {
	s := &session{cfg: PoolConfig{Prefetch: 1024}, halt: make(chan struct{})}
	ls := newLineSet(s, true)
	w := newWorker(s, 0, ls)
	ls.give([]claimed{{Task: Task{OrderID: 1, ID: "a"}}, {Task: Task{OrderID: 2, ID: "b"}}, {Task: Task{OrderID: 1, ID: "c"}}})
	o, t1, _, _ := ls.next(w, time.Now())
	assert.Equal(t, "a", t1.ID)

	o, t2 := ls.settleNext(o, w, time.Now())
	assert.Equal(t, "b", t2.ID, "the OrderID that waited goes first")
	assert.Equal(t, lineRunning, o.state)
	o, t3 := ls.settleNext(o, w, time.Now())
	assert.Equal(t, "c", t3.ID)
	last, _ := ls.settleNext(o, w, time.Now())
	assert.Nil(t, last, "nothing runnable")
	assert.Zero(t, ls.held())
	assert.Equal(t, -1, w.idleAt, "settleNext registers no idle worker")

	// A delayed OrderID whose backoff ended is picked.
	ls.give([]claimed{{Task: Task{OrderID: 3, ID: "d"}}, {Task: Task{OrderID: 4, ID: "e"}}})
	o, _, _, _ = ls.next(w, time.Now())
	ls.settle(w, o, false, time.Now().Add(time.Minute), time.Time{}) // 3 waits a minute
	o, _, _, _ = ls.next(w, time.Now())
	next, t4 := ls.settleNext(o, w, time.Now().Add(2*time.Minute))
	assert.Equal(t, "d", t4.ID, "due again")
	assert.NotNil(t, next)

	// Retiring, or stopping: nothing is picked, the runnable stay.
	ls.give([]claimed{{Task: Task{OrderID: 5, ID: "f"}}, {Task: Task{OrderID: 6, ID: "g"}}})
	ls.mu.Lock()
	w.retire = true
	ls.mu.Unlock()
	got, _ := ls.settleNext(next, w, time.Now())
	assert.Nil(t, got, "a retiring worker picks nothing")
	assert.Equal(t, 2, ls.runnableCount(time.Now()))
	ls.mu.Lock()
	w.retire = false
	ls.mu.Unlock()
	o, _, _, _ = ls.next(w, time.Now())
	s.stopStarting()
	got, _ = ls.settleNext(o, w, time.Now())
	assert.Nil(t, got, "a stopping session starts nothing")
	assert.Len(t, ls.takeAll(), 1, "the runnable one is handed back")
}

// A worker that goes from task to task through settleNext never asks
// next, so it must wake an idle worker for what it leaves runnable, as
// next does: here an OrderID whose backoff ended while the worker that
// waited for it slept on its timer.
func TestLineSetSettleNextWakesForWhatItLeaves(t *testing.T) {
	s := &session{cfg: PoolConfig{Prefetch: 1024}, halt: make(chan struct{})}
	ls := newLineSet(s, true)
	w1, w2 := newWorker(s, 0, ls), newWorker(s, 1, ls)
	now := time.Now()
	ls.give([]claimed{{Task: Task{OrderID: 1, ID: "a"}}, {Task: Task{OrderID: 2, ID: "b"}}, {Task: Task{OrderID: 1, ID: "c"}}})
	o1, _, _, _ := ls.next(w1, now)
	o2, _, _, _ := ls.next(w2, now)
	ls.settle(w2, o2, false, now.Add(time.Minute), time.Time{}) // b waits a minute
	_, _, due, _ := ls.next(w2, now)
	require.Equal(t, now.Add(time.Minute), due, "w2 sleeps until b is due")
	require.Equal(t, w2, ls.timed)

	_, next := ls.settleNext(o1, w1, now.Add(2*time.Minute))
	assert.Equal(t, "c", next.ID, "w1 goes on with its OrderID, which waited longer")
	assert.Equal(t, -1, w2.idleAt, "w2 is no longer idle")
	assert.Len(t, w2.wake, 1, "w2 is woken for b")
	assert.Nil(t, ls.timed)
	_, again, _, _ := ls.next(w2, now.Add(2*time.Minute))
	assert.Equal(t, "b", again.ID)
	assert.Equal(t, 1, again.Attempt)
}
