package queue

import (
	"context"
	"fmt"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Scheduled tasks wait in two keys of their queue: the scheduled set
// (task ID by due time, in ms since the epoch) and the scheduled tasks
// hash (task ID -> encoded task). The claim script of the queue's owner
// moves those due to the producing end of the ready list, fenced, once
// and atomically (see claimScript), so a scheduled task joins its
// OrderID's sequence when it falls due: the tasks of its OrderID added
// before then run before it, those added after run after it. Due times
// are the producer's clock against the owner's: keep the clocks in sync
// (NTP), as leases already need Redis's clock for their TTL.

// scheduleScript adds scheduled tasks.
//
//	KEYS[1] = scheduled set, KEYS[2] = scheduled tasks hash
//	ARGV[1...] = due ms, task ID, encoded task, ...
//
// Returns the number added.
var scheduleScript = newScript("schedule", 2, typeCheck(keyType{1, "zset"}, hashAt(2))+`
local n = 0
for i = 1, #ARGV, 3 do
  redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
  redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
  n = n + 1
end
return n
`)

// AddTaskAt enqueues payload for orderID to run at or after at, and
// returns the new task's ID. The task joins its OrderID's sequence when
// it falls due: tasks of its OrderID added before then run before it,
// tasks added after run after it. A time not in the future adds the task
// at once, as AddTask. Until then it counts in Stats as Scheduled, and
// Cancel removes it for good. When it returns nil the task is in Redis;
// the queue's owner moves it to the ready list within a few milliseconds
// of its due time, even when idle (on a server that refuses key
// tracking, such as a proxy, an idle pool learns of a task scheduled
// during its wait within a second). It is safe for concurrent use and
// costs one round trip.
func (q *Queue) AddTaskAt(ctx context.Context, orderID uint64, at time.Time, payload []byte, opts ...AddOption) (string, error) {
	return q.AddTask(ctx, orderID, payload, append(opts[:len(opts):len(opts)], At(at))...)
}

// At schedules the task added with AddTask: it is AddTaskAt. AddTaskOnce
// refuses it.
func At(t time.Time) AddOption { return func(o *addOptions) { o.at = t } }

// schedule writes the scheduled task a.
func (q *Queue) schedule(ctx context.Context, a addition) error {
	k := newQueueKeys(q.cfg.Prefix, a.pi, a.qi)
	_, err := onPartition(ctx, a.p, fmt.Sprintf("schedule task on partition %d queue %d", a.pi, a.qi), func(c redis.Conn) (any, error) {
		return scheduleScript.DoContext(ctx, c, k.sched, k.later, a.due.UnixMilli(), a.id, a.entry)
	})
	return err
}

// AddTaskAfter is AddTaskAt(ctx, orderID, time.Now().Add(d), payload, opts...).
func (q *Queue) AddTaskAfter(ctx context.Context, orderID uint64, d time.Duration, payload []byte, opts ...AddOption) (string, error) {
	return q.AddTaskAt(ctx, orderID, time.Now().Add(d), payload, opts...)
}

// ScheduledTask is a task waiting for its due time.
type ScheduledTask struct {
	Task
	Due time.Time
}

// Scheduled returns up to limit scheduled tasks of analyser's queue,
// earliest due first, skipping the first offset. It is safe for
// concurrent use and costs one round trip.
func (q *Queue) Scheduled(ctx context.Context, analyser, offset, limit int) ([]ScheduledTask, error) {
	p, k, err := q.analyserKeys(analyser)
	if err != nil {
		return nil, err
	}
	if offset < 0 || limit <= 0 {
		return nil, nil
	}
	return onPartition(ctx, p, fmt.Sprintf("list scheduled tasks of analyser %d", analyser), func(c redis.Conn) ([]ScheduledTask, error) {
		r, err := redis.Values(doContext(c, ctx, "ZRANGE", k.sched, offset, offset+limit-1, "WITHSCORES"))
		if err != nil || len(r) == 0 {
			return nil, err
		}
		args := []any{k.later}
		for i := 0; i+1 < len(r); i += 2 {
			args = append(args, r[i])
		}
		entries, err := redis.ByteSlices(doContext(c, ctx, "HMGET", args...))
		if err != nil {
			return nil, err
		}
		var out []ScheduledTask
		for i, e := range entries {
			if e == nil {
				continue // moved to the ready list meanwhile
			}
			t, _, err := decodeEntry(e)
			if err != nil {
				t = Task{}
				t.ID, _ = redis.String(r[2*i], nil)
			}
			ms, _ := redis.Int64(r[2*i+1], nil)
			out = append(out, ScheduledTask{Task: t, Due: time.UnixMilli(ms)})
		}
		return out, nil
	})
}
