package queue

import (
	"context"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A claim record holds its tasks' IDs back to back: a string that is not
// a whole task ID (empty, or the start of one) must not match a place
// there. State and Status answered pending for "" and for the first half
// of a pending task's ID, with that task's OrderID.
func TestStatusMatchesOnlyWholeTaskIDs(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx := context.Background()
	id, err := q.AddTask(ctx, 7, []byte("x"))
	require.NoError(t, err)
	c := consumeFirst(t, q)
	got, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Len(t, got, 1)

	st, err := q.State(ctx, 7, id)
	require.NoError(t, err)
	require.Equal(t, StatePending, st)
	for _, bogus := range []string{"", id[:10], id[:idLen-1]} {
		st, err := q.State(ctx, 7, bogus)
		require.NoError(t, err)
		assert.Equal(t, StateUnknown, st, "State(%q)", bogus)
		status, err := q.Status(ctx, 7, bogus)
		require.NoError(t, err)
		assert.Equal(t, StateUnknown, status.State, "Status(%q)", bogus)
		assert.Zero(t, status.OrderID, "Status(%q)", bogus)
	}
}

// A claim record whose value was overwritten with one that is not a
// claim record's (no '#') still leads, by its field, to its claim list:
// recovery put back nothing of it and deleted the list, and its tasks
// were lost.
func TestRecoveryFindsClaimListOfARecordOverwrittenWithOtherFormat(t *testing.T) {
	t.Parallel()
	for name, value := range map[string]string{
		"garbage":      "garbage",
		"bare task ID": "zzz00000000000000000",
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			q, s, k := testQueue1(t)
			ctx := context.Background()
			ids := addAll(t, q, orderTasks(1, 3))
			c, err := q.Consume(ctx, 0, ConsumerConfig{})
			require.NoError(t, err)
			got, err := c.Claim(ctx, 3)
			require.NoError(t, err)
			require.Equal(t, ids, taskIDs(got))
			s.do(t, "HSET", k.claims, "0", value)
			lapse(t, s, k.lease) // the crash

			r := newRecorder()
			require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{ExitOnEmpty: true}, r.fn(nil)))
			assert.Equal(t, []string{pl(0, 0), pl(0, 1), pl(0, 2)}, r.order(0), "in claim order")
			st := stats0(t, q)
			assert.Equal(t, int64(3), st.Processed)
			assert.Zero(t, st.Pending)
			assert.Zero(t, s.do(t, "EXISTS", k.pending, k.claims, claimListKey(k, "0"), claimDoneKey(k, "0")))
		})
	}
}

// A claim count (the meta hash's seq) set back by hand to the first seq
// of a claim record still pending made the next claim delete that
// record's list, losing its tasks. The claim now goes after every claim
// record, so that none is overwritten and recovery keeps the order. (A
// count set back between two firsts goes unseen: the claim cannot tell
// without reading every record.)
func TestClaimAfterSeqSetBackKeepsEveryClaim(t *testing.T) {
	t.Parallel()
	for name, seq := range map[string]string{"to 0": "0", "deleted": ""} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			q, s, k := testQueue1(t)
			ctx := context.Background()
			addAll(t, q, orderTasks(1, 3))
			c, err := q.Consume(ctx, 0, ConsumerConfig{})
			require.NoError(t, err)
			got, err := c.Claim(ctx, 3)
			require.NoError(t, err)
			require.Len(t, got, 3)
			if seq == "" {
				s.do(t, "HDEL", k.meta, "seq")
			} else {
				s.do(t, "HSET", k.meta, "seq", seq)
			}
			_, err = q.AddTasks(ctx, []Task{{OrderID: 0, Payload: []byte(pl(0, 3))}, {OrderID: 0, Payload: []byte(pl(0, 4))}})
			require.NoError(t, err)
			got, err = c.Claim(ctx, 2)
			require.NoError(t, err)
			require.Len(t, got, 2)
			assert.Len(t, pendingOf(t, s, k), 5, "both claims pending")
			assert.Equal(t, int64(5), stats0(t, q).Pending)
			lapse(t, s, k.lease) // the crash

			r := newRecorder()
			require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{ExitOnEmpty: true}, r.fn(nil)))
			assert.Equal(t, []string{pl(0, 0), pl(0, 1), pl(0, 2), pl(0, 3), pl(0, 4)}, r.order(0), "in claim order")
			st := stats0(t, q)
			assert.Equal(t, int64(5), st.Processed)
			assert.Zero(t, st.Pending)
			assert.Zero(t, s.do(t, "EXISTS", k.claims))
		})
	}
}

// The meta hash's count of tasks in claim records is Stats' pending
// count: once wrong (written by hand), it stayed wrong forever, a drained
// queue reporting tasks pending. Recovery, which knows what is left
// pending, sets it.
func TestRecoverySetsThePendingCount(t *testing.T) {
	t.Parallel()
	for name, v := range map[string]string{"too high": "10", "too low": "1", "garbage": "x"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			q, s, k := testQueue1(t)
			ctx := context.Background()
			addAll(t, q, orderTasks(3, 2))
			c, err := q.Consume(ctx, 0, ConsumerConfig{})
			require.NoError(t, err)
			got, err := c.Claim(ctx, 3)
			require.NoError(t, err)
			require.Len(t, got, 3)
			s.do(t, "HSET", k.meta, "pending", v)
			lapse(t, s, k.lease) // the crash

			c, err = q.Consume(ctx, 0, ConsumerConfig{})
			require.NoError(t, err)
			assert.Zero(t, stats0(t, q).Pending, "all put back")
			got, err = c.Claim(ctx, 2)
			require.NoError(t, err)
			require.Len(t, got, 2)
			assert.Equal(t, int64(2), stats0(t, q).Pending)
			require.NoError(t, c.Release(ctx))
		})
	}
}

// Bits set in a claim's done bitmap past its last place (only someone
// overwriting the bitmap sets them) finish nothing: an ack of one task
// does not delete the claim's others, nor does recovery's first requeue.
func TestDoneBitsPastTheLastPlaceFinishNothing(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"ack", "recovery"} {
		t.Run(how, func(t *testing.T) {
			q, s, k := testQueue1(t)
			ctx := bounded(t)
			ids := addAll(t, q, orderTasks(3, 4))
			c, err := q.Consume(ctx, 0, ConsumerConfig{Owner: "a", LeaseTTL: time.Minute})
			require.NoError(t, err)
			got, err := c.Claim(ctx, 100)
			require.NoError(t, err)
			require.Len(t, got, 12)
			firsts, err := redis.Strings(s.do(t, "HKEYS", k.claims), nil)
			require.NoError(t, err)
			require.Len(t, firsts, 1)
			s.do(t, "SET", claimDoneKey(k, firsts[0]), "\x00\x00\xff\xff\xff\xff") // places 16-47 of 12
			want := ids
			if how == "ack" {
				_, err = c.Ack(ctx, got[0].ID)
				require.NoError(t, err)
				want = ids[1:]
				assert.EqualValues(t, 12, s.do(t, "LLEN", claimListKey(k, firsts[0])), "the claim stays")
				pending, err := q.Pending(ctx, 0)
				require.NoError(t, err)
				assert.Len(t, pending, 11)
			}
			lapse(t, s, k.lease) // the owner crashed
			rec := newRecorder()
			require.NoError(t, q.AnalysePool(ctx, 0, PoolConfig{Workers: 2, ExitOnEmpty: true}, rec.fn(nil)))
			for _, id := range want {
				assert.Equal(t, 1, rec.starts[id], "task %s", id)
			}
			assert.Equal(t, len(want), rec.total())
			assert.Zero(t, s.do(t, "EXISTS", claimListKey(k, firsts[0]), claimDoneKey(k, firsts[0])), "the claim is finished and gone")
		})
	}
}
