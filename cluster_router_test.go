package queue

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The router's own behaviour on a real cluster: pipelines over many slots,
// and a slot that moves under a queue in use.

// clusterQueue dials one partition with q queues on c.
func clusterQueue(t *testing.T, c *redisCluster, queues int) *Queue {
	t.Helper()
	q, err := Dial(context.Background(), []string{c.url()}, Config{Prefix: testPrefix(t), Queues: queues})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	return q
}

// TestClusterRouter runs the router's checks on one 3-primary cluster.
func TestClusterRouter(t *testing.T) {
	c := startCluster(t, 3, 0)

	// One pipeline of commands on keys of many slots: each goes to its
	// primary, and the replies come back in the order sent.
	t.Run("pipeline", func(t *testing.T) {
		q := clusterQueue(t, c, 1)
		conn := q.Pool(0).Get()
		defer conn.Close()
		const n = 300
		for i := range n {
			require.NoError(t, conn.Send("SET", fmt.Sprintf("%s:k%d", q.cfg.Prefix, i), i))
			require.NoError(t, conn.Send("GET", fmt.Sprintf("%s:k%d", q.cfg.Prefix, i)))
		}
		require.NoError(t, conn.Flush())
		for i := range n {
			ok, err := redis.String(conn.Receive())
			require.NoError(t, err)
			require.Equal(t, "OK", ok)
			v, err := redis.Int(conn.Receive())
			require.NoError(t, err)
			require.Equal(t, i, v, "reply %d out of order", i)
		}
		// Every primary took some: the keys were spread, not sent to one.
		for _, p := range c.primaries() {
			keys, err := redis.Strings(c.do(p, "KEYS", q.cfg.Prefix+":k*"))
			require.NoError(t, err)
			assert.NotEmpty(t, keys, "primary %d got no key", p.port)
		}
		// A command with no key to route by, and connection state, are refused.
		_, err := conn.Do("CLIENT", "ID")
		assert.ErrorContains(t, err, "not supported on a Redis Cluster")
	})

	// A queue's slot moves to another primary while tasks are added one by
	// one: the adds before it reach the source, those during it follow ASK
	// (or wait out TRYAGAIN), those after it follow MOVED; all are on the
	// new primary afterwards, in the order added, and the map followed.
	t.Run("migration", func(t *testing.T) {
		q := clusterQueue(t, c, 1)
		ctx := context.Background()
		k := newQueueKeys(q.cfg.Prefix, 0, 0)
		src := c.primaryOf(k.ready)
		var dst *redisProc
		for _, p := range c.primaries() {
			if p.port != src.port {
				dst = p
				break
			}
		}
		var ids []string
		add := func(n int) {
			for range n {
				id, err := q.AddTask(ctx, 1, []byte("x"))
				require.NoError(t, err)
				ids = append(ids, id)
			}
		}
		add(50)
		// A key of the slot per batch, slowly, while adds go on.
		for i := range 20 {
			_, err := redis.Int(c.do(src, "HSET", fmt.Sprintf("{%s:0.0}:filler%d", q.cfg.Prefix, i), "f", 1))
			require.NoError(t, err)
		}
		var stop atomic.Bool
		done := make(chan []string)
		go func() {
			var during []string
			for !stop.Load() {
				id, err := q.AddTask(ctx, 1, []byte("x"))
				if err != nil {
					t.Error(err)
					break
				}
				during = append(during, id)
			}
			done <- during
		}()
		moved := c.migrateSlot(keySlot(k.ready), dst, 2, 20*time.Millisecond)
		stop.Store(true)
		ids = append(ids, <-done...)
		add(50)
		assert.Positive(t, moved)
		got, err := redis.ByteSlices(c.do(dst, "LRANGE", k.ready, 0, -1))
		require.NoError(t, err)
		var gotIDs []string
		for i := len(got) - 1; i >= 0; i-- {
			task, _, err := decodeEntry(got[i])
			require.NoError(t, err)
			gotIDs = append(gotIDs, task.ID)
		}
		assert.Equal(t, ids, gotIDs, "every task on the new primary, once, in order")
		assert.Equal(t, dst.addr(), q.parts[0].router.slots.Load().addrOf(keySlot(k.ready)), "the map follows the move")
	})

	// An idle pool waits on its queue's primary; the slot moves; a task
	// added afterwards reaches the pool on the new primary.
	t.Run("idle pool follows a move", func(t *testing.T) {
		q := clusterQueue(t, c, 1)
		k := newQueueKeys(q.cfg.Prefix, 0, 0)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		got := make(chan Task, 1)
		poolDone := make(chan error, 1)
		go func() {
			poolDone <- q.AnalysePool(ctx, 0, PoolConfig{Workers: 1, LeaseTTL: 2 * time.Second}, func(_ context.Context, task Task) error {
				got <- task
				return nil
			})
		}()
		require.Eventually(t, func() bool {
			v, err := q.Stats(ctx)
			return err == nil && v[0].Owner != ""
		}, 10*time.Second, 10*time.Millisecond)
		src := c.primaryOf(k.ready)
		var dst *redisProc
		for _, p := range c.primaries() {
			if p.port != src.port {
				dst = p
			}
		}
		c.migrateSlot(keySlot(k.ready), dst, 10, 0)
		id, err := q.AddTask(context.Background(), 5, []byte("after the move"))
		require.NoError(t, err)
		select {
		case task := <-got:
			assert.Equal(t, id, task.ID)
		case <-time.After(10 * time.Second):
			t.Fatal("the idle pool did not get the task added after its slot moved")
		}
		cancel()
		require.NoError(t, <-poolDone)
	})

	// A pool warns when the primary that holds its queue may evict keys,
	// whichever primary a keyless CONFIG would have reached.
	t.Run("eviction warning asks the queue's primary", func(t *testing.T) {
		q := clusterQueue(t, c, 1)
		home := c.primaryOf(newQueueKeys(q.cfg.Prefix, 0, 0).ready)
		warned := func() bool {
			var buf bytes.Buffer
			log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
			require.NoError(t, q.AnalysePool(context.Background(), 0, PoolConfig{ExitOnEmpty: true, Logger: log},
				func(context.Context, Task) error { return nil }))
			return strings.Contains(buf.String(), "may evict keys")
		}
		set := func(n *redisProc, policy string) {
			_, err := c.do(n, "CONFIG", "SET", "maxmemory-policy", policy)
			require.NoError(t, err)
		}
		for _, p := range c.primaries() {
			if p.port != home.port {
				set(p, "allkeys-lru")
				defer set(p, "noeviction")
			}
		}
		assert.False(t, warned(), "a warning about another primary")
		set(home, "allkeys-lru")
		defer set(home, "noeviction")
		assert.True(t, warned(), "no warning about the queue's own primary")
	})

	// Many callers meet a MOVED at once: while a refresh of the map is
	// under way, no other starts; callers that need the map wait for it.
	t.Run("one refresh at a time", func(t *testing.T) {
		q := clusterQueue(t, c, 1)
		r := q.parts[0].router
		primaries := c.primaries() // asks CLUSTER SHARDS too: before counting
		calls := func() (n int) {
			for _, p := range primaries {
				info, err := redis.String(c.do(p, "INFO", "commandstats"))
				require.NoError(t, err)
				var k int
				if i := strings.Index(info, "cmdstat_cluster|shards:calls="); i >= 0 {
					fmt.Sscanf(info[i:], "cmdstat_cluster|shards:calls=%d", &k)
				}
				n += k
			}
			return n
		}
		before := calls()
		done, start := r.startRefresh() // this test runs the refresh
		require.True(t, start)
		var wg sync.WaitGroup
		for range 100 {
			wg.Go(r.refreshAsync) // one is under way: each starts none
		}
		wg.Wait()
		short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		assert.ErrorIs(t, r.refresh(short), context.DeadlineExceeded, "a caller that needs the map waits for the refresh under way")
		r.runRefresh(context.Background(), done)
		require.NoError(t, r.refresh(context.Background()))
		assert.Equal(t, 2, calls()-before, "100 callers during one reading of the map, then one more reading")
	})
}
