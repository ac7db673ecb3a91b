package queue

import (
	"fmt"
	"sort"
)

// DispatchMode says how a pool gives OrderIDs to its workers. In every
// mode the tasks of one OrderID run one at a time, in claim order, each on
// one worker goroutine.
type DispatchMode int

const (
	// DispatchByOrder, the default, runs every task of an OrderID on the
	// worker its hash picks among the pool's workers, so that a worker may
	// keep state per OrderID. An OrderID shares its worker with others: a
	// slow task holds back the OrderIDs of its worker.
	DispatchByOrder DispatchMode = iota
	// DispatchFree binds an OrderID to a worker only while one of its
	// tasks runs: its next task goes to whichever worker is free first.
	// An OrderID never waits behind another OrderID's task while a worker
	// is free. Workers take tasks from one shared list, under one lock.
	DispatchFree
)

// String returns "byorder" or "free".
func (m DispatchMode) String() string {
	switch m {
	case DispatchByOrder:
		return "byorder"
	case DispatchFree:
		return "free"
	}
	return fmt.Sprintf("DispatchMode(%d)", int(m))
}

// dispatch hands claimed tasks to the workers, keeping claim order per
// OrderID. Under DispatchByOrder an OrderID goes to workerOf(id, n), n the
// worker count, unless it is pinned: in hand on another worker since a
// resize, it stays there while it has tasks.
func (s *session) dispatch(tasks []claimed) {
	if s.shared != nil {
		s.shared.give(tasks)
		return
	}
	s.mapMu.Lock()
	defer s.mapMu.Unlock()
	if len(s.pinned) > 0 && s.pinnedLines.Load() == 0 {
		clear(s.pinned) // every pinned OrderID's tasks are done
	}
	n := s.n
	if n == 1 && len(s.pinned) == 0 {
		s.workers[0].set.give(tasks)
		return
	}
	if len(s.pinned) == 0 {
		s.dispatchChained(tasks, n)
		return
	}
	if s.per == nil {
		s.per = make([][]claimed, s.cfg.MaxWorkers)
	}
	s.dispatchPinned(tasks, n)
	for i, ts := range s.per[:n] {
		if len(ts) > 0 {
			s.workers[i].set.give(ts) // copies them
			clear(ts)
			s.per[i] = ts[:0]
		}
	}
}

// dispatchChained gives each of the n workers its tasks, in claim order,
// straight from tasks: chained by index, worker by worker, rather than
// copied into a buffer a worker first (a task is 184 bytes).
func (s *session) dispatchChained(tasks []claimed, n int) {
	if cap(s.chain) < len(tasks) {
		s.chain = make([]int32, len(tasks))
	}
	if s.heads == nil {
		s.heads, s.tails = make([]int32, s.cfg.MaxWorkers), make([]int32, s.cfg.MaxWorkers)
	}
	next, heads, tails := s.chain[:len(tasks)], s.heads[:n], s.tails[:n]
	for i := range heads {
		heads[i] = -1
	}
	for j := range tasks {
		i := workerOf(tasks[j].OrderID, n)
		next[j] = -1
		if heads[i] < 0 {
			heads[i] = int32(j)
		} else {
			next[tails[i]] = int32(j)
		}
		tails[i] = int32(j)
	}
	for i, first := range heads {
		if first >= 0 {
			s.workers[i].set.giveChain(tasks, first, next) // copies them
		}
	}
}

// dispatchPinned fills s.per from tasks with pinned OrderIDs about: those
// still in hand on their worker get their tasks there, the others go to
// their hash's worker, and are no longer pinned.
func (s *session) dispatchPinned(tasks []claimed, n int) {
	if s.away == nil {
		s.away = make([][]claimed, s.cfg.MaxWorkers)
	}
	for _, t := range tasks {
		if i, ok := s.pinned[t.OrderID]; ok {
			s.away[i] = append(s.away[i], t)
			continue
		}
		i := workerOf(t.OrderID, n)
		s.per[i] = append(s.per[i], t)
	}
	for i, ts := range s.away {
		if len(ts) == 0 {
			continue
		}
		rejected := s.workers[i].set.giveHeld(ts, s.rejected)
		for _, t := range rejected {
			delete(s.pinned, t.OrderID)
			j := workerOf(t.OrderID, n)
			s.per[j] = append(s.per[j], t)
		}
		clear(ts)
		s.away[i] = ts[:0]
		clear(rejected)
		s.rejected = rejected[:0]
	}
}

// repin records, after the worker count changed, which OrderIDs in hand
// are on a worker other than their hash's under the new count: they stay
// there while they have tasks. mapMu is held.
func (s *session) repin() {
	if s.pinned == nil {
		s.pinned = map[uint64]int{}
	}
	clear(s.pinned)
	for _, w := range s.workers {
		ls := w.set
		ls.mu.Lock()
		for id, o := range ls.orders {
			if o.state == lineParked {
				continue // not in hand
			}
			away := workerOf(id, s.n) != w.index
			if away {
				s.pinned[id] = w.index
			}
			if away != o.pinned {
				o.pinned = away
				if away {
					s.pinnedLines.Add(1)
				} else {
					s.pinnedLines.Add(-1)
				}
			}
		}
		ls.mu.Unlock()
	}
}

// sets returns the pool's lineSets: the shared one, or each worker's.
func (s *session) sets() []*lineSet {
	if s.shared != nil {
		return []*lineSet{s.shared}
	}
	out := make([]*lineSet, len(s.workers))
	for i, w := range s.workers {
		out[i] = w.set
	}
	return out
}

// takeUnstarted takes every task the workers hold and are not running, in
// claim order. The scaler has stopped.
func (s *session) takeUnstarted() []claimed {
	var all []claimed
	for _, ls := range s.sets() {
		all = append(all, ls.takeAll()...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].seq < all[j].seq })
	return all
}
