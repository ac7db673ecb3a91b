package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"time"
)

// ConsumerConfig holds the settings of a Consumer. The zero value works.
type ConsumerConfig struct {
	// LeaseTTL is how long the queue's lease lasts without renewal: the time
	// from a crash to a standby's takeover. Every call's reply must come
	// well within it: a Claim whose entries take longer than LeaseTTL to
	// arrive finds the lease lapsed (ErrLeaseLost), so on a slow link size
	// it, or Claim's max, to the claims. If zero, 5s is used; at least
	// 10ms, at most 1h.
	LeaseTTL time.Duration
	// MaxAttempts is how many deliveries a task gets before it moves to
	// the dead-letter store. A claim that ends in a crash counts once it
	// was recorded as started: Claim records every delivery but a first
	// one. If zero, 5 is used; at most 1000.
	MaxAttempts int
	// Owner names this process in the lease (shown by Stats).
	// If empty, "host:pid" is used.
	Owner string
}

// Consumer owns the lease of one analyser's queue and claims, acknowledges
// and fails its tasks one call at a time: the low-level API for callers who
// drive consumption themselves (AnalysePool is built on the same store).
// Its calls but Wait are checked against the lease inside Redis; Renew and
// those that change the queue extend it. A Consumer that stays idle for
// longer than LeaseTTL loses the lease: its calls then return ErrLeaseLost
// (Release does nothing). A Consumer is not safe for concurrent use.
//
// Claim (or RemoveTask, which is Claim of one task) hands out tasks in the
// order the queue holds them; finish each with Ack, Fail or Requeue. Tasks
// of one OrderID must be finished in the order they were handed out for
// the per-OrderID order to hold, as AnalysePool does; those handed back
// unstarted go back in one Requeue (see Requeue).
type Consumer struct {
	st     *store
	open   map[string]slot     // claim place of each task RemoveTask and Claim returned, until finished
	marked map[string]bool     // those of them whose entries recovery marked (entryRecovered)
	life   map[string]delivery // with Config.Retention, their deliveries, for their status records
	// tasks holds each of them as claimed: what Fail and Requeue write
	// back, whatever the caller did to the copy Claim gave it (a payload
	// decoded in place, an OrderID changed, a Task built from its ID).
	tasks map[string]*Task
	// unsure: a claim may have taken tasks this Consumer never handed
	// out, or a Requeue's outcome is unknown; the next Claim or Requeue
	// resyncs first.
	unsure bool
	// handing holds the tasks of Requeues that failed, in push order (the
	// latest Requeue's first): still tracked, maybe pending, to be handed
	// back by the next resync.
	handing []claimed
	// watch is what the Consumer knew of its queue's primary (its slot's
	// on a cluster, Sentinel's) at its last recovery or resync: a Claim
	// that finds that another primary served it since resyncs first (see
	// clustermoves.go).
	watch slotWatch
	// proof is when the latest call that took or extended the lease, and
	// that Redis let through, was sent: the lease was this Consumer's when
	// it ran, so it is surely held until proof + leaseHeld (Deadline).
	proof time.Time
}

// delivery is what the status record of a task handed out needs: when it
// was added, its current delivery, and when that started (when Claim
// handed it out, or Fail recorded the delivery before).
type delivery struct {
	added, started time.Time
	attempt        int
}

// Consume waits until it holds the lease of analyser's queue (as a hot
// standby while another process holds it), then puts every task left
// pending by an earlier owner back at the consuming end in claim order,
// counting the deliveries that were recorded as started, and returns a
// Consumer. Tasks with MaxAttempts recorded deliveries go to the
// dead-letter store, and so do records that do not decode and tasks whose
// claim-sequence record is lost (their order is unknown; their dead
// record says so).
func (q *Queue) Consume(ctx context.Context, analyser int, cfg ConsumerConfig) (*Consumer, error) {
	st, err := q.newStore(ctx, analyser, cfg.LeaseTTL, cfg.MaxAttempts, cfg.Owner)
	if err != nil {
		return nil, err
	}
	var proof time.Time
	took := func(sent time.Time, holder string, _ time.Duration) {
		if holder == "" {
			proof = sent
		}
	}
	// A wait as a standby ends with Close, as a pool's does.
	wctx, done := q.whileOpen(ctx)
	defer done()
	closed := func(err error) error {
		if q.closed.Load() && ctx.Err() == nil {
			return ErrClosed
		}
		return err
	}
	if err := st.acquire(wctx, nil, took); err != nil {
		return nil, closed(err)
	}
	watch := st.watchSlot() // before recovery: a move during it is seen too
	if _, _, err := st.recover(wctx); err != nil {
		st.release(context.WithoutCancel(ctx))
		return nil, closed(err)
	}
	if q.closed.Load() {
		// Closed as it took the lease: nothing of it may be used.
		st.release(context.WithoutCancel(ctx))
		return nil, ErrClosed
	}
	return &Consumer{st: st, open: map[string]slot{}, marked: map[string]bool{}, life: map[string]delivery{}, tasks: map[string]*Task{}, proof: proof, watch: watch}, nil
}

// Renew extends the lease by LeaseTTL. It returns ErrLeaseLost when the
// lease is no longer this Consumer's. A renewal whose reply comes after
// the lease may have run out (LeaseTTL less a fifth after it was sent: a
// stalled network) proves nothing; Renew then renews once more, and
// returns an error that is not ErrLeaseLost when that reply is late too:
// the lease may be another's by now, or still this Consumer's. Costs one
// round trip, in most cases.
func (c *Consumer) Renew(ctx context.Context) error {
	if err := c.live(); err != nil {
		return err
	}
	for try := 0; ; try++ {
		sent := time.Now()
		if err := c.st.renew(ctx); err != nil {
			return err
		}
		if err := c.proved(sent, "renew lease of"); err == nil || try == 1 {
			return err
		}
	}
}

// proved records that a call sent at sent, which took or extended the
// lease, was let through by Redis; it returns an error when the reply
// came after the lease may have run out, when it proves nothing.
func (c *Consumer) proved(sent time.Time, op string) error {
	held := leaseHeld(c.st.ttl)
	if took := time.Since(sent); took > held {
		return fmt.Errorf("queue: %s: the reply came %v after the call, past the %v the lease is surely held for: it may be another's",
			c.st.what(op), took.Round(time.Millisecond), held)
	}
	c.proof = sent
	return nil
}

// Deadline returns when the lease may run out, as far as this Consumer
// knows: LeaseTTL less a fifth (the margin for clocks and replies) after
// it sent the latest call that took the lease (Consume), took tasks
// (Claim) or renewed it (Renew) and that Redis let through. Other calls
// extend the lease too without moving Deadline, which errs early.
// Work on a claimed task that goes past it may overlap a new owner's;
// Renew moves it on.
func (c *Consumer) Deadline() time.Time { return c.proof.Add(leaseHeld(c.st.ttl)) }

// Release gives the lease up, waking a standby at once. Tasks still
// pending stay pending for the next owner, which puts them back first,
// counting a delivery recorded and not finished as a crash's: a task
// failed with Fail and not retried yet has its retry counted, as Fail
// records it ahead. Hand such tasks back with Requeue first for the
// retry not to count.
// Costs one round trip.
func (c *Consumer) Release(ctx context.Context) error {
	if err := c.live(); err != nil {
		return err
	}
	return c.st.release(ctx)
}

// live returns ErrClosed once the Queue is closed: a Consumer's calls
// that use Redis are refused then, as the Queue's are.
func (c *Consumer) live() error {
	if c.st.closed.Load() {
		return ErrClosed
	}
	return nil
}

// Token returns the fencing token of the lease this Consumer holds.
func (c *Consumer) Token() int64 {
	t, _ := parseLease(c.st.value())
	return t
}

// RemoveTask claims the next task: Claim(ctx, 1), returning ErrNoTask when
// the queue is empty. It never waits; see Wait. Costs what Claim costs:
// one round trip, in most cases.
func (c *Consumer) RemoveTask(ctx context.Context) (Task, error) {
	ts, err := c.Claim(ctx, 1)
	if err != nil {
		return Task{}, err
	}
	if len(ts) == 0 {
		return Task{}, ErrNoTask
	}
	return ts[0], nil
}

// consumerClaimBytes bounds the entries one Claim takes, in bytes.
const consumerClaimBytes = 64 << 20

// Claim claims up to max tasks in one round trip, oldest first: it moves
// them from the ready list into a claim record in one atomic step and
// returns them. It takes fewer when their entries would total more than
// 64 MiB (and one task however large). It returns an empty slice when the
// queue is empty; a max under 1 is an error (ErrBadConfig), as it would
// read as one. Malformed records met on the way are moved to the
// dead-letter store and not returned. A task delivered before (or put back
// by recovery) has its delivery recorded before Claim returns it, one
// round trip each, so that a crash while it runs counts.
//
// A claim whose reply comes after the lease may have run out (LeaseTTL
// less a fifth after it was sent), when a new owner may have put the
// claim back and claimed its tasks since, proves nothing: Claim renews
// the lease first (see Renew), one round trip more, and hands the tasks
// out once a renewal is answered in time.
//
// On an error Claim returns no task. The claim may still have happened
// (its reply was lost, or recording a redelivery or the renewal after a
// late reply failed): the
// next Claim first gives the lease a new fencing token, so that a claim
// still on its way is refused, and puts every pending task it has not
// handed out back at the consuming end, in claim order; so the tasks come
// out in the queue's order whatever failed. That costs a few round trips
// more (a new token, a read of the pending records, the requeue). Should
// the new token's reply be lost, the next call that changes the queue
// (Ack, Fail, Requeue, Release) asks for it again first, as the lease may
// hold it: one round trip more.
//
// On a Redis Cluster, a Claim that finds that another primary came to
// serve the queue's hash slot since the Consumer took the lease or last
// resynced (a failover, or a slot migration) resyncs first too: a failover
// without WaitReplicas may have lost the old primary's last writes, acks
// among them, and the tasks of those acks, pending again, go back at the
// consuming end in claim order and are handed out again.
func (c *Consumer) Claim(ctx context.Context, max int) ([]Task, error) {
	if err := c.live(); err != nil {
		return nil, err
	}
	if max < 1 {
		return nil, fmt.Errorf("%w: Claim of %d tasks", ErrBadConfig, max)
	}
	if c.watch.moved() {
		c.watch = c.st.watchSlot() // before the resync: a move during it is seen by the next Claim
		c.unsure = true
	}
	if c.unsure {
		if err := c.resync(ctx); err != nil {
			return nil, err
		}
	}
	var cs []claimed
	var err error
	var sent time.Time // of the claim that took cs
	for {
		sent = time.Now()
		cs, err = c.st.claim(ctx, max, consumerClaimBytes, false, nil)
		if err != nil || len(cs) == 0 {
			break
		}
		n := len(cs)
		if cs, err = c.dropCancelled(ctx, cs); err == nil {
			cs, err = c.dropExhausted(ctx, cs)
		}
		if err != nil || len(cs) > 0 || n == 0 {
			break
		}
		// Every task claimed was cancelled or dead-lettered: claim
		// again, as an empty result means an empty queue.
	}
	if err == nil {
		sent, err = c.recordRedeliveries(ctx, cs, sent)
	}
	if err == nil && len(cs) > 0 && c.proved(sent, "claim from") != nil {
		// Tasks are handed out only while the lease is surely held: a
		// reply that came later (a stalled network, or a large claim on
		// a slow one) may be of a claim a new owner has put back and
		// claimed since. A renewal answered in time proves that the
		// lease stayed this Consumer's since the claim ran (a new owner
		// would have changed its token); without one, the next Claim
		// resyncs, and learns whose the lease is.
		err = c.Renew(ctx)
	}
	if err != nil {
		c.unsure = !errors.Is(err, ErrLeaseLost)
		return nil, err
	}
	c.track(cs)
	ts := make([]Task, len(cs))
	for i := range cs {
		ts[i] = cs[i].Task
		ts[i].Payload = bytes.Clone(ts[i].Payload) // the caller's to change
		if ts[i].Headers != nil {
			ts[i].Headers = maps.Clone(ts[i].Headers)
		}
	}
	return ts, nil
}

// resync settles what failed calls may have left behind. It gives the
// lease a new fencing token, so that a call still on its way (a claim, a
// requeue) is refused when it arrives, puts every pending task that was
// not handed out back at the consuming end in claim order, then hands
// back, ahead of them, the tasks of Requeues that failed: these were
// claimed first. Costs a few round trips.
func (c *Consumer) resync(ctx context.Context) error {
	if err := c.st.refence(ctx); err != nil {
		return err
	}
	if _, _, err := c.st.putBack(ctx, "resync", false, c.open); err != nil {
		return err
	}
	if len(c.handing) > 0 {
		if err := c.handBack(ctx, c.handing); err != nil {
			return err
		}
		c.handing = nil
	}
	c.unsure = false
	return nil
}

// track remembers the claims of tasks handed to the caller, so that Ack,
// Fail and Requeue can tell when a claim is done.
func (c *Consumer) track(ts []claimed) {
	now := time.Now()
	for i := range ts {
		t := &ts[i]
		c.open[t.ID] = slot{t.claim, t.place}
		held := t.Task // its own: a pointer into ts would keep every payload of the claim
		c.tasks[t.ID] = &held
		if t.recovered {
			c.marked[t.ID] = true
		}
		if c.st.retention > 0 {
			c.life[t.ID] = delivery{added: t.AddedAt, started: now, attempt: t.Attempt}
		}
	}
}

// untrack forgets tasks that are no longer pending and returns the claim
// places of those it tracked, and what it forgot (for retrack, should the
// call that finishes them fail).
func (c *Consumer) untrack(ids []string) (refs []ackRef, forgot []tracked) {
	for _, id := range ids {
		if sl, ok := c.open[id]; ok {
			refs = append(refs, ackRef{claim: sl.claim, place: sl.place, id: id})
			forgot = append(forgot, tracked{id, sl, c.marked[id], c.life[id], c.tasks[id]})
			delete(c.open, id)
			delete(c.tasks, id)
			delete(c.marked, id)
			delete(c.life, id)
		}
	}
	return refs, forgot
}

// tracked is a task of a claim that Claim returned.
type tracked struct {
	id     string
	at     slot
	marked bool
	life   delivery
	task   *Task
}

// retrack undoes untrack.
func (c *Consumer) retrack(forgot []tracked) {
	for _, t := range forgot {
		c.open[t.id] = t.at
		c.tasks[t.id] = t.task
		if t.marked {
			c.marked[t.id] = true
		}
		if c.st.retention > 0 {
			c.life[t.id] = t.life
		}
	}
}

// claimedOf returns the task of t's ID as this Consumer handed it out,
// with its current delivery (the one Claim handed out, or the retry after
// a Fail), and its claim place; a task it does not track (not pending, as
// far as it knows) gets none, and the scripts skip it.
func (c *Consumer) claimedOf(t Task) claimed {
	sl, ok := c.open[t.ID]
	if !ok {
		return claimed{Task: t, field: t.ID}
	}
	return claimed{Task: *c.tasks[t.ID], field: t.ID, claim: sl.claim, place: sl.place, recovered: c.marked[t.ID]}
}

// Wait blocks until the ready list is not empty or d has passed, without
// taking anything. It reports whether a task is ready. It holds a
// connection of its own while it waits. After a Claim that found the
// queue paused it waits a quarter of a second (at most d) and reports no
// task, so that a loop of Claim and Wait looks for the Resume at that
// pace rather than spin.
func (c *Consumer) Wait(ctx context.Context, d time.Duration) (bool, error) {
	if err := c.live(); err != nil {
		return false, err
	}
	return c.st.wait(ctx, d)
}
