package main

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pendingScenario gives analyser 1 of a 2x1 queue two pending tasks (in
// claim order: orders 1, 3) and one ready (order 5).
func pendingScenario(t *testing.T) (*fixture, []string) {
	t.Helper()
	f := newFixture(t, 2, 1)
	ids := f.add(t, 1, 3, 5, 0)
	c := f.consume(t, 1)
	tasks, err := c.Claim(context.Background(), 2)
	require.NoError(t, err)
	require.Len(t, tasks, 2)
	return f, ids[:2]
}

func TestPendingJSON(t *testing.T) {
	t.Parallel()
	f, ids := pendingScenario(t)
	doc := qugoJSON[pendingDoc](t, f.args("pending", "-a", "1", "-json")...)
	assert.Equal(t, 1, doc.Analyser)
	assert.Equal(t, 1, doc.Partition)
	assert.Equal(t, 0, doc.Queue)
	require.Len(t, doc.Tasks, 2)
	for i, order := range []uint64{1, 3} {
		p := doc.Tasks[i]
		assert.Equal(t, ids[i], p.ID)
		assert.Equal(t, order, p.OrderID)
		assert.Equal(t, 1, p.Attempt)
		assert.Equal(t, []byte("task-"+itoa(order)), p.Payload)
		assert.Equal(t, fixtureHeaders(order), p.Headers)
		if assert.NotNil(t, p.AddedAt) {
			assert.WithinDuration(t, time.Now(), *p.AddedAt, time.Minute)
		}
		assert.GreaterOrEqual(t, p.AgeMS, int64(0))
	}

	empty := qugoJSON[map[string]any](t, f.args("pending", "-a", "0", "-json")...)
	assert.Equal(t, []any{}, empty["tasks"], "an empty list is [], not null")
	for _, k := range []string{"analyser", "partition", "queue", "time", "tasks"} {
		assert.Contains(t, empty, k)
	}
}

func TestPendingTable(t *testing.T) {
	t.Parallel()
	f, ids := pendingScenario(t)
	code, out, errOut := qugo(t, f.args("pending", "-a", "1")...)
	require.Equal(t, exitOK, code, errOut)
	rows := tableRows(out)
	require.Len(t, rows, 3)
	assert.Equal(t, []string{"ID", "ORDER", "ATTEMPT", "ADDED", "AT", "AGE", "BYTES"}, rows[0])
	for i, order := range []string{"1", "3"} {
		require.Len(t, rows[i+1], 6)
		assert.Equal(t, []string{ids[i], order, "1"}, rows[i+1][:3])
		_, err := time.Parse(time.RFC3339, rows[i+1][3])
		assert.NoError(t, err)
		assert.Equal(t, "6", rows[i+1][5]) // len("task-1")
	}
}
