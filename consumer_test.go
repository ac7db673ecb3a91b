package queue

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConsumerRemoveTaskClaimsIntoPending(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 3))
	c, err := q.Consume(ctx, 0, ConsumerConfig{Owner: "solo"})
	require.NoError(t, err)

	task, err := c.RemoveTask(ctx)
	require.NoError(t, err)
	assert.Equal(t, ids[0], task.ID)
	assert.Equal(t, pl(0, 0), string(task.Payload))
	assert.Equal(t, 1, task.Attempt)
	assert.False(t, task.AddedAt.IsZero())

	// Before the ack the task is in the pending record, not in the list.
	assert.EqualValues(t, 1, pendingHas(t, s, k, task.ID))
	assert.EqualValues(t, 2, s.do(t, "LLEN", k.ready))
	pend, err := q.Pending(ctx, 0)
	require.NoError(t, err)
	require.Len(t, pend, 1)
	assert.Equal(t, task.ID, pend[0].ID)
	assert.Equal(t, 1, pend[0].Attempt)

	n, err := c.Ack(ctx, task.ID)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.EqualValues(t, 0, pendingHas(t, s, k, task.ID))
	n, err = c.Ack(ctx, task.ID)
	require.NoError(t, err)
	assert.Zero(t, n, "a second ack of the same task counts nothing")

	var rest []string
	for {
		task, err := c.RemoveTask(ctx)
		if errors.Is(err, ErrNoTask) {
			break
		}
		require.NoError(t, err)
		rest = append(rest, task.ID)
	}
	assert.Equal(t, ids[1:], rest)
	n, err = c.Ack(ctx, rest...)
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	_, err = c.RemoveTask(ctx)
	assert.ErrorIs(t, err, ErrNoTask)

	st := stats0(t, q)
	assert.EqualValues(t, 3, st.Processed)
	assert.Zero(t, st.Pending)
	assert.Zero(t, st.Ready)
	assert.Equal(t, "solo", st.Owner)
	assert.Equal(t, c.Token(), st.Token)
	assert.EqualValues(t, 0, s.do(t, "EXISTS", k.ready, k.pending, k.claims, k.dead), "nothing per task is left")
}

// failThenLeave has a Consumer with MaxAttempts 2 fail the queue's first
// task with "boom", hand it back with Requeue when requeue says so, and
// release the lease; it returns the next owner's Consumer.
func failThenLeave(t *testing.T, q *Queue, requeue bool) *Consumer {
	t.Helper()
	ctx := context.Background()
	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 2})
	require.NoError(t, err)
	task, err := c.RemoveTask(ctx)
	require.NoError(t, err)
	dead, err := c.Fail(ctx, task, errors.New("boom"))
	require.NoError(t, err)
	require.False(t, dead)
	if requeue {
		require.NoError(t, c.Requeue(ctx, task))
	}
	require.NoError(t, c.Release(ctx)) // without it, its retry recorded and never finished
	c2, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 2})
	require.NoError(t, err)
	return c2
}

// A task whose deliveries ran out with its last retry left unfinished (a
// Fail, then the owner gone: Release here, a crash alike) is dead-lettered
// by the next owner with the error it last failed with, not only the
// count.
func TestDeadByCrashesKeepsTheLastFailure(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 2))
	c2 := failThenLeave(t, q, false)
	ds, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, ds, 1)
	assert.Equal(t, ids[0], ds[0].ID)
	assert.Equal(t, 2, ds[0].Attempts)
	assert.Equal(t, "delivered 2 times without finishing (the owner crashed, lost its lease or gave it up); its last failure: boom", ds[0].LastError)
	next, err := c2.RemoveTask(ctx)
	require.NoError(t, err)
	assert.Equal(t, ids[1], next.ID, "its OrderID goes on")
	require.NoError(t, c2.Release(ctx))
}

// A task failed with Fail and handed back with Requeue before Release
// is not charged for the retry it did not have.
func TestFailThenRequeueIsNotChargedTheRetry(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 1))
	c2 := failThenLeave(t, q, true)
	again, err := c2.RemoveTask(ctx)
	require.NoError(t, err)
	assert.Equal(t, ids[0], again.ID)
	assert.Equal(t, 2, again.Attempt, "its failed delivery counted, the retry not")
	n, err := c2.Ack(ctx, again.ID)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Zero(t, stats0(t, q).Dead)
	require.NoError(t, c2.Release(ctx))
}

func TestConsumerFailRecordsThenDeadLetters(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 2))
	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 3})
	require.NoError(t, err)

	task, err := c.RemoveTask(ctx)
	require.NoError(t, err)
	require.Equal(t, ids[0], task.ID)
	for attempt := 1; attempt <= 2; attempt++ {
		require.Equal(t, attempt, task.Attempt)
		dead, err := c.Fail(ctx, task, fmt.Errorf("boom %d", attempt))
		require.NoError(t, err)
		assert.False(t, dead)
		// The failed delivery is recorded in Redis: a crash now would
		// count it.
		pend, err := q.Pending(ctx, 0)
		require.NoError(t, err)
		require.Len(t, pend, 1)
		assert.Equal(t, attempt+1, pend[0].Attempt)
		task.Attempt++ // retried in place
	}
	dead, err := c.Fail(ctx, task, errors.New("boom 3"))
	require.NoError(t, err)
	assert.True(t, dead)
	assert.EqualValues(t, 0, s.do(t, "EXISTS", k.pending, k.claims), "nothing of the claim is left")

	ds, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, ds, 1)
	assert.Equal(t, ids[0], ds[0].ID)
	assert.Equal(t, 3, ds[0].Attempts)
	assert.Equal(t, "boom 3", ds[0].LastError)
	assert.Equal(t, pl(0, 0), string(ds[0].Payload))
	assert.Nil(t, ds[0].Raw)
	st := stats0(t, q)
	assert.EqualValues(t, 1, st.Failed)
	assert.EqualValues(t, 1, st.Dead)
	assert.Zero(t, st.Processed)

	// The OrderID goes on with its next task.
	next, err := c.RemoveTask(ctx)
	require.NoError(t, err)
	assert.Equal(t, ids[1], next.ID)
	assert.Equal(t, 1, next.Attempt)
}

func TestConsumerRequeueKeepsOrderUncounted(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 5))
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)

	for _, max := range []int{0, -5} {
		none, err := c.Claim(ctx, max)
		assert.ErrorIs(t, err, ErrBadConfig, "an empty result would read as an empty queue")
		assert.Empty(t, none)
	}
	ts, err := c.Claim(ctx, 3)
	require.NoError(t, err)
	require.Equal(t, ids[:3], taskIDs(ts))
	assert.Equal(t, []int{1, 1, 1}, taskAttempts(ts))

	_, err = c.Ack(ctx, ts[0].ID)
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"0": "#0:" + ids[0] + ids[1] + ids[2]}, snapshot(t, s, k).Order,
		"the claim's order record stays while its tasks are pending")
	require.NoError(t, c.Requeue(ctx, ts[1], ts[2]))
	assert.EqualValues(t, 0, s.do(t, "EXISTS", k.pending, k.claims), "nothing of the claim is left")
	ready := readyTasks(t, s, k)
	assert.Equal(t, ids[1:], taskIDs(ready), "requeued at the consuming end, in order")
	assert.Equal(t, []int{1, 1, 1, 1}, taskAttempts(ready), "the delivery is not counted")

	again, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	assert.Equal(t, ids[1:], taskIDs(again))
	assert.Equal(t, []int{1, 1, 1, 1}, taskAttempts(again))
	assert.Zero(t, stats0(t, q).Redelivered)
}

func TestConsumerWaitWakesOnAddTask(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)

	ok, err := c.Wait(ctx, 20*time.Millisecond)
	require.NoError(t, err)
	assert.False(t, ok, "empty queue: the wait times out")

	type result struct {
		ok  bool
		err error
	}
	done := make(chan result, 1)
	go func() {
		ok, err := c.Wait(ctx, 8*time.Second)
		done <- result{ok, err}
	}()
	id, err := q.AddTask(ctx, 7, []byte("x"))
	require.NoError(t, err)
	var r result
	require.Eventually(t, func() bool {
		select {
		case r = <-done:
			return true
		default:
			return false
		}
	}, 5*time.Second, time.Millisecond)
	require.NoError(t, r.err)
	assert.True(t, r.ok)
	assert.Equal(t, []string{id}, taskIDs(readyTasks(t, s, k)), "Wait takes nothing")
	task, err := c.RemoveTask(ctx)
	require.NoError(t, err)
	assert.Equal(t, id, task.ID)

	// A wait ends with its ctx.
	cctx, cancel := context.WithCancel(ctx)
	go func() {
		ok, err := c.Wait(cctx, 8*time.Second)
		done <- result{ok, err}
	}()
	cancel()
	select {
	case r = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not end with its ctx")
	}
	assert.False(t, r.ok)
	assert.ErrorIs(t, r.err, context.Canceled)
}

func TestConsumerStaleOwnerChangesNothing(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 4))
	a, err := q.Consume(ctx, 0, ConsumerConfig{Owner: "a", LeaseTTL: time.Minute, MaxAttempts: 2})
	require.NoError(t, err)
	held, err := a.Claim(ctx, 2)
	require.NoError(t, err)
	require.Len(t, held, 2)

	refused := func(what string, err error) {
		t.Helper()
		assert.ErrorIs(t, err, ErrLeaseLost, what)
	}
	staleCalls := func() {
		t.Helper()
		n, err := a.Ack(ctx, held[0].ID)
		refused("ack", err)
		assert.Zero(t, n)
		got, err := a.Claim(ctx, 5)
		refused("claim", err)
		assert.Empty(t, got)
		_, err = a.RemoveTask(ctx)
		refused("remove", err)
		_, err = a.Fail(ctx, held[0], errors.New("late"))
		refused("fail", err)
		last := held[1]
		last.Attempt = 2 // its last attempt: Fail would dead-letter it
		_, err = a.Fail(ctx, last, errors.New("late"))
		refused("fail (dead)", err)
		refused("requeue", a.Requeue(ctx, held...))
		refused("renew", a.Renew(ctx))
		assert.NoError(t, a.Release(ctx), "releasing a lost lease is a no-op")
	}

	// The lease expires and no one has taken it yet.
	lapse(t, s, k.lease)
	before := snapshot(t, s, k)
	staleCalls()
	assert.Equal(t, before, snapshot(t, s, k))

	// B takes over (with a shorter TTL than A's, so a renewal by A would
	// show as a longer one).
	b, err := q.Consume(ctx, 0, ConsumerConfig{Owner: "b", LeaseTTL: 20 * time.Second, MaxAttempts: 2})
	require.NoError(t, err)
	assert.Greater(t, b.Token(), a.Token())
	before = snapshot(t, s, k)
	pttl, err := redis.Int64(s.do(t, "PTTL", k.lease), nil)
	require.NoError(t, err)
	staleCalls()
	assert.Equal(t, before, snapshot(t, s, k))
	after, err := redis.Int64(s.do(t, "PTTL", k.lease), nil)
	require.NoError(t, err)
	assert.LessOrEqual(t, after, pttl, "a stale call must not extend the lease")

	// B is not disturbed: it gets A's tasks back first, then the rest.
	// Nothing recorded that A's first deliveries started, so they are not
	// counted (but marked, so that B's claim records its delivery).
	got, err := b.Claim(ctx, 10)
	require.NoError(t, err)
	assert.Equal(t, ids, taskIDs(got))
	assert.Equal(t, []int{1, 1, 1, 1}, taskAttempts(got))
	n, err := b.Ack(ctx, taskIDs(got)...)
	require.NoError(t, err)
	assert.Equal(t, 4, n)
	st := stats0(t, q)
	assert.EqualValues(t, 4, st.Processed)
	assert.EqualValues(t, 2, st.Redelivered)
	assert.Equal(t, "b", st.Owner)
}

// consumeAsync runs Consume in a goroutine; the Consumer arrives on the
// returned channel.
func consumeAsync(ctx context.Context, q *Queue, cfg ConsumerConfig) <-chan *Consumer {
	ch := make(chan *Consumer, 1)
	go func() {
		c, err := q.Consume(ctx, 0, cfg)
		if err != nil {
			c = nil
		}
		ch <- c
	}()
	return ch
}

func receive[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(15 * time.Second):
		t.Fatal("nothing received in 15s")
		panic("unreachable")
	}
}

// bounded returns a context that ends after a minute, so that a pool left
// waiting fails its test instead of hanging the run.
func bounded(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestConsumerStandbyTakesOver(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	a, err := q.Consume(ctx, 0, ConsumerConfig{Owner: "a", LeaseTTL: time.Minute})
	require.NoError(t, err)

	// B waits while A holds the lease and works.
	bc := consumeAsync(ctx, q, ConsumerConfig{Owner: "b", LeaseTTL: time.Minute})
	addAll(t, q, orderTasks(1, 1))
	task, err := a.RemoveTask(ctx)
	require.NoError(t, err)
	_, err = a.Ack(ctx, task.ID)
	require.NoError(t, err)
	assert.Never(t, func() bool { return len(bc) > 0 }, 100*time.Millisecond, 10*time.Millisecond)
	assert.Equal(t, "a", stats0(t, q).Owner)

	// A release wakes B at once: well before A's one-minute lease (or
	// the standby's own poll) would have ended.
	require.NoError(t, a.Release(ctx))
	b := receive(t, bc)
	require.NotNil(t, b)
	assert.Greater(t, b.Token(), a.Token())
	assert.Equal(t, "b", stats0(t, q).Owner)

	// C waits while B holds the lease, and takes over when it lapses.
	ids := addAll(t, q, orderTasks(1, 2))
	held, err := b.RemoveTask(ctx)
	require.NoError(t, err)
	cc := consumeAsync(ctx, q, ConsumerConfig{Owner: "c", LeaseTTL: time.Second})
	assert.Never(t, func() bool { return len(cc) > 0 }, 100*time.Millisecond, 10*time.Millisecond)
	lapse(t, s, k.lease)
	c := receive(t, cc)
	require.NotNil(t, c)
	assert.Greater(t, c.Token(), b.Token())
	_, err = b.Ack(ctx, held.ID)
	assert.ErrorIs(t, err, ErrLeaseLost)
	got, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	assert.Equal(t, ids, taskIDs(got), "B's claimed task comes back first")
	assert.Equal(t, []int{1, 1}, taskAttempts(got), "B's first delivery of it was never recorded as started")

	// A Consume that gives up while waiting holds nothing.
	cctx, cancel := context.WithCancel(ctx)
	dc := consumeAsync(cctx, q, ConsumerConfig{Owner: "d"})
	cancel()
	assert.Nil(t, receive(t, dc))
	assert.Equal(t, "c", stats0(t, q).Owner)
}

func TestConsumerRacingTakeoversRequeueOnce(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(10, 5))
	a, err := q.Consume(ctx, 0, ConsumerConfig{LeaseTTL: time.Minute})
	require.NoError(t, err)
	held, err := a.Claim(ctx, 30)
	require.NoError(t, err)
	require.Len(t, held, 30)
	lapse(t, s, k.lease)

	const takers = 6
	tokens := make([]int64, takers)
	errs := make([]error, takers)
	var wg sync.WaitGroup
	for i := range takers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := q.Consume(ctx, 0, ConsumerConfig{LeaseTTL: time.Second, Owner: fmt.Sprint("taker", i)})
			if err != nil {
				errs[i] = err
				return
			}
			tokens[i] = c.Token()
			errs[i] = c.Release(ctx)
		}()
	}
	wg.Wait()
	seen := map[int64]bool{}
	for i := range takers {
		require.NoError(t, errs[i])
		assert.False(t, seen[tokens[i]], "two takers got token %d", tokens[i])
		seen[tokens[i]] = true
	}

	ready := readyTasks(t, s, k)
	assert.Equal(t, ids, taskIDs(ready), "each task exactly once, the recovered ones first in claim order")
	want := make([]int, len(ids))
	for i := range want {
		want[i] = 1 // nothing recorded that a first delivery started: none is counted
	}
	assert.Equal(t, want, taskAttempts(ready))
	raw, err := redis.ByteSlices(s.do(t, "LRANGE", k.ready, 0, -1), nil)
	require.NoError(t, err)
	marked := 0
	for _, e := range raw {
		if e[0]&entryRecovered != 0 {
			marked++
		}
	}
	assert.Equal(t, 30, marked, "the recovered tasks are marked once each, so that their next delivery is recorded")
	st := stats0(t, q)
	assert.EqualValues(t, 30, st.Redelivered)
	assert.Zero(t, st.Pending)
}

// A task recovery marked keeps its mark when the Consumer hands it back
// unstarted: its next delivery is still recorded before it starts, so a
// crash during it counts.
func TestConsumerRequeueKeepsRecoveredMark(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 1))
	a, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	_, err = a.Claim(ctx, 1)
	require.NoError(t, err)
	lapse(t, s, k.lease) // its owner died: the task comes back marked
	b, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	got, err := b.Claim(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, ids, taskIDs(got))
	require.NoError(t, b.Requeue(ctx, got...))
	raw, err := redis.Bytes(s.do(t, "LINDEX", k.ready, -1), nil)
	require.NoError(t, err)
	assert.Equal(t, byte(entryTask|entryRecovered), raw[0], "still marked")
}

// A Fail of a task the Consumer no longer holds (handed back) moves
// nothing to the dead-letter store and says so, even at its last attempt:
// it said dead while the task was back in the ready list.
func TestConsumerFailOfATaskNotHeldIsNotDead(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	addAll(t, q, orderTasks(1, 1))
	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 1})
	require.NoError(t, err)
	defer c.Release(ctx)
	got, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.NoError(t, c.Requeue(ctx, got[0]))
	dead, err := c.Fail(ctx, got[0], errors.New("late"))
	require.NoError(t, err)
	assert.False(t, dead, "nothing moved")
	assert.Zero(t, s.do(t, "HLEN", k.dead))
	assert.Equal(t, int64(1), s.do(t, "LLEN", k.ready))
}

// A Consumer that lost its lease to another is told so by Ack, as by Fail
// and Requeue, also for a task it never handed out (the new owner's):
// nothing changes, and the new owner acknowledges it.
func TestConsumerStaleAckOfAnotherOwnersTask(t *testing.T) {
	t.Parallel()
	q, s, _ := testQueue1(t)
	ctx := bounded(t)
	id, err := q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	stale, err := q.Consume(ctx, 0, ConsumerConfig{LeaseTTL: 50 * time.Millisecond, Owner: "stale"})
	require.NoError(t, err)
	if s.mini != nil {
		s.mini.FastForward(200 * time.Millisecond)
	} else {
		time.Sleep(200 * time.Millisecond)
	}
	owner, err := q.Consume(ctx, 0, ConsumerConfig{Owner: "owner"})
	require.NoError(t, err)
	defer owner.Release(ctx)
	task, err := owner.RemoveTask(ctx)
	require.NoError(t, err)
	require.Equal(t, id, task.ID)

	n, err := stale.Ack(ctx, id)
	assert.ErrorIs(t, err, ErrLeaseLost)
	assert.Zero(t, n)
	_, err = stale.Fail(ctx, task, errors.New("x"))
	assert.ErrorIs(t, err, ErrLeaseLost)
	assert.ErrorIs(t, stale.Requeue(ctx, task), ErrLeaseLost)
	n, err = owner.Ack(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
}

// lateReplyRig is a Consumer a, reached through a proxy that can hold
// Redis's replies back, and a Queue qb on the same server reached
// directly: a stalled network between a and Redis.
type lateReplyRig struct {
	a      *Consumer
	p      *faultProxy
	qb     *Queue
	direct *testServer
	k      queueKeys
}

func newLateReplyRig(t *testing.T, ttl time.Duration) *lateReplyRig {
	t.Helper()
	qa, p, m := proxiedQueue(t)
	direct := &testServer{pool: testPool("redis://" + m.Addr()), mini: m}
	t.Cleanup(func() { direct.pool.Close() })
	qb, err := New([]*redis.Pool{direct.pool}, Config{Prefix: qa.cfg.Prefix})
	require.NoError(t, err)
	ctx := bounded(t)
	a, err := qa.Consume(ctx, 0, ConsumerConfig{Owner: "a", LeaseTTL: ttl})
	require.NoError(t, err)
	// The scripts loaded, so that each call held is one that runs.
	_, err = qb.AddTask(ctx, 1, []byte("warm"))
	require.NoError(t, err)
	ts, err := a.Claim(ctx, 1)
	require.NoError(t, err)
	_, err = a.Ack(ctx, ts[0].ID)
	require.NoError(t, err)
	require.NoError(t, a.Renew(ctx))
	return &lateReplyRig{a: a, p: p, qb: qb, direct: direct, k: newQueueKeys(qa.cfg.Prefix, 0, 0)}
}

// late runs call with the replies held until the lease a's call extended
// is no longer surely held, after meanwhile (which may take the queue
// over) has run once the call reached Redis (reached tells).
func (r *lateReplyRig) late(t *testing.T, ttl time.Duration, call func() error, reached func() bool, meanwhile func()) error {
	t.Helper()
	release := r.p.holdReplies()
	done := make(chan error, 1)
	go func() { done <- call() }()
	require.Eventually(t, reached, 5*time.Second, time.Millisecond)
	meanwhile()
	time.Sleep(ttl) // past the time the lease is surely held from the call
	release()
	return <-done
}

// A Consumer's call whose reply comes after the lease may have run out
// proves nothing: a stalled network held it while a standby took the
// queue over, put the claim back and claimed its task. Claim renews the
// lease before it hands anything out, and Renew renews once more: each
// reports ErrLeaseLost when another holds the lease, and goes on when
// nobody took over (a large claim on a slow link is not refused for
// ever).
func TestConsumerReplyAfterTheLeaseProvesNothing(t *testing.T) {
	t.Parallel()
	const ttl = 300 * time.Millisecond
	takeOver := func(t *testing.T, r *lateReplyRig) *Consumer {
		lapse(t, r.direct, r.k.lease)
		b, err := r.qb.Consume(bounded(t), 0, ConsumerConfig{Owner: "b", LeaseTTL: time.Minute})
		require.NoError(t, err)
		return b
	}
	t.Run("claim, taken over", func(t *testing.T) {
		t.Parallel()
		r := newLateReplyRig(t, ttl)
		ctx := bounded(t)
		id, err := r.qb.AddTask(ctx, 5, []byte("x"))
		require.NoError(t, err)
		var ts []Task
		err = r.late(t, ttl, func() (err error) { ts, err = r.a.Claim(ctx, 10); return err },
			func() bool { return r.direct.do(t, "LLEN", r.k.ready).(int64) == 0 },
			func() {
				b := takeOver(t, r)
				got, err := b.Claim(ctx, 10)
				require.NoError(t, err)
				require.Equal(t, []string{id}, taskIDs(got), "B claims the task A's claim took")
			})
		require.ErrorIs(t, err, ErrLeaseLost, "A handed out %v, a task B holds", taskIDs(ts))
		assert.Empty(t, ts)
		_, err = r.a.Claim(ctx, 10)
		assert.ErrorIs(t, err, ErrLeaseLost)
	})
	t.Run("claim, not taken over", func(t *testing.T) {
		t.Parallel()
		r := newLateReplyRig(t, ttl)
		ctx := bounded(t)
		id, err := r.qb.AddTask(ctx, 5, []byte("x"))
		require.NoError(t, err)
		var ts []Task
		err = r.late(t, ttl, func() (err error) { ts, err = r.a.Claim(ctx, 10); return err },
			func() bool { return r.direct.do(t, "LLEN", r.k.ready).(int64) == 0 }, func() {})
		require.NoError(t, err, "the lease is still A's: a renewal in time proves it")
		assert.Equal(t, []string{id}, taskIDs(ts))
		assert.WithinRange(t, r.a.Deadline(), time.Now().Add(leaseHeld(ttl)-ttl/2), time.Now().Add(leaseHeld(ttl)))
	})
	// The renew script has run once the lease's expiry moved on.
	renewed := func(r *lateReplyRig, before int64) func() bool {
		return func() bool { return r.direct.mini.TTL(r.k.lease).Milliseconds() > before }
	}
	t.Run("renew, taken over", func(t *testing.T) {
		t.Parallel()
		r := newLateReplyRig(t, ttl)
		ctx := bounded(t)
		r.direct.mini.FastForward(ttl / 2)
		before := r.direct.mini.TTL(r.k.lease).Milliseconds()
		err := r.late(t, ttl, func() error { return r.a.Renew(ctx) }, renewed(r, before), func() { takeOver(t, r) })
		assert.ErrorIs(t, err, ErrLeaseLost, "A's Renew reported a lease B holds")
	})
	t.Run("renew, not taken over", func(t *testing.T) {
		t.Parallel()
		r := newLateReplyRig(t, ttl)
		ctx := bounded(t)
		r.direct.mini.FastForward(ttl / 2)
		before := r.direct.mini.TTL(r.k.lease).Milliseconds()
		sent := time.Now()
		err := r.late(t, ttl, func() error { return r.a.Renew(ctx) }, renewed(r, before), func() {})
		require.NoError(t, err, "the second renewal, on time, proves the lease")
		assert.WithinRange(t, r.a.Deadline(), sent.Add(ttl).Add(leaseHeld(ttl)), time.Now().Add(leaseHeld(ttl)))
	})
}

// Fail and Requeue write back the task as Claim handed it out, whatever
// the caller did to its copy: a payload decoded in place, an OrderID
// changed, or a Task built from its ID alone.
func TestConsumerWritesBackTheTaskAsClaimed(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(2, 1))
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	ts, err := c.Claim(ctx, 2)
	require.NoError(t, err)
	ts[0].Payload[0] = 'X'
	ts[1].OrderID = 99
	require.NoError(t, c.Requeue(ctx, ts...))
	again, err := c.Claim(ctx, 2)
	require.NoError(t, err)
	require.Equal(t, ids, taskIDs(again))
	assert.Equal(t, pl(0, 0), string(again[0].Payload), "Requeue wrote the caller's payload")
	assert.EqualValues(t, 1, again[1].OrderID, "Requeue wrote the caller's OrderID")

	require.NoError(t, c.Requeue(ctx, Task{ID: ids[0], Attempt: 1}, Task{ID: ids[1], Attempt: 1}))
	third, err := c.Claim(ctx, 2)
	require.NoError(t, err)
	require.Equal(t, ids, taskIDs(third), "tasks handed back by ID alone come back whole")
	assert.Equal(t, pl(0, 0), string(third[0].Payload))
	assert.Equal(t, pl(1, 0), string(third[1].Payload))
	dead, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	assert.Empty(t, dead)

	copy(third[0].Payload, "XX")
	third[0].Headers = map[string]string{"forged": "1"}
	wasDead, err := c.Fail(ctx, third[0], assert.AnError)
	require.NoError(t, err)
	require.False(t, wasDead)
	lapse(t, s, k.lease) // a crash: the retry recorded is what comes back
	c2, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	redelivered, err := c2.Claim(ctx, 2)
	require.NoError(t, err)
	require.Equal(t, ids, taskIDs(redelivered))
	assert.Equal(t, pl(0, 0), string(redelivered[0].Payload), "Fail wrote the caller's payload")
	assert.Empty(t, redelivered[0].Headers)
	assert.Equal(t, 3, redelivered[0].Attempt, "the retried delivery and the crashed one count")

	// Tasks given by ID alone, with no Attempt: a Requeue counts nothing,
	// and each Fail counts one delivery, up to the dead-letter store.
	require.NoError(t, c2.Requeue(ctx, Task{ID: ids[0]}, Task{ID: ids[1]}))
	fourth, err := c2.Claim(ctx, 2)
	require.NoError(t, err)
	require.Equal(t, []string{ids[0], ids[1]}, taskIDs(fourth))
	assert.Equal(t, []int{3, 1}, taskAttempts(fourth), "Requeue counted no delivery")
	for a := 3; a < 5; a++ {
		wasDead, err = c2.Fail(ctx, Task{ID: ids[0]}, assert.AnError)
		require.NoError(t, err)
		require.False(t, wasDead, "delivery %d of 5", a)
	}
	wasDead, err = c2.Fail(ctx, Task{ID: ids[0]}, assert.AnError)
	require.NoError(t, err)
	assert.True(t, wasDead, "the fifth delivery failed: MaxAttempts 5")
	dead, err = q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, dead, 1)
	assert.Equal(t, pl(0, 0), string(dead[0].Payload))
	assert.Equal(t, 5, dead[0].Attempts)
}

// slowReader is a connection whose reads take as long as a link of bw
// bytes a second needs for them.
type slowReader struct {
	net.Conn
	bw float64
}

func (c *slowReader) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	time.Sleep(time.Duration(float64(n) / c.bw * float64(time.Second)))
	return n, err
}

// A claim whose reply takes longer than the lease is surely held, for
// its size on a slow link, hands its tasks out once a renewal proves
// the lease: it is not refused, resynced and claimed again for ever.
// (miniredis lets no lease lapse by itself: the reply stands for one
// that comes after LeaseTTL less a fifth but before LeaseTTL; one that
// comes later finds the lease gone, as ConsumerConfig.LeaseTTL says.)
func TestConsumerLargeClaimOnASlowLink(t *testing.T) {
	t.Parallel()
	m := miniredis.RunT(t)
	fast := testPool("redis://" + m.Addr())
	t.Cleanup(func() { fast.Close() })
	slow := &redis.Pool{DialContext: func(ctx context.Context) (redis.Conn, error) {
		return redis.DialContext(ctx, "tcp", m.Addr(), redis.DialReadTimeout(10*time.Second),
			redis.DialContextFunc(func(ctx context.Context, network, addr string) (net.Conn, error) {
				var d net.Dialer
				c, err := d.DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return &slowReader{Conn: c, bw: 1 << 20}, nil
			}))
	}}
	t.Cleanup(func() { slow.Close() })
	prefix := testPrefix(t)
	qb, err := New([]*redis.Pool{fast}, Config{Prefix: prefix})
	require.NoError(t, err)
	qa, err := New([]*redis.Pool{slow}, Config{Prefix: prefix})
	require.NoError(t, err)
	ctx := bounded(t)
	tasks := make([]Task, 100)
	for i := range tasks {
		tasks[i] = Task{OrderID: uint64(i), Payload: make([]byte, 8<<10)} // 800 KiB: 0.8 s at 1 MiB/s
	}
	ids, err := qb.AddTasks(ctx, tasks)
	require.NoError(t, err)
	const ttl = 500 * time.Millisecond
	a, err := qa.Consume(ctx, 0, ConsumerConfig{LeaseTTL: ttl})
	require.NoError(t, err)
	start := time.Now()
	got, err := a.Claim(ctx, 100)
	require.NoError(t, err)
	require.Greater(t, time.Since(start), leaseHeld(ttl), "the reply came in time: the test proves nothing")
	assert.Equal(t, ids, taskIDs(got))
}

// Fail given an error whose Error method panics records the failure, and
// then the dead letter, with a text that says so.
func TestConsumerFailWithAnErrorWhoseErrorMethodPanics(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 1))
	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 2})
	require.NoError(t, err)
	defer c.Release(ctx)
	task, err := c.RemoveTask(ctx)
	require.NoError(t, err)
	var typedNil *nilDerefError
	dead, err := c.Fail(ctx, task, typedNil)
	require.NoError(t, err)
	assert.False(t, dead)
	st, err := q.Status(ctx, task.OrderID, ids[0])
	require.NoError(t, err)
	assert.Equal(t, "queue: error of type *queue.nilDerefError (a nil pointer): its Error method panicked: runtime error: invalid memory address or nil pointer dereference", st.LastError)

	dead, err = c.Fail(ctx, task, boomError{})
	require.NoError(t, err)
	assert.True(t, dead)
	ds, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, ds, 1)
	assert.Equal(t, "queue: error of type queue.boomError: its Error method panicked: boom in Error", ds[0].LastError)
}
