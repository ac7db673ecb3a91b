package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/qugo/queue"
)

// Tasks bench did not add: bench drains a queue, and acknowledges what it
// drains, so it must never drain someone else's tasks. Before it adds or
// drains, it looks at the task each queue with tasks hands out next (see
// benchPeek): a bench refuses a queue that holds any, and advises
// a bench -verify only when that task is bench's; a verify refuses
// to start when it is not bench's. While a drain runs, a task that is not
// bench's (one further back, or added meanwhile) stops every pool: its
// analyse function holds it until the graceful stop ends its ctx, so it
// is handed back, never acknowledged.

// isBenchTask reports whether payload is one qugo bench adds (see
// benchMagic).
func isBenchTask(payload []byte) bool {
	if len(payload) < benchHeader || string(payload[:len(benchMagic)]) != benchMagic {
		return false
	}
	place := benchPlace(payload)
	return place >= 1 && place <= binary.BigEndian.Uint32(payload[len(benchMagic):])
}

// benchPlace returns the 1-based place of a bench task among the tasks of
// its OrderID. Call isBenchTask first.
func benchPlace(payload []byte) uint32 { return binary.BigEndian.Uint32(payload[len(benchMagic)+4:]) }

// benchDrainAdvice says how to drain the bench tasks of the queues of
// stats, of which t is one queue's next: with -verify, the full check,
// when they look like what a complete fill left (t is the first task of
// its OrderID, and no task is pending: nothing drained any); else, since
// a drain handled some (a bench or verify stopped part way, or
// analysers), with -verify -partial. A fill stopped part way looks like a
// complete one here; it said so when it stopped, and the advice names it.
func benchDrainAdvice(t queue.Task, stats []queue.AnalyserStats) string {
	drained := benchPlace(t.Payload) > 1
	for _, s := range stats {
		drained = drained || s.Pending > 0
	}
	if drained {
		return "some were handled before (by a bench or verify stopped part way, or by analysers): " +
			"drain them with qugo bench -verify -partial"
	}
	return "drain them with qugo bench -verify (qugo bench -verify -partial if the bench or fill that added them was stopped part way)"
}

// errForeign is what the analyse function of a drain returns for a task
// that is not bench's, once the stop has ended its ctx: the pool hands
// the task back.
var errForeign = errors.New("bench: not a task qugo bench added: handed back")

// benchShutdown is the ShutdownTimeout of the drain's pools. Bench's
// analyse function returns at once, but for a task that is not bench's,
// which it holds until the stop ends its ctx: this long.
const benchShutdown = 100 * time.Millisecond

// benchPeekWait bounds a look at the next task of one queue (benchPeek).
const benchPeekWait = 5 * time.Second

// foreignNamed is how many of the tasks that are not bench's an error
// names.
const foreignNamed = 10

// nameTask names a task: its ID and OrderID.
func nameTask(t queue.Task) string { return fmt.Sprintf("%s (OrderID %d)", t.ID, t.OrderID) }

// benchPeek returns the task analyser a's queue hands out next, which it
// hands back at once, unstarted (no delivery counted), and whether there
// was one to hand out (there is none in a paused queue). It takes the
// queue's lease for that: call it only when no one holds it.
func benchPeek(ctx context.Context, q *queue.Queue, a int) (queue.Task, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, benchPeekWait)
	defer cancel()
	// The most attempts a Consumer may allow: a look must not dead-letter
	// a task that its owner, with a higher MaxAttempts, would still run.
	c, err := q.Consume(ctx, a, queue.ConsumerConfig{Owner: "qugo bench (looking at the next task)", MaxAttempts: 1000})
	if err != nil {
		return queue.Task{}, false, err
	}
	defer c.Release(context.WithoutCancel(ctx))
	ts, err := c.Claim(ctx, 1)
	if err != nil || len(ts) == 0 {
		return queue.Task{}, false, err
	}
	return ts[0], true, c.Requeue(ctx, ts[0])
}

// benchEmpty refuses to run on a queue that holds tasks or, when drain is
// set, one that another process consumes: the figures and the order check
// would be wrong, and bench would eat someone's tasks. It advises a
// verify to drain the tasks only when the next one to be claimed is
// bench's (see benchDrainAdvice).
func benchEmpty(ctx context.Context, q *queue.Queue, drain bool) error {
	stats, err := q.Stats(ctx)
	if err != nil {
		return err
	}
	for _, s := range stats {
		n := s.Ready + s.Pending
		switch {
		case n > 0 && s.Owner != "":
			return fmt.Errorf("bench: analyser %d's queue holds %s and is consumed by %s: give another -prefix",
				s.Analyser, plural(int(n), "task"), s.Owner)
		case n > 0:
			t, ok, err := benchPeek(ctx, q, s.Analyser)
			switch {
			case err != nil:
				return fmt.Errorf("bench: analyser %d's queue holds %s; looking at the next one failed: %w",
					s.Analyser, plural(int(n), "task"), err)
			case !ok:
				return fmt.Errorf("bench: analyser %d's queue holds %s that may not be bench's (no task could be claimed to look at: is the queue paused?): "+
					"give another -prefix", s.Analyser, plural(int(n), "task"))
			case !isBenchTask(t.Payload):
				are := "are"
				if n == 1 {
					are = "is"
				}
				return fmt.Errorf("bench: analyser %d's queue holds %s that %s not bench's (the next one, task %s, is not one qugo bench adds): "+
					"give another -prefix", s.Analyser, plural(int(n), "task"), are, nameTask(t))
			}
			return fmt.Errorf("bench: analyser %d's queue holds %s: %s; or give another -prefix",
				s.Analyser, plural(int(n), "task"), benchDrainAdvice(t, stats))
		case drain && s.Owner != "":
			return fmt.Errorf("bench: analyser %d's queue is consumed by %s: give another -prefix", s.Analyser, s.Owner)
		}
	}
	return nil
}

// verifyOwn refuses, before a verify drains anything, a queue whose next
// task to be claimed is not bench's; and, unless partial is set, a queue
// whose tasks some drain handled part of (the tail of a bench or verify
// stopped part way, or of analysers that ran): the full check would
// count the tasks handled before as missing, and the verify would have
// taken the tasks -partial needs. It tells the two as bench's refusal
// does (benchDrainAdvice): the next task is not its OrderID's first, or
// tasks are pending with no one holding the queue. Queues another
// process holds are not looked at: the verify's pool waits for them as
// a standby, and its analyse function stops at the first task that is
// not bench's.
func verifyOwn(ctx context.Context, q *queue.Queue, prefix string, partial bool) error {
	stats, err := q.Stats(ctx)
	if err != nil {
		return err
	}
	var drained error // the first queue a drain handled part of
	for _, s := range stats {
		n := s.Ready + s.Pending
		if n == 0 || s.Owner != "" {
			continue
		}
		t, ok, err := benchPeek(ctx, q, s.Analyser)
		if err != nil {
			return fmt.Errorf("bench: looking at the next task of analyser %d's queue: %w", s.Analyser, err)
		}
		if ok && !isBenchTask(t.Payload) {
			return fmt.Errorf("bench: analyser %d's queue holds tasks that are not bench's (the next one, task %s, is not one qugo bench adds): "+
				"nothing was drained; give another -prefix (this one is %q)", s.Analyser, nameTask(t), prefix)
		}
		var why string
		switch {
		case s.Pending > 0:
			why = fmt.Sprintf("%s pending with no one holding the queue", plural(int(s.Pending), "task"))
		case ok && benchPlace(t.Payload) > 1:
			why = fmt.Sprintf("the next one, task %s, is not its OrderID's first", nameTask(t))
		}
		if why != "" && drained == nil && !partial {
			drained = fmt.Errorf("bench: analyser %d's queue holds %s, and some were handled before (%s: by a bench or verify stopped part way, or by analysers): "+
				"a full check would count those as missing; nothing was drained: drain them with qugo bench -verify -partial",
				s.Analyser, plural(int(n), "task"), why)
		}
	}
	return drained
}

// foreignError is the error of a drain that met tasks bench did not add,
// the first of them named in named: it stopped, and left them queued.
func foreignError(count int64, named []string, prefix string) error {
	list := strings.Join(named, ", ")
	if more := int(count) - len(named); more > 0 {
		list += fmt.Sprintf(" and %d more", more)
	}
	them := "them"
	if count == 1 {
		them = "it"
	}
	return fmt.Errorf("bench: met %s that qugo bench did not add: %s; stopped, and left %s queued, unacknowledged: "+
		"the queue under prefix %q is not bench's alone: give another -prefix", plural(int(count), "task"), list, them, prefix)
}
