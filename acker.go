package queue

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// acker acknowledges a session's finished tasks in batches, on a goroutine
// of its own: workers hand it their tasks' claim places with one mutex
// each, not a channel send, and it takes everything handed to it at once,
// so that one ack script serves many tasks, with a bitmap per claim.
type acker struct {
	s *session

	mu     sync.Mutex
	refs   []ackRef        // finished tasks not taken yet
	recs   []historyRecord // with a retention, their status records (history.go), in step
	thens  []func()        // to call once the acks taken with them are confirmed (ackThen)
	closed bool            // no more acks come
	wake   chan struct{}   // signalled when there is work, or on close

	// unconfirmed counts the acks Redis has not confirmed yet. A resync
	// waits for it to reach zero, so that no call with the old lease value
	// is still on its way when it gives the lease a new one.
	unconfirmed atomic.Int64
}

func newAcker(s *session) *acker { return &acker{s: s, wake: make(chan struct{}, 1)} }

// ack hands a finished task to the acker; its delivery started at
// started.
func (a *acker) ack(t claimed, started time.Time) { a.add(t, started, nil) }

// ackThen is ack, and calls then once Redis confirmed the ack (or the
// acker gave it up: the lease is lost), on the acker's goroutine.
func (a *acker) ackThen(t claimed, started time.Time, then func()) { a.add(t, started, then) }

func (a *acker) add(t claimed, started time.Time, then func()) {
	a.unconfirmed.Add(1)
	a.mu.Lock()
	idle := len(a.refs) == 0
	a.refs = append(a.refs, ackRef{claim: t.claim, place: t.place, id: t.ID})
	if a.s.st.retention > 0 {
		a.recs = append(a.recs, historyRecord{state: StateDone, added: t.AddedAt, started: started, finished: time.Now(), attempts: t.Attempt})
	}
	if then != nil {
		a.thens = append(a.thens, then)
	}
	a.mu.Unlock()
	if idle {
		notify(a.wake)
	}
}

// close tells the acker that no more acks come; it acknowledges what it
// holds, then its loop returns.
func (a *acker) close() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	notify(a.wake)
}

// take waits for work and returns the tasks to acknowledge, swapping in
// spare as the new buffer; it returns nothing once the acker is closed and
// everything has been taken.
func (a *acker) take(spare []ackRef) (refs []ackRef, recs []historyRecord, thens []func()) {
	a.mu.Lock()
	for len(a.refs) == 0 && !a.closed {
		a.mu.Unlock()
		<-a.wake
		a.mu.Lock()
	}
	refs, recs, thens = a.refs, a.recs, a.thens
	a.refs, a.recs, a.thens = spare[:0], nil, nil
	a.mu.Unlock()
	return refs, recs, thens
}

// loop acknowledges finished tasks in batches until closed: it waits for
// one, takes every one finished by then, and acknowledges them, ackChunk
// to a call.
func (a *acker) loop(ctx context.Context) {
	spare := make([]ackRef, 0, maxClaim)
	var b backoff
	for {
		refs, recs, thens := a.take(spare)
		if len(refs) == 0 {
			return
		}
		for batch := refs; len(batch) > 0; {
			n := min(len(batch), a.s.st.ackChunk())
			var brecs []historyRecord
			if len(recs) >= n {
				brecs, recs = recs[:n], recs[n:]
			}
			a.send(ctx, batch[:n], brecs, &b)
			batch = batch[n:]
		}
		for _, f := range thens {
			f()
		}
		clear(refs)
		spare = refs[:0]
	}
}

// send acknowledges one batch, retrying Redis errors until it succeeds or
// the lease is lost, then counts it as confirmed and wakes the fetcher.
func (a *acker) send(ctx context.Context, batch []ackRef, recs []historyRecord, b *backoff) {
	s := a.s
	for !s.isLost() {
		_, err := s.st.ack(ctx, batch, recs)
		if err == nil {
			b.reset()
			break
		}
		if errors.Is(err, ErrLeaseLost) {
			s.loseLease()
			break
		}
		s.cfg.OnError(err)
		if b.wait(ctx) != nil {
			break
		}
	}
	a.unconfirmed.Add(-int64(len(batch)))
	notify(s.freed)
}
