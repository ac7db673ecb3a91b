package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
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

// movingConsumer returns a Consumer of analyser 0 that claims as a pool
// does: Redis moves the entries where it can (SORT; miniredis has none).
func movingConsumer(t *testing.T, q *Queue) *Consumer {
	t.Helper()
	c := lazyConsumer(t, q)
	c.st.native.Store(true)
	return c
}

// On a server with SORT, a claim is Redis's own move: the tasks come in
// claim order, the record holds their count, and the ready list keeps
// the rest. On one without, the claim says so, and the store asks no
// more.
func TestClaimMovedByRedis(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	addAll(t, q, orderTasks(2, 3))
	c := movingConsumer(t, q)
	c.st.entrySize.Store(64) // a first claim's guess is the largest entry: it would move one
	got, err := c.st.claim(ctx, 4, 1<<20, false, nil)
	require.NoError(t, err)
	require.Len(t, got, 4)
	var pls []string
	for _, tk := range got {
		pls = append(pls, string(tk.Payload))
	}
	assert.Equal(t, []string{pl(0, 0), pl(1, 0), pl(0, 1), pl(1, 1)}, pls)
	assert.Equal(t, "#0/4", claimRecords(t, s, k)["0"])
	assert.Equal(t, int64(2), s.do(t, "LLEN", k.ready))
	assert.Equal(t, int64(4), stats0(t, q).Pending)
	if s.mini != nil {
		assert.False(t, c.st.native.Load(), "miniredis has no SORT: the store stops asking")
	} else {
		assert.True(t, c.st.native.Load())
		assert.Equal(t, int64(4), s.do(t, "LLEN", claimListKey(k, "0")))
	}
	more, err := c.st.claim(ctx, 10, 1<<20, false, nil)
	require.NoError(t, err)
	require.Len(t, more, 2)
	assert.Equal(t, pl(0, 2), string(more[0].Payload))
	assert.Equal(t, pl(1, 2), string(more[1].Payload))
}

// A moved claim keeps to its byte budget: the tasks past it go back to
// the consuming end, first claimed first, with no delivery counted, and
// the next claim takes them in order. Strict, with not even the first
// fitting, it takes none.
func TestClaimMovedKeepsToTheBudget(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	addAll(t, q, orderTasks(1, 6))
	c := movingConsumer(t, q)
	c.st.entrySize.Store(1) // as if the entries seen so far were tiny: the move takes all 6
	size := int64(len(encodeTask(Task{ID: strings.Repeat("x", idLen), Payload: []byte(pl(0, 0))}, 0)))
	got, err := c.st.claim(ctx, 6, 2*size, false, nil)
	require.NoError(t, err)
	require.Len(t, got, 2)
	assert.Equal(t, pl(0, 0), string(got[0].Payload))
	assert.Equal(t, pl(0, 1), string(got[1].Payload))
	assert.Equal(t, int64(4), s.do(t, "LLEN", k.ready))
	assert.Equal(t, int64(2), stats0(t, q).Pending)
	if s.mini == nil {
		assert.True(t, c.st.exactNext.Load(), "the next claim counts bytes")
	}

	c.st.entrySize.Store(1)
	c.st.exactNext.Store(false)
	none, err := c.st.claim(ctx, 6, 1, true, nil)
	require.ErrorIs(t, err, errNoRoom)
	assert.Empty(t, none)
	assert.Equal(t, int64(4), s.do(t, "LLEN", k.ready))

	rest, err := c.st.claim(ctx, 6, 1<<20, false, nil)
	require.NoError(t, err)
	require.Len(t, rest, 4)
	for i, tk := range rest {
		assert.Equal(t, pl(0, i+2), string(tk.Payload))
		assert.Equal(t, 1, tk.Attempt, "handed back undelivered")
	}
}

// A pool whose ACL user may not run SORT claims all the same: the first
// claim's script finds SORT refused, moves the entries itself, and the
// pool asks no more. (miniredis has no SORT: every pool there takes this
// path; this test needs a server with ACLs.)
func TestPoolWhereSORTIsDenied(t *testing.T) {
	servers := newTestServers(t, 1)
	s := servers[0]
	if s.mini != nil || testOnCluster {
		t.Skip("needs one redis-server's ACLs")
	}
	prefix := testPrefix(t)
	user := strings.NewReplacer(":", "-").Replace(prefix)
	limited := LimitedPoolForTest(t, s.pool, s.url, user, "-sort")
	c := s.pool.Get()
	defer c.Close()
	q, err := New([]*redis.Pool{limited}, Config{Prefix: prefix})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	addAll(t, q, orderTasks(4, 50))
	r := newRecorder()
	require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{ExitOnEmpty: true, Workers: 4}, r.fn(nil)))
	for o := range 4 {
		want := make([]string, 50)
		for i := range want {
			want[i] = pl(o, i)
		}
		assert.Equal(t, want, r.order(uint64(o)))
	}
	assert.Zero(t, stats0(t, q).Pending)
	// SORT was tried, and refused, once.
	log, err := redis.Values(c.Do("ACL", "LOG"))
	require.NoError(t, err)
	denied := 0
	for _, e := range log {
		kv, _ := redis.Values(e, nil)
		fields := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			k, _ := redis.String(kv[i], nil)
			if v, ok := kv[i+1].(int64); ok {
				fields[k] = strconv.FormatInt(v, 10)
			} else {
				fields[k], _ = redis.String(kv[i+1], nil)
			}
		}
		if fields["username"] == user && fields["object"] == "sort" {
			n, _ := strconv.Atoi(fields["count"])
			denied += n
		}
	}
	assert.Equal(t, 1, denied, "SORT denied to %s in ACL LOG", user)
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

// A task retried in place in a lazy claim (its entry now behind a '+')
// is still found pending, with its failure, by State, Status and Cancel.
func TestLazyClaimRetriedTaskIsFound(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	addAll(t, q, orderTasks(2, 2))
	c := lazyConsumer(t, q)
	got, err := c.Claim(ctx, 3)
	require.NoError(t, err)
	require.Len(t, got, 3)
	dead, err := c.Fail(ctx, got[1], errors.New("once"))
	require.NoError(t, err)
	require.False(t, dead)
	require.Equal(t, "#0/3", claimRecords(t, s, k)["0"])
	st, err := q.State(ctx, got[1].OrderID, got[1].ID)
	require.NoError(t, err)
	assert.Equal(t, StatePending, st)
	status, err := q.Status(ctx, got[1].OrderID, got[1].ID)
	require.NoError(t, err)
	assert.Equal(t, StatePending, status.State)
	assert.Equal(t, "once", status.LastError)
	assert.Equal(t, 2, status.Attempt)
	st, err = q.Cancel(ctx, got[1].OrderID, got[1].ID)
	require.NoError(t, err)
	assert.Equal(t, StatePending, st)
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
	s.do(t, "HSET", k.claims, "99", fmt.Sprintf("#99/%d", maxClaim+1))
	start := time.Now()
	st, err := q.Cancel(ctx, 0, ids[0])
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, st, "a ready task")
	assert.Less(t, time.Since(start), cancelWait, "no wait for an owner to see the mark")
}
