package queue

import (
	"context"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The cancel marks' bound (luaMarkBound): a mark whose task is nowhere
// is dropped once every entry that was ready when it was set has been
// taken, whether or not the queue empties; a mark whose task is still in
// the ready list is never dropped, however entries are put back at the
// consuming end ahead of it.

// hasMark reports whether the queue of k holds a cancel mark for id.
func hasMark(t *testing.T, s *testServer, k queueKeys, id string) bool {
	t.Helper()
	n, err := redis.Int(s.do(t, "HEXISTS", k.cancels, id), nil)
	require.NoError(t, err)
	return n == 1
}

// claimAll claims with c, max at a time, and acknowledges what it is
// given, until a claim comes back empty; it calls each, when not nil,
// after every claim with the number of tasks claimed so far. It returns
// the IDs handed out.
func claimAll(t *testing.T, c *Consumer, max int, each func(claimed int)) map[string]bool {
	t.Helper()
	ctx := bounded(t)
	seen := map[string]bool{}
	for {
		ts, err := c.Claim(ctx, max)
		require.NoError(t, err)
		if len(ts) == 0 {
			return seen
		}
		ids := make([]string, len(ts))
		for i, task := range ts {
			ids[i] = task.ID
			seen[task.ID] = true
		}
		n, err := c.Ack(ctx, ids...)
		require.NoError(t, err)
		require.Equal(t, len(ids), n)
		if each != nil {
			each(len(seen))
		}
	}
}

// A stray mark under a backlog that does not empty: dropped by the claim
// that takes the last entry ready when it was set, with the tasks added
// since still waiting, so that claims are made in place again. The bound
// a mark leaves behind does not hold back the next one.
func TestCancelStrayMarkIsDroppedUnderABacklog(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer func() { _ = c.Release(context.Background()) }()
	for round, size := range [][2]int{{50, 200}, {20, 100}} {
		before, after := size[0], size[1]
		addAll(t, q, orderTasks(10, before/10))
		stray := formatID(0x5eed, uint32(round))
		where, err := q.Cancel(ctx, 1, stray)
		require.NoError(t, err)
		assert.Equal(t, StateUnknown, where)
		addAll(t, q, orderTasks(10, after/10))
		droppedAt := -1
		seen := claimAll(t, c, 10, func(n int) {
			marked := hasMark(t, s, k, stray)
			if n < before {
				assert.True(t, marked, "kept while an entry ready when it was set may hold its task (%d claimed)", n)
			}
			if !marked && droppedAt < 0 {
				droppedAt = n
			}
		})
		assert.Len(t, seen, before+after, "a stray mark cancels nothing")
		assert.Equal(t, before, droppedAt, "round %d: dropped by the claim that took the last entry ready when it was set, not when the queue emptied", round)
	}
	assert.Zero(t, stats0(t, q).Cancelled)
	noMarksNorClaims(t, s, k)
}

// A marked task deep in a backlog is cancelled, never handed out, while
// claims ahead of it are handed back to the consuming end again and
// again (each hand-back puts entries ahead of it that a count of the
// entries taken would count twice), and a stray mark beside it is
// still dropped in the end.
func TestCancelMarkSurvivesHandBacksAhead(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	ids := addAll(t, q, orderTasks(20, 5)) // 100 tasks
	target := ids[90]
	stray := unusedID()
	for _, id := range []string{stray, target} {
		where, err := q.Cancel(ctx, 1, id)
		require.NoError(t, err)
		assert.Equal(t, StateUnknown, where, "ready: marked")
	}
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer func() { _ = c.Release(context.Background()) }()
	for range 5 {
		ts, err := c.Claim(ctx, 40)
		require.NoError(t, err)
		require.Len(t, ts, 40)
		require.NoError(t, c.Requeue(ctx, ts...))
		assert.True(t, hasMark(t, s, k, target), "the target is still ready")
	}
	seen := claimAll(t, c, 7, nil)
	assert.Len(t, seen, 99)
	assert.False(t, seen[target], "the marked task is never handed out")
	assert.Equal(t, int64(1), stats0(t, q).Cancelled)
	noMarksNorClaims(t, s, k)
}

// Scheduled tasks that came due before a marked task was added join
// ahead of it, at the consuming end, once claims run: it is still
// cancelled.
func TestCancelMarkSurvivesScheduledTasksAhead(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	due := time.Now().Add(100 * time.Millisecond)
	early := orderTasks(30, 5) // 150 tasks
	for i := range early {
		early[i].OrderID += 100
		early[i].NotBefore = due
	}
	addAll(t, q, early)
	time.Sleep(time.Until(due) + 10*time.Millisecond)
	ids := addAll(t, q, orderTasks(20, 5))
	target := ids[90]
	where, err := q.Cancel(ctx, 1, target)
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, where)
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer func() { _ = c.Release(context.Background()) }()
	first := true
	seen := claimAll(t, c, 10, func(int) {
		if first {
			n, err := redis.Int(s.do(t, "ZCARD", k.sched), nil)
			require.NoError(t, err)
			assert.Equal(t, 140, n, "the first claim took ten of the scheduled tasks, due first")
			first = false
		}
	})
	assert.Len(t, seen, 249)
	assert.False(t, seen[target], "the marked task is never handed out")
	assert.Equal(t, int64(1), stats0(t, q).Cancelled)
	noMarksNorClaims(t, s, k)
}

// Values of the bound's fields that do not read (written by someone
// else) are read as unset: the marked task is still cancelled, and a
// stray mark still goes, at the latest when the queue empties.
func TestCancelMarkBoundFieldsThatDoNotRead(t *testing.T) {
	t.Parallel()
	for name, v := range map[string]string{"text": "many", "fraction": "1.5", "huge": "1e300", "negative huge": "-99999999999999999999"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			q, s, k := testQueue1(t)
			ctx := bounded(t)
			ids := addAll(t, q, orderTasks(10, 10))
			target := ids[80]
			stray := unusedID()
			s.do(t, "HSET", k.meta, markTakenField, v, markBoundField, v)
			for _, id := range []string{stray, target} {
				_, err := q.Cancel(ctx, 1, id)
				require.NoError(t, err)
			}
			s.do(t, "HSET", k.meta, markTakenField, v)
			c, err := q.Consume(ctx, 0, ConsumerConfig{})
			require.NoError(t, err)
			defer func() { _ = c.Release(context.Background()) }()
			seen := claimAll(t, c, 10, func(int) { s.do(t, "HSET", k.meta, markBoundField, v) })
			assert.Len(t, seen, 99)
			assert.False(t, seen[target], "the marked task is never handed out")
			assert.Equal(t, int64(1), stats0(t, q).Cancelled)
			noMarksNorClaims(t, s, k)
		})
	}
}

// A mark Cancel leaves for its second call (a claim in place was made
// between its read of the claim records and its script) is covered by
// the bound at once: claims made before the second call, past the bound
// an earlier stray mark left, do not drop it, and the task is never
// handed out.
func TestCancelMarkLeftForRecheckIsBound(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	c := inPlaceConsumer(t, q, 0) // claims as a pool's are
	// An earlier stray mark, dropped once its bound passed.
	addAll(t, q, orderTasks(10, 1))
	_, err := q.Cancel(ctx, 1, unusedID())
	require.NoError(t, err)
	claimAll(t, c, 10, nil)
	require.False(t, hasMark(t, s, k, unusedID()))
	ids := addAll(t, q, orderTasks(10, 2))
	target := ids[15]
	// Cancel's first call, with a claim in place between its read of
	// the records and its script.
	conn := s.pool.Get()
	defer conn.Close()
	records, err := redis.StringMap(conn.Do("HGETALL", k.claims))
	require.NoError(t, err)
	ts, err := c.Claim(ctx, 5)
	require.NoError(t, err)
	keys := []any{k.sched, k.later, k.pending, k.dead, k.cancels, k.meta, k.claims, k.ready}
	args := []any{target, time.Now().UnixMilli(), 0}
	for f := range records {
		args = append(args, f)
	}
	r, err := redis.Values(runScript(ctx, cancelScript, conn, append(append([]any{len(keys)}, keys...), args...)...))
	require.NoError(t, err)
	where, err := redis.String(r[0], nil)
	require.NoError(t, err)
	require.Equal(t, "recheck", where)
	// Claims before the second call.
	handed := false
	for _, max := range []int{5, 5, 10} {
		var done []string
		for _, x := range ts {
			done = append(done, x.ID)
			handed = handed || x.ID == target
		}
		_, err = c.Ack(ctx, done...)
		require.NoError(t, err)
		ts, err = c.Claim(ctx, max)
		require.NoError(t, err)
	}
	for _, x := range ts {
		handed = handed || x.ID == target
	}
	assert.False(t, handed, "a task marked while ready is never handed out")
	r, err = cancelOnce(ctx, conn, k, target) // the second call
	require.NoError(t, err)
	where, err = redis.String(r[0], nil)
	require.NoError(t, err)
	assert.Equal(t, "marked", where)
	assert.Equal(t, int64(1), stats0(t, q).Cancelled)
}

// The count of entries taken may be below zero (tasks claimed before a
// mark was set, put back after); should it then not read, the bound set
// from it goes with it, and the marked task is not handed out.
func TestCancelMarkTakenCountLostBelowZero(t *testing.T) {
	t.Parallel()
	for name, v := range map[string]string{"text": "many", "gone": ""} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			q, s, k := testQueue1(t)
			ctx := bounded(t)
			c, err := q.Consume(ctx, 0, ConsumerConfig{})
			require.NoError(t, err)
			defer func() { _ = c.Release(context.Background()) }()
			ids := addAll(t, q, orderTasks(10, 1))
			target := ids[9]
			ts, err := c.Claim(ctx, 5)
			require.NoError(t, err)
			where, err := q.Cancel(ctx, 1, target)
			require.NoError(t, err)
			require.Equal(t, StateUnknown, where)
			require.NoError(t, c.Requeue(ctx, ts...)) // taken -5, bound 5
			if v == "" {
				s.do(t, "HDEL", k.meta, markTakenField)
			} else {
				s.do(t, "HSET", k.meta, markTakenField, v)
			}
			seen := claimAll(t, c, 5, nil)
			assert.Len(t, seen, 9)
			assert.False(t, seen[target], "the marked task is never handed out")
			noMarksNorClaims(t, s, k)
		})
	}
}

// An end size without a first seq that reads is no claimed end (as the
// claim script reads it): those entries are still to be taken, inside
// the bound.
func TestCancelMarkBoundWithEndSizeAlone(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer func() { _ = c.Release(context.Background()) }()
	ids := addAll(t, q, orderTasks(10, 1))
	target := ids[7]
	s.do(t, "HSET", k.meta, endSizeField, "5")
	where, err := q.Cancel(ctx, 1, target)
	require.NoError(t, err)
	require.Equal(t, StateUnknown, where)
	seen := claimAll(t, c, 5, nil)
	assert.Len(t, seen, 9)
	assert.False(t, seen[target], "the marked task is never handed out")
}

// More stray marks than one claim drops (scriptChunk): the claim that
// passes the bound drops that many, and the next bound the rest.
func TestCancelManyStrayMarksUnderABacklog(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	// A lease taken drops the bound. It must last through the 1,001
	// Cancel calls below, which on a loaded host under -race take longer
	// than the default 5s: this consumer renews only when it claims.
	c, err := q.Consume(ctx, 0, ConsumerConfig{LeaseTTL: time.Minute})
	require.NoError(t, err)
	defer func() { _ = c.Release(context.Background()) }()
	addAll(t, q, orderTasks(10, 5))
	const strays = scriptChunk + 1
	for i := range strays {
		where, err := q.Cancel(ctx, 1, formatID(0x5eed, uint32(i)))
		require.NoError(t, err)
		require.Equal(t, StateUnknown, where)
	}
	addAll(t, q, orderTasks(10, 10))
	left := map[int]int{} // tasks claimed -> marks left
	seen := claimAll(t, c, 10, func(n int) {
		m, err := redis.Int(s.do(t, "HLEN", k.cancels), nil)
		require.NoError(t, err)
		left[n] = m
	})
	assert.Len(t, seen, 150)
	assert.Equal(t, strays, left[40], "no mark dropped before the bound")
	assert.Equal(t, 1, left[50], "the claim that passed the bound dropped scriptChunk of them")
	assert.Equal(t, 1, left[140], "the next bound is past the 100 added after them")
	assert.Equal(t, 0, left[150])
	assert.Zero(t, stats0(t, q).Cancelled)
	noMarksNorClaims(t, s, k)
}
