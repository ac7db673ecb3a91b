package queue

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/require"
)

// The Redis Cluster of a test: redis-server processes in cluster mode on
// free loopback ports, joined by redis-cli, each killed by its pid at the
// end of the test; and the faults a test makes on it: a manual failover,
// a kill -9 of a primary, a slot migration that may run slowly while
// tasks flow. Each helper returns once every live node agrees on the
// cluster's new shape (see settled).

// clusterNodeTimeout is the nodes' cluster-node-timeout: a primary is
// failed over this long (and an election) after it stops answering.
const clusterNodeTimeout = 1500 * time.Millisecond

// requireCluster skips the test as the fault suite is skipped, or without
// redis-cli.
func requireCluster(t testing.TB) {
	t.Helper()
	requireFaultSuite(t)
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Skipf("cluster tests skipped: redis-cli is not on PATH (%v)", err)
	}
}

// redisCluster is a Redis Cluster a test started.
type redisCluster struct {
	t     testing.TB
	nodes []*redisProc
	dead  map[int]bool // ports of the nodes killed
}

// clusterPorts are the node ports handed out in this process.
var clusterPorts = struct {
	sync.Mutex
	used map[int]bool
}{used: map[int]bool{}}

// clusterPort returns a free loopback port whose cluster bus port (10000
// above it) is free too, both below the ephemeral ports (32768 and up):
// an outgoing connection may take an ephemeral port at any moment, and a
// check cannot see it coming.
func clusterPort(t testing.TB) int {
	t.Helper()
	clusterPorts.Lock()
	defer clusterPorts.Unlock()
	free := func(p int) bool {
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			return false
		}
		ln.Close()
		return true
	}
	for range 1000 {
		p := 20000 + rand.IntN(2768)
		if !clusterPorts.used[p] && free(p) && free(p+10000) {
			clusterPorts.used[p] = true
			return p
		}
	}
	t.Fatal("no free port pair for a cluster node")
	return 0
}

// startCluster starts primaries*(1+replicasPer) nodes, joins them into a
// cluster with redis-cli (slots split evenly over the primaries), and
// waits until every node agrees on it and every replica is in sync.
func startCluster(t testing.TB, primaries, replicasPer int) *redisCluster {
	t.Helper()
	requireCluster(t)
	c := &redisCluster{t: t, dead: map[int]bool{}}
	var addrs []string
	for range primaries * (1 + replicasPer) {
		r := &redisProc{t: t, port: clusterPort(t), dir: t.TempDir()}
		r.setArgs(false, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", strconv.Itoa(int(clusterNodeTimeout/time.Millisecond)))
		r.start()
		t.Cleanup(r.kill)
		c.nodes = append(c.nodes, r)
		addrs = append(addrs, r.addr())
	}
	args := append(append([]string{"--cluster", "create"}, addrs...),
		"--cluster-replicas", strconv.Itoa(replicasPer), "--cluster-yes")
	out, err := exec.Command("redis-cli", args...).CombinedOutput()
	require.NoError(t, err, "redis-cli --cluster create:\n%s", out)
	c.waitSettled("the cluster's creation")
	return c
}

// url is the cluster's URL, every node a seed.
func (c *redisCluster) url() string {
	var addrs []string
	for _, n := range c.nodes {
		addrs = append(addrs, n.addr())
	}
	return "redis+cluster://" + strings.Join(addrs, ",")
}

func (c *redisCluster) live() []*redisProc {
	var out []*redisProc
	for _, n := range c.nodes {
		if !c.dead[n.port] {
			out = append(out, n)
		}
	}
	return out
}

func (c *redisCluster) node(port int) *redisProc {
	for _, n := range c.nodes {
		if n.port == port {
			return n
		}
	}
	c.t.Fatalf("no cluster node on port %d", port)
	return nil
}

// do runs one command on node n itself, not routed.
func (c *redisCluster) do(n *redisProc, cmd string, args ...any) (any, error) {
	conn, err := redis.Dial("tcp", n.addr(), redis.DialConnectTimeout(time.Second),
		redis.DialReadTimeout(5*time.Second), redis.DialWriteTimeout(5*time.Second))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.Do(cmd, args...)
}

func (c *redisCluster) must(n *redisProc, cmd string, args ...any) any {
	c.t.Helper()
	r, err := c.do(n, cmd, args...)
	require.NoError(c.t, err, "%s %v on node %d", cmd, args, n.port)
	return r
}

func (c *redisCluster) id(n *redisProc) string {
	c.t.Helper()
	id, err := redis.String(c.must(n, "CLUSTER", "MYID"), nil)
	require.NoError(c.t, err)
	return id
}

// shard is one primary and its slots, as a node sees them.
type shard struct {
	slots    []int64 // range bounds: first, last, first, last...
	primary  int     // port; 0 when no primary is online
	replicas []int   // ports of the online replicas, sorted
}

// shards reads CLUSTER SHARDS on node n: the shards that serve slots.
func (c *redisCluster) shards(n *redisProc) ([]shard, error) {
	reply, err := redis.Values(c.do(n, "CLUSTER", "SHARDS"))
	if err != nil {
		return nil, err
	}
	var out []shard
	for _, raw := range reply {
		fields, err := redis.Values(raw, nil)
		if err != nil {
			return nil, err
		}
		var s shard
		for i := 0; i+1 < len(fields); i += 2 {
			switch name, _ := redis.String(fields[i], nil); name {
			case "slots":
				s.slots, _ = redis.Int64s(fields[i+1], nil)
			case "nodes":
				nodes, _ := redis.Values(fields[i+1], nil)
				for _, nd := range nodes {
					kv, _ := redis.Values(nd, nil)
					var role, health string
					var port int
					for j := 0; j+1 < len(kv); j += 2 {
						switch name, _ := redis.String(kv[j], nil); name {
						case "role":
							role, _ = redis.String(kv[j+1], nil)
						case "health":
							health, _ = redis.String(kv[j+1], nil)
						case "port":
							port, _ = redis.Int(kv[j+1], nil)
						}
					}
					if health != "online" {
						continue
					}
					if role == "master" {
						s.primary = port
					} else {
						s.replicas = append(s.replicas, port)
					}
				}
			}
		}
		if len(s.slots) > 0 {
			slices.Sort(s.replicas)
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b shard) int { return int(a.slots[0] - b.slots[0]) })
	return out, nil
}

// settled reports, or says why not, whether every live node is in
// cluster_state:ok, sees the same shards (slots, primary, replicas) with
// every slot served and every live node online in them, and each
// replica's link to its primary is up and synced.
func (c *redisCluster) settled() (bool, string) {
	var first string
	var live []int
	for _, n := range c.live() {
		live = append(live, n.port)
	}
	slices.Sort(live)
	for _, n := range c.live() {
		info, err := redis.String(c.do(n, "CLUSTER", "INFO"))
		if err != nil {
			return false, fmt.Sprintf("node %d: %v", n.port, err)
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return false, fmt.Sprintf("node %d: cluster_state not ok", n.port)
		}
		sh, err := c.shards(n)
		if err != nil {
			return false, fmt.Sprintf("node %d: %v", n.port, err)
		}
		var served int64
		var online []int
		for _, s := range sh {
			if s.primary == 0 {
				return false, fmt.Sprintf("node %d: a shard has no online primary: %+v", n.port, sh)
			}
			for i := 0; i+1 < len(s.slots); i += 2 {
				served += s.slots[i+1] - s.slots[i] + 1
			}
			online = append(append(online, s.primary), s.replicas...)
		}
		if served != clusterSlots {
			return false, fmt.Sprintf("node %d: %d slots served", n.port, served)
		}
		if slices.Sort(online); !slices.Equal(online, live) {
			return false, fmt.Sprintf("node %d: nodes online %v, live %v", n.port, online, live)
		}
		view := fmt.Sprint(sh)
		if first == "" {
			first = view
		} else if view != first {
			return false, fmt.Sprintf("nodes disagree: %s and, on %d, %s", first, n.port, view)
		}
		repl, err := redis.String(c.do(n, "INFO", "replication"))
		if err != nil {
			return false, fmt.Sprintf("node %d: %v", n.port, err)
		}
		if strings.Contains(repl, "role:slave") &&
			(!strings.Contains(repl, "master_link_status:up") || !strings.Contains(repl, "master_sync_in_progress:0")) {
			return false, fmt.Sprintf("replica %d not in sync", n.port)
		}
	}
	return true, ""
}

// waitSettled waits until the cluster has settled after what.
func (c *redisCluster) waitSettled(what string) {
	c.t.Helper()
	var why string
	deadline := time.Now().Add(30 * time.Second)
	for {
		var ok bool
		if ok, why = c.settled(); ok {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("cluster did not settle after %s in 30s: %s", what, why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// slotOf returns the hash slot of key, as the cluster computes it.
func (c *redisCluster) slotOf(key string) int {
	c.t.Helper()
	slot, err := redis.Int(c.must(c.live()[0], "CLUSTER", "KEYSLOT", key), nil)
	require.NoError(c.t, err)
	return slot
}

// shardOf returns the shard that serves slot, as the first live node sees it.
func (c *redisCluster) shardOf(slot int) shard {
	c.t.Helper()
	sh, err := c.shards(c.live()[0])
	require.NoError(c.t, err)
	for _, s := range sh {
		for i := 0; i+1 < len(s.slots); i += 2 {
			if int64(slot) >= s.slots[i] && int64(slot) <= s.slots[i+1] {
				return s
			}
		}
	}
	c.t.Fatalf("slot %d is not served: %+v", slot, sh)
	return shard{}
}

// primaryOf returns the primary that serves key's slot.
func (c *redisCluster) primaryOf(key string) *redisProc {
	c.t.Helper()
	return c.node(c.shardOf(c.slotOf(key)).primary)
}

// primaries returns the live primaries, in slot order.
func (c *redisCluster) primaries() []*redisProc {
	c.t.Helper()
	sh, err := c.shards(c.live()[0])
	require.NoError(c.t, err)
	var out []*redisProc
	for _, s := range sh {
		if !slices.ContainsFunc(out, func(n *redisProc) bool { return n.port == s.primary }) {
			out = append(out, c.node(s.primary))
		}
	}
	return out
}

// replicaOf returns a replica of primary p.
func (c *redisCluster) replicaOf(p *redisProc) *redisProc {
	c.t.Helper()
	sh, err := c.shards(c.live()[0])
	require.NoError(c.t, err)
	for _, s := range sh {
		if s.primary == p.port && len(s.replicas) > 0 {
			return c.node(s.replicas[0])
		}
	}
	c.t.Fatalf("primary %d has no replica", p.port)
	return nil
}

// role returns the first field of ROLE on n: "master" or "slave".
func (c *redisCluster) role(n *redisProc) string {
	r, err := redis.Values(c.do(n, "ROLE"))
	if err != nil || len(r) == 0 {
		return ""
	}
	s, _ := redis.String(r[0], nil)
	return s
}

// failover fails the primary of replica over to it by hand (CLUSTER
// FAILOVER: the primary stops writes until the replica has them all),
// and waits until the cluster has settled with the replica as primary.
// Redis gives a manual failover 5 seconds and then drops it, as it may on
// a starved machine: one not done in 6 is asked for again.
func (c *redisCluster) failover(replica *redisProc) {
	c.t.Helper()
	promoted := func() bool { return c.role(replica) == "master" }
	for deadline := time.Now().Add(30 * time.Second); !promoted(); {
		require.True(c.t, time.Now().Before(deadline), "replica %d not promoted by CLUSTER FAILOVER", replica.port)
		if _, err := c.do(replica, "CLUSTER", "FAILOVER"); err != nil && !promoted() {
			require.NoError(c.t, err, "CLUSTER FAILOVER on %d", replica.port) // promoted just now: it refuses, being a primary
		}
		for asked := time.Now(); !promoted() && time.Since(asked) < 6*time.Second; {
			time.Sleep(10 * time.Millisecond)
		}
	}
	c.waitSettled(fmt.Sprintf("the failover to %d", replica.port))
}

// kill9 kills node n with SIGKILL.
func (c *redisCluster) kill9(n *redisProc) {
	c.t.Helper()
	n.kill()
	c.dead[n.port] = true
}

// waitPromoted waits until replica is a primary and the cluster has
// settled without the nodes killed.
func (c *redisCluster) waitPromoted(replica *redisProc) {
	c.t.Helper()
	require.Eventually(c.t, func() bool { return c.role(replica) == "master" }, 30*time.Second, 10*time.Millisecond,
		"replica %d not promoted", replica.port)
	c.waitSettled(fmt.Sprintf("the promotion of %d", replica.port))
}

// migrateSlot moves slot from its primary to dst as redis-cli --cluster
// reshard does: dst IMPORTING, the source MIGRATING, the keys moved by
// MIGRATE batch at a time with a pause after each batch (so that a test's
// traffic meets the slot half moved), then the slot given to dst on every
// primary. It returns the number of keys moved.
func (c *redisCluster) migrateSlot(slot int, dst *redisProc, batch int, pause time.Duration) int {
	c.t.Helper()
	src := c.node(c.shardOf(slot).primary)
	require.NotEqual(c.t, src.port, dst.port, "slot %d is on node %d already", slot, dst.port)
	srcID, dstID := c.id(src), c.id(dst)
	c.must(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", srcID)
	c.must(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dstID)
	moved := 0
	for {
		keys, err := redis.Strings(c.must(src, "CLUSTER", "GETKEYSINSLOT", slot, batch), nil)
		require.NoError(c.t, err)
		if len(keys) == 0 {
			break
		}
		args := []any{"127.0.0.1", dst.port, "", 0, 5000, "KEYS"}
		for _, k := range keys {
			args = append(args, k)
		}
		r, err := redis.String(c.do(src, "MIGRATE", args...))
		require.NoError(c.t, err, "MIGRATE %v", keys)
		if r == "OK" { // NOKEY: the keys went meanwhile (deleted, or created on dst)
			moved += len(keys)
		}
		time.Sleep(pause)
	}
	c.must(dst, "CLUSTER", "SETSLOT", slot, "NODE", dstID)
	c.must(src, "CLUSTER", "SETSLOT", slot, "NODE", dstID)
	for _, p := range c.primaries() {
		if p.port != src.port && p.port != dst.port {
			c.must(p, "CLUSTER", "SETSLOT", slot, "NODE", dstID)
		}
	}
	c.waitSettled(fmt.Sprintf("the migration of slot %d to %d", slot, dst.port))
	require.Equal(c.t, dst.port, c.shardOf(slot).primary)
	return moved
}
