package queue

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A script that takes many tasks of one claim looks at the claim's keys
// once, and counts and finishes the claim at its end (luaTake): a task
// named twice in one call is put back once, the count of pending tasks
// falls by the tasks taken, and the claim's keys go once every place is
// taken, as when each was taken by a call of its own.
func TestRequeueTakesEachPlaceOnce(t *testing.T) {
	q, srv, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(3, 2))
	c := inPlaceConsumer(t, q, 0)
	require.Len(t, claimIDsOf(t, c, 6), 6)
	require.NoError(t, c.st.openEnd(ctx)) // claim lists, as recovery reads them
	got, err := readPending(ctx, c.st.part, c.st.keys, "test", false)
	require.NoError(t, err)
	require.Len(t, got.recs, 6)
	var put []claimed
	for _, r := range got.recs[:4] {
		put = append(put, r.claimed)
		if r.place%2 == 1 {
			put = append(put, r.claimed) // again, in the same call
		}
	}
	require.Len(t, put, 6)
	require.NoError(t, c.st.requeue(ctx, put, true))
	ready := srv.do(t, "LRANGE", k.ready, 0, -1).([]any)
	var back []string
	for i := len(ready) - 1; i >= 0; i-- { // consuming end first
		tk, _, err := decodeEntry(ready[i].([]byte))
		require.NoError(t, err)
		back = append(back, tk.ID)
	}
	assert.Equal(t, ids[:4], back, "each once, first given first claimed")
	stats, err := q.Stats(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 2, stats[0].Pending)
	assert.EqualValues(t, 4, stats[0].Redelivered)
	assert.ElementsMatch(t, ids[4:], pendingIDs(t, srv, k))

	// The last two, each named twice: the claim is finished, its keys go.
	rest := []claimed{got.recs[4].claimed, got.recs[5].claimed, got.recs[4].claimed, got.recs[5].claimed}
	require.NoError(t, c.st.requeue(ctx, rest, true))
	stats, err = q.Stats(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 0, stats[0].Pending)
	assert.EqualValues(t, 6, stats[0].Redelivered)
	assert.Empty(t, pendingIDs(t, srv, k))
	assert.EqualValues(t, 0, srv.do(t, "HLEN", k.claims), "no claim record left")
	l := claimListKey(k, got.recs[0].claim.record)
	assert.EqualValues(t, 0, srv.do(t, "EXISTS", l, l+":done"), "the claim's list and bitmap are gone")
}
