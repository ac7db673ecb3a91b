package queue

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Calls whose outcome the caller cannot know: a script that Redis ran but
// whose reply the caller never got, or got as ErrNotReplicated (made on
// the primary, too few replicas acknowledged it), or that never reached
// Redis. Each test injects one such fault at one call of one script.

// errUnreplicated is what a write's reply becomes under
// Config.WaitReplicas when no replica acknowledged it in time.
var errUnreplicated = &notReplicated{acked: 0, want: 1, timeout: time.Millisecond}

// faultPlan injects faults at the script calls it names: at the nth call
// (1-based) of a script, made says whether Redis runs it first, err is
// what the caller gets, and then, if set, runs before the caller gets it.
type faultPlan struct {
	mu     sync.Mutex
	calls  map[string]int
	faults map[string]scriptFault
}

type scriptFault struct {
	n    int
	made bool
	err  error
	then func()
}

// plannedQueue returns a one-queue Queue whose script calls go through
// plan, its server and its keys.
func plannedQueue(t *testing.T, faults map[string]scriptFault) (*Queue, *testServer, queueKeys) {
	t.Helper()
	servers := newTestServers(t, 1)
	preloadScripts(t, servers[0].pool) // one EVALSHA per script call
	plan := &faultPlan{calls: map[string]int{}, faults: faults}
	pool := hookPool(servers[0], func(script string, args []any) error {
		plan.mu.Lock()
		plan.calls[script]++
		f, ok := plan.faults[script]
		hit := ok && plan.calls[script] == f.n
		plan.mu.Unlock()
		if !hit {
			return nil
		}
		if f.made {
			servers[0].do(t, "EVALSHA", args...)
		}
		if f.then != nil {
			f.then()
		}
		return f.err
	})
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	return q, servers[0], newQueueKeys(q.cfg.Prefix, 0, 0)
}

// A Consumer whose refence (after a failed claim) was made but reported
// ErrNotReplicated still holds the lease: acknowledging the tasks it holds
// must not fail with ErrLeaseLost because the lease carries a value the
// Consumer was never told.
func TestAuditConsumerAckAfterUnansweredRefence(t *testing.T) {
	q, s, k := plannedQueue(t, map[string]scriptFault{
		"claim":   {n: 2, err: errors.New("injected: claim refused")},
		"refence": {n: 1, made: true, err: errUnreplicated},
	})
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 2))
	c, err := q.Consume(ctx, 0, ConsumerConfig{LeaseTTL: 10 * time.Second})
	require.NoError(t, err)
	first, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, ids[:1], taskIDs(first))
	_, err = c.Claim(ctx, 1)
	require.Error(t, err, "the injected claim failure")
	_, err = c.Claim(ctx, 1)
	require.ErrorIs(t, err, ErrNotReplicated, "the refence, made, reported unreplicated")

	n, err := c.Ack(ctx, first[0].ID)
	require.NoError(t, err, "the lease is still this Consumer's")
	assert.Equal(t, 1, n)
	next, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	assert.Equal(t, ids[1:], taskIDs(next))
	_, err = c.Ack(ctx, next[0].ID)
	require.NoError(t, err)
	require.NoError(t, c.Release(ctx))
	assert.EqualValues(t, 0, s.do(t, "EXISTS", k.lease, k.pending, k.claims), "nothing left behind")
}

// A Consumer released after a refence whose reply was lost gives the
// lease up: a standby takes the queue over at once, not after a TTL.
func TestAuditConsumerReleaseAfterUnansweredRefence(t *testing.T) {
	q, s, k := plannedQueue(t, map[string]scriptFault{
		"claim":   {n: 1, err: errors.New("injected: claim refused")},
		"refence": {n: 1, made: true, err: errors.New("injected: reply lost")},
	})
	ctx := context.Background()
	c, err := q.Consume(ctx, 0, ConsumerConfig{LeaseTTL: 30 * time.Second})
	require.NoError(t, err)
	_, err = c.Claim(ctx, 1)
	require.Error(t, err)
	_, err = c.Claim(ctx, 1)
	require.Error(t, err)
	require.NoError(t, c.Release(ctx))
	assert.EqualValues(t, 0, s.do(t, "EXISTS", k.lease), "the lease is given up")
}

// A pool stopped right after its resync's refence lost its reply gives
// the lease up as it stops: a standby need not wait out the TTL.
func TestAuditPoolStopsAfterUnansweredRefence(t *testing.T) {
	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	q, s, k := plannedQueue(t, map[string]scriptFault{
		"claim":   {n: 1, err: errors.New("injected: claim refused")},
		"refence": {n: 1, made: true, err: errUnreplicated, then: stop},
	})
	addAll(t, q, orderTasks(1, 2))
	require.NoError(t, q.AnalysePool(runCtx, 0, PoolConfig{Workers: 1, LeaseTTL: 30 * time.Second, OnError: func(error) {}},
		func(context.Context, Task) error { return nil }))
	assert.EqualValues(t, 0, s.do(t, "EXISTS", k.lease), "the lease is given up")
	assert.Len(t, readyTasks(t, s, k), 2, "both tasks ready, none run")
}

// A Consume whose acquisition took the lease but lost its reply gives it
// up before it returns its error: the next Consume takes the queue at
// once, not after a whole TTL.
func TestAuditConsumeAfterLostAcquireReply(t *testing.T) {
	q, _, _ := plannedQueue(t, map[string]scriptFault{
		"acquire": {n: 1, made: true, err: errUnreplicated},
	})
	ctx := context.Background()
	_, err := q.Consume(ctx, 0, ConsumerConfig{LeaseTTL: 30 * time.Second})
	require.ErrorIs(t, err, ErrNotReplicated)
	tctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := q.Consume(tctx, 0, ConsumerConfig{LeaseTTL: 30 * time.Second})
	require.NoError(t, err, "the lease the first Consume took unknowingly is free")
	require.NoError(t, c.Release(ctx))
}

// Tasks a failed Requeue tried to hand back are, whatever Redis made of
// it, the next ones the Consumer's Claim returns: before the later tasks
// of their OrderID, and with no record of their claim left behind.
func TestAuditConsumerRequeueFails(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault scriptFault
	}{
		{"refused", scriptFault{n: 1, err: errors.New("injected: requeue refused")}},
		{"unreplicated", scriptFault{n: 1, made: true, err: errUnreplicated}},
		{"lost", scriptFault{n: 1, made: true, err: errors.New("injected: reply lost")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, s, k := plannedQueue(t, map[string]scriptFault{"requeue": tc.fault})
			ctx := context.Background()
			ids := addAll(t, q, orderTasks(1, 4))
			c, err := q.Consume(ctx, 0, ConsumerConfig{LeaseTTL: 10 * time.Second})
			require.NoError(t, err)
			ts, err := c.Claim(ctx, 3)
			require.NoError(t, err)
			require.Equal(t, ids[:3], taskIDs(ts))
			_, err = c.Ack(ctx, ts[0].ID)
			require.NoError(t, err)
			require.Error(t, c.Requeue(ctx, ts[1], ts[2]))

			var got []Task
			for len(got) < 3 {
				more, err := c.Claim(ctx, 1)
				require.NoError(t, err)
				require.Len(t, more, 1)
				got = append(got, more...)
				_, err = c.Ack(ctx, more[0].ID)
				require.NoError(t, err)
			}
			assert.Equal(t, ids[1:], taskIDs(got), "the handed-back tasks first, in order")
			assert.Equal(t, []int{1, 1, 1}, taskAttempts(got), "no delivery counted")
			assert.EqualValues(t, 0, s.do(t, "EXISTS", k.pending, k.claims), "nothing of the claims is left")
			require.NoError(t, c.Release(ctx))
		})
	}
}

// A Requeue that timed out may still reach Redis after the caller retried
// it and claimed its tasks again: it must then be refused, not push a
// task that is running back into the ready list.
func TestAuditConsumerRequeueArrivesLate(t *testing.T) {
	q, s, _ := plannedQueue(t, map[string]scriptFault{
		"requeue": {n: 1, err: errors.New("injected: read timeout")},
	})
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 3))
	c, err := q.Consume(ctx, 0, ConsumerConfig{LeaseTTL: 10 * time.Second})
	require.NoError(t, err)
	ts, err := c.Claim(ctx, 2)
	require.NoError(t, err)
	require.Equal(t, ids[:2], taskIDs(ts))
	_, err = c.Ack(ctx, ts[0].ID)
	require.NoError(t, err)
	late := requeueArgs(t, c, ts[1]) // what the first try sent
	require.Error(t, c.Requeue(ctx, ts[1]))
	require.NoError(t, c.Requeue(ctx, ts[1]), "the retry")
	again, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, ids[1:2], taskIDs(again))

	_, err = try(s, "EVALSHA", late...) // the first try arrives
	require.ErrorContains(t, err, staleReply, "refused: a call of the lease value before the retry")
	n, err := c.Ack(ctx, again[0].ID)
	require.NoError(t, err)
	assert.Equal(t, 1, n, "the task was still pending")
	rest, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	assert.Equal(t, ids[2:], taskIDs(rest), "the requeued task is not delivered again")
}

// requeueArgs are the EVALSHA arguments of a Requeue of t by c now.
func requeueArgs(t *testing.T, c *Consumer, task Task) []any {
	t.Helper()
	st := c.st
	task.Attempt--
	ct := c.claimedOf(task)
	require.NotNil(t, ct.claim, "a task the Consumer handed out")
	r := ct.ref()
	call := st.requeueCall([]string{r.record}, append(r.args([]any{st.value(), st.ttlMS, "0"}), encodeClaimed(ct))...)
	return append([]any{requeueScript.Hash()}, call...)
}

// A pool that gave its lease up for lost (its renewals failed) right after
// a refence whose reply was lost takes it again at once when Redis is
// back: the lease holds that refence's value, which is its own.
func TestAuditAcquireAfterUnansweredRefence(t *testing.T) {
	q, s, k := plannedQueue(t, map[string]scriptFault{
		"refence": {n: 1, made: true, err: errors.New("injected: reply lost")},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := q.newStore(ctx, 0, 30*time.Second, 5, "me")
	require.NoError(t, err)
	require.NoError(t, st.acquire(ctx, nil, nil))
	require.Error(t, st.refence(ctx))
	require.NoError(t, st.acquire(ctx, func(error) {}, nil), "the lease is this store's")
	v, err := redis.String(s.do(t, "GET", k.lease), nil)
	require.NoError(t, err)
	require.Equal(t, st.value(), v)
	require.NoError(t, st.release(ctx))
}

// A Claim whose recording of a redelivery ran but lost its reply hands
// the task out later with the same Attempt: the delivery it recorded
// never happened, and must not cost the task one of its MaxAttempts.
func TestAuditClaimRecordLostCountsNoDelivery(t *testing.T) {
	q, _, _ := plannedQueue(t, map[string]scriptFault{
		"retry": {n: 1, made: true, err: errUnreplicated},
	})
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 2))
	c, err := q.Consume(ctx, 0, ConsumerConfig{LeaseTTL: 10 * time.Second, MaxAttempts: 3})
	require.NoError(t, err)
	ts, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	dead, err := c.Fail(ctx, ts[0], errors.New("fails once"))
	require.NoError(t, err)
	require.False(t, dead)
	ts[0].Attempt++
	require.NoError(t, c.Requeue(ctx, ts[0]), "handed back before its second delivery")

	_, err = c.Claim(ctx, 1)
	require.ErrorIs(t, err, ErrNotReplicated, "recording the second delivery")
	got, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, ids[:1], taskIDs(got))
	assert.Equal(t, 2, got[0].Attempt, "the second delivery, still")
	_, err = c.Ack(ctx, got[0].ID)
	require.NoError(t, err)
}

// A try of an acquisition that arrives late, after a later try of the
// same acquisition took the lease, changes nothing: the lease keeps the
// value the store holds, and the tenure goes on.
func TestAuditAcquireTryArrivesLate(t *testing.T) {
	servers := newTestServers(t, 1)
	preloadScripts(t, servers[0].pool)
	var mu sync.Mutex
	var tries int
	var late []any
	pool := hookPool(servers[0], func(script string, args []any) error {
		if script != "acquire" {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		switch tries++; tries {
		case 1:
			return errors.New("injected: refused")
		case 2:
			late = append([]any(nil), args...)
			return errors.New("injected: read timeout")
		}
		return nil
	})
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := q.newStore(ctx, 0, 30*time.Second, 5, "me")
	require.NoError(t, err)
	require.NoError(t, st.acquire(ctx, func(error) {}, nil))
	require.Equal(t, 3, tries)

	_, err = try(servers[0], "EVALSHA", late...) // the second try arrives
	require.NoError(t, err)
	v, err := redis.String(servers[0].do(t, "GET", newQueueKeys(q.cfg.Prefix, 0, 0).lease), nil)
	require.NoError(t, err)
	assert.Equal(t, st.value(), v, "the lease keeps the value its holder knows")
	require.NoError(t, st.renew(ctx), "and its holder keeps it")
	require.NoError(t, st.release(ctx))
}

// A Requeue after a Claim whose reply was lost hands its tasks back ahead
// of what that claim took: they were claimed first.
func TestAuditConsumerRequeueAfterLostClaim(t *testing.T) {
	q, s, k := plannedQueue(t, map[string]scriptFault{
		"claim": {n: 2, made: true, err: errUnreplicated},
	})
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 4))
	c, err := q.Consume(ctx, 0, ConsumerConfig{LeaseTTL: 10 * time.Second})
	require.NoError(t, err)
	ts, err := c.Claim(ctx, 2)
	require.NoError(t, err)
	require.Equal(t, ids[:2], taskIDs(ts))
	_, err = c.Claim(ctx, 1)
	require.ErrorIs(t, err, ErrNotReplicated, "the claim took the third task")
	_, err = c.Ack(ctx, ts[0].ID)
	require.NoError(t, err)
	require.NoError(t, c.Requeue(ctx, ts[1]))

	var got []Task
	for len(got) < 3 {
		more, err := c.Claim(ctx, 1)
		require.NoError(t, err)
		require.Len(t, more, 1)
		got = append(got, more...)
		_, err = c.Ack(ctx, more[0].ID)
		require.NoError(t, err)
	}
	assert.Equal(t, ids[1:], taskIDs(got), "in the queue's order")
	assert.EqualValues(t, 0, s.do(t, "EXISTS", k.pending, k.claims), "nothing of the claims is left")
}

// A dead letter retried after a refused call leaves nothing of its claim
// behind: the call that lands finishes its place, and with the claim's
// last place goes the claim's record.
func TestAuditConsumerDeadLetterLeavesNoClaimRecord(t *testing.T) {
	q, s, k := plannedQueue(t, map[string]scriptFault{
		"bury": {n: 1, err: errors.New("injected: refused")},
	})
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(2, 1))
	c, err := q.Consume(ctx, 0, ConsumerConfig{LeaseTTL: 10 * time.Second, MaxAttempts: 1})
	require.NoError(t, err)
	ts, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	_, err = c.Fail(ctx, ts[0], errors.New("poison"))
	require.Error(t, err, "the dead-letter refused")
	dead, err := c.Fail(ctx, ts[0], errors.New("poison"))
	require.NoError(t, err, "the retry")
	assert.True(t, dead)

	next, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, ids[1:], taskIDs(next))
	_, err = c.Ack(ctx, next[0].ID)
	require.NoError(t, err)
	assert.EqualValues(t, 0, s.do(t, "EXISTS", k.pending, k.claims, claimListKey(k, "0"), claimDoneKey(k, "0"),
		claimListKey(k, "1"), claimDoneKey(k, "1")), "nothing of the claims is left")
	assert.EqualValues(t, 1, s.do(t, "HLEN", k.dead))
}
