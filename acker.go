package queue

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// acker acknowledges a session's finished tasks in batches, on a goroutine
// of its own: workers hand it pending fields with one mutex each, not a
// channel send, and it takes everything handed to it at once, so that one
// ack script serves many tasks. With the last batch of a round it deletes
// the claim-sequence records of claims none of whose tasks is pending.
type acker struct {
	s *session

	mu     sync.Mutex
	fields []string        // pending fields of finished tasks not taken yet
	recs   []historyRecord // with a retention, their status records (history.go), in step
	claims []string        // claim-sequence records of claims none of whose tasks is pending any more
	closed bool            // no more acks come
	wake   chan struct{}   // signalled when there is work, or on close

	// unconfirmed counts what Redis has not confirmed yet: acks of tasks
	// finished ok, and claim-sequence records to delete. A resync waits
	// for it to reach zero, so that no call with the old lease value is
	// still on its way when it gives the lease a new one.
	unconfirmed atomic.Int64
}

func newAcker(s *session) *acker { return &acker{s: s, wake: make(chan struct{}, 1)} }

// ack hands a finished task's pending field to the acker; its delivery
// started at started.
func (a *acker) ack(t claimed, started time.Time) {
	a.unconfirmed.Add(1)
	var rec *historyRecord
	if a.s.st.retention > 0 {
		rec = &historyRecord{state: StateDone, added: t.AddedAt, started: started, finished: time.Now(), attempts: t.Attempt}
	}
	a.add(t.field, rec, t)
}

// finished counts tasks that left the pending hash otherwise than by an
// ack (dead-lettered, handed back), and has the acker delete the
// claim-sequence records of the claims this finishes.
func (a *acker) finished(ts ...claimed) { a.add("", nil, ts...) }

// add queues field (unless empty) for deletion, and rec (unless nil) as
// its status record, in the same step so that the two lists stay in step,
// with the claim-sequence records of the claims that ts finish, and wakes
// the acker when it had nothing to do.
func (a *acker) add(field string, rec *historyRecord, ts ...claimed) {
	a.mu.Lock()
	idle := len(a.fields) == 0 && len(a.claims) == 0
	if field != "" {
		a.fields = append(a.fields, field)
		if rec != nil {
			a.recs = append(a.recs, *rec)
		}
	}
	for _, t := range ts {
		if t.claim.finish(1) {
			a.claims = append(a.claims, t.claim.record)
			a.unconfirmed.Add(1)
		}
	}
	wake := idle && (len(a.fields) > 0 || len(a.claims) > 0)
	a.mu.Unlock()
	if wake {
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

// take waits for work and returns the fields and claim-sequence records to
// delete, swapping in spare as the new field buffer; it returns nothing
// once the acker is closed and everything has been taken.
func (a *acker) take(spare []string) (fields []string, recs []historyRecord, claims []string) {
	a.mu.Lock()
	for len(a.fields) == 0 && len(a.claims) == 0 && !a.closed {
		a.mu.Unlock()
		<-a.wake
		a.mu.Lock()
	}
	fields, recs, claims = a.fields, a.recs, a.claims
	a.fields, a.recs, a.claims = spare[:0], nil, nil
	a.mu.Unlock()
	return fields, recs, claims
}

// loop acknowledges finished tasks in batches until closed: it waits for
// one, takes every one finished by then, and acknowledges them, maxClaim
// to a call, deleting with the last call the claim-sequence records of the
// claims finished.
func (a *acker) loop(ctx context.Context) {
	spare := make([]string, 0, maxClaim)
	var b backoff
	for {
		fields, recs, claims := a.take(spare)
		if len(fields) == 0 && len(claims) == 0 {
			return
		}
		for batch := fields; len(batch) > 0 || len(claims) > 0; {
			n := min(len(batch), maxClaim)
			var last []string
			var brecs []historyRecord
			if n == len(batch) {
				last, claims = claims, nil
			}
			if len(recs) >= n {
				brecs, recs = recs[:n], recs[n:]
			}
			a.send(ctx, batch[:n], brecs, last, &b)
			batch = batch[n:]
		}
		clear(fields)
		spare = fields[:0]
	}
}

// send acknowledges one batch, retrying Redis errors until it succeeds or
// the lease is lost, then counts it as confirmed and wakes the fetcher.
func (a *acker) send(ctx context.Context, batch []string, recs []historyRecord, claims []string, b *backoff) {
	s := a.s
	for !s.isLost() {
		_, err := s.st.ack(ctx, batch, recs, claims)
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
	a.unconfirmed.Add(-int64(len(batch) + len(claims)))
	notify(s.freed)
}
