package queue

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Tests of the fault suite's recording connection (recConn, faultlog_test.go).

// TestRecConnRecordsLeaseTokens takes a lease and acks a task through a
// recording connection: the lease grant and the ack in the history carry
// the lease's fencing token, which the checker compares across processes
// to find stale starts and late acks.
func TestRecConnRecordsLeaseTokens(t *testing.T) {
	ctx := context.Background()
	s := newTestServers(t, 1)[0]
	h, err := openHistory(filepath.Join(t.TempDir(), "h.jsonl"))
	require.NoError(t, err)
	t.Cleanup(func() { h.f.Close() })
	pool := &redis.Pool{DialContext: func(ctx context.Context) (redis.Conn, error) {
		c, err := redis.DialURLContext(ctx, s.url)
		if err != nil {
			return nil, err
		}
		return &recConn{Conn: c, h: h}, nil
	}}
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })

	_, err = q.AddTask(ctx, 7, []byte("x"))
	require.NoError(t, err)
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	tasks, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Len(t, tasks, 1)
	_, err = c.Ack(ctx, tasks[0].ID)
	require.NoError(t, err)
	require.NoError(t, c.Release(ctx))

	require.Positive(t, c.Token())
	evs, err := readHistory(h.f.Name())
	require.NoError(t, err)
	var got []faultEvent
	for _, e := range evs {
		got = append(got, faultEvent{Ev: e.Ev, Token: e.Token, Result: e.Result, N: e.N})
	}
	assert.Equal(t, []faultEvent{
		{Ev: evLease, Token: c.Token()},
		{Ev: evAck, Token: c.Token(), Result: "ok", N: 1},
	}, got)
}
