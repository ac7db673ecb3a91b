package queue

import (
	"context"
	"testing"

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
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer c.Release(ctx)
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
