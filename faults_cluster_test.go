package queue

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Fault 15: Redis Cluster. A queue of 8 queues on one partition of a
// 3-primary, 3-replica cluster (its queues spread over the primaries), a
// producer adding throughout and two group members serving every queue,
// while the cluster changes under them: a slot of a live queue migrates
// to another primary, a primary is failed over by hand, a primary is
// killed and the cluster promotes its replica. The checker judges each
// run; the recovery time is measured on the queues the fault hit.

// clusterQueues is Q in the cluster fault tests.
const clusterQueues = 8

// newClusterFaultEnv returns a fault environment whose children and
// harness reach cluster c by its redis+cluster:// URL.
func newClusterFaultEnv(t *testing.T, c *redisCluster, queues int) *faultEnv {
	e := &faultEnv{t: t, dir: t.TempDir(), queues: queues, prefix: "fault", url: c.url()}
	u, err := parseRedisURL(e.url)
	require.NoError(t, err)
	cfg, err := Config{DialTimeout: time.Second, ReadTimeout: 5 * time.Second, MaxIdle: 4}.withDefaults()
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := newClusterRouter(ctx, u, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { r.close() }) // after open's cleanup, which closes the pool
	e.open(r.partitionPool(nil))
	return e
}

// clusterRun is one cluster fault test's traffic.
type clusterRun struct {
	e        *faultEnv
	c        *redisCluster
	byNode   map[int][]int // primary port -> analysers whose queue it serves
	producer *child
	members  []*child
	total    int64
}

// startClusterRun starts the cluster, a producer paced at rate tasks a
// second and, once backlog tasks wait, the members, all with
// Config.WaitReplicas wait; it returns when every queue has served tasks,
// the backlog not yet drained: the fault comes with tasks ready and
// pending in every queue.
func startClusterRun(t *testing.T, rate, backlog, wait int) *clusterRun {
	c := startCluster(t, 3, 1)
	e := newClusterFaultEnv(t, c, clusterQueues)
	run := &clusterRun{e: e, c: c, byNode: map[int][]int{}}
	for a := range clusterQueues {
		p := c.primaryOf(newQueueKeys(e.prefix, 0, a).ready)
		run.byNode[p.port] = append(run.byNode[p.port], a)
	}
	require.Len(t, run.byNode, 3, "the queues are spread over the three primaries: %v", run.byNode)
	const orders, per = 100, 40
	run.total = orders * per
	run.producer = e.spawn("producer", roleConfig{Orders: orders, PerOrder: per, Goroutines: 4, Rate: rate, WaitReplicas: wait})
	e.waitAdded(int64(backlog), 30*time.Second)
	for _, name := range []string{"m1", "m2"} {
		cfg := e.memberConfig(name)
		cfg.Work = time.Millisecond // slower than the producer's burst: the backlog drains for a while
		// The suite's lease, shorter than a failover after a kill -9: the
		// members take their queues again on the new primary, and recover
		// their tasks there.
		cfg.LeaseTTL = faultLeaseTTL
		cfg.WaitReplicas = wait
		run.members = append(run.members, e.spawn("analyser", cfg))
	}
	require.Eventually(t, func() bool {
		for _, s := range e.stats() {
			if s.Processed == 0 {
				return false
			}
		}
		return true
	}, 30*time.Second, 10*time.Millisecond, "not every queue served tasks: %+v", e.stats())
	return run
}

// busiest returns the primary that serves the most queues, and them.
func (run *clusterRun) busiest() (*redisProc, []int) {
	best := 0
	for port, as := range run.byNode {
		if len(as) > len(run.byNode[best]) || len(as) == len(run.byNode[best]) && port < best {
			best = port
		}
	}
	return run.c.node(best), run.byNode[best]
}

// waiting returns the tasks ready and pending in the queues of analysers.
func (run *clusterRun) waiting(analysers []int) (ready, pending int64) {
	for _, s := range run.e.stats() {
		if slices.Contains(analysers, s.Analyser) {
			ready += s.Ready
			pending += s.Pending
		}
	}
	return ready, pending
}

// finish lets the producer add the rest at full speed and drains. On a
// slow machine the faults may take longer than the producer's pace, which
// has then added every task: the recovery's figures (clusterRecovery) say
// whether tasks were added after the fault and ran.
func (run *clusterRun) finish() faultReport {
	run.e.hurry(run.producer)
	run.e.drain([]*child{run.producer}, run.members, 60*time.Second)
	return run.e.check()
}

// clusterRecovery measures how the queues of analysers came back after a
// fault at at: firstNew is the time to the first start of a task added
// after the fault (the first write to reach the new owner and run), stall
// the longest time between two starts on those queues after the fault,
// stallAt when it began (from the fault).
func clusterRecovery(events []faultEvent, at time.Time, analysers []int) (firstNew, stall, stallAt time.Duration) {
	added := map[taskKey]int64{}
	var starts []int64
	firstNew = -1
	from := stamp(at)
	for _, e := range events {
		if e.Ev == evAdd {
			if _, ok := added[taskKey{e.Order, e.Seq}]; !ok {
				added[taskKey{e.Order, e.Seq}] = e.Wall
			}
		}
	}
	for _, e := range events {
		if e.Ev != evStart || !slices.Contains(analysers, e.Analyser) {
			continue
		}
		starts = append(starts, e.Wall)
		if w, ok := added[taskKey{e.Order, e.Seq}]; ok && w > from && e.Wall > from {
			if d := time.Duration(e.Wall - from); firstNew < 0 || d < firstNew {
				firstNew = d
			}
		}
	}
	sort.Slice(starts, func(i, j int) bool { return starts[i] < starts[j] })
	for i := 1; i < len(starts); i++ {
		if d := time.Duration(starts[i] - starts[i-1]); starts[i] > from && d > stall {
			stall, stallAt = d, time.Duration(starts[i-1]-from)
		}
	}
	return firstNew, stall, stallAt
}

// logRecovery logs and checks the recovery of analysers after at, and
// logs the errors the children reported.
func (run *clusterRun) logRecovery(what string, at time.Time, analysers []int, r faultReport) {
	t := run.e.t
	t.Helper()
	events := run.e.events()
	firstNew, stall, stallAt := clusterRecovery(events, at, analysers)
	t.Logf("%s: queues %v: first task added after the fault ran %s after it, longest stall %s from %s; %v",
		what, analysers, fmtRecovery(firstNew), stall.Round(time.Millisecond), stallAt.Round(time.Millisecond), r)
	errs := map[string]int{}
	addr := regexp.MustCompile(`127\.0\.0\.1:\d+`)
	for _, e := range events {
		if e.Err != "" {
			errs[e.Ev+": "+addr.ReplaceAllString(e.Err, "node")]++
		}
	}
	for msg, n := range errs {
		t.Logf("%d× %s", n, msg)
	}
	assert.Positive(t, firstNew, "no task added after the fault ran on the queues it hit")
}

// TestFaultClusterMigrateSlot moves the slot of a live queue to another
// primary a few keys at a time, with pauses, while tasks flow: the queue's keys are
// split between the two primaries for a while (scripts get TRYAGAIN, new
// keys go to the target after ASK).
func TestFaultClusterMigrateSlot(t *testing.T) {
	run := startClusterRun(t, 500, 1500, 0)
	e, c := run.e, run.c
	const a = 0
	k := newQueueKeys(e.prefix, 0, a)
	slot := c.slotOf(k.ready)
	src := c.primaryOf(k.ready)
	dst := c.primaries()[0]
	if dst.port == src.port {
		dst = c.primaries()[1]
	}
	ready, pending := run.waiting([]int{a})
	// About five steps whatever the keys in the slot (its claims' lists
	// and bitmaps come and go): the migration ends while the producer,
	// paced, still adds, however many there are.
	keys, err := redis.Int(c.do(src, "CLUSTER", "COUNTKEYSINSLOT", slot))
	require.NoError(t, err)
	at := time.Now()
	e.event(faultEvent{Ev: evFault})
	moved := c.migrateSlot(slot, dst, max(1, keys/5), 300*time.Millisecond)
	took := time.Since(at)
	n, err := redis.Int(c.do(dst, "EXISTS", k.meta))
	require.NoError(t, err)
	require.Equal(t, 1, n, "the queue's keys are on the target")
	e.waitProcessed(run.total/2, 30*time.Second)
	r := run.finish()
	run.logRecovery(fmt.Sprintf("slot %d of analyser %d migrated from %d to %d with %d tasks ready and %d pending (%d keys in %s)",
		slot, a, src.port, dst.port, ready, pending, moved, took.Round(time.Millisecond)), at, []int{a}, r)
	requireClean(t, r)
	assert.EqualValues(t, run.total, r.AddedOK)
	assert.EqualValues(t, run.total, r.Completed)
	assert.Zero(t, r.DupPending+r.DupOther, "a migration runs no task twice")
}

// TestFaultClusterFailover fails the primary that serves the most queues
// over to its replica by hand (CLUSTER FAILOVER): the primary stops
// writes until the replica has them all, so nothing may be lost.
func TestFaultClusterFailover(t *testing.T) {
	run := startClusterRun(t, 500, 1500, 0)
	e, c := run.e, run.c
	p, hit := run.busiest()
	replica := c.replicaOf(p)
	ready, pending := run.waiting(hit)
	at := time.Now()
	e.event(faultEvent{Ev: evFault})
	c.failover(replica)
	took := time.Since(at)
	e.waitProcessed(run.total/2, 30*time.Second)
	r := run.finish()
	run.logRecovery(fmt.Sprintf("CLUSTER FAILOVER of %d to %d with %d tasks ready and %d pending there (settled in %s)",
		p.port, replica.port, ready, pending, took.Round(time.Millisecond)), at, hit, r)
	requireClean(t, r)
	assert.EqualValues(t, run.total, r.AddedOK+r.AddErrors)
	assert.EqualValues(t, r.AddedOK, r.Completed-r.UnknownDone, "every task added completes")
	assert.Zero(t, r.Dead)
}

// TestFaultClusterKillPrimary kills the primary that serves the most
// queues with SIGKILL and lets the cluster promote its replica.
// Replication is asynchronous: the writes the replica had not received
// are lost with the primary, acknowledged adds among them. The test
// reads what the replica holds between the kill and its promotion, and
// requires that no task it held is lost; it reports the others.
func TestFaultClusterKillPrimary(t *testing.T) {
	run := startClusterRun(t, 500, 1500, 0)
	e := run.e
	p, hit := run.busiest()
	ready, pending := run.waiting(hit)
	replica, at, held := run.killPrimary(p, hit)
	promoted := time.Since(at)
	e.waitProcessed(run.total/2, 30*time.Second)
	r := run.finish()
	var lostHeld []string
	for _, id := range r.LostIDs {
		if held.ids[id] {
			lostHeld = append(lostHeld, id)
		}
	}
	run.logRecovery(fmt.Sprintf("kill -9 of %d with about %d tasks ready and %d pending there, %d promoted in %s, "+
		"holding %d of them (%d pending); acknowledged adds lost with the primary's unreplicated writes: %d",
		p.port, ready, pending, replica.port, promoted.Round(time.Millisecond), len(held.ids), len(held.pending),
		r.Lost-len(lostHeld)), at, hit, r)
	assert.Empty(t, lostHeld, "tasks the replica held are lost")
	r.Lost = 0 // the rest went with the primary; requireClean checks all else
	requireClean(t, r)
	assert.EqualValues(t, run.total, r.AddedOK+r.AddErrors)
	assert.Zero(t, r.Dead)
}

// TestFaultClusterKillPrimaryWaitReplicas is TestFaultClusterKillPrimary
// with Config.WaitReplicas 1 in every process: a write reports success
// only once a replica has it, so the kill -9 loses no task acknowledged.
// The killed node is started again and rejoins as the new primary's
// replica: until then writes to its queues cannot reach one replica and
// fail (ErrNotReplicated), and the members wait.
func TestFaultClusterKillPrimaryWaitReplicas(t *testing.T) {
	run := startClusterRun(t, 500, 1500, 1)
	e, c := run.e, run.c
	p, hit := run.busiest()
	replica, at, _ := run.killPrimary(p, hit)
	p.start() // it rejoins as a replica of the node that took its slots
	delete(c.dead, p.port)
	require.Eventually(t, func() bool { return c.role(p) == "slave" }, 30*time.Second, 20*time.Millisecond,
		"the killed primary did not rejoin as a replica")
	back := time.Since(at)
	e.waitProcessed(run.total/2, 60*time.Second)
	r := run.finish()
	run.logRecovery(fmt.Sprintf("kill -9 of %d with WaitReplicas=1, %d promoted, %d a replica again %s after the kill",
		p.port, replica.port, p.port, back.Round(time.Millisecond)), at, hit, r)
	assert.Zero(t, r.Lost, "a task acknowledged with WaitReplicas=1 lost")
	requireClean(t, r)
	assert.EqualValues(t, run.total, r.AddedOK+r.AddErrors)
	assert.Zero(t, r.Dead)
}

// killPrimary kills primary p, serving the queues of analysers hit, with
// kill -9, records as pending at the fault what its replica holds pending
// (read before the promotion), and waits until the cluster promoted the
// replica. It returns the replica, the time of the kill and what the
// replica held.
func (run *clusterRun) killPrimary(p *redisProc, hit []int) (*redisProc, time.Time, replicaState) {
	e, c := run.e, run.c
	e.t.Helper()
	replica := c.replicaOf(p)
	at := time.Now()
	c.kill9(p)
	e.event(faultEvent{Ev: evFault, Wall: stamp(at)})
	held := replicaHolds(e.t, c, replica, e.prefix, hit)
	for id := range held.pending {
		e.event(faultEvent{Ev: evPending, ID: id})
	}
	c.waitPromoted(replica)
	return replica, at, held
}

// replicaState is what a replica holds of some queues.
type replicaState struct {
	ids     map[string]bool // tasks ready, pending or dead
	pending map[string]bool
}

// replicaHolds reads, after its primary was killed and before it is
// promoted, what replica holds of the queues of analysers (partition 0).
// Its replication offset must not move while it is read, and it must
// still be a replica after: the reading is of what it had at the kill.
func replicaHolds(t *testing.T, c *redisCluster, replica *redisProc, prefix string, analysers []int) replicaState {
	t.Helper()
	conn, err := redis.Dial("tcp", replica.addr(), redis.DialReadTimeout(5*time.Second))
	require.NoError(t, err)
	defer conn.Close()
	offset := func() string {
		info, err := redis.String(conn.Do("INFO", "replication"))
		require.NoError(t, err)
		for _, line := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "slave_repl_offset:"); ok {
				return v
			}
		}
		t.Fatalf("no slave_repl_offset in %q", info)
		return ""
	}
	time.Sleep(50 * time.Millisecond) // what the primary sent before it died is read in
	before := offset()
	_, err = conn.Do("READONLY")
	require.NoError(t, err)
	st := replicaState{ids: map[string]bool{}, pending: map[string]bool{}}
	for _, a := range analysers {
		k := newQueueKeys(prefix, 0, a)
		ready, err := redis.ByteSlices(conn.Do("LRANGE", k.ready, 0, -1))
		require.NoError(t, err)
		for _, raw := range ready {
			task, _, err := decodeEntry(raw)
			require.NoError(t, err)
			st.ids[task.ID] = true
		}
		m, err := pendingRecords(conn.Do, k)
		require.NoError(t, err)
		var pending []string
		for id := range m {
			pending = append(pending, id)
		}
		dead, err := redis.Strings(conn.Do("HKEYS", k.dead))
		require.NoError(t, err)
		for _, id := range append(pending, dead...) {
			st.ids[id] = true
		}
		for _, id := range pending {
			st.pending[id] = true
		}
	}
	require.Equal(t, before, offset(), "the replica received writes while it was read")
	require.Equal(t, "slave", c.role(replica), "the replica was promoted while it was read: raise clusterNodeTimeout")
	return st
}
