package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/qugo/queue"
)

// issuedBucket is the span of time whose issued IDs share one hash.
const issuedBucket = time.Hour

// issued records which task IDs this service issued, and for which
// OrderID, so that GET can tell a queued task from an unknown ID or a
// wrong order_id: while a task waits, Redis holds it only as an entry of
// its ready list, which cannot be looked up by ID.
//
// The records of one hour share a hash on the task's partition,
// "<prefix>:ingest:issued:<unix hour start>" (task ID -> OrderID), which
// expires ttl after the hour ends. It is safe for concurrent use.
type issued struct {
	pools  []*redis.Pool // by partition
	route  func(orderID uint64) (partition, queue int)
	prefix string
	ttl    time.Duration
	now    func() time.Time
}

func (r *issued) key(bucket time.Time) string {
	return fmt.Sprintf("%s:ingest:issued:%d", r.prefix, bucket.Unix())
}

// Record notes the IDs of tasks: one round trip (HSET, PEXPIREAT) per
// partition they went to.
func (r *issued) Record(ctx context.Context, tasks []queue.Task, ids []string) error {
	bucket := r.now().Truncate(issuedBucket)
	key, expireAt := r.key(bucket), bucket.Add(issuedBucket+r.ttl).UnixMilli()
	byPart := make([][]any, len(r.pools))
	for i, t := range tasks {
		pi, _ := r.route(t.OrderID)
		if byPart[pi] == nil {
			byPart[pi] = []any{key}
		}
		byPart[pi] = append(byPart[pi], ids[i], strconv.FormatUint(t.OrderID, 10))
	}
	for pi, args := range byPart {
		if args == nil {
			continue
		}
		err := r.do(ctx, pi, func(c redis.Conn) error {
			c.Send("HSET", args...)
			c.Send("PEXPIREAT", key, expireAt)
			if err := c.Flush(); err != nil {
				return err
			}
			for range 2 {
				if _, err := redis.ReceiveContext(c, ctx); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("record issued ids on partition %d: %w", pi, err)
		}
	}
	return nil
}

// Lookup returns the OrderID that id was issued for, and false when this
// service did not issue it to orderID's partition within the ttl. It costs
// one round trip: one HGET per hour of the ttl, pipelined.
func (r *issued) Lookup(ctx context.Context, orderID uint64, id string) (uint64, bool, error) {
	pi, _ := r.route(orderID)
	now := r.now()
	oldest := now.Add(-r.ttl - issuedBucket).Truncate(issuedBucket)
	var got uint64
	var found bool
	err := r.do(ctx, pi, func(c redis.Conn) error {
		n := 0
		for b := now.Truncate(issuedBucket); !b.Before(oldest); b = b.Add(-issuedBucket) {
			c.Send("HGET", r.key(b), id)
			n++
		}
		if err := c.Flush(); err != nil {
			return err
		}
		for range n {
			v, err := redis.String(redis.ReceiveContext(c, ctx))
			if err == redis.ErrNil {
				continue
			}
			if err != nil {
				return err
			}
			if !found {
				if got, err = strconv.ParseUint(v, 10, 64); err != nil {
					return fmt.Errorf("issued record of %s: %w", id, err)
				}
				found = true
			}
		}
		return nil
	})
	if err != nil {
		return 0, false, fmt.Errorf("look up issued id %s on partition %d: %w", id, pi, err)
	}
	return got, found, nil
}

func (r *issued) do(ctx context.Context, pi int, f func(redis.Conn) error) error {
	c, err := r.pools[pi].GetContext(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	return f(c)
}
