package queue

import (
	"context"
	"fmt"
	"time"

	"github.com/gomodule/redigo/redis"
)

// addOnceScript enqueues a task unless the same idempotency key was used
// within the window.
//
//	KEYS[1] = ready list, KEYS[2] = dedup key, KEYS[3] = meta hash
//	ARGV[1] = new task ID, ARGV[2] = encoded task, ARGV[3] = window ms
//
// Returns {1, ID} when it enqueued, {0, earlier ID} when the key was used.
// The LPUSH goes first: a ready list of the wrong type, or a full Redis,
// refuses it before anything is written, and a retry is not taken for a
// duplicate of a task that was never queued. A large entry is counted
// (large.go), its meta hash's type checked first. A duplicate writes the
// key again as it is (KEEPTTL): under Config.WaitReplicas the WAIT behind
// the call then covers the earlier call's write too, which may not be on
// the replicas yet (that call failed with ErrNotReplicated, or was
// another producer's still waiting), so a duplicate reported is one that
// survives a failover.
var addOnceScript = newScript("add-once", 3, typeCheck(hashAt(3))+luaLarge+`
local old = redis.call('GET', KEYS[2])
if old then
  redis.call('SET', KEYS[2], old, 'KEEPTTL')
  return {0, old}
end
redis.call('LPUSH', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
if #ARGV[2] > $largeEntry then addLarge(KEYS[3], KEYS[1], 1) end
return {1, ARGV[1]}
`)

// maxOnceKey bounds an AddTaskOnce key: Redis would take one of up to
// 512 MB into its key, and a query buffer of 1 GB refuses more.
const maxOnceKey = 1 << 10

// AddTaskOnce is AddTask with an idempotency key: a second call with the
// same orderID and key within window enqueues nothing and returns the first
// call's task ID with added false. The key lives in Redis (one string with
// a PX expiry, beside the queue's keys) until the window ends; key is of
// at most 1 KiB (a request ID, a hash of the request). Under
// Config.WaitReplicas a duplicate waits for the replicas as an add does:
// a call that failed with ErrNotReplicated can be made again, and the
// duplicate returns nil only once the replicas have the task. It is safe
// for concurrent use and costs one round trip. Options are AddTask's; a
// duplicate's are checked too, and ignored.
func (q *Queue) AddTaskOnce(ctx context.Context, orderID uint64, key string, window time.Duration, payload []byte, opts ...AddOption) (id string, added bool, err error) {
	if key == "" || window <= 0 {
		return "", false, fmt.Errorf("%w: AddTaskOnce needs a key and a positive window", ErrBadConfig)
	}
	if len(key) > maxOnceKey {
		return "", false, fmt.Errorf("%w: AddTaskOnce key of %d bytes, over %d", ErrBadConfig, len(key), maxOnceKey)
	}
	a, err := q.prepareAdd(ctx, orderID, payload, opts)
	if err != nil {
		return "", false, err
	}
	if !a.due.IsZero() {
		return "", false, fmt.Errorf("%w: AddTaskOnce does not schedule (At)", ErrBadConfig)
	}
	pi, qi, p, id, entry := a.pi, a.qi, a.p, a.id, a.entry
	k := newQueueKeys(q.cfg.Prefix, pi, qi)
	what := fmt.Sprintf("add task once to partition %d queue %d", pi, qi)
	r, err := onPartition(ctx, p, what, func(c redis.Conn) ([]any, error) {
		return redis.Values(runScript(ctx, addOnceScript, c, k.ready, k.dedup(orderID, key), k.meta, id, entry, max(window.Milliseconds(), 1)))
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
