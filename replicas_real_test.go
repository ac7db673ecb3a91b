package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Config.WaitReplicas against real servers: a redis-server primary and one
// replica, started by the test on free loopback ports and stopped by pid.

// replicated is a primary and its replica.
type replicated struct {
	primary, replica *redisProc
	link             *faultProxy // the replication link, when it goes through a proxy
}

// startReplicated starts a primary and a replica of it (through a proxy
// when viaProxy) and waits until the replica is in sync.
func startReplicated(t testing.TB, viaProxy bool) *replicated {
	t.Helper()
	rs := &replicated{primary: startRedis(t, false, "--repl-diskless-sync-delay", "0")} // sync at once, not after 5s
	target := rs.primary.addr()
	if viaProxy {
		rs.link = startProxy(t, target)
		target = rs.link.Addr()
	}
	host, port, err := net.SplitHostPort(target)
	require.NoError(t, err)
	rs.replica = startRedis(t, false, "--replicaof", host, port)
	// In sync: the replica acknowledges a write (it does once it has
	// loaded the primary's snapshot).
	require.Eventually(t, func() bool {
		c, err := redis.Dial("tcp", rs.primary.addr(), redis.DialReadTimeout(time.Second))
		if err != nil {
			return false
		}
		defer c.Close()
		c.Send("SET", "sync", "1")
		n, err := redis.Int(c.Do("WAIT", 1, 100)) // on the connection that wrote
		return err == nil && n == 1
	}, 10*time.Second, 10*time.Millisecond, "the replica did not come in sync")
	return rs
}

// do runs one command on server s, on a connection of its own.
func (rs *replicated) do(s *redisProc, cmd string, args ...any) (any, error) {
	c, err := redis.Dial("tcp", s.addr(), redis.DialConnectTimeout(time.Second), redis.DialReadTimeout(5*time.Second))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Do(cmd, args...)
}

// signalRedis sends sig to s and, for SIGSTOP, waits until it is stopped.
func signalRedis(t testing.TB, s *redisProc, sig syscall.Signal) {
	t.Helper()
	require.NoError(t, s.cmd.Process.Signal(sig))
	if sig == syscall.SIGSTOP {
		require.Eventually(t, func() bool { return procState(s.cmd.Process.Pid) == 'T' }, 5*time.Second, time.Millisecond)
	}
}

func TestWaitReplicasReal(t *testing.T) {
	requireFaultSuite(t)
	rs := startReplicated(t, false)
	t.Cleanup(func() { rs.replica.cmd.Process.Signal(syscall.SIGCONT) }) // before the kill, if the test failed while it was stopped
	ctx := context.Background()
	const waitFor = time.Second // long enough for a loaded machine's healthy replica
	q, err := Dial(ctx, []string{rs.primary.url()}, Config{Prefix: testPrefix(t), WaitReplicas: 1, WaitTimeout: waitFor})
	require.NoError(t, err)
	defer q.Close()
	ready := q.ready[0][0]

	_, err = q.AddTask(ctx, 1, []byte("a"))
	require.NoError(t, err, "the replica acknowledges")
	n, err := redis.Int(rs.do(rs.replica, "LLEN", ready))
	require.NoError(t, err)
	assert.Equal(t, 1, n, "the task is on the replica when AddTask returns")

	signalRedis(t, rs.replica, syscall.SIGSTOP)
	start := time.Now()
	_, err = q.AddTask(ctx, 1, []byte("b"))
	took := time.Since(start)
	require.ErrorIs(t, err, ErrNotReplicated)
	t.Logf("AddTask with the replica stopped: %v after %v", err, took)
	assert.GreaterOrEqual(t, took, waitFor/2, "it waited for the replica")
	assert.Less(t, took, waitFor+2*time.Second, "it gave up after WaitTimeout")

	stats, err := q.Stats(ctx)
	require.NoError(t, err, "reads do not wait for replicas")
	assert.Equal(t, int64(2), stats[0].Ready, "the write was made on the primary")

	signalRedis(t, rs.replica, syscall.SIGCONT)
	require.Eventually(t, func() bool {
		_, err := q.AddTask(ctx, 1, []byte("c"))
		return err == nil
	}, 10*time.Second, 10*time.Millisecond, "writes are acknowledged again once the replica is back")
}

// State and Status of a running task are reads, however they look it up
// (a script over its claim's list, the claim's record holding no IDs
// yet): they do not wait for a replica, stopped or not. (They waited
// WaitTimeout and failed with ErrNotReplicated, the script taken for a
// write.)
func TestWaitReplicasReadsOfARunningTaskReal(t *testing.T) {
	requireFaultSuite(t)
	rs := startReplicated(t, false)
	t.Cleanup(func() { rs.replica.cmd.Process.Signal(syscall.SIGCONT) })
	ctx := context.Background()
	q, err := Dial(ctx, []string{rs.primary.url()}, Config{Prefix: testPrefix(t), WaitReplicas: 1, WaitTimeout: 5 * time.Second})
	require.NoError(t, err)
	defer q.Close()
	id, err := q.AddTask(ctx, 1, []byte("a"))
	require.NoError(t, err)
	started, release := make(chan struct{}), make(chan struct{})
	pctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		q.AnalysePool(pctx, 0, PoolConfig{Workers: 1, LeaseTTL: time.Minute, OnError: func(error) {}, Logger: slog.New(slog.DiscardHandler)},
			func(context.Context, Task) error {
				close(started)
				<-release
				return nil
			})
	})
	defer func() { close(release); stop(); wg.Wait() }()
	<-started // running: its claim's record holds no IDs yet
	signalRedis(t, rs.replica, syscall.SIGSTOP)
	defer signalRedis(t, rs.replica, syscall.SIGCONT)
	st, err := q.State(ctx, 1, id)
	require.NoError(t, err, "a read never waits for replicas")
	assert.Equal(t, StatePending, st)
	status, err := q.Status(ctx, 1, id)
	require.NoError(t, err)
	assert.Equal(t, StatePending, status.State)
}

// TestWaitReplicasPoolReal drains a queue with the knob on, the replica
// stopped for two seconds in the middle: claims and acks made meanwhile
// fail with ErrNotReplicated and are retried as after any Redis error, and
// every task still runs once, in order, with its ack on the replica when
// AnalysePool returns. (The lease outlasts the outage: a pool that loses
// it may run tasks again, as at-least-once allows.)
func TestWaitReplicasPoolReal(t *testing.T) {
	requireFaultSuite(t)
	rs := startReplicated(t, false)
	t.Cleanup(func() { rs.replica.cmd.Process.Signal(syscall.SIGCONT) })
	ctx := context.Background()
	q, err := Dial(ctx, []string{rs.primary.url()}, Config{Prefix: testPrefix(t), WaitReplicas: 1})
	require.NoError(t, err)
	defer q.Close()
	const orders, per = 30, 10
	var tasks []Task
	for i := range per {
		for o := range orders {
			tasks = append(tasks, Task{OrderID: uint64(o), Payload: fmt.Appendf(nil, "%d", i)})
		}
	}
	_, err = q.AddTasks(ctx, tasks)
	require.NoError(t, err)

	var mu sync.Mutex
	seen := map[uint64][]string{}
	var notReplicated, others []error
	done, halfway := 0, make(chan struct{})
	go func() {
		<-halfway
		signalRedis(t, rs.replica, syscall.SIGSTOP)
		time.Sleep(2 * time.Second) // the outage: two WaitTimeouts, a tenth of LeaseTTL
		signalRedis(t, rs.replica, syscall.SIGCONT)
	}()
	cfg := PoolConfig{Workers: 4, ExitOnEmpty: true, LeaseTTL: 20 * time.Second, OnError: func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if errors.Is(err, ErrNotReplicated) {
			notReplicated = append(notReplicated, err)
		} else {
			others = append(others, err)
		}
	}}
	require.NoError(t, q.AnalysePool(ctx, 0, cfg, func(_ context.Context, t Task) error {
		mu.Lock()
		seen[t.OrderID] = append(seen[t.OrderID], string(t.Payload))
		if done++; done == len(tasks)/3 {
			close(halfway)
		}
		mu.Unlock()
		time.Sleep(time.Millisecond)
		return nil
	}))
	assert.Empty(t, others)
	require.NotEmpty(t, notReplicated, "the pool met the outage")
	t.Logf("%d calls failed with ErrNotReplicated, e.g. %v", len(notReplicated), notReplicated[0])
	require.Len(t, seen, orders)
	want := make([]string, per)
	for i := range want {
		want[i] = fmt.Sprint(i)
	}
	for o, got := range seen {
		assert.Equal(t, want, got, "order %d: each task once, in order", o)
	}

	k := newQueueKeys(q.cfg.Prefix, 0, 0)
	m, err := pendingRecords(func(cmd string, args ...any) (any, error) { return rs.do(rs.replica, cmd, args...) }, k)
	require.NoError(t, err)
	n := len(m)
	assert.Zero(t, n, "the replica has every ack")
	processed, err := redis.Int(rs.do(rs.replica, "HGET", k.meta, "processed"))
	require.NoError(t, err)
	assert.Equal(t, orders*per, processed)
	n, err = redis.Int(rs.do(rs.replica, "LLEN", k.ready))
	require.NoError(t, err)
	assert.Zero(t, n)
}

// TestWaitReplicasFailoverReal kills the primary with kill -9 while the
// replication link holds back its last writes, then promotes the replica:
// the task AddTask acknowledged with the knob on is there; one added while
// the link held failed with ErrNotReplicated; and one added meanwhile
// without the knob, acknowledged all the same, is lost.
func TestWaitReplicasFailoverReal(t *testing.T) {
	requireFaultSuite(t)
	rs := startReplicated(t, true)
	ctx := context.Background()
	prefix := testPrefix(t)
	waiting, err := Dial(ctx, []string{rs.primary.url()}, Config{Prefix: prefix, WaitReplicas: 1})
	require.NoError(t, err)
	defer waiting.Close()
	plain, err := Dial(ctx, []string{rs.primary.url()}, Config{Prefix: prefix})
	require.NoError(t, err)
	defer plain.Close()

	kept, err := waiting.AddTask(ctx, 1, []byte("acknowledged by the replica"))
	require.NoError(t, err)
	release := rs.link.holdReplies()
	_, err = waiting.AddTask(ctx, 1, []byte("not replicated"))
	require.ErrorIs(t, err, ErrNotReplicated)
	lost, err := plain.AddTask(ctx, 1, []byte("acknowledged by the primary alone"))
	require.NoError(t, err)

	rs.primary.kill() // SIGKILL
	rs.link.resetAll()
	release() // what the link held is gone with its connection
	_, err = rs.do(rs.replica, "REPLICAOF", "NO", "ONE")
	require.NoError(t, err)

	entries, err := redis.ByteSlices(rs.do(rs.replica, "LRANGE", waiting.ready[0][0], 0, -1))
	require.NoError(t, err)
	var ids []string
	for _, e := range entries {
		task, _, err := decodeEntry(e)
		require.NoError(t, err)
		ids = append(ids, task.ID)
	}
	assert.Equal(t, []string{kept}, ids,
		"the promoted replica has the task acknowledged with the knob on, and lacks %s, acknowledged without it", lost)
}

// TestWaitReplicasAddTaskOnceRetryReal retries an AddTaskOnce that failed
// with ErrNotReplicated, as ErrNotReplicated's doc invites (the retry adds
// no second task), while the replication link holds the first call's
// write; then it kills the primary and promotes the replica, which lacks
// the task. No retry may report the task added (nil) before the replica
// has it, on the first call's connection or on another process's. (Both
// took the duplicate for a write that changed nothing and returned nil at
// once: the task whose AddTaskOnce returned nil was lost.)
func TestWaitReplicasAddTaskOnceRetryReal(t *testing.T) {
	requireFaultSuite(t)
	rs := startReplicated(t, true)
	ctx := context.Background()
	cfg := Config{Prefix: testPrefix(t), WaitReplicas: 1, WaitTimeout: 50 * time.Millisecond}
	q, err := Dial(ctx, []string{rs.primary.url()}, cfg)
	require.NoError(t, err)
	defer q.Close()
	other, err := Dial(ctx, []string{rs.primary.url()}, cfg) // another producer
	require.NoError(t, err)
	defer other.Close()
	for _, p := range []*Queue{q, other} { // the layout recorded and checked, on the replica too
		require.Eventually(t, func() bool { // a loaded machine's replica may take longer than the wait
			_, err := p.AddTask(ctx, 2, []byte("replicated"))
			return err == nil
		}, 10*time.Second, 10*time.Millisecond)
	}

	release := rs.link.holdReplies()
	_, _, err = q.AddTaskOnce(ctx, 1, "request-1", time.Minute, []byte("a"))
	require.ErrorIs(t, err, ErrNotReplicated, "the link holds the write")
	for name, p := range map[string]*Queue{"the same producer": q, "another producer": other} {
		id, added, err := p.AddTaskOnce(ctx, 1, "request-1", time.Minute, []byte("a"))
		assert.ErrorIs(t, err, ErrNotReplicated, "%s: the retry returned %q (added %t) while the replica lacks the task", name, id, added)
	}

	rs.primary.kill() // SIGKILL
	rs.link.resetAll()
	release()
	_, err = rs.do(rs.replica, "REPLICAOF", "NO", "ONE")
	require.NoError(t, err)
	entries, err := redis.ByteSlices(rs.do(rs.replica, "LRANGE", q.ready[0][0], 0, -1))
	require.NoError(t, err)
	for _, e := range entries {
		task, _, err := decodeEntry(e)
		require.NoError(t, err)
		assert.NotEqual(t, uint64(1), task.OrderID, "the promoted replica has the task the link held")
	}
}
