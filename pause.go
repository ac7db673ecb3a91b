package queue

import (
	"context"
	"fmt"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Pausing a queue: its state is the field paused of the queue's meta hash
// ("1" while paused), which the claim script reads, so it lives in Redis,
// survives restarts and takeovers, and applies to whichever process holds
// the lease. A paused pool keeps its lease (renewals go on), lets what it
// holds run to its end, acknowledges it, and claims nothing new; it looks
// again every pauseRecheck. Tasks added meanwhile queue up as usual, and
// scheduled tasks that fall due meanwhile keep their place by their due
// time, so the order of an OrderID is the same as if the pause had not
// been. A paused queue with no task ready or due reads as empty (a pool
// with ExitOnEmpty returns).

// pauseRecheck is how often a paused pool looks whether it was resumed.
const pauseRecheck = 250 * time.Millisecond

// Queues names a set of queues for Pause and Resume: one analyser's
// queue, every queue of one partition (one Redis server), or all of
// them. Make one with QueueOf, PartitionQueues or AllQueues; the zero
// value names none, and Pause and Resume refuse it.
type Queues struct {
	scope queuesScope
	n     int // the analyser or the partition
}

type queuesScope uint8

const (
	scopeNone queuesScope = iota
	scopeAnalyser
	scopePartition
	scopeAll
)

// QueueOf names analyser a's queue.
func QueueOf(a int) Queues { return Queues{scope: scopeAnalyser, n: a} }

// PartitionQueues names every queue of partition p.
func PartitionQueues(p int) Queues { return Queues{scope: scopePartition, n: p} }

// AllQueues names every queue of every partition.
func AllQueues() Queues { return Queues{scope: scopeAll} }

// String describes the set, for logs.
func (w Queues) String() string {
	switch w.scope {
	case scopeAnalyser:
		return fmt.Sprintf("analyser %d", w.n)
	case scopePartition:
		return fmt.Sprintf("partition %d", w.n)
	case scopeAll:
		return "all queues"
	}
	return "no queues"
}

// members returns the queues of w, by partition: the analysers of each.
func (q *Queue) members(w Queues) (map[int][]int, error) {
	l := q.Layout()
	out := map[int][]int{}
	switch w.scope {
	case scopeAnalyser:
		pi, _, err := l.Serves(w.n)
		if err != nil {
			return nil, err
		}
		out[pi] = []int{w.n}
	case scopePartition, scopeAll:
		if w.scope == scopePartition && (w.n < 0 || w.n >= len(q.parts)) {
			return nil, fmt.Errorf("%w: partition %d not in [0, %d)", ErrBadConfig, w.n, len(q.parts))
		}
		for a := range l.Analysers() {
			if pi := a % len(q.parts); w.scope == scopeAll || pi == w.n {
				out[pi] = append(out[pi], a)
			}
		}
	default:
		return nil, fmt.Errorf("%w: no queues named (use QueueOf, PartitionQueues or AllQueues)", ErrBadConfig)
	}
	return out, nil
}

// Pause pauses the queues of w: their pools claim nothing new until
// Resume, while their leases, renewals and the tasks they hold go on. The
// state lives in Redis. It is safe for concurrent use and costs one
// pipelined round trip per partition.
func (q *Queue) Pause(ctx context.Context, w Queues) error { return q.setPaused(ctx, w, true) }

// Resume undoes Pause for the queues of w: their pools claim again within
// about a quarter of a second. (A Consumer's Claim on a paused queue
// returns no task.)
func (q *Queue) Resume(ctx context.Context, w Queues) error { return q.setPaused(ctx, w, false) }

func (q *Queue) setPaused(ctx context.Context, w Queues, paused bool) error {
	if q.closed.Load() {
		return ErrClosed
	}
	byPart, err := q.members(w)
	if err != nil {
		return err
	}
	op := "resume"
	if paused {
		op = "pause"
	}
	for pi, analysers := range byPart {
		p := q.parts[pi]
		if err := q.checkLayout(ctx, p); err != nil {
			return err
		}
		_, err := onPartition(ctx, p, fmt.Sprintf("%s %s", op, w), func(c redis.Conn) (struct{}, error) {
			for _, a := range analysers {
				_, qi, _ := q.Layout().Serves(a)
				k := newQueueKeys(q.cfg.Prefix, pi, qi)
				if paused {
					c.Send("HSET", k.meta, "paused", "1")
				} else {
					c.Send("HDEL", k.meta, "paused")
				}
			}
			if err := c.Flush(); err != nil {
				return struct{}{}, err
			}
			var first error
			for range analysers {
				if _, err := receiveContext(c, ctx); err != nil && first == nil {
					first = err
				}
			}
			return struct{}{}, first
		})
		if err != nil {
			return err
		}
	}
	return nil
}
