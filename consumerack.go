package queue

import (
	"context"
	"errors"
	"time"
)

// A Consumer's settling of the tasks it handed out: acknowledged, failed
// (retried later or dead-lettered) or put back unstarted.

// Ack marks finished tasks done: their places in their claim records are
// set and the processed counter grows; with Config.Retention, the status
// of each task this Consumer handed out is kept as done, its last
// delivery started when Claim returned it or Fail recorded the one
// before. IDs no longer pending are skipped. It returns how many were
// acknowledged, and ErrLeaseLost, with nothing changed, when the lease is
// gone (also when no ID is one it handed out: it renews the lease then).
// Costs one round trip per 4000 IDs (per 1000 with Config.Retention, or
// while the queue holds retry records or cancel marks: see ackChunk).
func (c *Consumer) Ack(ctx context.Context, ids ...string) (int, error) {
	if err := c.live(); err != nil {
		return 0, err
	}
	if err := c.st.finishRefence(ctx); err != nil {
		return 0, err
	}
	refs, forgot := c.untrack(ids)
	if len(refs) == 0 && len(ids) > 0 {
		// None of ids is this Consumer's to acknowledge, so nothing
		// changes; a caller whose lease is gone is still told so.
		return 0, c.st.renew(ctx)
	}
	var recs []historyRecord
	if c.st.retention > 0 {
		now := time.Now()
		recs = make([]historyRecord, len(forgot))
		for i, f := range forgot {
			d := f.life
			recs[i] = historyRecord{state: StateDone, added: d.added, started: d.started, finished: now, attempts: d.attempt}
		}
	}
	n, err := c.st.ack(ctx, refs, recs)
	if err != nil {
		c.retrack(forgot)
	}
	return n, err
}

// Fail records a failed delivery of t (of t only its ID is read: the task
// is written back as Claim handed it out, whatever the caller did to its
// copy, and its deliveries are the Consumer's own count). When
// t has had MaxAttempts deliveries it moves to the dead-letter store with
// cause and Fail reports dead; otherwise the failure, and the retry that
// follows, are recorded in the pending record, so that a crash counts
// them, and the caller retries t in place, its next delivery one higher
// (a later Fail of t counts it, whatever t's Attempt says). A task
// that is no longer pending (acknowledged, handed back, or finished by
// another owner) is left as it is, and Fail reports false. A cause whose
// Error method panics (a typed nil) is recorded with a text that says so
// and names its type. Costs one round trip.
func (c *Consumer) Fail(ctx context.Context, t Task, cause error) (dead bool, err error) {
	if err := c.live(); err != nil {
		return false, err
	}
	if err := c.st.finishRefence(ctx); err != nil {
		return false, err
	}
	dead, err = c.st.fail(ctx, c.claimedOf(t), callerErr(cause), time.Time{}, true)
	if err != nil {
		return dead, err
	}
	if dead {
		c.untrack([]string{t.ID})
		return dead, nil
	}
	if held, ok := c.tasks[t.ID]; ok {
		held.Attempt++ // retried in place
		if d, ok := c.life[t.ID]; ok {
			d.attempt, d.started = held.Attempt, time.Now()
			c.life[t.ID] = d
		}
	}
	return false, nil
}

// Requeue hands claimed tasks back unstarted: they go to the consuming end
// so that they are the next ones claimed, in the order given (pass them in
// claim order), and the delivery is not counted. Of each task only its ID
// is read; it goes back as Claim handed it out. Each call
// puts its tasks ahead of those of an earlier Requeue not claimed again
// yet: hand back the unstarted tasks of one OrderID in one call, or the
// later-claimed ones first, for them to come back in their order. Costs
// one round trip per 1000 tasks.
//
// On an error other than ErrLeaseLost the tasks may or may not be back:
// the next Requeue or Claim first gives the lease a new fencing token, so
// that a requeue still on its way is refused, and hands them back, so
// they still come before the later tasks of their OrderIDs, counted as
// Requeue would have counted them. Retrying the Requeue is not needed,
// and does no harm.
func (c *Consumer) Requeue(ctx context.Context, tasks ...Task) error {
	if err := c.live(); err != nil {
		return err
	}
	items := make([]claimed, len(tasks))
	for i, t := range tasks {
		items[i] = c.claimedOf(t)
		items[i].Attempt-- // the delivery did not happen
	}
	var err error
	if c.unsure {
		err = c.resync(ctx) // its refence finishes any left unanswered
	} else {
		err = c.st.finishRefence(ctx)
	}
	if err == nil {
		err = c.handBack(ctx, items)
	}
	if err != nil && !errors.Is(err, ErrLeaseLost) {
		// Pushed later, claimed sooner: ahead of those of earlier
		// Requeues that failed.
		c.handing = append(items, c.handing...)
		c.unsure = true
	}
	return err
}

// handBack pushes items back at the consuming end (those no longer pending
// are skipped) and forgets them.
func (c *Consumer) handBack(ctx context.Context, items []claimed) error {
	if err := c.st.requeue(ctx, items, false); err != nil {
		return err
	}
	ids := make([]string, len(items))
	for i, t := range items {
		ids[i] = t.ID
	}
	c.untrack(ids)
	return nil
}
