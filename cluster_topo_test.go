package queue

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Tests of a queue on a real Redis Cluster: where its queues live, and
// how the router follows the cluster's redirections. They start their
// own cluster (clusterenv_test.go), or use the one QUEUE_TEST_REDIS_URL
// names where they change nothing in it.

// TestClusterQueuesSpreadOverPrimaries adds tasks to every queue of a
// queue of R=2 partitions and Q=8 queues on a 3-primary cluster, and
// finds each queue's tasks on the primary that serves its slot, and only
// there, with every primary holding some of the queues.
func TestClusterQueuesSpreadOverPrimaries(t *testing.T) {
	url := testRedisURL
	if !testOnCluster {
		url = startCluster(t, 3, 1).url()
	}
	const r, queues = 2, 8
	ctx := context.Background()
	// A fixed prefix, so that where its queues hash is known: on a cluster
	// whose slots are split evenly over three primaries, 4, 6 and 6 of its
	// 16 queues on each.
	const prefix = "qt:spread"
	q, err := Dial(ctx, []string{url, url}, Config{Prefix: prefix, Queues: queues})
	require.NoError(t, err)
	defer q.Close()
	forget := func() { // this test's keys, left by an earlier run or by this one
		for pi := range r {
			_, err := onPartition(ctx, q.parts[pi], "forget", func(c redis.Conn) (any, error) {
				args := []any{q.layoutKeyOf(q.parts[pi])}
				_, err := c.Do("DEL", args...)
				for qi := range queues {
					k := newQueueKeys(prefix, pi, qi)
					if err == nil {
						_, err = c.Do("DEL", k.ready, k.pending, k.claims, k.dead, k.lease, k.meta, k.wake)
					}
				}
				return nil, err
			})
			require.NoError(t, err)
		}
	}
	forget()
	defer forget()
	var tasks []Task
	for id := range uint64(r * queues) {
		tasks = append(tasks, Task{OrderID: id, Payload: []byte(fmt.Sprint(id))})
	}
	ids, err := q.AddTasks(ctx, tasks)
	require.NoError(t, err)

	router := q.parts[0].router
	require.NotNil(t, router, "a partition on a cluster is a cluster pool")
	m := router.slots.Load()
	require.Len(t, m.primaries, 3)
	perPrimary := map[string]int{}
	for a := range r * queues {
		pi, qi, err := q.Layout().Serves(a)
		require.NoError(t, err)
		k := newQueueKeys(prefix, pi, qi)
		owner := m.addrOf(keySlot(k.ready))
		perPrimary[owner]++
		for _, addr := range m.primaries { // each primary itself, not routed
			c, err := redis.Dial("tcp", addr, redis.DialReadTimeout(5*time.Second))
			require.NoError(t, err)
			raw, err := redis.ByteSlices(c.Do("LRANGE", k.ready, 0, -1))
			c.Close()
			if addr != owner {
				assert.ErrorContains(t, err, "MOVED", "analyser %d's queue read on %s, which does not serve it", a, addr)
				continue
			}
			require.NoError(t, err)
			require.Len(t, raw, 1, "analyser %d's queue on %s", a, addr)
			task, _, err := decodeEntry(raw[0])
			require.NoError(t, err)
			assert.Equal(t, ids[task.OrderID], task.ID, "analyser %d", a)
			assert.EqualValues(t, a, q.AnalyserOf(task.OrderID))
		}
	}
	t.Logf("queues per primary: %v", perPrimary)
	assert.Len(t, perPrimary, 3, "every primary serves some of the queues")
}

// TestClusterRouterFollowsRedirections migrates a slot as
// redis-cli --cluster reshard does and sends commands through the
// router at each step: a key created while the slot is MIGRATING goes to
// the target by ASK, and after the move every command follows MOVED. No
// command may take longer than a round trip or two, or fail.
func TestClusterRouterFollowsRedirections(t *testing.T) {
	c := startCluster(t, 3, 1)
	r, pool := routerOn(t, c)
	do := func(cmd string, args ...any) (any, error) {
		conn := pool.Get()
		defer conn.Close()
		start := time.Now()
		reply, err := conn.Do(cmd, args...)
		assert.Less(t, time.Since(start), time.Second, "%s %v took %v", cmd, args, time.Since(start))
		return reply, err
	}

	const old, fresh = "{ask}:old", "{ask}:fresh" // one slot
	_, err := do("SET", old, "1")
	require.NoError(t, err)
	slot := c.slotOf(old)
	src := c.primaryOf(old)
	dst := c.primaries()[0]
	if dst.port == src.port {
		dst = c.primaries()[1]
	}
	srcID, dstID := c.id(src), c.id(dst)
	c.must(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", srcID)
	c.must(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dstID)

	// MIGRATING: a key the source has is served there; one it has not
	// goes to the target after ASK.
	n, err := redis.Int(do("INCR", old))
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	n, err = redis.Int(do("RPUSH", fresh, "a"))
	require.NoError(t, err, "a new key while the slot migrates (ASK)")
	assert.Equal(t, 1, n)
	conn, err := redis.Dial("tcp", dst.addr())
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.Send("ASKING"))
	l, err := redis.Int(conn.Do("LLEN", fresh))
	require.NoError(t, err)
	assert.Equal(t, 1, l, "the new key is on the target")

	// The move done: MOVED, then the map knows.
	c.must(src, "MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", old)
	c.must(dst, "CLUSTER", "SETSLOT", slot, "NODE", dstID)
	c.must(src, "CLUSTER", "SETSLOT", slot, "NODE", dstID)
	c.waitSettled("the move")
	n, err = redis.Int(do("INCR", old))
	require.NoError(t, err, "after the move (MOVED)")
	assert.Equal(t, 3, n)
	l, err = redis.Int(do("RPUSH", fresh, "b"))
	require.NoError(t, err)
	assert.Equal(t, 2, l)
	assert.Equal(t, dst.addr(), r.slots.Load().addrOf(slot), "the map follows MOVED")
}

// routerOn returns a router over cluster c (its URL's nodes as seeds)
// and a partition pool of it, both closed at the test's end.
func routerOn(t *testing.T, c *redisCluster) (*clusterRouter, *redis.Pool) {
	t.Helper()
	u, err := parseRedisURL(c.url())
	require.NoError(t, err)
	cfg, err := Config{ReadTimeout: 3 * time.Second}.withDefaults()
	require.NoError(t, err)
	r, err := newClusterRouter(context.Background(), u, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { r.close() })
	pool := r.partitionPool(nil)
	t.Cleanup(func() { pool.Close() })
	return r, pool
}

// TestClusterRouterDropsGoneNodes: nodes come and go over a cluster's
// life (a pod restarted on a new address takes over its shard). The
// router keeps a connection pool for the seeds and the primaries it
// routes to, not for every address it ever saw: the pool of a node that
// no longer serves is closed at the next refresh, with its idle
// connections, and a node that serves again gets a new one.
func TestClusterRouterDropsGoneNodes(t *testing.T) {
	c := startCluster(t, 3, 0)
	// No replica migration: a primary with two replicas (the one it
	// replaced and the one replacing it) while the others have none would
	// give one of them away, maybe the new node before its failover, which
	// then took over another shard than the one the test replaces.
	for _, n := range c.nodes {
		c.must(n, "CONFIG", "SET", "cluster-allow-replica-migration", "no")
	}
	r, pool := routerOn(t, c) // the seeds: the first three nodes
	ctx := context.Background()
	touch := func() { // a command on every slot's primary
		conn := pool.Get()
		defer conn.Close()
		for i := range 200 {
			_, err := conn.Do("SET", fmt.Sprintf("gone:%d", i), i)
			require.NoError(t, err)
		}
	}
	pools := func() map[string]*redis.Pool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return maps.Clone(r.nodes)
	}
	// replace starts a node, makes it a replica of old and fails old's
	// shard over to it: old goes on as a replica, which the router does
	// not route to.
	replace := func(old *redisProc) *redisProc {
		n := &redisProc{t: t, port: clusterPort(t), dir: t.TempDir()}
		n.args = slices.Clone(old.args)
		for i, a := range n.args {
			switch a {
			case strconv.Itoa(old.port):
				n.args[i] = strconv.Itoa(n.port)
			case old.dir, filepath.Join(old.dir, "redis.log"):
				n.args[i] = strings.Replace(a, old.dir, n.dir, 1)
			}
		}
		n.start()
		t.Cleanup(n.kill)
		c.must(n, "CONFIG", "SET", "cluster-allow-replica-migration", "no")
		c.must(n, "CLUSTER", "MEET", "127.0.0.1", old.port)
		oldID := c.id(old)
		require.Eventually(t, func() bool {
			_, err := c.do(n, "CLUSTER", "REPLICATE", oldID)
			return err == nil
		}, 30*time.Second, 20*time.Millisecond, "node %d joins as a replica of %d", n.port, old.port)
		c.nodes = append(c.nodes, n)
		c.waitSettled(fmt.Sprintf("node %d joining", n.port))
		c.failover(n)
		require.Equal(t, "slave", c.role(old), "node %d took over the shard of %d", n.port, old.port)
		return n
	}

	// refreshed waits until the router's map has n as a primary and gone
	// as none (a refresh started before the failover may answer first).
	refreshed := func(n, gone *redisProc) {
		require.Eventually(t, func() bool {
			m := r.slots.Load()
			if slices.Contains(m.primaries, n.addr()) && !slices.Contains(m.primaries, gone.addr()) {
				return true
			}
			require.NoError(t, r.refresh(ctx))
			return false
		}, 30*time.Second, 20*time.Millisecond, "the router sees %d in place of %d", n.port, gone.port)
	}
	touch()
	first := c.primaries()[0]
	second := replace(first)
	refreshed(second, first)
	touch()
	require.Contains(t, pools(), second.addr(), "the new primary's pool")
	old := pools()[second.addr()]
	third := replace(second)
	refreshed(third, second)
	touch()

	got := pools()
	assert.NotContains(t, got, second.addr(), "a node that no longer serves, and is no seed, has no pool")
	assert.Contains(t, got, third.addr())
	assert.Contains(t, got, first.addr(), "a seed keeps its pool")
	assert.Len(t, got, 4, "the seeds and the new primary")
	// Its connections are closed: a pool closed returns none.
	conn, err := old.GetContext(ctx)
	assert.Error(t, err, "the pool of the node gone is closed")
	conn.Close()
	assert.Zero(t, old.ActiveCount(), "its connections are closed")
}

// The other way round: a redis+cluster:// URL naming a server that is no
// cluster node is refused as a bad config, saying which URL to use, as
// a plain "cluster support disabled" did not.
func TestDialRefusesOneServerAsACluster(t *testing.T) {
	t.Parallel()
	requireFaultSuite(t)
	r := startRedis(t, false)
	ctx := bounded(t)
	q, err := Dial(ctx, []string{"redis+cluster://" + r.addr()}, Config{Prefix: testPrefix(t)})
	if q != nil {
		q.Close()
	}
	require.ErrorIs(t, err, ErrBadConfig)
	assert.ErrorContains(t, err, "not a Redis Cluster node")
	assert.ErrorContains(t, err, "redis://")
}

// A redis:// URL naming a Redis Cluster node half worked: the keys of the
// slots that node serves went to it, every other call got a bare MOVED,
// retried for ever by pools. Dial refuses it and says which URL to use.
func TestDialRefusesAClusterNodeAsOneServer(t *testing.T) {
	t.Parallel()
	requireCluster(t)
	r := &redisProc{t: t, port: clusterPort(t), dir: t.TempDir()}
	r.setArgs(false, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
	r.start()
	t.Cleanup(r.kill)
	ctx := bounded(t)
	q, err := Dial(ctx, []string{r.url()}, Config{Prefix: testPrefix(t)})
	if q != nil {
		q.Close()
	}
	require.ErrorIs(t, err, ErrBadConfig)
	assert.ErrorContains(t, err, "redis+cluster://")
	assert.ErrorContains(t, err, "partition 0")
}
