package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestQueueKeysShareHashTag(t *testing.T) {
	t.Parallel()
	k := newQueueKeys("p", 2, 1)
	all := []string{k.ready, k.pending, k.claims, k.dead, k.lease, k.meta, k.wake}
	seen := map[string]bool{}
	for _, key := range all {
		assert.True(t, strings.HasPrefix(key, "{p:2.1}:"), key)
		assert.False(t, seen[key], "duplicate key %s", key)
		seen[key] = true
	}
	assert.NotEqual(t, newQueueKeys("p", 1, 21).ready, newQueueKeys("p", 12, 1).ready)
	assert.Equal(t, "p:layout", layoutKey("p"))
}

// keyDump is the content of every key of a test prefix on one server.
type keyDump map[string]string

// scanKeys lists the keys on s that contain prefix, sorted: on a cluster,
// those on every primary.
func scanKeys(t *testing.T, s *testServer, prefix string) []string {
	t.Helper()
	var conns []redis.Conn
	if s.router == nil {
		conns = append(conns, s.pool.Get())
	} else {
		for _, addr := range s.router.slots.Load().primaries {
			c, err := s.router.nodeConn(context.Background(), addr)
			require.NoError(t, err)
			conns = append(conns, c)
		}
	}
	var keys []string
	for _, c := range conns {
		defer c.Close()
		cursor := "0"
		for {
			r, err := redis.Values(c.Do("SCAN", cursor, "MATCH", "*"+globEscape(prefix)+"*", "COUNT", 1000))
			require.NoError(t, err)
			cursor, _ = redis.String(r[0], nil)
			ks, _ := redis.Strings(r[1], nil)
			keys = append(keys, ks...)
			if cursor == "0" {
				break
			}
		}
	}
	sort.Strings(keys)
	return keys
}

func globEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, "*", `\*`, "?", `\?`, "[", `\[`, "]", `\]`).Replace(s)
}

// dumpKeys reads every key of prefix on s with its type and content.
func dumpKeys(t *testing.T, s *testServer, prefix string) keyDump {
	t.Helper()
	out := keyDump{}
	for _, k := range scanKeys(t, s, prefix) {
		typ, _ := redis.String(s.do(t, "TYPE", k), nil)
		var v any
		switch typ {
		case "list":
			v, _ = redis.Strings(s.do(t, "LRANGE", k, 0, -1), nil)
		case "hash":
			v, _ = redis.StringMap(s.do(t, "HGETALL", k), nil)
		case "string":
			v, _ = redis.String(s.do(t, "GET", k), nil)
		}
		out[k] = fmt.Sprintf("%s %q", typ, v)
	}
	return out
}

func TestLayoutRecordedAtFirstUse(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, servers := newTestQueue(t, 2, Config{Queues: 3})
	layout := func(i int) string { return q.layoutKeyOf(q.parts[i]) } // on a cluster, one per partition
	for i, s := range servers {
		assert.Zero(t, s.do(t, "EXISTS", layout(i)), "New must not touch Redis")
	}
	_, err := q.AddTask(ctx, 0, []byte("x")) // partition 0
	require.NoError(t, err)
	got, err := redis.StringMap(servers[0].do(t, "HGETALL", layout(0)), nil)
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"partitions": "2", "queues": "3", "index": "0"}, got)
	// Every partition gets it at the queue's first use, so that a process
	// given the servers in another order later is refused on any of them.
	got, err = redis.StringMap(servers[1].do(t, "HGETALL", layout(1)), nil)
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"partitions": "2", "queues": "3", "index": "1"}, got, "partition 1, not used yet")

	_, err = q.AddTask(ctx, 1, []byte("y")) // partition 1
	require.NoError(t, err)

	// A second process with the same layout agrees.
	q2, err := New([]*redis.Pool{servers[0].pool, servers[1].pool}, Config{Prefix: q.cfg.Prefix, Queues: 3})
	require.NoError(t, err)
	_, err = q2.AddTasks(ctx, []Task{{OrderID: 0, Payload: []byte("a")}, {OrderID: 1, Payload: []byte("b")}})
	require.NoError(t, err)
}

func TestLayoutMismatch(t *testing.T) {
	t.Parallel()
	skipOnCluster(t, "it reads each partition's keys as a server's, and a cluster's partitions share one keyspace")
	ctx := context.Background()
	servers := newTestServers(t, 3)
	prefix := testPrefix(t)
	pools := func(idx ...int) []*redis.Pool {
		out := make([]*redis.Pool, len(idx))
		for i, j := range idx {
			out[i] = servers[j].pool
		}
		return out
	}
	// The first process: R=2 (servers 0, 1), Q=2, with tasks in every queue,
	// a scheduled one and a dead record. Every call of a disagreeing
	// process, whether it writes or reads, must refuse: a read would find
	// another layout's queues under its names (a scheduled task read as
	// unknown, rows of queues that are not there).
	first, err := New(pools(0, 1), Config{Prefix: prefix, Queues: 2})
	require.NoError(t, err)
	for id := uint64(0); id < 8; id++ {
		_, err := first.AddTask(ctx, id, []byte(fmt.Sprint("task ", id)))
		require.NoError(t, err)
	}
	later, err := first.AddTaskAfter(ctx, 0, time.Hour, []byte("later")) // partition 0, queue 0 in every layout tried
	require.NoError(t, err)
	c, err := first.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 1})
	require.NoError(t, err)
	task, err := c.RemoveTask(ctx)
	require.NoError(t, err)
	dead, err := c.Fail(ctx, task, errors.New("boom"))
	require.NoError(t, err)
	require.True(t, dead)
	require.NoError(t, c.Release(ctx))

	before := make([]keyDump, len(servers))
	for i, s := range servers {
		before[i] = dumpKeys(t, s, prefix)
	}
	require.NotEmpty(t, before[0])
	require.NotEmpty(t, before[1])
	require.Empty(t, before[2])

	quiet := slog.New(slog.DiscardHandler)
	tests := []struct {
		name      string
		pools     []*redis.Pool
		queues    int
		partition int // the partition the error names
		want      string
		got       string
	}{
		{"other R", pools(0, 1, 2), 2, 0, "partitions=3 queues=2 index=0", "partitions=2 queues=2 index=0"},
		{"other Q", pools(0, 1), 3, 0, "partitions=2 queues=3 index=0", "partitions=2 queues=2 index=0"},
		{"swapped", pools(1, 0), 2, 0, "partitions=2 queues=2 index=0", "partitions=2 queues=2 index=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, err := New(tt.pools, Config{Prefix: prefix, Queues: tt.queues})
			require.NoError(t, err, "New makes no connection, so it cannot see the mismatch")
			every := make([]Task, 0, 12)
			for id := uint64(0); id < 12; id++ {
				every = append(every, Task{OrderID: id, Payload: []byte("new")})
			}
			ops := map[string]func() error{
				"AddTask": func() error { _, err := q.AddTask(ctx, 0, []byte("new")); return err },
				"AddTasks": func() error {
					ids, err := q.AddTasks(ctx, every)
					assert.Empty(t, ids)
					return err
				},
				"Consume": func() error { _, err := q.Consume(ctx, 0, ConsumerConfig{}); return err },
				"AnalysePool": func() error {
					return q.AnalysePool(ctx, 0, PoolConfig{ExitOnEmpty: true, Logger: quiet}, func(context.Context, Task) error {
						t.Error("analyse ran under a mismatched layout")
						return nil
					})
				},
				"Replay":      func() error { _, err := q.Replay(ctx, 0); return err },
				"Purge":       func() error { _, err := q.Purge(ctx, 0); return err },
				"CheckLayout": func() error { return q.CheckLayout(ctx) },
				// Reads: of partition 0, the one each error names.
				"Stats": func() error {
					rows, err := q.Stats(ctx)
					assert.Empty(t, rows)
					return err
				},
				"Status": func() error {
					st, err := q.Status(ctx, 0, later)
					assert.Zero(t, st)
					return err
				},
				"State": func() error {
					st, err := q.State(ctx, 0, later)
					assert.Equal(t, StateUnknown, st)
					return err
				},
				"Scheduled": func() error {
					tasks, err := q.Scheduled(ctx, 0, 0, 10)
					assert.Empty(t, tasks)
					return err
				},
				"Pending": func() error {
					tasks, err := q.Pending(ctx, 0)
					assert.Empty(t, tasks)
					return err
				},
				"Dead": func() error {
					tasks, err := q.Dead(ctx, 0)
					assert.Empty(t, tasks)
					return err
				},
				"GroupStatus": func() error {
					st, err := q.GroupStatus(ctx, "g")
					assert.Zero(t, st)
					return err
				},
			}
			for name, op := range ops {
				err := op()
				require.Error(t, err, name)
				assert.ErrorIs(t, err, ErrLayoutMismatch, name)
				var le *LayoutError
				if assert.ErrorAs(t, err, &le, name) {
					assert.Equal(t, tt.partition, le.Partition, name)
					assert.Equal(t, tt.want, le.Want, name)
					assert.Equal(t, tt.got, le.Got, name)
					assert.Contains(t, le.Error(), "queue: layout of partition")
				}
			}
			for i, s := range servers {
				assert.Equal(t, before[i], dumpKeys(t, s, prefix), "server %d changed", i)
			}
		})
	}
}

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
		if name == "servers swapped" && testOnCluster {
			t.Log("servers swapped: not on a cluster, where partitions are told apart by their keys' names and every pool reaches the same servers")
			continue
		}
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

// The layout check was cached for the life of a process: after the server
// lost what it had recorded (its keys deleted, standing in for a restart without
// persistence), a process with another queue count was accepted beside a
// running one, and one OrderID's tasks went to two queues. A pool now
// checks again with every lease it takes.
func TestLayoutRecheckedWithEveryLease(t *testing.T) {
	t.Parallel()
	skipOnCluster(t, "it rewrites a server's keys in one MULTI, which a cluster connection does not carry")
	q1, servers := newTestQueue(t, 1, Config{})
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	_, err := q1.AddTask(ctx, 1, []byte("a"))
	require.NoError(t, err)
	rec := newRecorder()
	errc := runPool(ctx, q1, PoolConfig{LeaseTTL: time.Second, OnError: func(error) {}}, rec.fn(nil))
	require.Eventually(t, func() bool { return len(rec.order(1)) == 1 }, 5*time.Second, time.Millisecond)

	// The server forgets everything and a process with Q=2 comes first:
	// in one transaction, so that the running pool, which takes its lease
	// again at once, cannot record its own layout in between.
	c := servers[0].pool.Get()
	require.NoError(t, c.Send("MULTI"))
	for _, k := range scanKeys(t, servers[0], q1.cfg.Prefix) { // this test's keys only: the server may be shared
		require.NoError(t, c.Send("DEL", k))
	}
	require.NoError(t, c.Send("HSET", layoutKey(q1.cfg.Prefix), "partitions", 1, "queues", 2, "index", 0))
	_, err = c.Do("EXEC")
	require.NoError(t, err)
	c.Close()
	pools := []*redis.Pool{servers[0].pool}
	q2, err := New(pools, Config{Prefix: q1.cfg.Prefix, Queues: 2})
	require.NoError(t, err)
	_, err = q2.AddTask(ctx, 1, []byte("b"))
	require.NoError(t, err)

	// The running Q=1 pool lost its lease with the flush; taking it again,
	// it finds the other layout and stops with the error.
	err = receive(t, errc)
	var le *LayoutError
	require.ErrorAs(t, err, &le)
	assert.Contains(t, le.Got, "queues=2")
}

// A producer of a Dial'd queue checks the layout again on a new connection
// after its server restarted and lost the record.
func TestLayoutRecheckedAfterReconnect(t *testing.T) {
	t.Parallel()
	m, q1, prefix := dialMiniredis(t)
	ctx := bounded(t)
	_, err := q1.AddTask(ctx, 1, []byte("a"))
	require.NoError(t, err)

	restartEmpty(t, m, prefix, 0)

	q2, err := Dial(ctx, []string{"redis://" + m.Addr()}, Config{Prefix: prefix, Queues: 2})
	require.NoError(t, err)
	defer q2.Close()
	_, err = q2.AddTask(ctx, 1, []byte("b"))
	require.NoError(t, err)
	_, err = q1.AddTask(ctx, 1, []byte("c"))
	assert.ErrorIs(t, err, ErrLayoutMismatch, "the old process must not add to a server now laid out otherwise")
}

// A running pool of a Dial'd queue whose server restarted empty and was
// laid out first by a process with another queue count meets the
// mismatch on its new connections (every call it makes is refused).
// Retrying cannot fix that: the pool stops as when its ctx ends (the
// outcome of a task that finishes meanwhile, refused too, is given up at
// once, not retried for the stop's whole span) and returns the
// *LayoutError, having written nothing to the server.
func TestPoolStopsAtAnotherLayoutAfterReconnect(t *testing.T) {
	t.Parallel()
	m, q, prefix := dialMiniredis(t)
	ctx := bounded(t)
	ids := addAll(t, q, orderTasks(1, 1))
	started, finish := make(chan struct{}, 1), make(chan struct{})
	var errs errLog
	errc := runPool(ctx, q, PoolConfig{LeaseTTL: 30 * time.Second, OnError: errs.add}, func(ctx context.Context, task Task) error {
		if task.ID == ids[0] {
			started <- struct{}{}
			<-finish
		}
		return nil
	})
	receive(t, started)

	// A restart without persistence, and a process with Queues 2 first to
	// record its layout (before the running pool reconnects).
	restartEmpty(t, m, prefix, 2)
	close(finish) // its ack is refused

	stopped := time.Now()
	var err error
	select {
	case err = <-errc:
	case <-time.After(10 * time.Second):
		t.Fatalf("the pool still runs 10s after the restart; it reported %d errors, the last: %v", len(errs.all()), errs.all()[len(errs.all())-1])
	}
	var le *LayoutError
	require.ErrorAs(t, err, &le)
	assert.Contains(t, le.Got, "queues=2")
	assert.Less(t, time.Since(stopped), 5*time.Second, "a refused outcome is not retried through the stop")
	assert.Zero(t, errs.count(ErrLayoutMismatch), "returned, not reported")
	assert.Equal(t, []string{layoutKey(prefix)}, m.Keys(), "the pool wrote nothing to the server laid out otherwise")
}

// A connection made while a recheck of its partition runs (a pool that
// lost its connection to a restarted server rechecks the layout, and the
// partition counts as unverified until the pass ends, a pass that may
// fail while the server comes back) checks the layout as any other: it
// is the next connection of the partition's other users too. A group
// member's heartbeat on one wrote to a server laid out anew by a process
// of another layout, and a member running no pool went on doing so.
func TestConnectionMadeDuringARecheckChecksTheLayout(t *testing.T) {
	t.Parallel()
	m, q, prefix := dialMiniredis(t)
	ctx := bounded(t)
	g, err := q.newGroupStore("g", time.Second)
	require.NoError(t, err)
	require.NoError(t, q.checkLayout(ctx, g.part))
	_, err = g.beat(ctx, "m", 1, "beat", 0)
	require.NoError(t, err)

	restartEmpty(t, m, prefix, 2)
	g.part.checked.Store(false) // a recheck under way, as recheckLayout has it
	_, err = g.beat(ctx, "m", 1, "beat", 0)
	require.ErrorIs(t, err, ErrLayoutMismatch)
	assert.Equal(t, []string{layoutKey(prefix)}, m.Keys(), "the heartbeat wrote to the server laid out otherwise")
}

// A delivery that fails with a layout error of its own (an analyse
// function whose AddTask to another queue was refused) is a failed
// delivery like any other: the pool retries it and goes on.
func TestPoolGoesOnWhenATaskFailsWithALayoutError(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ids := addAll(t, q, orderTasks(1, 1))
	rec := newRecorder()
	var errs errLog
	var failed atomic.Bool
	require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{ExitOnEmpty: true, OnError: errs.add,
		Backoff: func(int) time.Duration { return time.Millisecond }}, rec.fn(func(context.Context, Task) error {
		if failed.CompareAndSwap(false, true) {
			return fmt.Errorf("add to the other queue: %w", &LayoutError{Want: "partitions=1 queues=1 index=0", Got: "partitions=1 queues=2 index=0"})
		}
		return nil
	})))
	assert.Equal(t, []int{1, 2}, rec.attemptsOf(ids[0]))
	assert.Equal(t, 1, errs.count(ErrLayoutMismatch), "reported as the failed delivery it is")
}

// A Queue that only reads (CheckLayout, Stats: a dashboard, qugo stats)
// records no layout on a new connection either, after its server
// restarted and lost the record: a dashboard left running must not lay
// out a server for the producers that come next. It still refuses a
// server laid out otherwise.
func TestReadOnlyQueueRecordsNoLayoutAfterReconnect(t *testing.T) {
	t.Parallel()
	ctx := bounded(t)
	m, reader := readAfterRestart(t)
	prefix, layout := reader.cfg.Prefix, layoutKey(reader.cfg.Prefix)
	require.NoError(t, reader.Ping(ctx))
	assert.False(t, m.Exists(layout), "a Queue that only reads recorded the layout")

	// Laid out otherwise by a writer: the reader's next connection refuses it.
	writer, err := Dial(ctx, []string{"redis://" + m.Addr()}, Config{Prefix: prefix, Queues: 2})
	require.NoError(t, err)
	defer writer.Close()
	_, err = writer.AddTask(ctx, 1, []byte("a"))
	require.NoError(t, err)
	m.Close()
	require.NoError(t, m.Restart()) // the record kept, the connections gone
	assert.ErrorIs(t, reader.Ping(ctx), ErrLayoutMismatch)
}

// A layout error says what the server recorded and which setting to change.
func TestLayoutErrorSaysWhatToChange(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ got, want, hint string }{
		{"partitions=2 queues=4 index=0", "partitions=2 queues=1 index=0", "set Config.Queues to 4 (or"},
		{"partitions=2 queues=1 index=0", "partitions=3 queues=1 index=0", "give 2 servers, not 3"},
		{"partitions=1 queues=1 index=0", "partitions=2 queues=1 index=0", "give 1 server, not 2"},
		{"partitions=2 queues=1 index=0", "partitions=2 queues=1 index=1", "give this server as partition 0, not 1"},
		{"partitions= queues=x index=", "partitions=2 queues=1 index=1", "not one this package wrote"},
	} {
		msg := (&LayoutError{Partition: 1, Prefix: "orders", Got: tc.got, Want: tc.want}).Error()
		assert.Contains(t, msg, `under prefix "orders"`, "the prefix the layout is recorded under")
		assert.Contains(t, msg, "redis has "+tc.got)
		assert.Contains(t, msg, tc.hint)
	}
}

// One server given as two partitions (the same URL twice, or two names of
// it) is refused with a clear error at first use, before it records a
// layout that would refuse the processes configured right.
func TestLayoutOneServerTwice(t *testing.T) {
	t.Parallel()
	skipOnCluster(t, "a cluster's partitions share one keyspace by design")
	ctx := context.Background()
	for _, first := range []uint64{0, 1, 2} { // partition 0 first, 1 first, 2 (another server) first
		s := newTestServers(t, 2)
		prefix := testPrefix(t)
		q, err := New([]*redis.Pool{s[0].pool, s[1].pool, testPool(s[0].url)}, Config{Prefix: prefix})
		require.NoError(t, err)
		_, err = q.AddTask(ctx, first, []byte("x"))
		require.ErrorIs(t, err, ErrLayoutMismatch, "first %d", first)
		assert.Contains(t, err.Error(), "partitions 0 and 2 are the same Redis server")
		for i, srv := range s {
			assert.Empty(t, scanKeys(t, srv, prefix), "first %d: server %d keeps nothing", first, i)
		}
		_, err = q.AddTask(ctx, first, []byte("x"))
		require.ErrorIs(t, err, ErrLayoutMismatch, "refused again")

		right, err := New([]*redis.Pool{s[0].pool}, Config{Prefix: prefix})
		require.NoError(t, err)
		_, err = right.AddTask(ctx, 7, []byte("y"))
		require.NoError(t, err, "the process configured right is not refused")
		q.Close()
		right.Close()
	}
}

// A process given one server twice, starting beside processes given the
// servers right, never refuses them: it is refused before it records
// anything a right one could read.
func TestLayoutOneServerTwiceBesideARightProcess(t *testing.T) {
	t.Parallel()
	skipOnCluster(t, "a cluster's partitions share one keyspace by design")
	s := newTestServers(t, 2)
	for range 30 {
		prefix := testPrefix(t)
		wrong, err := New([]*redis.Pool{s[0].pool, testPool(s[0].url)}, Config{Prefix: prefix})
		require.NoError(t, err)
		right, err := New([]*redis.Pool{s[0].pool, s[1].pool}, Config{Prefix: prefix})
		require.NoError(t, err)
		var wg sync.WaitGroup
		var wrongErr, rightErr error
		wg.Add(2)
		go func() { defer wg.Done(); _, wrongErr = wrong.AddTask(context.Background(), 0, []byte("x")) }()
		go func() { defer wg.Done(); _, rightErr = right.AddTask(context.Background(), 0, []byte("x")) }()
		wg.Wait()
		require.ErrorIs(t, wrongErr, ErrLayoutMismatch)
		require.NoError(t, rightErr)
		got, err := redis.StringMap(s[0].do(t, "HGETALL", prefix+":layout"), nil)
		require.NoError(t, err)
		assert.Equal(t, map[string]string{"partitions": "2", "queues": "1", "index": "0"}, got)
		wrong.Close()
		right.Close()
	}
}

// probeFailConn fails the commands on layout probe keys that fail picks.
type probeFailConn struct {
	redis.Conn
	fail func(cmd string) bool
}

func (c probeFailConn) hit(cmd string, args []any) bool {
	k, _ := firstArg(args).(string)
	return strings.Contains(k, ":layout:probe:") && c.fail(strings.ToUpper(cmd))
}

func firstArg(args []any) any {
	if len(args) == 0 {
		return nil
	}
	return args[0]
}

func (c probeFailConn) Do(cmd string, args ...any) (any, error) {
	if c.hit(cmd, args) {
		return nil, redis.Error("NOPERM no permissions to access one of the keys")
	}
	return c.Conn.Do(cmd, args...)
}

func (c probeFailConn) ReceiveContext(ctx context.Context) (any, error) {
	return redis.ReceiveContext(c.Conn, ctx)
}

func (c probeFailConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	if c.hit(cmd, args) {
		return nil, redis.Error("NOPERM no permissions to access one of the keys")
	}
	return redis.DoContext(c.Conn, ctx, cmd, args...)
}

// A probe that fails on one of the partitions about to be recorded
// records nothing: that one could be the other name of the other.
func TestLayoutNotRecordedWhenAProbeFails(t *testing.T) {
	t.Parallel()
	skipOnCluster(t, "a cluster's partitions share one keyspace by design")
	ctx := context.Background()
	for _, tc := range []string{"SET", "GET"} {
		t.Run(tc, func(t *testing.T) {
			s := newTestServers(t, 2) // X = s[0], Y = s[1]
			prefix := testPrefix(t)
			dup := s[0].wrapPool(4, func(c redis.Conn) redis.Conn {
				return probeFailConn{c, func(cmd string) bool { return cmd == tc }}
			})
			defer dup.Close()
			wrong, err := New([]*redis.Pool{s[0].pool, dup}, Config{Prefix: prefix})
			require.NoError(t, err)
			defer wrong.Close()
			_, err = wrong.AddTask(ctx, 0, []byte("x"))
			require.Error(t, err)
			assert.Empty(t, scanKeys(t, s[0], prefix), "nothing recorded, nothing added")
			right, err := New([]*redis.Pool{s[1].pool, s[0].pool}, Config{Prefix: prefix})
			require.NoError(t, err)
			defer right.Close()
			_, err = right.AddTask(ctx, 1, []byte("y")) // partition 1 = X
			require.NoError(t, err, "the process given the servers right is not refused")
		})
	}
}

// A server down does not stop a process from using the others: one whose
// layout matches is used, and one that lost its layout (a restart without
// persistence) records it again.
func TestLayoutOfTheOthersWhileAServerIsDown(t *testing.T) {
	t.Parallel()
	skipOnCluster(t, "it takes one partition's server away")
	ctx := bounded(t)
	s := newTestServers(t, 3)
	prefix := testPrefix(t)
	pools := []*redis.Pool{s[0].pool, s[1].pool, s[2].pool}
	first, err := New(pools, Config{Prefix: prefix})
	require.NoError(t, err)
	for id := range uint64(3) {
		_, err := first.AddTask(ctx, id, []byte("x")) // records every layout
		require.NoError(t, err)
	}
	first.Close()
	s[1].do(t, "DEL", prefix+":layout") // lost by a restart
	down := downPool(t)
	q, err := New([]*redis.Pool{s[0].pool, s[1].pool, down}, Config{Prefix: prefix})
	require.NoError(t, err)
	defer q.Close()
	_, err = q.AddTask(ctx, 0, []byte("y"))
	require.NoError(t, err, "partition 0 matches")
	_, err = q.AddTask(ctx, 1, []byte("y"))
	require.NoError(t, err, "partition 1 records its layout again")
	got, err := redis.StringMap(s[1].do(t, "HGETALL", prefix+":layout"), nil)
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"partitions": "3", "queues": "1", "index": "1"}, got)
	_, err = q.AddTask(ctx, 2, []byte("y"))
	require.Error(t, err, "partition 2 is down")
	require.NoError(t, q.AnalysePool(ctx, 0, PoolConfig{ExitOnEmpty: true, OnError: func(error) {}},
		func(context.Context, Task) error { return nil }), "a pool of partition 0 runs")
	assert.Zero(t, s[0].do(t, "LLEN", newQueueKeys(prefix, 0, 0).ready), "drained")
}

// Reads verify the layout as writes do, but record none: a Queue that
// only reads, at its first use, with one of its servers down, reads the
// one that is up and leaves it without a layout; a read of the one down
// fails, with that server's error.
func TestReadsRecordNoLayout(t *testing.T) {
	t.Parallel()
	skipOnCluster(t, "it gives one partition a server of its own, down")
	ctx := bounded(t)
	up := newTestServers(t, 1)[0]
	down := downPool(t)
	prefix := testPrefix(t)
	q, err := New([]*redis.Pool{up.pool, down}, Config{Prefix: prefix, Queues: 2})
	require.NoError(t, err)
	defer q.Close()
	id := "0000000000000000000a" // a task ID no queue holds
	require.True(t, ValidTaskID(id))

	rows, err := q.Stats(ctx)
	assert.Equal(t, []int{1}, FailedPartitions(err))
	assert.NotErrorIs(t, err, ErrLayoutMismatch)
	require.Len(t, rows, 4)
	reads := map[string]func(orderID uint64, analyser int) error{
		"Status":    func(o uint64, _ int) error { _, err := q.Status(ctx, o, id); return err },
		"State":     func(o uint64, _ int) error { _, err := q.State(ctx, o, id); return err },
		"Scheduled": func(_ uint64, a int) error { _, err := q.Scheduled(ctx, a, 0, 10); return err },
		"Pending":   func(_ uint64, a int) error { _, err := q.Pending(ctx, a); return err },
		"Dead":      func(_ uint64, a int) error { _, err := q.Dead(ctx, a); return err },
	}
	for name, read := range reads {
		assert.NoError(t, read(2, 2), "%s of partition 0", name)
		err := read(3, 3)
		assert.ErrorIs(t, err, syscall.ECONNREFUSED, "%s of partition 1", name)
	}
	_, err = q.GroupStatus(ctx, "g") // a group's records are on partition 0
	assert.NoError(t, err)
	assert.Empty(t, scanKeys(t, up, prefix), "a read recorded a layout, or wrote another key")
}

// A Queue that read first (CheckLayout, then Stats after its server lost
// the record) and writes next records the layout at its first write,
// though the partition was verified and the connection Stats dialed only
// compared: else a process of another layout would be let in.
func TestWriterAfterReadRecordsLayout(t *testing.T) {
	t.Parallel()
	ctx := bounded(t)
	m, q := readAfterRestart(t)
	prefix, layout := q.cfg.Prefix, layoutKey(q.cfg.Prefix)
	_, err := q.AddTask(ctx, 1, []byte("a"))
	require.NoError(t, err)
	assert.True(t, m.Exists(layout), "the writing Queue wrote a task on a server with no layout recorded")

	// The consequence: a process of another layout is let in beside it.
	other, err := Dial(ctx, []string{"redis://" + m.Addr()}, Config{Prefix: prefix, Queues: 2})
	require.NoError(t, err)
	defer other.Close()
	_, err = other.AddTask(ctx, 1, []byte("b"))
	assert.ErrorIs(t, err, ErrLayoutMismatch, "a process of another layout added beside the first")
}

// readAfterRestart returns a miniredis with a layout recorded, and a
// Queue Dial'd to it that verified the layout (CheckLayout, as a
// dashboard starts), saw the server restart without persistence (the
// data and every connection gone) and then read (Stats: a new connection
// of its pool).
func readAfterRestart(t *testing.T) (*miniredis.Miniredis, *Queue) {
	t.Helper()
	ctx := bounded(t)
	m := miniredis.RunT(t)
	prefix := testPrefix(t)
	m.HSet(layoutKey(prefix), "partitions", "1", "queues", "1", "index", "0")
	q, err := Dial(ctx, []string{"redis://" + m.Addr()}, Config{Prefix: prefix})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	require.NoError(t, q.CheckLayout(ctx))
	restartEmpty(t, m, prefix, 0)
	_, err = q.Stats(ctx)
	require.NoError(t, err)
	return m, q
}
