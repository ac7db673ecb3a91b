package queue

// What the session holds: the claimed tasks counted against Prefetch,
// MaxHeldTasks and MaxHeldBytes, and the fetcher's wake-ups as they go.

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
