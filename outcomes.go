package queue

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// The writes of finished tasks' outcomes (acks, dead letters, cancel
// records): retried until Redis takes them, and given up at a stop that
// Redis would otherwise never let end.

// retry runs write, the record of the outcome of n finished tasks, until
// Redis takes it, the lease is lost, or a stop gives it up (retryCtx ends,
// or the Queue is closed with the connections Dial made), or at once when
// Redis is laid out otherwise (no retry can fix that, and the pool stops:
// see analysePool): the n tasks count given up, and stay pending. Every write is tried once, however
// late, unless one was given up before: from then on none is sent, so
// that a later task of an OrderID is never recorded done while an earlier
// one stays pending (the next owner would run that one after it); they
// all stay pending, and go back in claim order, as after a crash. b paces
// the tries, and each refusal is reported. It reports whether Redis took
// it.
func (s *session) retry(n int, b *backoff, write func(ctx context.Context) error) bool {
	for !s.isLost() {
		if s.givenUp.Load() > 0 {
			s.gaveUp(n)
			return false
		}
		err := write(s.leaseCtx)
		if err == nil {
			b.reset()
			return true
		}
		if errors.Is(err, ErrLeaseLost) {
			s.loseLease()
			return false
		}
		if s.isLost() {
			return false // the lease's end cut the call short
		}
		s.cfg.OnError(err)
		s.refused(err)
		if s.retryCtx.Err() != nil || s.st.poolsClosed() || layoutRefused(err) {
			s.gaveUp(n)
			return false
		}
		b.wait(s.retryCtx)
	}
	return false
}

// retryFor is how long a stop retries the writes Redis refuses (see
// retry): the running tasks' ShutdownTimeout, then as long again, and at
// least minRetry, so that a blip of Redis during a short stop does not
// make its finished tasks run twice.
func retryFor(shutdown time.Duration) time.Duration { return shutdown + max(shutdown, minRetry) }

const minRetry = 5 * time.Second

// gaveUp counts n tasks whose outcome a stop gave up recording (see
// retryCtx): they stay pending.
func (s *session) gaveUp(n int) { s.givenUp.Add(int64(n)) }

// refused keeps err, a refusal of a write that is retried, for the report
// of the writes a stop gives up.
func (s *session) refused(err error) { s.lastRefuse.Store(&err) }

// reportGivenUp reports, at the end of a stop, the tasks whose outcome
// was given up, if any (a lost lease is reported for itself).
func (s *session) reportGivenUp() {
	n := s.givenUp.Load()
	if n == 0 || s.isLost() {
		return
	}
	cause := errors.New("none")
	if p := s.lastRefuse.Load(); p != nil {
		cause = *p
	}
	s.cfg.OnError(fmt.Errorf("queue: %s: gave up recording the outcome of %d finished tasks at the stop (last refusal: %w); "+
		"they stay pending, and run again under the queue's next owner", s.st.what("stop"), n, cause))
}
