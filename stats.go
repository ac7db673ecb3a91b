package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"
)

// AnalyserStats describes one analyser's queue.
type AnalyserStats struct {
	Analyser, Partition, Queue int           // which queue: see Layout.Serves
	Ready                      int64         // tasks waiting to be claimed
	Scheduled                  int64         // tasks scheduled (AddTaskAt) not in the ready list yet: not due, or due and waiting for tasks added before their due time
	Pending                    int64         // tasks claimed and not finished
	Dead                       int64         // tasks in the dead-letter store
	Processed                  int64         // tasks acknowledged, ever
	Failed                     int64         // tasks moved to the dead-letter store, ever
	Redelivered                int64         // pending tasks put back by a new owner, ever
	Cancelled                  int64         // tasks cancelled, ever (see Cancel)
	Paused                     bool          // the queue is paused (see Pause)
	Leases                     int64         // leases taken, ever: starts, takeovers and returns after a lost lease
	Owner                      string        // the lease holder's name; empty when no one holds it
	Token                      int64         // the lease holder's fencing token
	LeaseLeft                  time.Duration // time left on the lease
	// Workers is the lease holder's live worker goroutines, as its pool
	// recorded them (one round trip after each change; after a failed
	// try, again after its next lease renewal); 0 while no pool holds the
	// lease.
	Workers int
}

// statsPerQueue is the number of commands Stats sends per queue.
const statsPerQueue = 7

// Stats returns one row per analyser, in analyser order. It is safe for
// concurrent use and costs one pipelined round trip per partition, the
// partitions read side by side, after the layout check (a read of the
// layout of each partition not verified yet: see Partitions in the
// package documentation). When some partitions cannot be read, it
// returns the rows of the others all the same, those of the partitions
// that failed holding only their Analyser, Partition and Queue, and an
// error that joins a *PartitionError for each of them (errors.As finds
// the first; FailedPartitions lists them all). A layout that disagrees
// with this Queue's on any partition returns no rows and the
// *LayoutError.
func (q *Queue) Stats(ctx context.Context) ([]AnalyserStats, error) {
	if q.closed.Load() {
		return nil, ErrClosed
	}
	out := make([]AnalyserStats, q.Analysers())
	for a := range out {
		out[a].Analyser = a
		out[a].Partition, out[a].Queue, _ = q.Layout().Serves(a)
	}
	errs := make([]error, len(q.parts))
	for pi, p := range q.parts {
		// A layout that disagrees refuses every row (they would be
		// another layout's queues); a partition whose check fails
		// otherwise (its server down) fails alone, unread.
		err := q.verifyLayout(ctx, p)
		if layoutRefused(err) {
			return nil, err
		}
		errs[pi] = err
	}
	eachPartition(q.parts, func(pi int, p *partition) {
		if errs[pi] != nil {
			return
		}
		rows := make([]AnalyserStats, 0, q.cfg.Queues) // set in out once the whole partition was read
		_, err := onPartition(ctx, p, fmt.Sprintf("stats of partition %d", pi), func(c redis.Conn) (struct{}, error) {
			for qi := 0; qi < q.cfg.Queues; qi++ {
				k := newQueueKeys(q.cfg.Prefix, pi, qi)
				c.Send("LLEN", k.ready)
				c.Send("HLEN", k.pending)
				c.Send("HLEN", k.dead)
				c.Send("HMGET", k.meta, "processed", "failed", "redelivered", "leases", "workers", "cancelled", "paused", "pending", endSizeField)
				c.Send("GET", k.lease)
				c.Send("PTTL", k.lease)
				c.Send("ZCARD", k.sched)
			}
			if err := c.Flush(); err != nil {
				return struct{}{}, err
			}
			for qi := 0; qi < q.cfg.Queues; qi++ {
				k := newQueueKeys(q.cfg.Prefix, pi, qi)
				read := [statsPerQueue]string{k.ready, k.pending, k.dead, k.meta, k.lease, k.lease, k.sched}
				var r [statsPerQueue]any
				for i := range r {
					v, err := receiveContext(c, ctx)
					if re, ok := errors.AsType[redis.Error](err); ok {
						// Redis's WRONGTYPE names no key: this one is the
						// key to repair (or delete).
						err = redis.Error(string(re) + " (key " + read[i] + ")")
					}
					if err != nil {
						return struct{}{}, err
					}
					r[i] = v
				}
				a := qi*len(q.parts) + pi
				s := AnalyserStats{Analyser: a, Partition: pi, Queue: qi}
				s.Ready, _ = redis.Int64(r[0], nil)
				s.Pending, _ = redis.Int64(r[1], nil)
				s.Dead, _ = redis.Int64(r[2], nil)
				var workers string
				if m, err := redis.Values(r[3], nil); err == nil && len(m) == 9 {
					// A field that is not a count reads as 0, as the scripts
					// would start it over.
					s.Processed, _ = redis.Int64(m[0], nil)
					s.Failed, _ = redis.Int64(m[1], nil)
					s.Redelivered, _ = redis.Int64(m[2], nil)
					s.Leases, _ = redis.Int64(m[3], nil)
					workers, _ = redis.String(m[4], nil)
					s.Cancelled, _ = redis.Int64(m[5], nil)
					paused, _ := redis.String(m[6], nil)
					s.Paused = paused == "1"
					inClaims, _ := redis.Int64(m[7], nil) // tasks of claim records (claimrec.go)
					s.Pending += max(inClaims, 0)
					// The end of the ready list claimed in place (claimend.go).
					if held, _ := redis.Int64(m[8], nil); held > 0 {
						s.Ready = max(s.Ready-held, 0)
					}
				}
				if lease, err := redis.String(r[4], nil); err == nil {
					s.Token, s.Owner = parseLease(lease)
					s.Workers = recordedWorkers(workers, lease)
				}
				s.Scheduled, _ = redis.Int64(r[6], nil)
				if ms, _ := redis.Int64(r[5], nil); ms > 0 {
					s.LeaseLeft = time.Duration(ms) * time.Millisecond
				}
				rows = append(rows, s)
			}
			return struct{}{}, nil
		})
		if err != nil {
			errs[pi] = err
			return
		}
		for _, s := range rows {
			out[s.Analyser] = s
		}
	})
	for pi, err := range errs {
		if err != nil {
			errs[pi] = &PartitionError{Partition: pi, Err: err}
		}
	}
	return out, errors.Join(errs...)
}

// FailedPartitions returns the partitions of each *PartitionError err
// holds, itself or joined (as Stats and AddTasks return them), in order.
func FailedPartitions(err error) []int {
	var out []int
	var walk func(error)
	walk = func(err error) {
		if pe, ok := err.(*PartitionError); ok {
			if pe != nil {
				out = append(out, pe.Partition)
			}
			return
		}
		switch e := err.(type) {
		case interface{ Unwrap() []error }:
			for _, x := range e.Unwrap() {
				walk(x)
			}
		case interface{ Unwrap() error }:
			walk(e.Unwrap())
		}
	}
	walk(err)
	return out
}

// recordedWorkers returns the worker count of a meta hash's workers
// field, "<count>:<lease value>" (see workersScript), when it was
// recorded under lease; else 0.
func recordedWorkers(field, lease string) int {
	n, holder, ok := strings.Cut(field, ":")
	if !ok || holder != lease {
		return 0
	}
	w, err := strconv.Atoi(n)
	if err != nil || w < 0 {
		return 0
	}
	return w
}
