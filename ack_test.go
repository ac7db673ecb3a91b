package queue

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A cancel asked while a task is pending, whose task then finishes
// otherwise (acknowledged: it returned nil; dead-lettered: its last
// delivery failed), goes with the task: the task is not reported
// cancelled, and a replay of the dead letter runs it, as Cancel's
// contract for dead letters says (it leaves them).
func TestCancelMarkGoesWithItsFinishedTask(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	done, err := q.AddTask(ctx, 1, []byte("done"))
	require.NoError(t, err)
	dead, err := q.AddTask(ctx, 2, []byte("dead"))
	require.NoError(t, err)
	_, err = q.AddTask(ctx, 3, []byte("behind")) // the ready list never empties
	require.NoError(t, err)

	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 1})
	require.NoError(t, err)
	ts, err := c.Claim(ctx, 2)
	require.NoError(t, err)
	require.Len(t, ts, 2)
	for _, id := range []string{done, dead} {
		where, err := q.Cancel(ctx, 0, id) // the Consumer does not watch marks
		require.NoError(t, err)
		require.Equal(t, StatePending, where)
	}
	n, err := c.Ack(ctx, done)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	wentDead, err := c.Fail(ctx, ts[1], errors.New("boom"))
	require.NoError(t, err)
	require.True(t, wentDead)

	assert.Zero(t, s.do(t, "HEXISTS", k.cancels, done), "the acknowledged task's mark is left")
	assert.Zero(t, s.do(t, "HEXISTS", k.cancels, dead), "the dead letter's mark is left")
	st, err := q.Status(ctx, 1, done)
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, st.State, "a task that ran to its end is reported %v", st.State)

	replayed, err := q.Replay(ctx, 0, dead)
	require.NoError(t, err)
	require.Equal(t, 1, replayed)
	ts, err = c.Claim(ctx, 10)
	require.NoError(t, err)
	var ids []string
	for _, t := range ts {
		ids = append(ids, t.ID)
	}
	assert.Contains(t, ids, dead, "the replayed dead letter was cancelled by a mark of its earlier life")
	require.NoError(t, c.Release(ctx))
}

// lazyRetrying claims three tasks (of one OrderID) into a claim whose
// record holds no IDs, and fails the one at place, which has a retry
// record then.
func lazyRetrying(t *testing.T, place int) (*Consumer, []Task, *testServer, queueKeys) {
	t.Helper()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	addAll(t, q, orderTasks(1, 3))
	c := lazyConsumer(t, q)
	got, err := c.Claim(ctx, 3)
	require.NoError(t, err)
	dead, err := c.Fail(ctx, got[place], errors.New("once"))
	require.NoError(t, err)
	require.False(t, dead)
	require.Equal(t, int64(1), s.do(t, "HEXISTS", k.retries, got[place].ID))
	return c, got, s, k
}

// An ack of a task with a retry record, in a claim without IDs, deletes
// the retry record (found through the IDs the ack brings).
func TestLazyClaimAckDropsRetryRecords(t *testing.T) {
	t.Parallel()
	c, got, s, k := lazyRetrying(t, 1)
	assert.Equal(t, "#0/3", claimRecords(t, s, k)["0"])
	_, err := c.Ack(context.Background(), got[1].ID)
	require.NoError(t, err)
	assert.Zero(t, s.do(t, "HEXISTS", k.retries, got[1].ID))
}

// An ack that neither finds the IDs in the record nor is given them reads
// the acknowledged task's ID from the claim's list, to drop its retry
// record.
func TestLazyClaimAckReadsIDsFromTheList(t *testing.T) {
	t.Parallel()
	c, got, s, k := lazyRetrying(t, 2)
	n, err := c.st.ack(context.Background(), []ackRef{{claim: &claimBatch{record: "0"}, place: 2, id: got[2].ID}}, nil)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Zero(t, s.do(t, "HEXISTS", k.retries, got[2].ID))
	assert.Equal(t, "#0/3", claimRecords(t, s, k)["0"], "no IDs given: none written")
}
