package queue

import (
	"context"
	"fmt"
	"time"

	"github.com/gomodule/redigo/redis"
)

// TaskState is where a task is, as far as Redis knows.
type TaskState int

const (
	// StateUnknown: the task is neither pending nor dead. It is still
	// queued, or it finished (nothing per task is kept after an ack), or it
	// never existed; the caller's own records tell which.
	StateUnknown TaskState = iota
	// StatePending: an analyser claimed the task and has not finished it.
	StatePending
	// StateDead: the task is in the dead-letter store.
	StateDead
)

func (s TaskState) String() string {
	switch s {
	case StatePending:
		return "pending"
	case StateDead:
		return "dead"
	default:
		return "unknown"
	}
}

// State reports whether the task id of orderID is pending or dead. It is
// safe for concurrent use and costs one round trip (two HEXISTS, pipelined).
func (q *Queue) State(ctx context.Context, orderID uint64, id string) (TaskState, error) {
	if q.closed.Load() {
		return StateUnknown, ErrClosed
	}
	pi, qi := q.Route(orderID)
	k := newQueueKeys(q.cfg.Prefix, pi, qi)
	return onPartition(ctx, q.parts[pi], fmt.Sprintf("state of task %s", id), func(c redis.Conn) (TaskState, error) {
		c.Send("HEXISTS", k.pending, id)
		c.Send("HEXISTS", k.dead, id)
		if err := c.Flush(); err != nil {
			return StateUnknown, err
		}
		var r [2]bool
		for i := range r {
			v, err := redis.Bool(redis.ReceiveContext(c, ctx))
			if err != nil {
				return StateUnknown, err
			}
			r[i] = v
		}
		switch {
		case r[0]:
			return StatePending, nil
		case r[1]:
			return StateDead, nil
		}
		return StateUnknown, nil
	})
}

// addOnceScript enqueues a task unless the same idempotency key was used
// within the window.
//
//	KEYS[1] = ready list, KEYS[2] = dedup key
//	ARGV[1] = new task ID, ARGV[2] = encoded task, ARGV[3] = window ms
//
// Returns {1, ID} when it enqueued, {0, earlier ID} when the key was used.
// The LPUSH goes first: a ready list of the wrong type, or a full Redis,
// refuses it before anything is written, and a retry is not taken for a
// duplicate of a task that was never queued.
var addOnceScript = newScript("add-once", 2, `
local old = redis.call('GET', KEYS[2])
if old then return {0, old} end
redis.call('LPUSH', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
return {1, ARGV[1]}
`)

// AddTaskOnce is AddTask with an idempotency key: a second call with the
// same orderID and key within window enqueues nothing and returns the first
// call's task ID with added false. The key lives in Redis (one string with
// a PX expiry, beside the queue's keys) until the window ends. It is safe
// for concurrent use and costs one round trip. Options are AddTask's; a
// duplicate's are checked too, and ignored.
func (q *Queue) AddTaskOnce(ctx context.Context, orderID uint64, key string, window time.Duration, payload []byte, opts ...AddOption) (id string, added bool, err error) {
	var o addOptions
	if len(opts) > 0 {
		o = newAddOptions(opts)
	}
	hsize, err := q.admit(payload, o.headers)
	if err != nil {
		return "", false, err
	}
	if key == "" || window <= 0 {
		return "", false, fmt.Errorf("%w: AddTaskOnce needs a key and a positive window", ErrBadConfig)
	}
	pi, qi, p, err := q.routeChecked(ctx, orderID)
	if err != nil {
		return "", false, err
	}
	k := newQueueKeys(q.cfg.Prefix, pi, qi)
	id, entry := q.newEntry(orderID, o.headers, hsize, payload)
	what := fmt.Sprintf("add task once to partition %d queue %d", pi, qi)
	r, err := onPartition(ctx, p, what, func(c redis.Conn) ([]any, error) {
		return redis.Values(addOnceScript.DoContext(ctx, c, k.ready, k.dedup(orderID, key), id, entry, max(window.Milliseconds(), 1)))
	})
	if err != nil {
		return "", false, err
	}
	if len(r) != 2 {
		return "", false, fmt.Errorf("queue: %s: unexpected reply %v", what, r)
	}
	n, _ := redis.Int(r[0], nil)
	id, err = redis.String(r[1], nil)
	return id, n == 1, err
}

// Ping checks that every partition answers, for health checks: on a Redis
// Cluster, every primary that serves one of its queues. It is safe for
// concurrent use and costs one round trip per partition (per primary on a
// cluster).
func (q *Queue) Ping(ctx context.Context) error {
	if q.closed.Load() {
		return ErrClosed
	}
	for _, p := range q.parts {
		var err error
		if p.router != nil {
			err = q.pingQueues(ctx, p)
		} else {
			err = ping(ctx, p.pool)
		}
		if err != nil {
			return redisErr(fmt.Sprintf("ping partition %d", p.index), err)
		}
	}
	return nil
}

// pingQueues checks that the primaries serving the queues of partition p
// answer: on a Redis Cluster a PING reaches one node, so it reads one key
// of every queue instead (one pipeline, split over the primaries).
func (q *Queue) pingQueues(ctx context.Context, p *partition) error {
	conn, err := p.pool.GetContext(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	for qi := range q.cfg.Queues {
		if err := conn.Send("EXISTS", newQueueKeys(q.cfg.Prefix, p.index, qi).lease); err != nil {
			return err
		}
	}
	if err := conn.Flush(); err != nil {
		return err
	}
	var first error
	for range q.cfg.Queues {
		if _, err := receiveContext(conn, ctx); err != nil && first == nil {
			first = err
		}
	}
	return first
}
