package queue

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/gomodule/redigo/redis"
)

// renew keeps the lease until ctx ends. When it cannot renew before the
// lease would end (less a safety margin), it declares the lease lost, which
// stops claims and cancels running tasks while the lease still holds.
func (s *session) renew(ctx context.Context) {
	ttl := s.cfg.LeaseTTL
	// The lease was taken just before the session; renew at once all the
	// same, in case recovering pending tasks took long. It runs from
	// when it was asked for (see newSession).
	deadline := s.leaseDeadline()
	every := ttl / 3
	next := time.Duration(0)
	for {
		wait := min(next, time.Until(deadline))
		if s.waitRenewal(ctx, max(wait, 0)) != nil {
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
			deadline = start.Add(leaseHeld(ttl))
			s.setDeadline(deadline)
			s.log.ok(start)
			s.recordWorkers(ctx, start.Add(every)) // after a refence, or a failed try; not past the next renewal
			next = every - time.Since(start)
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

// leaseHeld is how long after a lease call was sent the pool takes its
// lease as held: the TTL less a fifth, the margin for clocks and replies.
func leaseHeld(ttl time.Duration) time.Duration { return ttl - ttl/5 }

// waitRenewal waits d, or until ctx ends (returning its error), and
// records the worker count whenever it changes meanwhile.
func (s *session) waitRenewal(ctx context.Context, d time.Duration) error {
	until := time.Now().Add(d)
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return nil
		case <-s.resized:
			s.recordWorkers(ctx, until)
		}
	}
}

// workersScript records a pool's live worker count in the meta hash, with
// the lease value it holds, so that Stats can tell it from an earlier
// tenure's: "<count>:<lease value>".
//
//	KEYS[1] = lease, KEYS[2] = meta hash
//	ARGV[1] = lease value, ARGV[2] = worker count
//
// Returns 1 when recorded, 0 when the lease is not the caller's.
var workersScript = newScript("workers", 2, `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'workers', ARGV[2] .. ':' .. ARGV[1])
return 1
`)

// recordWorkers records the live worker count in the meta hash (shown by
// Stats) when it or the lease value changed since it was last recorded,
// giving up at until. Costs one round trip when it writes. A failure is
// logged at debug level and tried again after the next renewal: the count
// is for show.
func (s *session) recordWorkers(ctx context.Context, until time.Time) {
	if s.halted() {
		return // the count only falls from here; Stats stops showing it with the lease
	}
	lease, n := s.st.value(), s.live.Load()
	v := strconv.FormatInt(n, 10) + ":" + lease
	if n == 0 || v == s.recorded { // 0: the workers have not started yet
		return
	}
	rctx, cancel := context.WithDeadline(ctx, until)
	defer cancel()
	ok, err := redis.Int(s.st.script(rctx, "record workers of", workersScript, s.st.keys.lease, s.st.keys.meta, lease, n))
	switch {
	case err != nil:
		s.cfg.Logger.Debug("queue: cannot record the worker count", "analyser", s.log.analyser, "err", err)
	case ok == 1:
		s.recorded = v
	}
}
