package queue

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A claim moves due tasks to the ready list up to scriptBytes of them (at
// least one however large): large tasks falling due together are moved
// over several claims, earliest first, so that no claim holds Redis for
// long (400 tasks of 1 MiB due at once held it 2.4s in one claim).
func TestClaimMovesDueTasksInBoundedBytes(t *testing.T) {
	t.Parallel()
	const size = scriptBytes/2 + 1 // two do not fit
	q, _ := newTestQueue(t, 1, Config{MaxPayload: size})
	ctx := bounded(t)
	base := time.Now().Add(2 * time.Second) // the adds of large tasks take a while under -race
	var ids []string
	for i := range 3 {
		id, err := q.AddTaskAt(ctx, uint64(i), base.Add(time.Duration(i)*time.Millisecond), bytes.Repeat([]byte{byte('a' + i)}, size))
		require.NoError(t, err)
		ids = append(ids, id)
	}
	require.Equal(t, int64(3), stats0(t, q).Scheduled)
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer c.Release(ctx)
	time.Sleep(time.Until(base.Add(5 * time.Millisecond)))
	var got []string
	for i := range 3 {
		ts, err := c.Claim(ctx, 10)
		require.NoError(t, err)
		require.Equal(t, 1, len(ts), "claim %d took more than one due task", i)
		got = append(got, ts[0].ID)
		assert.Equal(t, int64(2-i), stats0(t, q).Scheduled, "after claim %d", i)
		_, err = c.Ack(ctx, ts[0].ID)
		require.NoError(t, err)
	}
	assert.Equal(t, ids, got, "due tasks moved out of due order")
}
