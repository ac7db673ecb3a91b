package queue

import (
	"context"
	"errors"
	"time"
)

// renew keeps the lease until ctx ends. When it cannot renew before the
// lease would end (less a safety margin), it declares the lease lost, which
// stops claims and cancels running tasks while the lease still holds.
func (s *session) renew(ctx context.Context) {
	ttl := s.cfg.LeaseTTL
	margin := ttl / 5
	// The lease was taken or extended just before the session; renew at
	// once all the same, in case recovering pending tasks took long.
	deadline := time.Now().Add(ttl - margin)
	every := ttl / 3
	next := time.Duration(0)
	for {
		wait := min(next, time.Until(deadline))
		if sleep(ctx, max(wait, 0)) != nil {
			return
		}
		if !time.Now().Before(deadline) {
			s.loseLease()
			return
		}
		start := time.Now()
		rctx, cancel := context.WithDeadline(ctx, deadline)
		err := s.st.renew(rctx)
		cancel()
		switch {
		case err == nil:
			// The lease runs from when this renewal was sent at the
			// latest, and so does the next one's schedule: a renewal held
			// up behind a long script must not push the next one later.
			deadline = start.Add(ttl - margin)
			s.setDeadline(deadline)
			next = every - time.Since(start)
			s.log.ok(start)
		case errors.Is(err, ErrLeaseLost):
			s.loseLease()
			return
		case ctx.Err() != nil:
			return
		default:
			s.cfg.OnError(err)
			next = every / 4
		}
	}
}
