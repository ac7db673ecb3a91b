package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A pool's claim leaves its task IDs out of its record ("#<first>/<n>",
// idsLater) and its acker writes them. These tests drive a Consumer whose
// store claims so, and check that every reader of the IDs finds the tasks
// all the same.

// lazyConsumer returns a Consumer of analyser 0 whose claims leave their
// IDs to its acks, as a pool's do.
func lazyConsumer(t *testing.T, q *Queue) *Consumer {
	t.Helper()
	c := consumeFirst(t, q)
	c.st.idsLater = true
	c.st.idsAfter = 0 // the first ack writes the IDs
	return c
}

func claimRecords(t *testing.T, s *testServer, k queueKeys) map[string]string {
	t.Helper()
	m, err := redis.StringMap(s.do(t, "HGETALL", k.claims), nil)
	require.NoError(t, err)
	return m
}

func TestLazyClaimRecordHoldsItsCountThenItsIDs(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 4))
	c := lazyConsumer(t, q)
	got, err := c.Claim(ctx, 3)
	require.NoError(t, err)
	require.Len(t, got, 3)
	assert.Equal(t, map[string]string{"0": "#0/3"}, claimRecords(t, s, k))

	// Status, State and Cancel find a task in it.
	st, err := q.State(ctx, 0, ids[1])
	require.NoError(t, err)
	assert.Equal(t, StatePending, st)
	status, err := q.Status(ctx, 0, ids[2])
	require.NoError(t, err)
	assert.Equal(t, StatePending, status.State)
	st, err = q.State(ctx, 0, ids[3])
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, st, "still ready")

	// The first ack writes the IDs; the record stays while tasks are pending.
	n, err := c.Ack(ctx, got[0].ID)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Equal(t, map[string]string{"0": "#0:" + strings.Join(ids[:3], "")}, claimRecords(t, s, k))
	n, err = c.Ack(ctx, got[1].ID, got[2].ID)
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	assert.Empty(t, claimRecords(t, s, k))
	assert.Zero(t, stats0(t, q).Pending)
}

// An ack that finishes the whole claim writes no IDs: the record goes.
func TestLazyClaimFinishedByItsFirstAck(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	addAll(t, q, orderTasks(1, 2))
	c := lazyConsumer(t, q)
	got, err := c.Claim(ctx, 2)
	require.NoError(t, err)
	n, err := c.Ack(ctx, got[0].ID, got[1].ID)
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	assert.Empty(t, claimRecords(t, s, k))
	assert.Zero(t, s.do(t, "EXISTS", claimListKey(k, "0"), claimDoneKey(k, "0")))
}

// A Cancel of a task in a record without IDs marks it and answers
// pending; claims made while a mark is held write their IDs.
func TestLazyClaimCancelFindsTheTask(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 4))
	c := lazyConsumer(t, q)
	got, err := c.Claim(ctx, 2)
	require.NoError(t, err)
	require.Len(t, got, 2)
	st, err := q.Cancel(ctx, 0, ids[1])
	require.NoError(t, err)
	assert.Equal(t, StatePending, st)
	// The mark is held: the next claim writes its IDs.
	more, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Len(t, more, 1)
	assert.Equal(t, "#2:"+ids[2], claimRecords(t, s, k)["2"])
}

// A Cancel whose read of the records came before a claim without IDs took
// the task reads them again, and answers pending.
func TestLazyClaimMadeBetweenCancelsReads(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 2))
	c := lazyConsumer(t, q)
	claimed := false
	// The claim runs after Cancel read the records, before its script.
	hook := func(script string, _ []any) error {
		if script == "cancel" && !claimed {
			claimed = true
			got, err := c.Claim(ctx, 2)
			require.NoError(t, err)
			require.Len(t, got, 2)
		}
		return nil
	}
	conn := &hookConn{Conn: s.pool.Get(), before: hook}
	defer conn.Close()
	r, err := cancelOnce(ctx, conn, k, ids[0])
	require.NoError(t, err)
	assert.Equal(t, "recheck", string(r[0].([]byte)))
	assert.Equal(t, "#0/2", claimRecords(t, s, k)["0"])
	st, err := q.Cancel(ctx, 0, ids[0])
	require.NoError(t, err)
	assert.Equal(t, StatePending, st)
}

// An empty claim's sweep keeps the mark of a task that a record without
// IDs may hold.
func TestLazyClaimKeepsMarksItMayHold(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 1))
	c := lazyConsumer(t, q)
	got, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Len(t, got, 1)
	s.do(t, "HSET", k.cancels, ids[0], "1") // as a Cancel would, its reply lost
	none, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Empty(t, none)
	assert.Equal(t, int64(1), s.do(t, "HEXISTS", k.cancels, ids[0]), "the mark of a task that may be pending stays")
	// Once the task is acked, the record and the mark go.
	_, err = c.Ack(ctx, got[0].ID)
	require.NoError(t, err)
	_, err = c.Claim(ctx, 1)
	require.NoError(t, err)
	assert.Zero(t, s.do(t, "EXISTS", k.cancels))
}

// A claim refused because its proposal is taken goes past a record
// without IDs by its count.
func TestLazyClaimRecordCountsForTheNextFirst(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	addAll(t, q, orderTasks(1, 5))
	c := lazyConsumer(t, q)
	got, err := c.Claim(ctx, 3)
	require.NoError(t, err)
	require.Len(t, got, 3)
	s.do(t, "HSET", k.meta, "seq", "1") // set back by hand, into the claim's range
	c.st.nextFirst.Store(1)
	s.do(t, "RPUSH", claimListKey(k, "1"), "x") // and its proposal taken
	more, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Len(t, more, 1)
	recs := claimRecords(t, s, k)
	assert.Equal(t, "#0/3", recs["0"])
	assert.Equal(t, fmt.Sprintf("#3/1"), recs["3"], "after the first claim's three tasks")
}

// A lazy claim's life (Cancel reading its list, an ack reading a place
// from it, a retry, a burial, a hand-back, an empty claim's sweep, a
// takeover's recovery) touches only the keys each script is given.
func TestLazyClaimScriptsTouchDeclaredKeysOnly(t *testing.T) {
	q, s, rec := declaredQueue(t)
	ctx := context.Background()
	k := newQueueKeys(q.cfg.Prefix, 0, 0)
	ids := addAll(t, q, orderTasks(1, 6))
	c1, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 1})
	require.NoError(t, err)
	c1.st.idsLater = true
	got, err := c1.Claim(ctx, 4)
	require.NoError(t, err)
	require.Len(t, got, 4)
	require.Equal(t, "#0/4", claimRecords(t, s, k)["0"])
	st, err := q.Cancel(ctx, 0, ids[5]) // ready: the lazy list is read, not named
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, st)
	_, err = c1.st.ack(ctx, []ackRef{{claim: &claimBatch{record: "0"}, place: 0, id: got[0].ID}}, nil)
	require.NoError(t, err)
	dead, err := c1.Fail(ctx, got[1], errors.New("poison"))
	require.NoError(t, err)
	require.True(t, dead)
	require.NoError(t, c1.Requeue(ctx, got[2]))
	require.Equal(t, "#0/4", claimRecords(t, s, k)["0"], "no IDs written yet")
	st, err = q.State(ctx, 0, got[3].ID)
	require.NoError(t, err)
	assert.Equal(t, StatePending, st)
	st, err = q.Cancel(ctx, 0, got[3].ID) // held: its place read from the lazy list
	require.NoError(t, err)
	assert.Equal(t, StatePending, st)
	// c1 crashes holding got[3]: a lazy takeover recovers it, and finds it
	// cancelled.
	lapse(t, s, k.lease)
	c2, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	c2.st.idsLater = true
	for {
		more, err := c2.Claim(ctx, 10)
		require.NoError(t, err)
		if len(more) == 0 {
			break
		}
		for _, tk := range more {
			assert.NotEqual(t, got[3].ID, tk.ID, "a cancelled task delivered")
			_, err := c2.Ack(ctx, tk.ID)
			require.NoError(t, err)
		}
	}
	require.NoError(t, c2.Release(ctx))
	assert.Empty(t, claimRecords(t, s, k))
	rec.mu.Lock()
	defer rec.mu.Unlock()
	assert.Empty(t, rec.undeclared)
	for _, name := range []string{"claim", "ack", "cancel", "find", "bury", "requeue", "drop"} {
		assert.True(t, rec.ran[name], "script %s did not run", name)
	}
}

// A takeover puts a crashed lazy claim's tasks back in order, and once
// they are acknowledged nothing of them is left.
func TestLazyClaimRecoveredInOrderAndDrained(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 4))
	c1, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	c1.st.idsLater = true
	got, err := c1.Claim(ctx, 3)
	require.NoError(t, err)
	require.Len(t, got, 3)
	_, err = c1.Ack(ctx, got[0].ID) // writes the IDs
	require.NoError(t, err)
	lapse(t, s, k.lease)
	c2 := lazyConsumer(t, q)
	var seen []string
	for {
		more, err := c2.Claim(ctx, 2)
		require.NoError(t, err)
		if len(more) == 0 {
			break
		}
		for _, tk := range more {
			seen = append(seen, tk.ID)
			_, err := c2.Ack(ctx, tk.ID)
			require.NoError(t, err)
		}
	}
	assert.Equal(t, ids[1:], seen)
	assert.Empty(t, claimRecords(t, s, k))
	assert.Zero(t, s.do(t, "EXISTS", k.retries, k.cancels, k.pending))
	assert.Zero(t, stats0(t, q).Pending)
}

// With a retention, an ack of a lazy claim's task keeps its status
// record (the history arguments follow the claims' three values).
func TestLazyClaimAckKeepsHistory(t *testing.T) {
	t.Parallel()
	q, srv := newTestQueue(t, 1, Config{Retention: time.Hour})
	s, k := srv[0], newQueueKeys(q.cfg.Prefix, 0, 0)
	ctx := context.Background()
	addAll(t, q, orderTasks(1, 3))
	c := lazyConsumer(t, q)
	got, err := c.Claim(ctx, 3)
	require.NoError(t, err)
	require.Len(t, got, 3)
	_, err = c.Ack(ctx, got[1].ID)
	require.NoError(t, err)
	assert.Equal(t, "#0:"+got[0].ID+got[1].ID+got[2].ID, claimRecords(t, s, k)["0"])
	status, err := q.Status(ctx, 0, got[1].ID)
	require.NoError(t, err)
	assert.Equal(t, StateDone, status.State)
	status, err = q.Status(ctx, 0, got[2].ID)
	require.NoError(t, err)
	assert.Equal(t, StatePending, status.State)
}

// A claim record of the lazy shape that the Go side does not read as one
// (here, a count no claim can have: garbage written by hand) must not make
// every Cancel answer pending: the caller read it, and it names no task.
func TestCancelPastARecordShapedLikeALazyOne(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	ids := addAll(t, q, orderTasks(1, 1))
	s.do(t, "HSET", k.claims, "99", fmt.Sprintf("#99/%d", max(maxClaim, maxMoved)+1))
	start := time.Now()
	st, err := q.Cancel(ctx, 0, ids[0])
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, st, "a ready task")
	assert.Less(t, time.Since(start), cancelWait, "no wait for an owner to see the mark")
}

// A claim acknowledged before it is idsAfter old keeps its record without
// IDs (its tasks are still found, through its list); the first ack made
// once it is that old writes them.
func TestLazyClaimIDsWrittenOnlyOnceItIsOld(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, s, k, ids, c, got := youngLazyClaim(t, 3)
	n, err := c.Ack(ctx, got[0].ID)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Equal(t, map[string]string{"0": "#0/3"}, claimRecords(t, s, k), "young: no IDs written")
	st, err := q.State(ctx, 0, ids[1])
	require.NoError(t, err)
	assert.Equal(t, StatePending, st, "found through the claim's list")

	c.st.idsAfter = 0 // the claim is old enough now
	n, err = c.Ack(ctx, got[1].ID)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Equal(t, map[string]string{"0": "#0:" + strings.Join(ids, "")}, claimRecords(t, s, k))
	n, err = c.Ack(ctx, got[2].ID)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Empty(t, claimRecords(t, s, k))
}

// While the queue holds retry records (or cancel marks), an ack needs the
// IDs of the tasks it finishes: once an ack has said so, the next writes
// a young claim's IDs too, rather than have each ack read every task's
// ID from the claim's list.
func TestLazyClaimIDsWrittenAtOnceWhileRetriesAreHeld(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, s, k, ids, c, got := youngLazyClaim(t, 4)
	s.do(t, "HSET", k.retries, "not-a-task-here", "x")
	n, err := c.Ack(ctx, got[0].ID)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Equal(t, map[string]string{"0": "#0/4"}, claimRecords(t, s, k), "the first ack did not know")
	assert.True(t, c.st.idsNow.Load(), "the ack says the queue holds retry records")
	n, err = c.Ack(ctx, got[1].ID)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Equal(t, map[string]string{"0": "#0:" + strings.Join(ids, "")}, claimRecords(t, s, k), "the next writes the IDs")

	s.do(t, "DEL", k.retries)
	_, err = c.Ack(ctx, got[2].ID)
	require.NoError(t, err)
	assert.False(t, c.st.idsNow.Load(), "no retry record, no cancel mark")
	_, err = c.Ack(ctx, got[3].ID)
	require.NoError(t, err)
	assert.Empty(t, claimRecords(t, s, k))
}

// An ack that needs the IDs of tasks whose claim record holds none reads
// them from the claim's list: with one LRANGE over many places, with a
// LINDEX each for a few. Either way the retry records of exactly the
// tasks it finished go.
func TestAckReadsIDsFromTheListForManyOrFewPlaces(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, s, k, ids, c, got := youngLazyClaim(t, 40)
	for _, i := range []int{5, 10, 29, 31, 39} {
		s.do(t, "HSET", k.retries, ids[i], "x")
	}
	n, err := c.Ack(ctx, taskIDs(got[:30])...)
	require.NoError(t, err)
	assert.Equal(t, 30, n)
	left, err := redis.Strings(s.do(t, "HKEYS", k.retries), nil)
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{ids[31], ids[39]}, left, "30 places: one LRANGE")

	c.st.idsNow.Store(false) // as if no ack had said the queue holds retry records
	n, err = c.Ack(ctx, got[31].ID, got[33].ID)
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	left, err = redis.Strings(s.do(t, "HKEYS", k.retries), nil)
	require.NoError(t, err)
	assert.Equal(t, []string{ids[39]}, left, "2 places: a LINDEX each")
}

// youngLazyClaim adds n tasks of one OrderID and claims them all with a
// Consumer whose claim records hold no IDs and whose acks write them only
// once a claim is an hour old (or while the queue holds retry records or
// cancel marks). It returns the queue, its server and keys, the tasks'
// IDs, the Consumer and the tasks claimed.
func youngLazyClaim(t *testing.T, n int) (*Queue, *testServer, queueKeys, []string, *Consumer, []Task) {
	t.Helper()
	q, s, k := testQueue1(t)
	ids := addAll(t, q, orderTasks(1, n))
	c := consumeFirst(t, q)
	c.st.idsLater = true
	c.st.idsAfter = time.Hour
	got, err := c.Claim(context.Background(), n)
	require.NoError(t, err)
	require.Len(t, got, n)
	return q, s, k, ids, c, got
}
