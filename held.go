package queue

import (
	"context"
	"errors"
)

// What the session holds: the claimed tasks counted against Prefetch,
// MaxHeldTasks and MaxHeldBytes, the fetcher's wake-ups as they go, and
// the hand-back of tasks it will not run.

// hold counts claimed tasks as held.
func (s *session) hold(ts []claimed) {
	var size int64
	for i := range ts {
		size += ts[i].size()
	}
	s.heldBytes.Add(size)
	s.held.Add(int64(len(ts)))
}

// release counts tasks as no longer held. It wakes the fetcher only when
// that lets it claim (or when nothing is held, which the drain and resync
// checks wait for): a wake-up per finished task cost a goroutine switch
// each.
func (s *session) release(ts ...claimed) {
	var size int64
	for i := range ts {
		size += ts[i].size()
	}
	s.releaseHeld(int64(len(ts)), size)
}

// releaseHeld is release of n tasks of size bytes in all.
func (s *session) releaseHeld(n, size int64) {
	s.heldBytes.Add(-size)
	left := s.held.Add(-n)
	if left == 0 || s.room() >= s.lowWater {
		notify(s.freed)
	}
}

// room returns how many tasks the fetcher may claim: Prefetch bounds the
// OrderIDs in hand (a task each that can start), MaxHeldTasks every task
// held, and MaxHeldBytes their size (0 room once reached).
func (s *session) room() int64 {
	if s.heldBytes.Load() >= s.cfg.MaxHeldBytes {
		return 0
	}
	return min(int64(s.cfg.Prefetch)-s.lines.Load(), int64(s.cfg.MaxHeldTasks)-s.held.Load())
}

// notify wakes the receiver of a 1-buffered channel, if none is pending.
func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// handBack puts tasks back at the consuming end, first claimed first,
// each with the deliveries made so far (its next Attempt less one). It
// reports false when they (or some of them) stay pending.
func (s *session) handBack(ctx context.Context, tasks []claimed) bool {
	if s.isLost() {
		return false
	}
	if len(tasks) == 0 {
		return true
	}
	for i := range tasks {
		tasks[i].Attempt--
	}
	err := s.st.requeue(ctx, tasks, false)
	if err != nil {
		// They stay pending, and the next owner puts them back.
		s.cfg.OnError(err)
		if errors.Is(err, ErrLeaseLost) {
			s.loseLease()
		}
	}
	s.release(tasks...)
	return err == nil
}
