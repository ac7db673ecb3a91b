package queue

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Pending reads claim records, claims in place, and then claim lists, a
// part at a time (hashScanCount records, listReadFirst entries first,
// then up to listReadBytes): thousands of pending tasks over hundreds of
// claims, which the parts' bounds cut across, come back as one read of
// them all gives them, in claim order, without the finished ones.
func TestPendingReadInParts(t *testing.T) {
	t.Parallel()
	q, srv, k := testQueue1(t)
	ctx := context.Background()
	addAll(t, q, orderTasks(100, 30)) // 3000 tasks
	c := inPlaceConsumer(t, q, 0)
	var claimed []string
	// First 700 claims of a task each, through the script's own loop:
	// more claim records than one HSCAN of hashScanCount returns.
	c.st.native.Store(false)
	for range 700 {
		claimed = append(claimed, claimIDsOf(t, c, 1)...)
	}
	require.Greater(t, len(claimed), hashScanCount)
	c.st.native.Store(true)
	for len(claimed) < 2900 {
		got := claimIDsOf(t, c, 1000)
		require.NotEmpty(t, got)
		claimed = append(claimed, got...)
	}
	require.Greater(t, len(claimed), 4*listReadFirst)
	var acked, want []string
	for i, id := range claimed {
		if i%7 == 3 {
			acked = append(acked, id)
		} else {
			want = append(want, id)
		}
	}
	n, err := c.Ack(ctx, acked...)
	require.NoError(t, err)
	require.Equal(t, len(acked), n)
	pendingNow := func() []string {
		t.Helper()
		pend, err := q.Pending(ctx, 0)
		require.NoError(t, err)
		return taskIDs(pend)
	}
	size, ok := srv.do(t, "HGET", k.meta, endSizeField).([]byte)
	require.True(t, ok, "the claims are in place")
	require.NotEqual(t, "0", string(size))
	assert.Equal(t, want, pendingNow(), "claims in place")
	assert.ElementsMatch(t, want, pendingIDs(t, srv, k), "as one read gives them")

	require.NoError(t, c.st.openEnd(ctx))
	assert.Equal(t, []any{nil, nil}, srv.do(t, "HMGET", k.meta, endFirstField, endSizeField))
	assert.Equal(t, want, pendingNow(), "claim lists")
	assert.ElementsMatch(t, want, pendingIDs(t, srv, k), "as one read gives them")
}
