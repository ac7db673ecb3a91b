package queue

import (
	"sync/atomic"
	"time"
)

// An elastic pool (MinWorkers < MaxWorkers) grows by one worker when
// tasks have waited for a worker for growAfter while every worker was
// busy and none waited for the rate limit, and every ScaleDownAfter
// retires the workers that were idle all that time. The scaler only looks
// while every worker is busy (every growAfter/2) and once per
// ScaleDownAfter: an idle pool costs it nothing more.
const growAfter = 10 * time.Millisecond

// sizer counts an elastic pool's idle workers. The lineSets tell it when
// a worker goes idle or busy (under their locks); the scaler reads it.
type sizer struct {
	idle      atomic.Int64  // idle workers
	minIdle   atomic.Int64  // the fewest idle workers since the scaler last looked
	idled     atomic.Int64  // how many times a worker went idle
	listening atomic.Bool   // the scaler waits for allBusy (it neither polls nor is at MaxWorkers)
	allBusy   chan struct{} // signalled, while the scaler listens, when the last idle worker goes busy
}

func (z *sizer) wentIdle() {
	z.idle.Add(1)
	z.idled.Add(1)
}

func (z *sizer) wentBusy() {
	n := z.idle.Add(-1)
	if n == 0 && z.listening.Load() {
		notify(z.allBusy)
	}
	for {
		m := z.minIdle.Load()
		if n >= m || z.minIdle.CompareAndSwap(m, n) {
			return
		}
	}
}

// scale resizes an elastic pool until the session stops starting tasks.
func (s *session) scale() {
	z := &s.sizer
	poll := time.NewTimer(growAfter / 2)
	poll.Stop()
	defer poll.Stop()
	shrink := time.NewTimer(s.cfg.ScaleDownAfter)
	defer shrink.Stop()
	z.minIdle.Store(z.idle.Load())
	polling := false
	var since time.Time // since when tasks have waited with every worker busy; zero if they have not
	var idled int64     // z.idled when last looked
	for {
		// Listen first, then look: a worker that takes the last idle
		// slot meanwhile either is seen here or sees the scaler listen.
		z.listening.Store(!polling && s.n < s.cfg.MaxWorkers)
		if z.listening.Load() && z.idle.Load() == 0 {
			z.listening.Store(false)
			poll.Reset(growAfter / 2)
			polling = true
		}
		select {
		case <-s.halt:
			return
		case <-z.allBusy:
		case <-poll.C:
			polling = false
			now, went := time.Now(), z.idled.Load()
			switch {
			case z.idle.Load() > 0 || s.waiting(now) == 0 || s.limit != nil && s.limit.queued(now):
				// No task waits for a worker, or a worker waits for the
				// rate limit: then the limit holds tasks back, and more
				// workers would only wait for it too.
				since = time.Time{}
			case since.IsZero() || went != idled: // a worker was idle meanwhile
				since = now
			case now.Sub(since) >= growAfter:
				s.grow()
				since = time.Time{}
				z.minIdle.Store(z.idle.Load())
				shrink.Reset(s.cfg.ScaleDownAfter)
			}
			idled = went
		case <-shrink.C:
			if k := z.minIdle.Swap(z.idle.Load()); k > 0 {
				s.shrink(int(k))
			}
			shrink.Reset(s.cfg.ScaleDownAfter)
		}
	}
}

// waiting returns how many OrderIDs wait for a worker to start their next
// task at now. The scaler calls it.
func (s *session) waiting(now time.Time) int {
	n := 0
	for _, ls := range s.sets() {
		n += ls.runnableCount(now)
	}
	return n
}

// grow adds a worker: the slot after the last, whose worker, if it is
// retiring and not gone yet, simply stays. The scaler calls it.
func (s *session) grow() {
	s.mapMu.Lock()
	defer s.mapMu.Unlock()
	if s.n >= s.cfg.MaxWorkers {
		return
	}
	var w *worker
	if s.n < len(s.workers) {
		w = s.workers[s.n]
	} else {
		w = s.addSlot(s.n)
	}
	s.n++
	w.set.mu.Lock()
	w.retire = false
	if w.gone {
		s.start(w, true)
	}
	w.set.mu.Unlock()
	if s.shared == nil {
		s.repin()
	}
}

// shrink retires up to k workers, the last slots first, down to
// MinWorkers. A retiring worker takes no new OrderID and ends once it
// holds none (see lineSet.next). The scaler calls it.
func (s *session) shrink(k int) {
	s.mapMu.Lock()
	defer s.mapMu.Unlock()
	k = min(k, s.n-s.cfg.MinWorkers)
	if k <= 0 {
		return
	}
	s.cfg.Logger.Debug("queue: workers retiring", "analyser", s.log.analyser, "retiring", k, "workers", s.n-k)
	for range k {
		s.n--
		w := s.workers[s.n]
		w.set.mu.Lock()
		w.retire = true
		if w.idleAt >= 0 {
			w.set.wake(w) // to see that it retires
		}
		w.set.mu.Unlock()
	}
	if s.shared == nil {
		s.repin()
	}
}
