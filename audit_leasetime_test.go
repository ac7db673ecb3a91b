package queue

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// slowLeaseConn runs the first acquisition at once and hands its reply
// back only after slow; it refuses every later acquisition and every
// renewal unsent. taken is when the first acquisition was sent.
type slowLeaseConn struct {
	redis.Conn
	mu    *sync.Mutex
	tries *int
	taken *time.Time
	slow  time.Duration
}

func (c slowLeaseConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	switch scriptName(cmd, args) {
	case "acquire":
		c.mu.Lock()
		*c.tries++
		first := *c.tries == 1
		if first {
			*c.taken = time.Now()
		}
		c.mu.Unlock()
		if !first {
			return nil, errors.New("injected: acquisition refused")
		}
		r, err := redis.DoContext(c.Conn, ctx, cmd, args...)
		time.Sleep(c.slow)
		return r, err
	case "renew":
		return nil, errors.New("injected: renewal refused")
	}
	return redis.DoContext(c.Conn, ctx, cmd, args...)
}

func (c slowLeaseConn) ReceiveContext(ctx context.Context) (any, error) {
	return redis.ReceiveContext(c.Conn, ctx)
}

// A pool counts its lease from when it asked for it, not from when the
// answer came: Redis's clock started then. With the acquisition's reply
// slow and no renewal going through, no task starts after the lease
// expired in Redis, when a standby may have taken the queue over.
func TestAuditLeaseCountsFromTheAcquisition(t *testing.T) {
	const ttl = time.Second
	servers := newTestServers(t, 1)
	preloadScripts(t, servers[0].pool)
	var mu sync.Mutex
	var tries int
	var taken time.Time
	pool := servers[0].wrapPool(8, func(c redis.Conn) redis.Conn {
		return slowLeaseConn{Conn: c, mu: &mu, tries: &tries, taken: &taken, slow: ttl / 2}
	})
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	addAll(t, q, orderTasks(1, 2)) // one OrderID: the second starts when the first ends

	ctx, cancel := context.WithTimeout(context.Background(), 3*ttl)
	defer cancel()
	var smu sync.Mutex
	var starts []time.Time
	err = q.AnalysePool(ctx, 0, PoolConfig{Workers: 1, LeaseTTL: ttl, OnError: func(error) {}},
		func(context.Context, Task) error {
			smu.Lock()
			starts = append(starts, time.Now())
			smu.Unlock()
			time.Sleep(ttl * 6 / 10) // past the lease's expiry in Redis
			return nil
		})
	require.NoError(t, err)
	mu.Lock()
	expiry := taken.Add(ttl)
	mu.Unlock()
	smu.Lock()
	defer smu.Unlock()
	require.NotEmpty(t, starts, "the first task starts")
	for i, at := range starts {
		assert.True(t, at.Before(expiry), "task start %d came %v after the lease expired in Redis", i+1, at.Sub(expiry))
	}
}
