package queue

import (
	"context"
	"testing"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCheckLayout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, servers := newTestQueue(t, 2, Config{Queues: 2})
	layout := layoutKey(q.cfg.Prefix)

	// Nothing recorded: the check passes and records nothing.
	require.NoError(t, q.CheckLayout(ctx))
	for _, s := range servers {
		assert.Equal(t, int64(0), s.do(t, "EXISTS", layout))
	}

	// Recorded by a write, the same layout passes.
	_, err := q.AddTasks(ctx, []Task{{OrderID: 0, Payload: []byte("a")}, {OrderID: 1, Payload: []byte("b")}})
	require.NoError(t, err)
	require.NoError(t, q.CheckLayout(ctx))

	pools := []*redis.Pool{servers[0].pool, servers[1].pool}
	for name, c := range map[string]struct {
		pools  []*redis.Pool
		queues int
		got    string // the layout the first disagreeing server has
	}{
		"other Q":         {pools, 1, "partitions=2 queues=2 index=0"},
		"other R":         {pools[:1], 2, "partitions=2 queues=2 index=0"},
		"servers swapped": {[]*redis.Pool{pools[1], pools[0]}, 2, "partitions=2 queues=2 index=1"},
	} {
		other, err := New(c.pools, Config{Prefix: q.cfg.Prefix, Queues: c.queues})
		require.NoError(t, err)
		err = other.CheckLayout(ctx)
		assert.ErrorIs(t, err, ErrLayoutMismatch, name)
		var le *LayoutError
		if assert.ErrorAs(t, err, &le, name) {
			assert.Equal(t, c.got, le.Got, name)
		}
	}
}
