package queue

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/require"
)

// Bug: a pool declared its own lease lost when the resync that follows a
// failed claim gave the lease a new fencing token while the acker's call
// deleting a finished claim's sequence record (sent after a dead letter,
// which the resync did not wait for: acks.unconfirmed counted acks only)
// was still on its way with the old value. (Since, the dead letter
// finishes its claim record itself; the test holds up that call.) The script refuses it as stale,
// the acker takes the lease as lost, and the pool drops its tenure and
// waits out its own lease as a standby. Here the acker's call is held up
// until the refence has run, as a slow network would.
func TestAuditResyncRefenceRacesClaimsOnlyAck(t *testing.T) {
	servers := newTestServers(t, 1)
	preloadScripts(t, servers[0].pool) // one call per script call: no NOSCRIPT, no EVAL
	var (
		claims      atomic.Int32
		acks        atomic.Int32
		refences    atomic.Int32
		ackSent     atomic.Bool
		claimFailed = make(chan struct{})
	)
	pool := hookPool(servers[0], func(script string, args []any) error {
		switch script {
		case "claim":
			if claims.Add(1) == 2 {
				close(claimFailed)
				return errors.New("injected: claim refused")
			}
		case "refence":
			refences.Add(1)
		case "ack", "bury":
			// The pool's first call that finishes a task (here the dead
			// letter, which finishes its claim record too). Its args:
			// sha, the key count, the keys, the lease value, ...
			nk, _ := args[1].(int)
			if len(args) > 2+nk && acks.Add(1) == 1 {
				// Held up until the lease value it carries has changed
				// (or 2s: a resync that waits for this call never comes).
				lease := newQueueKeys(testPrefix(t), 0, 0).lease
				for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
					v, _ := redis.String(servers[0].do(t, "GET", lease), nil)
					if v != args[2+nk] {
						break
					}
				}
				ackSent.Store(true)
			}
		}
		return nil
	})
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = q.AddTask(ctx, 1, []byte("dies"))
	require.NoError(t, err)

	var mu sync.Mutex
	var lost []error
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- q.AnalysePool(runCtx, 0, PoolConfig{
			Workers: 1, MaxAttempts: 1, LeaseTTL: 2 * time.Second,
			OnError: func(err error) {
				if errors.Is(err, ErrLeaseLost) {
					mu.Lock()
					lost = append(lost, err)
					mu.Unlock()
				}
			},
		}, func(ctx context.Context, t Task) error {
			<-claimFailed // the fetcher now owes a resync
			return errors.New("poison")
		})
	}()
	require.Eventually(t, func() bool { return refences.Load() > 0 && ackSent.Load() }, 10*time.Second, 5*time.Millisecond)
	time.Sleep(300 * time.Millisecond) // what follows the two calls runs meanwhile
	stop()
	require.NoError(t, <-done)
	mu.Lock()
	defer mu.Unlock()
	require.Empty(t, lost, "the pool held its lease throughout, yet declared it lost")
}

// Bug: one lost reply to the refence that a Consumer's Claim makes after a
// failed claim costs it the lease for good. Redis gave the lease its new
// value, the Consumer never learnt it, and its next Claim refences with the
// old value and gets ErrLeaseLost, while the lease, still unexpired, is
// held by nobody else: a transient error ends the tenure (AnalysePool's
// resync does the same, and then waits out its own lease as a standby).
func TestAuditLostRefenceReplyCostsTheLease(t *testing.T) {
	servers := newTestServers(t, 1)
	preloadScripts(t, servers[0].pool)
	var claims, refences atomic.Int32
	pool := hookPool(servers[0], func(script string, args []any) error {
		switch script {
		case "claim":
			if claims.Add(1) == 1 {
				return errors.New("injected: claim refused")
			}
		case "refence":
			if refences.Add(1) == 1 {
				servers[0].do(t, "EVALSHA", args...) // it runs; its reply is lost
				return errors.New("injected: reply lost")
			}
		}
		return nil
	})
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	ctx := context.Background()
	_, err = q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	c, err := q.Consume(ctx, 0, ConsumerConfig{LeaseTTL: 10 * time.Second})
	require.NoError(t, err)
	defer c.Release(ctx)
	_, err = c.Claim(ctx, 1)
	require.Error(t, err, "the injected claim failure")
	_, err = c.Claim(ctx, 1)
	require.Error(t, err, "the refence whose reply was lost")
	got, err := c.Claim(ctx, 1)
	require.NoError(t, err, "nobody else holds the lease: a retry must go on")
	require.Len(t, got, 1)
}
