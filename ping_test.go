package queue

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPing(t *testing.T) {
	t.Parallel()
	q, servers := newTestQueue(t, 2, Config{})
	ctx := context.Background()
	require.NoError(t, q.Ping(ctx))
	if servers[1].mini == nil {
		return // stopping the shared real server is not this test's to do
	}
	servers[1].mini.Close()
	err := q.Ping(ctx)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "queue: ping partition 1")
}
