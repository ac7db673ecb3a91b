package queue

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
)

// ConsumerConfig holds the settings of a Consumer. The zero value works.
type ConsumerConfig struct {
	// LeaseTTL is how long the queue's lease lasts without renewal: the time
	// from a crash to a standby's takeover. If zero, 5s is used.
	LeaseTTL time.Duration
	// MaxAttempts is how many deliveries a task gets, counting those that
	// ended in a crash, before it moves to the dead-letter store.
	// If zero, 5 is used.
	MaxAttempts int
	// Owner names this process in the lease (shown by Stats).
	// If empty, "host:pid" is used.
	Owner string
}

func (c ConsumerConfig) withDefaults() (ConsumerConfig, error) {
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 5 * time.Second
	}
	if c.LeaseTTL < 10*time.Millisecond {
		return c, fmt.Errorf("%w: LeaseTTL %v is under 10ms", ErrBadConfig, c.LeaseTTL)
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 5
	}
	if c.MaxAttempts < 0 {
		return c, fmt.Errorf("%w: MaxAttempts %d is negative", ErrBadConfig, c.MaxAttempts)
	}
	if c.Owner == "" {
		host, _ := os.Hostname()
		c.Owner = host + ":" + strconv.Itoa(os.Getpid())
	}
	return c, nil
}

// Consumer owns the lease of one analyser's queue and claims, acknowledges
// and fails its tasks one call at a time: the low-level API that AnalysePool
// is built on, for callers who drive consumption themselves. Every call is
// fenced by the lease inside Redis and extends it; a Consumer that stays
// idle for longer than LeaseTTL loses it, and its calls then return
// ErrLeaseLost. A Consumer is not safe for concurrent use.
type Consumer struct {
	q          *Queue
	part       *partition
	partIndex  int
	queueIndex int
	keys       queueKeys
	cfg        ConsumerConfig
	lease      string // the lease value: "<token>:<owner>"
	ttlMS      int64
	open       map[string]*claimBatch // claim of each task RemoveTask and Claim returned, until finished
}

// claimed is a task in this process's hands, with its pending field and
// claim order.
type claimed struct {
	Task
	field string      // the pending hash field (the task ID, or "bad:<seq>")
	seq   int64       // claim order
	batch *claimBatch // its claim, nil when none is tracked (recovery)
}

// claimBatch tracks one claim until none of its tasks is pending, when its
// order record can go.
type claimBatch struct {
	order string       // the field of the claim's order record
	left  atomic.Int64 // its tasks still pending (in this process's view)
}

// finish counts n tasks of b as no longer pending, and reports whether
// that was the last of them: the caller then deletes b's order record
// (after the tasks' own records, or in the same call).
func (b *claimBatch) finish(n int) bool {
	return b != nil && n > 0 && b.left.Add(int64(-n)) == 0
}

// Consume waits until it holds the lease of analyser's queue (as a hot
// standby while another process holds it), then puts every task left
// pending by an earlier owner back at the consuming end in claim order,
// counting the delivery, and returns a Consumer. Tasks delivered
// MaxAttempts times without finishing go to the dead-letter store.
func (q *Queue) Consume(ctx context.Context, analyser int, cfg ConsumerConfig) (*Consumer, error) {
	c, err := q.newConsumer(ctx, analyser, cfg)
	if err != nil {
		return nil, err
	}
	if err := c.acquire(ctx, nil); err != nil {
		return nil, err
	}
	if _, err := c.recover(ctx); err != nil {
		c.Release(context.WithoutCancel(ctx))
		return nil, err
	}
	return c, nil
}

func (q *Queue) newConsumer(ctx context.Context, analyser int, cfg ConsumerConfig) (*Consumer, error) {
	if q.closed.Load() {
		return nil, ErrClosed
	}
	pi, qi, err := q.Layout().Serves(analyser)
	if err != nil {
		return nil, err
	}
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := q.checkLayout(ctx, q.parts[pi]); err != nil {
		return nil, err
	}
	return &Consumer{
		q: q, part: q.parts[pi], partIndex: pi, queueIndex: qi,
		keys: newQueueKeys(q.cfg.Prefix, pi, qi), cfg: cfg,
		ttlMS: cfg.LeaseTTL.Milliseconds(),
	}, nil
}

func (c *Consumer) what(op string) string {
	return fmt.Sprintf("%s partition %d queue %d", op, c.partIndex, c.queueIndex)
}

// do runs one command or script on the consumer's partition.
func (c *Consumer) do(ctx context.Context, op string, f func(redis.Conn) (any, error)) (any, error) {
	return onPartition(ctx, c.part, c.what(op), f)
}

func (c *Consumer) script(ctx context.Context, op string, s *redis.Script, keysAndArgs ...any) (any, error) {
	return c.do(ctx, op, func(conn redis.Conn) (any, error) { return s.DoContext(ctx, conn, keysAndArgs...) })
}

// tryAcquire takes the lease if it is free. It returns the time left on the
// current lease when it is not.
func (c *Consumer) tryAcquire(ctx context.Context) (ok bool, left time.Duration, err error) {
	r, err := redis.Values(c.script(ctx, "acquire lease of", acquireScript, c.keys.lease, c.keys.meta, c.cfg.Owner, c.ttlMS))
	if err != nil {
		return false, 0, err
	}
	if len(r) != 2 {
		return false, 0, fmt.Errorf("queue: %s: unexpected reply %v", c.what("acquire lease of"), r)
	}
	if n, _ := redis.Int(r[0], nil); n == 1 {
		c.lease, err = redis.String(r[1], nil)
		return err == nil, 0, err
	}
	ms, _ := redis.Int64(r[1], nil)
	if ms == -1 {
		// Every lease has an expiry: the key holds something else, and a
		// standby waiting for it to lapse would spin for ever.
		return false, 0, fmt.Errorf("queue: %s: %w: %s has no expiry; delete it to let an owner take the queue",
			c.what("acquire lease of"), ErrWrongType, c.keys.lease)
	}
	return false, time.Duration(max(ms, 1)) * time.Millisecond, nil
}

// acquire waits as a standby until it holds the lease or ctx ends. It
// waits for a released lease's wake-up signal, or for the lease to expire.
// Redis errors are returned, or, with a report func, reported and retried
// with capped backoff.
func (c *Consumer) acquire(ctx context.Context, report func(error)) error {
	var b backoff
	for {
		ok, left, err := c.tryAcquire(ctx)
		if ok {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if report == nil {
				return err
			}
			report(err)
			if err := b.wait(ctx); err != nil {
				return err
			}
			continue
		}
		b.reset()
		wait := min(left, c.cfg.LeaseTTL)
		if _, err := c.do(ctx, "wait for lease of", func(conn redis.Conn) (any, error) {
			return redis.DoContext(conn, ctx, "BLPOP", c.keys.wake, blockSeconds(wait))
		}); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !isTimeout(err) {
				if report == nil {
					return err
				}
				report(err)
				if err := b.wait(ctx); err != nil {
					return err
				}
			}
		}
	}
}

// blockSeconds renders d as the timeout of a blocking command, at least 1ms.
func blockSeconds(d time.Duration) string {
	return strconv.FormatFloat(max(d.Seconds(), 0.001), 'f', 3, 64)
}

func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

// Renew extends the lease by LeaseTTL. It returns ErrLeaseLost when the
// lease is no longer this Consumer's. Costs one round trip.
func (c *Consumer) Renew(ctx context.Context) error {
	n, err := redis.Int(c.script(ctx, "renew lease of", renewScript, c.keys.lease, c.lease, c.ttlMS))
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("queue: %s: %w", c.what("renew lease of"), ErrLeaseLost)
	}
	return nil
}

// Release gives the lease up, waking a standby at once. Tasks still
// pending stay pending for the next owner, which puts them back first.
// Costs one round trip.
func (c *Consumer) Release(ctx context.Context) error {
	_, err := c.script(ctx, "release lease of", releaseScript, c.keys.lease, c.keys.wake, c.lease)
	return err
}

// Token returns the fencing token of the lease this Consumer holds.
func (c *Consumer) Token() int64 {
	t, _ := parseLease(c.lease)
	return t
}

// parseLease splits a lease value, "<fencing token>:<owner>".
func parseLease(v string) (token int64, owner string) {
	tok, owner, _ := strings.Cut(v, ":")
	token, _ = strconv.ParseInt(tok, 10, 64)
	return token, owner
}

// RemoveTask claims the next task: it moves it from the ready list into
// the pending record in one atomic step, and returns it. Finish it with
// Ack, Fail or Requeue. It returns ErrNoTask when the queue is empty, and
// never waits; see Wait. Costs one round trip.
func (c *Consumer) RemoveTask(ctx context.Context) (Task, error) {
	ts, err := c.claim(ctx, 1, nil)
	c.track(ts)
	if err == nil {
		err = c.recordRedeliveries(ctx, ts)
	}
	if err != nil {
		return Task{}, err
	}
	if len(ts) == 0 {
		return Task{}, ErrNoTask
	}
	return ts[0].Task, nil
}

// Claim claims up to max tasks in one round trip, oldest first, as
// RemoveTask does for one. It returns an empty slice when the queue is
// empty. Malformed records met on the way are moved to the dead-letter
// store and not returned.
func (c *Consumer) Claim(ctx context.Context, max int) ([]Task, error) {
	cs, err := c.claim(ctx, max, nil)
	c.track(cs)
	if err == nil {
		err = c.recordRedeliveries(ctx, cs)
	}
	ts := make([]Task, len(cs))
	for i := range cs {
		ts[i] = cs[i].Task
	}
	return ts, err
}

// track remembers the claims of tasks handed to the caller of RemoveTask
// or Claim, so that Ack, Fail and Requeue can tell when a claim is done.
func (c *Consumer) track(ts []claimed) {
	if len(ts) == 0 {
		return
	}
	if c.open == nil {
		c.open = make(map[string]*claimBatch)
	}
	for _, t := range ts {
		c.open[t.ID] = t.batch
	}
}

// untrack forgets tasks that are no longer pending and returns the order
// records of the claims that this finishes, and what it forgot (for
// retrack, should the call that finishes them fail).
func (c *Consumer) untrack(ids []string) (orders []string, forgot []tracked) {
	for _, id := range ids {
		if b, ok := c.open[id]; ok {
			delete(c.open, id)
			forgot = append(forgot, tracked{id, b})
			if b.finish(1) {
				orders = append(orders, b.order)
			}
		}
	}
	return orders, forgot
}

// tracked is a task of a claim that RemoveTask or Claim returned.
type tracked struct {
	id    string
	batch *claimBatch
}

// retrack undoes untrack.
func (c *Consumer) retrack(forgot []tracked) {
	for _, t := range forgot {
		c.open[t.id] = t.batch
		if t.batch != nil {
			t.batch.left.Add(1)
		}
	}
}

// dropOrders deletes the order records of claims finished by a call that
// could not take them along.
func (c *Consumer) dropOrders(ctx context.Context, orders []string) error {
	_, err := c.ack(ctx, nil, orders)
	return err
}

// recordDelivery records in t's pending record that delivery t.Attempt is
// made, so that recovery after a crash counts it without counting it twice.
// Recovery counts the interrupted delivery of a task pending for the first
// time, started or not; a task delivered before is counted only with this
// record, so that tasks claimed with one that crashes its owner, and never
// started, are not dead-lettered with it. Costs one round trip.
func (c *Consumer) recordDelivery(ctx context.Context, t claimed) error {
	_, err := c.script(ctx, "record delivery on", retryScript, c.keys.pending, c.keys.lease, c.keys.meta,
		c.lease, c.ttlMS, t.field, accountedRecord(t.Task, t.Attempt))
	return err
}

// accountedRecord is the pending record of t after a recorded delivery:
// the entry with deliveries as its count, behind a '+'.
func accountedRecord(t Task, deliveries int) []byte {
	buf := make([]byte, 1, 1+entryHeader+3*binary.MaxVarintLen64+len(t.Payload))
	buf[0] = accountedMark
	return appendEntry(buf, t.ID, t.OrderID, t.AddedAt.UnixMilli(), deliveries, t.Payload)
}

// accountedMark starts a pending record whose count includes the current
// delivery; an entry starts with entryVersion.
const accountedMark = '+'

// recordRedeliveries records the delivery of the claimed tasks that were
// delivered before: to the low-level API a claim is a delivery.
func (c *Consumer) recordRedeliveries(ctx context.Context, ts []claimed) error {
	for _, t := range ts {
		if t.Attempt > 1 {
			if err := c.recordDelivery(ctx, t); err != nil {
				return err
			}
		}
	}
	return nil
}

// claim claims up to n tasks, appending them to dst[:0] (nil, or a buffer
// the caller reuses once it is done with the tasks). When every record it
// took was malformed (and so dead-lettered), it claims again: an empty
// result always means an empty queue.
func (c *Consumer) claim(ctx context.Context, n int, dst []claimed) ([]claimed, error) {
	for {
		out, buried, err := c.claimOnce(ctx, n, dst)
		if err != nil || len(out) > 0 || !buried {
			return out, err
		}
	}
}

func (c *Consumer) claimOnce(ctx context.Context, n int, dst []claimed) ([]claimed, bool, error) {
	if n <= 0 {
		return dst[:0], false, nil
	}
	n = min(n, maxClaim)
	r, err := redis.Values(c.script(ctx, "claim from", claimScript,
		c.keys.ready, c.keys.pending, c.keys.lease, c.keys.meta, c.keys.order, c.lease, c.ttlMS, n))
	if err != nil || len(r) < 2 {
		return dst[:0], false, err
	}
	first, err := redis.Int64(r[len(r)-1], nil)
	if err != nil {
		return dst[:0], false, redisErr(c.what("claim from"), err)
	}
	out := dst[:0]
	if cap(out) < len(r)-1 {
		out = make([]claimed, 0, len(r)-1)
	}
	batch := &claimBatch{order: strconv.FormatInt(first, 10)}
	batch.left.Store(int64(len(r) - 1))
	var bad []any
	// The reply's buffers are the claimer's own: payloads keep pointing
	// into them, and the IDs share one string.
	ids := make([]byte, 0, idLen*(len(r)-1))
	for i, v := range r[:len(r)-1] {
		raw, _ := v.([]byte)
		seq := first + int64(i) + 1
		t, deliveries, err := parseEntry(raw)
		if err != nil {
			bad = append(bad, pendingField(raw, seq), encodeDead(raw, 0, "claim: "+err.Error()))
			continue
		}
		ids = append(ids, raw[1:entryHeader]...)
		t.Attempt = deliveries + 1
		out = append(out, claimed{Task: t, seq: seq, batch: batch})
	}
	all := string(ids)
	for i := range out {
		out[i].ID = all[i*idLen : (i+1)*idLen]
		out[i].field = out[i].ID
	}
	if len(bad) > 0 {
		if err := c.bury(ctx, bad); err != nil {
			return out, true, err
		}
		if batch.finish(len(bad) / 2) {
			if err := c.dropOrders(ctx, []string{batch.order}); err != nil {
				return out, true, err
			}
		}
	}
	return out, len(bad) > 0, nil
}

// maxClaim bounds the tasks one claim takes.
const maxClaim = 1000

// pendingField is the pending hash field the claim script gives an entry:
// its ID, or "bad:<seq>" when it has no readable header.
func pendingField(entry []byte, seq int64) string {
	if len(entry) >= entryHeader && entry[0] == entryVersion {
		return string(entry[1:entryHeader])
	}
	return "bad:" + strconv.FormatInt(seq, 10)
}

// Wait blocks until the ready list is not empty or d has passed, without
// taking anything. It reports whether a task is ready. It holds a
// connection of its own while it waits.
func (c *Consumer) Wait(ctx context.Context, d time.Duration) (bool, error) {
	r, err := c.do(ctx, "wait on", func(conn redis.Conn) (any, error) {
		// Moving the right end onto itself changes nothing; it only blocks
		// until there is an element to move.
		return redis.DoContext(conn, ctx, "BLMOVE", c.keys.ready, c.keys.ready, "RIGHT", "RIGHT", blockSeconds(d))
	})
	if err != nil {
		if isTimeout(err) && ctx.Err() == nil {
			return false, nil
		}
		return false, err
	}
	return r != nil, nil
}

// Ack marks finished tasks done: their pending records are deleted and the
// processed counter grows. IDs no longer pending are skipped. It returns
// how many were acknowledged, and ErrLeaseLost, with nothing changed, when
// the lease is gone. Costs one round trip per 1000 IDs.
func (c *Consumer) Ack(ctx context.Context, ids ...string) (int, error) {
	orders, forgot := c.untrack(ids)
	n, err := c.ack(ctx, ids, orders)
	if err != nil {
		c.retrack(forgot)
	}
	return n, err
}

// ack deletes the pending records of ids, maxClaim to a round trip, and
// with the last of them the order records of the claims orders names.
func (c *Consumer) ack(ctx context.Context, ids []string, orders []string) (int, error) {
	done := 0
	for len(ids) > 0 || len(orders) > 0 {
		n := min(len(ids), maxClaim)
		args := make([]any, 0, 7+n+len(orders))
		args = append(args, c.keys.pending, c.keys.lease, c.keys.meta, c.keys.order, c.lease, c.ttlMS, n)
		for _, id := range ids[:n] {
			args = append(args, id)
		}
		ids = ids[n:]
		if len(ids) == 0 {
			for _, o := range orders {
				args = append(args, o)
			}
			orders = nil
		}
		k, err := redis.Int(c.script(ctx, "ack on", ackScript, args...))
		done += k
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// Fail records a failed delivery of t (as claimed, with its Attempt). When
// t has had MaxAttempts deliveries it moves to the dead-letter store with
// cause and Fail reports dead; otherwise the failure, and the retry that
// follows, are recorded in the pending record, so that a crash counts
// them, and the caller retries t in place with Attempt one higher. Costs
// one round trip.
func (c *Consumer) Fail(ctx context.Context, t Task, cause error) (dead bool, err error) {
	dead, err = c.fail(ctx, t, cause)
	if dead && err == nil {
		orders, _ := c.untrack([]string{t.ID})
		err = c.dropOrders(ctx, orders)
	}
	return dead, err
}

// fail is Fail without the claim tracking of RemoveTask and Claim.
func (c *Consumer) fail(ctx context.Context, t Task, cause error) (dead bool, err error) {
	msg := "<nil>"
	if cause != nil {
		msg = cause.Error()
	}
	if t.Attempt >= c.cfg.MaxAttempts {
		entry := encodeTask(t, t.Attempt)
		return true, c.bury(ctx, []any{t.ID, encodeDead(entry, t.Attempt, msg)})
	}
	_, err = c.script(ctx, "record failure on", retryScript, c.keys.pending, c.keys.lease, c.keys.meta, c.lease, c.ttlMS, t.ID, accountedRecord(t, t.Attempt+1))
	return false, err
}

// bury moves pending records to the dead-letter store: args are field,
// dead record pairs.
func (c *Consumer) bury(ctx context.Context, args []any) error {
	for len(args) > 0 {
		n := min(len(args), 2*scriptChunk)
		a := append([]any{c.keys.pending, c.keys.dead, c.keys.lease, c.keys.meta, c.lease, c.ttlMS}, args[:n]...)
		if _, err := c.script(ctx, "dead-letter on", deadScript, a...); err != nil {
			return err
		}
		args = args[n:]
	}
	return nil
}

// Requeue hands claimed tasks back unstarted: they go to the consuming end
// so that they are the next ones claimed, in the order given (pass them in
// claim order), and the delivery is not counted. Costs one round trip per
// 1000 tasks.
func (c *Consumer) Requeue(ctx context.Context, tasks ...Task) error {
	items := make([]claimed, len(tasks))
	ids := make([]string, len(tasks))
	for i, t := range tasks {
		t.Attempt-- // the delivery did not happen
		items[i] = claimed{Task: t, field: t.ID}
		ids[i] = t.ID
	}
	if err := c.requeue(ctx, items, false); err != nil {
		return err
	}
	orders, _ := c.untrack(ids)
	return c.dropOrders(ctx, orders)
}

// requeue pushes tasks back at the consuming end, first given first
// claimed, each with t.Attempt as its delivery count.
func (c *Consumer) requeue(ctx context.Context, tasks []claimed, redelivery bool) error {
	flag := "0"
	if redelivery {
		flag = "1"
	}
	// The last pushed is claimed first: push in reverse, in chunks that
	// keep that order across calls.
	for end := len(tasks); end > 0; {
		start := max(0, end-scriptChunk)
		args := []any{c.keys.ready, c.keys.pending, c.keys.lease, c.keys.meta, c.lease, c.ttlMS, flag}
		for i := end - 1; i >= start; i-- {
			t := tasks[i]
			args = append(args, t.field, encodeTask(t.Task, t.Attempt))
		}
		if _, err := c.script(ctx, "requeue on", requeueScript, args...); err != nil {
			return err
		}
		end = start
	}
	return nil
}
