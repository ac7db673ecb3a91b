package queue

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

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
