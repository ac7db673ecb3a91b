package queue

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// acker acknowledges a session's finished tasks in batches, on a goroutine
// of its own: workers hand it their tasks' claim places, each into one of
// a few shards (with a mutex each, not a channel send, so that two
// workers running on two cores do not pass one lock's memory back and
// forth for every task), and it takes everything handed to it at once
// (under load, what comes within ackLinger too), so that one ack script
// serves many tasks, with a bitmap per claim.
//
// A task goes to the shard of its OrderID, so that the acks of one OrderID
// keep the order they were made in (a task's ack is handed over before
// the next task of its OrderID starts, on whichever worker) through the
// take and its chunks, which are sent in that order: when a chunk is not
// written (the lease lost, a stop gives it up, the process dies), no later
// task of an OrderID it holds is recorded done before it, and the next
// owner runs them again in claim order. (Shards by worker sent a later
// task's ack in an earlier chunk whenever the OrderID's tasks ran on two
// workers: under DispatchFree, or as an elastic pool placed it anew.)
type acker struct {
	s      *session
	shards []ackShard
	closed atomic.Bool   // no more acks come
	asleep atomic.Bool   // the loop found nothing and waits for wake
	wake   chan struct{} // signalled when there is work while it sleeps, or on close

	// taken counts the acks taken from the shards that Redis has not
	// confirmed yet (see unconfirmed).
	taken atomic.Int64
	// rounds counts the loop's rounds done: takes whose acks were all
	// confirmed or given up (see confirmed).
	rounds atomic.Int64

	// The loop's own buffers.
	refs  []ackRef
	recs  []historyRecord
	thens []func()

	// last is how many acks the loop's last take gathered, and linger the
	// timer of its wait for more, lingerFor long (ackLinger; see lingers);
	// the loop's only.
	last      int
	linger    *time.Timer
	lingerFor time.Duration
}

// ackShard holds the finished tasks of some workers until the acker takes
// them.
type ackShard struct {
	mu    sync.Mutex
	refs  []ackRef        // finished tasks not taken yet
	recs  []historyRecord // with a retention, their status records (history.go), in step
	thens []func()        // to call once the acks taken with them are confirmed (ackThen)
	_     [64]byte        // the next shard's lock on another cache line
}

// ackShards is the number of shards: a power of two, more than the cores
// that run workers at once on most machines.
const ackShards = 16

// ackShardOf returns the shard of the acks of OrderID id: its worker's
// among ackShards (workerOf, which mixes its bits: a pool's OrderIDs may
// share their low bits, as those of one analyser of many do). Under
// DispatchByOrder with a multiple of ackShards workers, each worker's
// OrderIDs share one shard, whose lock then stays on its core.
func ackShardOf(id uint64) int { return workerOf(id, ackShards) }

func newAcker(s *session) *acker {
	return &acker{s: s, shards: make([]ackShard, ackShards), wake: make(chan struct{}, 1), lingerFor: ackLinger}
}

// ack hands a finished task to the acker; its delivery started at
// started.
func (a *acker) ack(t claimed, started time.Time) { a.add(t, started, nil) }

// ackThen is ack, and calls then once Redis confirmed the ack (or the
// acker gave it up: the lease is lost), on the acker's goroutine.
func (a *acker) ackThen(t claimed, started time.Time, then func()) {
	a.add(t, started, then)
}

func (a *acker) add(t claimed, started time.Time, then func()) {
	sh := &a.shards[ackShardOf(t.OrderID)]
	sh.mu.Lock()
	sh.refs = append(sh.refs, ackRef{claim: t.claim, place: t.place, id: t.ID})
	if a.s.st.retention > 0 {
		sh.recs = append(sh.recs, historyRecord{state: StateDone, added: t.AddedAt, started: started, finished: time.Now(), attempts: t.Attempt})
	}
	if then != nil {
		sh.thens = append(sh.thens, then)
	}
	sh.mu.Unlock()
	// The loop, once asleep, looks at the shards again after it says so
	// (take): either it finds this task, or this finds it asleep.
	if a.asleep.Load() && a.asleep.CompareAndSwap(true, false) {
		notify(a.wake)
	}
}

// unconfirmed returns how many acks Redis has not confirmed yet, or more.
// A resync waits for it to reach zero, so that no call with the old lease
// value is still on its way when it gives the lease a new one. The shards
// are read before taken: an ack the loop takes meanwhile is counted in
// taken by then.
func (a *acker) unconfirmed() int64 {
	var n int64
	for i := range a.shards {
		sh := &a.shards[i]
		sh.mu.Lock()
		n += int64(len(sh.refs))
		sh.mu.Unlock()
	}
	return n + a.taken.Load()
}

// close tells the acker that no more acks come; it acknowledges what it
// holds, then its loop returns.
func (a *acker) close() {
	a.closed.Store(true)
	notify(a.wake)
}

// take waits for work and returns the tasks to acknowledge, in buffers the
// acker keeps until the next take; it returns nothing once the acker is
// closed and everything has been taken.
func (a *acker) take() (refs []ackRef, recs []historyRecord, thens []func()) {
	defer func() { a.last = len(a.refs) }()
	for {
		if a.gather() {
			if a.lingers() {
				a.wait(a.lingerFor)
				a.gatherMore()
			}
			return a.refs, a.recs, a.thens
		}
		if a.closed.Load() {
			if a.gather() { // handed over before the close
				return a.refs, a.recs, a.thens
			}
			return nil, nil, nil
		}
		a.asleep.Store(true)
		if a.gather() {
			a.asleep.Store(false)
			return a.refs, a.recs, a.thens
		}
		<-a.wake
		a.asleep.Store(false)
	}
}

// Under load, the acker waits ackLinger after a take that found fewer
// than ackLingerFull acks, once the take before found ackLingerFrom or
// more, and takes what came meanwhile with them: one ack script then
// serves a few times more tasks (its cost in Redis is mostly the same
// whatever their number), at the price of acks confirmed that much
// later. A pool that acks a task now and then sends each at once.
const (
	ackLinger     = 500 * time.Microsecond
	ackLingerFrom = 256
	ackLingerFull = 2048
)

// lingers reports whether the loop, having gathered a.refs, is to wait
// for more (see ackLinger): not once closed, nor when the acks it holds
// fill an ack script (ackChunk: 1000 with a retention) or half the
// Prefetch that the fetcher stops claiming at.
func (a *acker) lingers() bool {
	full := min(ackLingerFull, a.s.st.ackChunk(), a.s.cfg.Prefetch/2)
	return a.last >= ackLingerFrom && len(a.refs) < full && !a.closed.Load()
}

// wait waits d, or until the acker is closed.
func (a *acker) wait(d time.Duration) {
	if a.linger == nil {
		a.linger = time.NewTimer(d)
	} else {
		a.linger.Reset(d)
	}
	select {
	case <-a.linger.C:
	case <-a.wake: // a close, or an add that found the loop asleep before
		a.linger.Stop()
	}
}

// gather moves every shard's tasks into the acker's buffers, counting
// them taken, and reports whether there were any.
func (a *acker) gather() bool {
	clear(a.recs)
	clear(a.thens)
	a.refs, a.recs, a.thens = a.refs[:0], a.recs[:0], a.thens[:0]
	return a.gatherMore()
}

// gatherMore moves every shard's tasks into the acker's buffers, after
// those there, counting them taken, and reports whether the buffers hold
// any.
func (a *acker) gatherMore() bool {
	for i := range a.shards {
		sh := &a.shards[i]
		sh.mu.Lock()
		if len(sh.refs) > 0 {
			a.taken.Add(int64(len(sh.refs)))
			a.refs = append(a.refs, sh.refs...)
			a.recs = append(a.recs, sh.recs...)
			a.thens = append(a.thens, sh.thens...)
			clear(sh.refs)
			clear(sh.recs)
			clear(sh.thens)
			sh.refs, sh.recs, sh.thens = sh.refs[:0], sh.recs[:0], sh.thens[:0]
		}
		sh.mu.Unlock()
	}
	return len(a.refs) > 0
}

// loop acknowledges finished tasks in batches until closed: it waits for
// one, takes every one finished by then (under load, by ackLinger later:
// see lingers), and acknowledges them, ackChunk to a call.
func (a *acker) loop() {
	var b backoff
	for {
		refs, recs, thens := a.take()
		if len(refs) == 0 {
			return
		}
		for batch := refs; len(batch) > 0; {
			n := min(len(batch), a.s.st.ackChunk())
			var brecs []historyRecord
			if len(recs) >= n {
				brecs, recs = recs[:n], recs[n:]
			}
			a.send(batch[:n], brecs, &b)
			batch = batch[n:]
		}
		for _, f := range thens {
			f()
		}
		clear(refs)
		a.rounds.Add(1)
	}
}

// confirmed waits until every ack handed to the acker before it was
// called is confirmed by Redis or given up (the lease lost, a stop gave
// it up), or ctx ends. A worker calls it before it writes a dead letter
// or a cancel record, which go to Redis by themselves: the earlier task
// of an OrderID whose ack is still on its way could otherwise stay
// pending (its ack never taken: the lease lost) after the later one's
// outcome is recorded, and the next owner would run it after that one.
// Acks handed over before it are taken by the round under way or by the
// next: two rounds done, or none left, and they are through.
func (a *acker) confirmed(ctx context.Context) {
	if a.unconfirmed() == 0 {
		return
	}
	r := a.rounds.Load()
	for a.rounds.Load() < r+2 && a.unconfirmed() > 0 {
		if sleep(ctx, ackPoll) != nil {
			return
		}
	}
}

// ackPoll is how often confirmed looks at the acker: it waits for a round
// trip or two, before a rare write.
const ackPoll = 200 * time.Microsecond

// send acknowledges one batch, retrying Redis errors until it succeeds,
// the lease is lost or a stop gives it up (see session.retry), then counts
// it as confirmed and wakes the fetcher.
func (a *acker) send(batch []ackRef, recs []historyRecord, b *backoff) {
	s := a.s
	s.retry(len(batch), b, func(ctx context.Context) error {
		_, err := s.st.ack(ctx, batch, recs)
		return err
	})
	a.taken.Add(-int64(len(batch)))
	notify(s.freed)
}
