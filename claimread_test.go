package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Tests of claims Redis moves itself (claimMoved). miniredis has no SORT:
// there they take the script's own path, and so check only that.

// variedTasks returns per tasks for each of orders OrderIDs, interleaved,
// whose payloads range from a few bytes to a few kilobytes.
func variedTasks(orders, per int) []Task { return variedTasksTo(orders, per, 3000) }

// variedTasksTo is variedTasks with payloads of up to span bytes.
func variedTasksTo(orders, per, span int) []Task {
	var ts []Task
	for i := 0; i < per; i++ {
		for o := 0; o < orders; o++ {
			pad := strings.Repeat("x", (o*7919+i*104729)%span)
			ts = append(ts, Task{OrderID: uint64(o), Payload: []byte(pl(o, i) + "|" + pad)})
		}
	}
	return ts
}

// checkVaried asserts that every task r saw ran once, on its first
// attempt, none alongside another of its OrderID, and those of
// variedTasks(orders, per) in their OrderID's order.
func checkVaried(t *testing.T, r *recorder, orders, per int) {
	t.Helper()
	assert.Zero(t, r.overlap, "tasks of one OrderID ran together")
	for o := 0; o < orders; o++ {
		got := r.order(uint64(o))
		want := make([]string, per)
		for i := range want {
			want[i] = pl(o, i)
		}
		for i := range got {
			got[i], _, _ = strings.Cut(got[i], "|")
		}
		assert.Equal(t, want, got, "order %d", o)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, a := range r.attempts {
		assert.Equal(t, []int{1}, a, "attempts of %s", id)
	}
}

// A pool whose byte budget is a few entries of very different sizes,
// with scheduled tasks coming due among them, runs every task once, in
// order, and leaves no claim behind.
func TestPoolClaimMovedVariedSizes(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	const orders, per = 6, 40
	ts := variedTasks(orders, per)
	addAll(t, q, ts[:len(ts)/2])
	// Scheduled tasks of OrderIDs the ready list does not hold, due while
	// the pool runs.
	for i := 0; i < 20; i++ {
		_, err := q.AddTaskAfter(ctx, uint64(orders+i%3), time.Duration(i)*5*time.Millisecond, []byte(pl(orders+i%3, i/3)))
		require.NoError(t, err)
	}
	addAll(t, q, ts[len(ts)/2:])
	r := newRecorder()
	// ExitOnEmpty does not wait for scheduled tasks not due yet: a pool
	// that drained the rest first runs again once they are.
	for r.total() < orders*per+20 {
		require.NoError(t, q.AnalysePool(ctx, 0, PoolConfig{
			ExitOnEmpty: true, Workers: 4, MaxHeldBytes: 4000, Logger: slog.New(slog.DiscardHandler),
		}, r.fn(func(context.Context, Task) error { time.Sleep(100 * time.Microsecond); return nil })))
		if r.total() < orders*per+20 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	for o := 0; o < 3; o++ { // the scheduled ones, in their due order
		var want []string
		for i := o; i < 20; i += 3 {
			want = append(want, pl(orders+o, i/3))
		}
		assert.Equal(t, want, r.order(uint64(orders+o)), "order %d", orders+o)
	}
	assert.Equal(t, orders*per+20, r.total(), "deliveries")
	checkVaried(t, r, orders, per)
	assert.Empty(t, claimRecords(t, s, k), "claim records left")
	assert.Zero(t, stats0(t, q).Pending)
}

// A strict claim (the pool holds tasks) whose first task does not fit
// hands back all it moved: no record, list or pending count is left of
// it, and the tasks come again in order, their Attempt unchanged.
func TestClaimMovedStrictHandsBackAll(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	addAll(t, q, orderTasks(1, 5))
	c := movingConsumer(t, q)
	held, err := c.st.claim(ctx, 1, 1<<20, false, nil)
	require.NoError(t, err)
	require.Len(t, held, 1)
	c.st.entrySize.Store(1) // the move takes all 4 left
	none, err := c.st.claim(ctx, 4, 1, true, nil)
	require.ErrorIs(t, err, errNoRoom)
	assert.Empty(t, none)
	assert.Equal(t, int64(4), s.do(t, "LLEN", k.ready))
	assert.Len(t, claimRecords(t, s, k), 1, "only the held task's claim is recorded")
	assert.Equal(t, int64(1), stats0(t, q).Pending)
	moved := strconv.FormatInt(held[0].seq, 10) // the first of the claim handed back
	assert.Equal(t, int64(0), s.do(t, "EXISTS", claimListKey(k, moved), claimDoneKey(k, moved)), "the moved claim's list is left")

	c.track(held)
	_, err = c.Ack(ctx, held[0].ID)
	require.NoError(t, err)
	rest, err := c.st.claim(ctx, 10, 1<<20, false, nil)
	require.NoError(t, err)
	require.Len(t, rest, 4)
	var ids []string
	for i, tk := range rest {
		assert.Equal(t, pl(0, i+1), string(tk.Payload))
		assert.Equal(t, 1, tk.Attempt)
		ids = append(ids, tk.ID)
	}
	c.track(rest)
	_, err = c.Ack(ctx, ids...)
	require.NoError(t, err)
	assert.Empty(t, claimRecords(t, s, k), "claim records left")
	assert.Zero(t, stats0(t, q).Pending)
	for _, f := range []string{held[0].claim.record, moved, rest[0].claim.record} {
		assert.Equal(t, int64(0), s.do(t, "EXISTS", claimListKey(k, f), claimDoneKey(k, f)), "claim %s's list is left", f)
	}
}

// A pool whose hand-backs of what a moved claim took past its budget
// fail puts those tasks back through its resync: each runs once, in
// order. (A claim in place takes no more entries than its budget holds at
// largeEntry each, and no large one while one is counted: the entries
// here are large and uncounted, as a release that kept no count wrote
// them, so that claims pass the budget.)
func TestPoolClaimMovedHandBackFails(t *testing.T) {
	t.Parallel()
	servers := newTestServers(t, 1)
	var fails atomic.Int32
	fails.Store(3)
	var failed atomic.Int32
	pool := hookPool(servers[0], func(name string, _ []any) error {
		if name == "requeue" && fails.Add(-1) >= 0 {
			failed.Add(1)
			return errors.New("requeue refused by the test")
		}
		return nil
	})
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	const orders, per = 5, 30
	addAll(t, q, variedTasksTo(orders, per, 4*largeEntry))
	servers[0].do(t, "HDEL", newQueueKeys(q.cfg.Prefix, 0, 0).meta, largeField)
	r := newRecorder()
	require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{
		ExitOnEmpty: true, Workers: 4, MaxHeldBytes: 4 * largeEntry, Logger: slog.New(slog.DiscardHandler), OnError: func(error) {},
		Backoff: func(int) time.Duration { return time.Millisecond },
	}, r.fn(nil)))
	assert.Equal(t, orders*per, r.total(), "deliveries")
	checkVaried(t, r, orders, per)
	if servers[0].mini == nil {
		assert.Positive(t, failed.Load(), "no hand-back failed")
	}
	k := newQueueKeys(q.cfg.Prefix, 0, 0)
	assert.Empty(t, claimRecords(t, servers[0], k), "claim records left")
	assert.Zero(t, stats0(t, q).Pending)
}

// movingConsumer returns a Consumer of analyser 0 that claims as a pool
// does: Redis moves the entries where it can (SORT; miniredis has none).
func movingConsumer(t *testing.T, q *Queue) *Consumer {
	t.Helper()
	c := lazyConsumer(t, q)
	c.st.native.Store(true)
	return c
}

// A store that claims in place and has not seen an entry yet claims at
// most firstClaim tasks: with a pool's budget, through the script's own
// loop (the entries guessed as large as MaxPayload allows, the end could
// not take them: no end is claimed); the next
// claim, sized by them, is made in place, as large as asked.
func TestFirstClaimIsSmall(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	addAll(t, q, orderTasks(4, 2*firstClaim))
	c := movingConsumer(t, q)
	require.Zero(t, c.st.entrySize.Load(), "no entry seen")
	got, err := c.st.claim(ctx, 4*firstClaim, 64<<20, false, nil)
	require.NoError(t, err)
	assert.Len(t, got, firstClaim)
	f, n, err := endFields(s.do(t, "HMGET", k.meta, endFirstField, endSizeField), nil)
	require.NoError(t, err)
	assert.Zero(t, f+n, "no end claimed")
	assert.Positive(t, c.st.entrySize.Load(), "the entries' size is known")

	more, err := c.st.claim(ctx, 4*firstClaim, 64<<20, false, nil)
	require.NoError(t, err)
	assert.Len(t, more, 4*firstClaim)
	assert.Equal(t, fmt.Sprintf("#%d/%d", firstClaim, 4*firstClaim), claimRecords(t, s, k)[fmt.Sprint(firstClaim)], "made in place")

	// A store that does not claim in place claims what it is asked from
	// the first.
	require.NoError(t, c.Release(ctx))
	plain := consumeFirst(t, q)
	require.Zero(t, plain.st.entrySize.Load())
	got, err = plain.st.claim(ctx, 3*firstClaim, 64<<20, false, nil)
	require.NoError(t, err)
	assert.Len(t, got, 3*firstClaim)
}

// A claim in place: the tasks come in claim order, the record holds their
// count, and the ready list keeps them all, the end claimed.
func TestClaimInPlaceByRedis(t *testing.T) {
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
	assert.Equal(t, int64(6), s.do(t, "LLEN", k.ready))
	assert.Equal(t, int64(0), s.do(t, "EXISTS", claimListKey(k, "0")))
	assert.Equal(t, int64(4), stats0(t, q).Pending)
	assert.Equal(t, int64(2), stats0(t, q).Ready)
	more, err := c.st.claim(ctx, 10, 1<<20, false, nil)
	require.NoError(t, err)
	require.Len(t, more, 2)
	assert.Equal(t, pl(0, 2), string(more[0].Payload))
	assert.Equal(t, pl(1, 2), string(more[1].Payload))
}

// A moved claim keeps to its byte budget: the tasks past it go back to
// the consuming end, first claimed first, with no delivery counted, and
// the next claim takes them in order. Strict, with not even the first
// fitting, it takes none. (Large entries are counted, and a claim in
// place takes none while one is: here they were pushed uncounted, as by
// a release that kept no count, which this step still bounds.)
func TestClaimMovedKeepsToTheBudget(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	ts := orderTasks(1, 6)
	pad := "|" + strings.Repeat("p", 2*largeEntry)
	for i := range ts {
		ts[i].Payload = append(ts[i].Payload, pad...)
	}
	addAll(t, q, ts)
	counted, _ := redis.Int(s.do(t, "HGET", k.meta, largeField), nil)
	assert.Equal(t, 6, counted)
	s.do(t, "HDEL", k.meta, largeField)
	c := movingConsumer(t, q)
	c.st.entrySize.Store(1) // as if the entries seen so far were tiny: the move takes all 6
	size := int64(len(encodeTask(Task{ID: strings.Repeat("x", idLen), Payload: []byte(pl(0, 0) + pad)}, 0)))
	budget := max(2*size, 6*largeEntry)
	require.Less(t, budget, 3*size)
	got, err := c.st.claim(ctx, 6, budget, false, nil)
	require.NoError(t, err)
	require.Len(t, got, 2)
	assert.Equal(t, pl(0, 0)+pad, string(got[0].Payload))
	assert.Equal(t, pl(0, 1)+pad, string(got[1].Payload))
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
		assert.Equal(t, pl(0, i+2)+pad, string(tk.Payload))
		assert.Equal(t, 1, tk.Attempt, "handed back undelivered")
	}
}

// A pool whose ACL user may not run SORT works all the same: where the
// claimed end is opened (claimend.go), the script finds SORT refused and
// moves the claims' entries through Lua, in claim order. (miniredis has
// no SORT: every opening there takes this path; this test needs a server
// with ACLs.)
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
	ids := addAll(t, q, orderTasks(4, 50))
	ctx := context.Background()
	cons := inPlaceConsumer(t, q, 0)
	held, err := cons.Claim(ctx, 5)
	require.NoError(t, err)
	require.Len(t, held, 5)
	require.NoError(t, cons.Requeue(ctx, held[2:]...)) // opens the end: claim 0 into its list
	k := newQueueKeys(prefix, 0, 0)
	entries, err := redis.ByteSlices(c.Do("LRANGE", claimListKey(k, "0"), 0, -1))
	require.NoError(t, err)
	require.Len(t, entries, 5)
	for i, e := range entries {
		require.GreaterOrEqual(t, len(e), entryHeader)
		assert.Equal(t, ids[i], string(e[1:entryHeader]), "place %d", i)
	}
	_, err = cons.Ack(ctx, held[0].ID, held[1].ID)
	require.NoError(t, err)
	require.NoError(t, cons.Release(ctx))
	r := newRecorder()
	require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{ExitOnEmpty: true, Workers: 4}, r.fn(nil)))
	for o := range 4 {
		from := 0
		if o < 2 {
			from = 1 // acknowledged above
		}
		want := make([]string, 0, 50)
		for i := from; i < 50; i++ {
			want = append(want, pl(o, i))
		}
		assert.Equal(t, want, r.order(uint64(o)))
	}
	assert.Zero(t, stats0(t, q).Pending)
	// SORT was tried, and refused, at the opening above at least.
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
	assert.GreaterOrEqual(t, denied, 1, "SORT denied to %s in ACL LOG", user)
}

// tripConn records each round trip made through it: the commands written
// by one Do, or sent since the last Flush.
type tripConn struct {
	redis.Conn
	mu    *sync.Mutex
	trips *[][]string
	sent  []string
}

func (c *tripConn) trip(cmds ...string) {
	if len(cmds) == 1 && cmds[0] == "" {
		return // the pool's read of replies left unread, as it takes a connection back
	}
	c.mu.Lock()
	*c.trips = append(*c.trips, cmds)
	c.mu.Unlock()
}

func (c *tripConn) Do(cmd string, args ...any) (any, error) {
	c.trip(cmd)
	return c.Conn.Do(cmd, args...)
}

func (c *tripConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	c.trip(cmd)
	return redis.DoContext(c.Conn, ctx, cmd, args...)
}

func (c *tripConn) DoWithTimeout(d time.Duration, cmd string, args ...any) (any, error) {
	c.trip(cmd)
	return redis.DoWithTimeout(c.Conn, d, cmd, args...)
}

func (c *tripConn) Send(cmd string, args ...any) error {
	c.sent = append(c.sent, cmd)
	return c.Conn.Send(cmd, args...)
}

func (c *tripConn) Flush() error {
	if len(c.sent) > 0 {
		c.trip(c.sent...)
		c.sent = nil
	}
	return c.Conn.Flush()
}

func (c *tripConn) ReceiveContext(ctx context.Context) (any, error) {
	return redis.ReceiveContext(c.Conn, ctx)
}

func (c *tripConn) ReceiveWithTimeout(d time.Duration) (any, error) {
	return redis.ReceiveWithTimeout(c.Conn, d)
}

// A claim in place is its script and one read of its entries, from the
// ready list, with what is past the end after it (sendAhead): in the same
// round trip once a read has said what is past the end (withRead), else
// in the next. Where a claim must look at the entries (a cancel mark
// waits), one asked to be in place or not at all is not made; it goes
// again alone, and the end is opened first: the claims in place go to
// claim lists, and the claim goes on through Lua; the next claim without a
// look is in place again, read apart, and the one after it reads in its
// own round trip. Where Redis no longer holds the script, it is sent
// whole.
func TestClaimInPlaceReadsItsEntries(t *testing.T) {
	t.Parallel()
	servers := newTestServers(t, 1)
	var mu sync.Mutex
	var trips [][]string
	pool := servers[0].wrapPool(0, func(c redis.Conn) redis.Conn { return &tripConn{Conn: c, mu: &mu, trips: &trips} })
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	k := newQueueKeys(q.cfg.Prefix, 0, 0)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 12))
	c := movingConsumer(t, q)
	c.st.entrySize.Store(64)
	// claim claims n tasks and returns their IDs and the round trips it made.
	claim := func(n int) ([]string, [][]string) {
		t.Helper()
		mu.Lock()
		from := len(trips)
		mu.Unlock()
		got, err := c.st.claim(ctx, n, 1<<20, false, nil)
		require.NoError(t, err)
		mu.Lock()
		defer mu.Unlock()
		return claimedIDs(got), slices.Clone(trips[from:])
	}
	ahead := []string{"LLEN", "HMGET"}
	alone := append([]string{"EVALSHA"}, ahead...)
	read := append([]string{"LRANGE"}, ahead...)
	with := append([]string{"EVALSHA", "LRANGE"}, ahead...)
	got, made := claim(3)
	assert.Equal(t, ids[:3], got)
	require.NotEmpty(t, made)
	assert.Equal(t, alone, made[0], "a store's first claim: nothing is known past the end")
	if len(made) > 2 { // the script's first load
		assert.Equal(t, [][]string{{"EVAL"}, read}, made[1:])
	} else {
		assert.Equal(t, [][]string{read}, made[1:], "read apart")
	}

	got, made = claim(3)
	assert.Equal(t, ids[3:6], got)
	assert.Equal(t, [][]string{with}, made, "behind the first claim: its read reaches past it")
	st := stats0(t, q)
	assert.Equal(t, int64(6), st.Pending)
	assert.Equal(t, int64(6), st.Ready, "the end claimed in place is not ready")
	assert.Equal(t, int64(12), servers[0].do(t, "LLEN", k.ready), "nothing copied")
	assert.Equal(t, []any{[]byte("0"), []byte("6")}, servers[0].do(t, "HMGET", k.meta, endFirstField, endSizeField))

	// A cancel mark makes the script claim through Lua: the end opens.
	servers[0].do(t, "HSET", k.cancels, "no-such-task", "1")
	got, made = claim(3)
	assert.Equal(t, ids[6:9], got)
	assert.Equal(t, [][]string{with, alone}, made, "not made in place: again, alone")
	assert.Equal(t, int64(3), servers[0].do(t, "LLEN", k.ready))
	for _, first := range []string{"0", "3"} {
		assert.Equal(t, int64(3), servers[0].do(t, "LLEN", claimListKey(k, first)), "claim %s in a list", first)
	}
	assert.Equal(t, []any{nil, nil}, servers[0].do(t, "HMGET", k.meta, endFirstField, endSizeField))
	servers[0].do(t, "DEL", k.cancels)

	got, made = claim(1)
	assert.Equal(t, ids[9:10], got)
	assert.Equal(t, [][]string{alone, read}, made, "in place again, read apart after a claim not made in place")

	// Redis forgot the script: it is sent again whole.
	servers[0].do(t, "SCRIPT", "FLUSH")
	got, made = claim(2)
	assert.Equal(t, ids[10:12], got)
	assert.Equal(t, [][]string{with, {"EVAL"}, read}, made, "EVAL once, then the read")
	st = stats0(t, q)
	assert.Equal(t, int64(12), st.Pending)
	assert.Zero(t, st.Ready)
}

// A claim in place takes up to maxMoved tasks; one whose entries pass
// through the script's loop (a cancel mark waits) takes up to maxClaim,
// asked for more or not. Either way in claim order.
func TestClaimSizeBounds(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	const total = maxMoved + maxClaim + 10
	ids := addAll(t, q, orderTasks(1, total))
	c := movingConsumer(t, q)
	c.st.entrySize.Store(64)
	got, err := c.st.claim(ctx, total, 1<<30, false, nil)
	require.NoError(t, err)
	want := maxMoved
	require.Len(t, got, want)
	assert.Equal(t, ids[:want], claimedIDs(got))

	s.do(t, "HSET", k.cancels, "no-such-task", "1")
	more, err := c.st.claim(ctx, total, 1<<30, false, nil)
	require.NoError(t, err)
	require.Len(t, more, maxClaim, "through Lua: at most maxClaim")
	assert.Equal(t, ids[want:want+maxClaim], claimedIDs(more))
}
