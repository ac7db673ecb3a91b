package queue

import (
	"math"
	"sync"
	"time"
)

// limiter is a pool's rate limit ([PoolConfig].Rate and Burst): a token
// bucket that holds up to burst tokens, gains rate tokens a second, and
// gives one for each task start. So in any span of T seconds it gives at
// most burst + T*rate tokens.
//
// A taker that finds the bucket empty does not poll it: it reserves the
// next token to come, taking the count below zero, and waits until that
// token's time. Concurrent takers so queue up on a fixed schedule, one
// every 1/rate; a taker that wakes late does not push the later ones back,
// and the bucket refills by the time elapsed, not by the takers' wake-ups.
// The long-run rate is the limit however late the workers run, as long as
// one of them is waiting.
//
// Its clock is the caller's: each method takes the time now (which tests
// make up). It is safe for concurrent use.
type limiter struct {
	rate  float64 // tokens a second
	burst float64 // tokens the bucket holds when full

	mu     sync.Mutex
	tokens float64   // at last; below zero, tokens reserved ahead of their time
	last   time.Time // when tokens was brought up to date
}

// Bounds of PoolConfig.Rate and Burst: at least one start a day, at most a
// million a second (far beyond what one pool can start); the longest wait
// a reservation can get, maxWorkers/minRate, fits a time.Duration.
const (
	minRate  = 1.0 / (24 * 60 * 60)
	maxRate  = 1e6
	maxBurst = 1_000_000
)

// newLimiter returns a limiter whose bucket is full at now.
func newLimiter(rate float64, burst int, now time.Time) *limiter {
	return &limiter{rate: rate, burst: float64(burst), tokens: float64(burst), last: now}
}

// advance adds the tokens gained from last to now. l.mu is held. A now
// before last (read by a taker that got the lock after a later one) adds
// none.
func (l *limiter) advance(now time.Time) {
	if d := now.Sub(l.last); d > 0 {
		l.tokens = min(l.burst, l.tokens+d.Seconds()*l.rate)
		l.last = now
	}
}

// reserve takes a token and returns when it may be used: now, if the
// bucket had one, else the time its deficit is made up. The caller must
// not start before then.
func (l *limiter) reserve(now time.Time) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.advance(now)
	l.tokens--
	if l.tokens >= 0 {
		return now
	}
	// Rounded up, so that the token is whole by then.
	return l.last.Add(time.Duration(math.Ceil(-l.tokens / l.rate * 1e9)))
}

// forget drops the reservations made before now: those of a session that
// ended, whose workers will not use them. The bucket keeps what was
// really taken: it is left empty at now if it was in debt, which never
// gives more than the starts made allow (they each had a whole token).
func (l *limiter) forget(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.advance(now)
	l.tokens = max(l.tokens, 0)
}

// unreserve gives back a token that reserve handed out and its taker did
// not use (its task was cancelled before its time). The reservations made
// after it keep their times; the next ones come sooner. The bucket never
// holds more than burst.
func (l *limiter) unreserve(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.advance(now)
	l.tokens = min(l.burst, l.tokens+1)
}

// queued reports whether a taker waits at now for a token it reserved:
// then the limit is what holds tasks back.
func (l *limiter) queued(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.advance(now)
	return l.tokens < 0
}

// awaitRate waits until the pool's rate limit lets o's first task id,
// picked at now, start, and returns the time it may start. Only o waits:
// its later tasks stay behind it, other OrderIDs go to other workers (or
// wait for this one, as behind any task it runs). It reports false when
// the session stops meanwhile, or the lease's deadline passed: the task
// does not start, and on a graceful stop o goes back with the unstarted
// tasks, no delivery counted. The lease's renewals go on while it waits.
// A cancel of the task seen meanwhile (watchCancels wakes the worker)
// ends the wait at once, its token given back: the caller finishes the
// task as cancelled.
func (w *worker) awaitRate(o *orderLine, id string, now time.Time) (time.Time, bool) {
	s := w.s
	if at := s.limit.reserve(now); at.After(now) {
		// watchCancels stores the marks before it reads held, and the
		// worker reads the marks after it stored held: one of them sees
		// the other.
		w.held.Store(&id)
		w.toWaiting(o)
		for !s.isMarked(id) {
			select {
			case <-w.timerFor(time.Until(at)):
			case <-s.halt:
			case <-w.wake:
				continue
			}
			break
		}
		w.held.Store(nil)
		now = time.Now()
		if now.Before(at) && s.isMarked(id) {
			s.limit.unreserve(now) // not used: the task is cancelled
		}
		if !w.set.endWait(o) {
			return now, false // the session stops: o went back, or goes
		}
	}
	return now, w.mayStart(o, now)
}

// mayStart reports whether o's first task, whose wait to start ended at
// now, may start: not when the session stops (o goes back, unless the
// stop counted it as running), nor when the lease's deadline passed.
func (w *worker) mayStart(o *orderLine, now time.Time) bool {
	switch {
	case w.stopping() && w.putBack(o):
		return false
	case !w.s.leaseValid(now):
		w.s.loseLease() // the lease may be another owner's by now
		return false
	}
	return true
}
