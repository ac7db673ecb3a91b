package queue

import (
	"context"
	"errors"
	"strconv"
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

// A claim Redis moves itself takes more tasks than the script's own loop
// (maxMoved, not maxClaim), and its record holds their count until an ack
// writes their IDs: State, Status and Cancel find a task anywhere in it.
func TestLargeMovedClaimFoundBeforeItsIDs(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	if s.mini != nil {
		t.Skip("miniredis has no SORT: no claim is Redis's own move")
	}
	ctx := context.Background()
	const n = maxClaim + 200
	ids := addAll(t, q, orderTasks(1, n))
	c := movingConsumer(t, q)
	c.st.entrySize.Store(64)
	got, err := c.st.claim(ctx, n, 1<<30, false, nil)
	require.NoError(t, err)
	require.Len(t, got, n)
	require.Equal(t, map[string]string{"0": "#0/" + strconv.Itoa(n)}, claimRecords(t, s, k))

	last := ids[n-1]
	st, err := q.State(ctx, 0, last)
	require.NoError(t, err)
	assert.Equal(t, StatePending, st)
	status, err := q.Status(ctx, 0, last)
	require.NoError(t, err)
	assert.Equal(t, StatePending, status.State)
	st, err = q.Cancel(ctx, 0, last)
	require.NoError(t, err)
	assert.Equal(t, StatePending, st)
}
