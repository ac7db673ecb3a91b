package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	defaults := Config{
		Prefix: "qugo", Queues: 1, MaxPayload: 1 << 20,
		DialTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, MaxIdle: 64,
	}
	set := Config{
		Prefix: "app:orders", Queues: 4, MaxPayload: 100,
		DialTimeout: time.Second, ReadTimeout: 2 * time.Second, MaxIdle: 3,
	}
	with := func(f func(*Config)) Config {
		c := Config{}
		f(&c)
		return c
	}
	tests := []struct {
		name string
		in   Config
		want Config // when wantErr is false
		bad  bool
	}{
		{"zero", Config{}, defaults, false},
		{"all set", set, set, false},
		{"largest payload", with(func(c *Config) { c.MaxPayload = 256 << 20 }),
			func() Config { d := defaults; d.MaxPayload = 256 << 20; return d }(), false},
		{"prefix with {", with(func(c *Config) { c.Prefix = "a{b" }), Config{}, true},
		{"prefix with }", with(func(c *Config) { c.Prefix = "a}b" }), Config{}, true},
		{"negative queues", with(func(c *Config) { c.Queues = -1 }), Config{}, true},
		{"negative payload", with(func(c *Config) { c.MaxPayload = -1 }), Config{}, true},
		{"payload over 256 MiB", with(func(c *Config) { c.MaxPayload = 256<<20 + 1 }), Config{}, true},
		{"negative dial timeout", with(func(c *Config) { c.DialTimeout = -time.Second }), Config{}, true},
		{"negative read timeout", with(func(c *Config) { c.ReadTimeout = -time.Second }), Config{}, true},
		{"negative max idle", with(func(c *Config) { c.MaxIdle = -1 }), Config{}, true},
		{"most queues", with(func(c *Config) { c.Queues = 4096 }),
			func() Config { d := defaults; d.Queues = 4096; return d }(), false},
		{"queues 1<<40", with(func(c *Config) { c.Queues = 1 << 40 }), Config{}, true},
		{"queues over 4096", with(func(c *Config) { c.Queues = 4097 }), Config{}, true},
		{"max idle over 4096", with(func(c *Config) { c.MaxIdle = 4097 }), Config{}, true},
		{"dial timeout over 1h", with(func(c *Config) { c.DialTimeout = time.Hour + 1 }), Config{}, true},
		{"read timeout over 1h", with(func(c *Config) { c.ReadTimeout = 1 << 62 }), Config{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.in.withDefaults()
			if tt.bad {
				assert.ErrorIs(t, err, ErrBadConfig)
				_, err = New([]*redis.Pool{{}}, tt.in)
				assert.ErrorIs(t, err, ErrBadConfig, "New")
				_, err = Dial(context.Background(), []string{"redis://127.0.0.1:1"}, tt.in)
				assert.ErrorIs(t, err, ErrBadConfig, "Dial")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
			q, err := New([]*redis.Pool{{}}, tt.in)
			require.NoError(t, err)
			assert.Equal(t, tt.want, q.cfg)
		})
	}
}

func TestNewBadInput(t *testing.T) {
	t.Parallel()
	_, err := New(nil, Config{})
	assert.ErrorIs(t, err, ErrNoPartitions)
	_, err = New([]*redis.Pool{}, Config{})
	assert.ErrorIs(t, err, ErrNoPartitions)
	_, err = New([]*redis.Pool{{}, nil}, Config{})
	assert.ErrorIs(t, err, ErrBadConfig)
	assert.Contains(t, fmt.Sprint(err), "pool 1 is nil")
}

func TestNewConnectsToNothing(t *testing.T) {
	t.Parallel()
	s := newTestServers(t, 1)[0]
	log := &cmdLog{}
	q, err := New([]*redis.Pool{countingPool(t, s, log)}, Config{Queues: 2})
	require.NoError(t, err)
	require.NoError(t, q.Close())
	assert.Zero(t, log.dials)
	assert.Empty(t, log.cmds)
}

func TestDialBadInput(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newTestServers(t, 1)[0]
	down := "redis://" + closedAddr(t)
	tests := []struct {
		name   string
		urls   []string
		target error // nil: any error
		what   string
	}{
		{"no urls", nil, ErrNoPartitions, ""},
		{"empty list", []string{}, ErrNoPartitions, ""},
		{"http scheme", []string{"http://127.0.0.1:6379"}, ErrBadConfig, "partition 0"},
		{"no scheme", []string{"127.0.0.1:6379"}, ErrBadConfig, "partition 0"},
		{"empty url", []string{""}, ErrBadConfig, "partition 0"},
		{"second url bad", []string{s.url, "tcp://x"}, ErrBadConfig, "partition 1"},
		{"unreachable", []string{down}, nil, "dial partition 0"},
		{"second unreachable", []string{s.url, down}, nil, "dial partition 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, err := Dial(ctx, tt.urls, Config{DialTimeout: 2 * time.Second})
			assert.Nil(t, q)
			require.Error(t, err)
			if tt.target != nil {
				assert.ErrorIs(t, err, tt.target)
			} else {
				assert.False(t, errors.Is(err, ErrBadConfig), "a down server is not bad config: %v", err)
			}
			assert.Contains(t, err.Error(), tt.what)
			assert.True(t, strings.HasPrefix(err.Error(), "queue: "), err.Error())
			if s.mini != nil {
				// The pools made before the failure are closed.
				assert.Eventually(t, func() bool { return s.mini.CurrentConnectionCount() == 0 },
					5*time.Second, 5*time.Millisecond, "connections left open")
			}
		})
	}
}

func TestDialAndClose(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	servers := newTestServers(t, 2)
	q, err := Dial(ctx, []string{servers[0].url, servers[1].url}, Config{Prefix: testPrefix(t), Queues: 2})
	require.NoError(t, err)
	assert.Equal(t, 4, q.Analysers())
	id, err := q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	pi, qi := q.Route(1)
	got := readyIDs(t, servers[pi], newQueueKeys(q.cfg.Prefix, pi, qi).ready)
	assert.Equal(t, []string{id}, got)

	require.NoError(t, q.Close())
	require.NoError(t, q.Close(), "a second Close")
	_, err = q.AddTask(ctx, 1, []byte("x"))
	assert.ErrorIs(t, err, ErrClosed)
	for _, p := range q.parts {
		_, err := p.pool.GetContext(ctx)
		assert.Error(t, err, "Dial's pools are closed by Close")
	}
}

func TestCloseLeavesCallerPools(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, servers := newTestQueue(t, 1, Config{})
	require.NoError(t, q.Close())
	_, err := q.AddTask(ctx, 1, []byte("x"))
	assert.ErrorIs(t, err, ErrClosed)
	_, err = q.AddTasks(ctx, []Task{{OrderID: 1, Payload: []byte("x")}})
	assert.ErrorIs(t, err, ErrClosed)
	_, err = q.Consume(ctx, 0, ConsumerConfig{})
	assert.ErrorIs(t, err, ErrClosed)
	assert.ErrorIs(t, q.AnalysePool(ctx, 0, PoolConfig{}, func(context.Context, Task) error { return nil }), ErrClosed)
	_, _, err = q.AddTaskOnce(ctx, 1, "k", time.Minute, []byte("x"))
	assert.ErrorIs(t, err, ErrClosed)
	// Every call says so, as Close's doc promises.
	_, err = q.Stats(ctx)
	assert.ErrorIs(t, err, ErrClosed)
	_, err = q.Dead(ctx, 0)
	assert.ErrorIs(t, err, ErrClosed)
	_, err = q.Replay(ctx, 0)
	assert.ErrorIs(t, err, ErrClosed)
	_, err = q.Purge(ctx, 0)
	assert.ErrorIs(t, err, ErrClosed)
	_, err = q.Pending(ctx, 0)
	assert.ErrorIs(t, err, ErrClosed)
	_, err = q.State(ctx, 1, "x")
	assert.ErrorIs(t, err, ErrClosed)
	assert.ErrorIs(t, q.Ping(ctx), ErrClosed)
	assert.ErrorIs(t, q.CheckLayout(ctx), ErrClosed)
	assert.Equal(t, "PONG", servers[0].do(t, "PING"), "the caller's pool still works")
	assert.Empty(t, scanKeys(t, servers[0], q.cfg.Prefix), "a closed queue wrote nothing")
}

func TestAddTaskBadPayload(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, servers := newTestQueue(t, 2, Config{MaxPayload: 8})
	ok := []byte("12345678")
	big := []byte("123456789")
	for name, p := range map[string][]byte{"nil": nil, "empty": {}, "too large": big} {
		want := ErrEmptyPayload
		if len(p) > 0 {
			want = ErrPayloadTooLarge
		}
		id, err := q.AddTask(ctx, 1, p)
		assert.ErrorIs(t, err, want, name)
		assert.Empty(t, id, name)
		if want == ErrPayloadTooLarge {
			assert.Contains(t, fmt.Sprint(err), "9 bytes, the limit is 8 (Config.MaxPayload)", "it names the setting")
		}

		// AddTasks checks every task before writing any.
		tasks := []Task{{OrderID: 0, Payload: ok}, {OrderID: 1, Payload: ok}, {OrderID: 2, Payload: p}, {OrderID: 3, Payload: ok}}
		ids, err := q.AddTasks(ctx, tasks)
		assert.ErrorIs(t, err, want, name)
		assert.Contains(t, fmt.Sprint(err), "task 2", name)
		assert.Empty(t, ids, name)
	}
	for i, s := range servers {
		assert.Empty(t, scanKeys(t, s, q.cfg.Prefix), "server %d: bad payloads wrote nothing", i)
	}
	_, err := q.AddTask(ctx, 1, ok)
	assert.NoError(t, err, "a payload of exactly MaxPayload")
	_, err = q.AddTask(ctx, 1, []byte{0})
	assert.NoError(t, err, "a one-byte payload")
}

// TestAddTaskRoutes checks with R=3, Q=2 that every task lands in the
// ready list of the queue Route names, encoded as the caller gave it.
func TestAddTaskRoutes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, servers := newTestQueue(t, 3, Config{Queues: 2})
	want := map[[2]int][]Task{}
	before := time.Now().Add(-time.Millisecond)
	var all []string
	for id := uint64(0); id < 24; id++ {
		payload := []byte(fmt.Sprintf("payload %d", id))
		tid, err := q.AddTask(ctx, id, payload)
		require.NoError(t, err)
		require.True(t, ValidTaskID(tid), tid)
		all = append(all, tid)
		p, qi := q.Route(id)
		assert.Equal(t, [2]int{int(id % 3), int(id / 3 % 2)}, [2]int{p, qi})
		want[[2]int{p, qi}] = append(want[[2]int{p, qi}], Task{ID: tid, OrderID: id, Payload: payload})
	}
	after := time.Now().Add(time.Millisecond)
	assertUnique(t, all)
	for pi, s := range servers {
		for qi := 0; qi < 2; qi++ {
			got := readyList(t, s, newQueueKeys(q.cfg.Prefix, pi, qi).ready)
			w := want[[2]int{pi, qi}]
			require.Len(t, got, len(w), "queue %d.%d", pi, qi)
			for i := range w {
				assert.Equal(t, w[i].ID, got[i].ID)
				assert.Equal(t, w[i].OrderID, got[i].OrderID)
				assert.Equal(t, w[i].Payload, got[i].Payload)
				assert.Zero(t, got[i].Attempt)
				assert.False(t, got[i].AddedAt.Before(before) || got[i].AddedAt.After(after), "AddedAt %v", got[i].AddedAt)
			}
		}
	}
}

// TestAddTasksOrder checks that AddTasks keeps slice order per queue,
// also past the 4096 values of one LPUSH, returns IDs in slice order, and
// costs one pipeline per partition (on a Redis Cluster, one more for each
// further LPUSH of a queue).
func TestAddTasksOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	servers := newTestServers(t, 2)
	logs := []*cmdLog{{}, {}}
	prefix := testPrefix(t)
	q, err := New([]*redis.Pool{countingPool(t, servers[0], logs[0]), countingPool(t, servers[1], logs[1])},
		Config{Prefix: prefix, Queues: 2})
	require.NoError(t, err)

	// Most tasks go to partition 0 queue 0 (OrderIDs 0 mod 4), enough for
	// two LPUSHes there; the rest spread over every queue.
	var tasks []Task
	for i := 0; i < maxPushArgs+500; i++ {
		id := uint64(4 * (i % 50))
		if i%10 == 0 {
			id = uint64(i % 7)
		}
		tasks = append(tasks, Task{OrderID: id, Payload: []byte(fmt.Sprint(i)), ID: "ignored", Attempt: 9})
	}
	ids, err := q.AddTasks(ctx, tasks)
	require.NoError(t, err)
	require.Len(t, ids, len(tasks))
	assertUnique(t, ids)
	want := map[[2]int][]string{}
	for i, task := range tasks {
		require.True(t, ValidTaskID(ids[i]), ids[i])
		p, qi := q.Route(task.OrderID)
		want[[2]int{p, qi}] = append(want[[2]int{p, qi}], ids[i])
	}
	pushes := 0
	for pi, s := range servers {
		for qi := 0; qi < 2; qi++ {
			key := [2]int{pi, qi}
			got := readyList(t, s, newQueueKeys(prefix, pi, qi).ready)
			var gotIDs []string
			for _, task := range got {
				gotIDs = append(gotIDs, task.ID)
				assert.Equal(t, fmt.Sprint(indexOf(ids, task.ID)), string(task.Payload))
			}
			assert.Equal(t, want[key], gotIDs, "queue %d.%d in slice order", pi, qi)
			pushes += (len(want[key]) + maxPushArgs - 1) / maxPushArgs
		}
		pipelines := 1
		if testOnCluster && pi == 0 {
			pipelines = 2 // there queue 0.0's second LPUSH waits for its first one's reply
		}
		assert.Equal(t, pipelines, logs[pi].flushes, "partition %d: one pipeline", pi)
	}
	assert.Equal(t, pushes, logs[0].count("LPUSH")+logs[1].count("LPUSH"))
	assert.Greater(t, len(want[[2]int{0, 0}]), maxPushArgs, "queue 0.0 needs two LPUSHes")

	ids, err = q.AddTasks(ctx, nil)
	assert.NoError(t, err)
	assert.Empty(t, ids)
	// Its counters per queue are lent from call to call: they come back
	// zero, also from a call refused for the layout.
	assert.Equal(t, make([]int, 4), q.counts.get(4))
	other, err := New([]*redis.Pool{servers[0].pool, servers[1].pool}, Config{Prefix: prefix, Queues: 3})
	require.NoError(t, err)
	_, err = other.AddTasks(ctx, tasks[:20])
	require.ErrorIs(t, err, ErrLayoutMismatch)
	assert.Equal(t, make([]int, 6), other.counts.get(6))
}

// TestAddTasksConcurrentCallsKeepTheirEntries: AddTasks calls at once,
// of sizes that differ from call to call (up to some 300 KB, several of
// the chunks entries are encoded into), each find their own payloads in
// Redis, although their chunks go from call to call.
func TestAddTasksConcurrentCallsKeepTheirEntries(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, servers := newTestQueue(t, 1, Config{})
	want := map[string]string{} // ID -> payload
	var mu sync.Mutex
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 10 {
				n := 1 + (g*7+i*13)%150
				tasks := make([]Task, n)
				for k := range tasks {
					p := fmt.Sprintf("g%d-call%d-task%d-%s", g, i, k, strings.Repeat("x", (g+k)%50*40))
					tasks[k] = Task{OrderID: uint64(g*1000 + k), Payload: []byte(p)}
				}
				ids, err := q.AddTasks(ctx, tasks)
				if !assert.NoError(t, err) {
					return
				}
				mu.Lock()
				for k, id := range ids {
					want[id] = string(tasks[k].Payload)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	got := map[string]string{}
	for qi := range q.cfg.Queues {
		for _, task := range readyList(t, servers[0], newQueueKeys(q.cfg.Prefix, 0, qi).ready) {
			got[task.ID] = string(task.Payload)
		}
	}
	assert.Equal(t, want, got)
}

// TestAddTasksPartitionsFailAlone: the partitions' round trips run side by
// side, and one that fails stops none of the others; the error names it.
func TestAddTasksPartitionsFailAlone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, servers := newTestQueue(t, 3, Config{})
	var tasks []Task
	for o := uint64(0); o < 30; o++ {
		tasks = append(tasks, Task{OrderID: o, Payload: []byte(fmt.Sprint(o))})
	}
	_, err := q.AddTasks(ctx, tasks[:3]) // records the layout everywhere
	require.NoError(t, err)
	bad := newQueueKeys(q.cfg.Prefix, 1, 0).ready
	servers[1].do(t, "DEL", bad)
	servers[1].do(t, "HSET", bad, "not", "a list")

	ids, err := q.AddTasks(ctx, tasks)
	require.ErrorIs(t, err, ErrWrongType)
	assert.Contains(t, err.Error(), "partition 1")
	assert.NotContains(t, err.Error(), "partition 0")
	assert.NotContains(t, err.Error(), "partition 2")
	var pe *PartitionError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, 1, pe.Partition, "the failed partition, typed")
	for pi, srv := range servers {
		if pi == 1 {
			continue
		}
		var want []string
		for i, task := range tasks {
			if p, _ := q.Route(task.OrderID); p == pi {
				want = append(want, ids[i])
			}
		}
		require.NotEmpty(t, want)
		got := readyIDs(t, srv, newQueueKeys(q.cfg.Prefix, pi, 0).ready)
		assert.Equal(t, want, got[len(got)-len(want):], "partition %d took its tasks", pi)
	}
}

// At a Queue's first use, a partition whose layout cannot be read (its
// server down) fails alone, as when it fails later: AddTasks adds the
// tasks of the others and returns every ID, with a *PartitionError for
// the one down; the single adds to a partition that is up succeed, and
// those to the one down fail naming it.
func TestAddTasksFirstUseWithAPartitionDown(t *testing.T) {
	t.Parallel()
	skipOnCluster(t, "it gives one partition a server of its own, down")
	ctx := bounded(t)
	up := newTestServers(t, 1)[0]
	down := downPool(t)
	fresh := func(t *testing.T) *Queue { // a Queue that has verified no partition yet
		q, err := New([]*redis.Pool{up.pool, down}, Config{Prefix: testPrefix(t)})
		require.NoError(t, err)
		t.Cleanup(func() { q.Close() })
		return q
	}

	t.Run("AddTasks", func(t *testing.T) {
		q := fresh(t)
		var tasks []Task
		for o := uint64(0); o < 6; o++ { // even orders on partition 0, odd on 1
			tasks = append(tasks, Task{OrderID: o, Payload: []byte(fmt.Sprint(o))})
		}
		ids, err := q.AddTasks(ctx, tasks)
		require.Error(t, err)
		var pe *PartitionError
		require.ErrorAs(t, err, &pe)
		assert.Equal(t, 1, pe.Partition)
		assert.Equal(t, []int{1}, FailedPartitions(err))
		require.Len(t, ids, len(tasks), "the IDs are returned all the same")
		assert.Equal(t, []string{ids[0], ids[2], ids[4]}, readyIDs(t, up, newQueueKeys(q.cfg.Prefix, 0, 0).ready),
			"partition 0 took its tasks")
		got, err := redis.StringMap(up.do(t, "HGETALL", layoutKey(q.cfg.Prefix)), nil)
		require.NoError(t, err)
		assert.Equal(t, map[string]string{"partitions": "2", "queues": "1", "index": "0"}, got)
	})

	adds := map[string]func(q *Queue, orderID uint64) error{
		"AddTask": func(q *Queue, o uint64) error { _, err := q.AddTask(ctx, o, []byte("x")); return err },
		"AddTaskAt": func(q *Queue, o uint64) error {
			_, err := q.AddTaskAt(ctx, o, time.Now().Add(-time.Second), []byte("x"))
			return err
		},
		"AddTaskAfter": func(q *Queue, o uint64) error { _, err := q.AddTaskAfter(ctx, o, time.Hour, []byte("x")); return err },
		"AddTaskOnce": func(q *Queue, o uint64) error {
			_, _, err := q.AddTaskOnce(ctx, o, "k", time.Hour, []byte("x"))
			return err
		},
	}
	for name, add := range adds {
		t.Run(name, func(t *testing.T) {
			q := fresh(t)
			require.NoError(t, add(q, 0), "partition 0 is up")
			err := add(q, 1)
			require.Error(t, err, "partition 1 is down")
			assert.Contains(t, err.Error(), "partition 1")
			assert.NotErrorIs(t, err, ErrLayoutMismatch)
			require.NoError(t, add(q, 2), "partition 0 still")
		})
	}
}

// A layout mismatch found on any partition refuses the whole AddTasks,
// even when the check of another partition failed first (its server
// down): nothing is written, and no ID returned.
func TestAddTasksMismatchBehindAPartitionDown(t *testing.T) {
	t.Parallel()
	skipOnCluster(t, "it gives one partition a server of its own, down")
	ctx := bounded(t)
	s := newTestServers(t, 2)
	prefix := testPrefix(t)
	s[1].do(t, "HSET", layoutKey(prefix), "partitions", 3, "queues", 2, "index", 2)
	down := downPool(t)
	q, err := New([]*redis.Pool{down, s[1].pool, s[0].pool}, Config{Prefix: prefix})
	require.NoError(t, err)
	defer q.Close()
	before := []keyDump{dumpKeys(t, s[0], prefix), dumpKeys(t, s[1], prefix)}
	var tasks []Task
	for o := uint64(0); o < 6; o++ {
		tasks = append(tasks, Task{OrderID: o, Payload: []byte("x")})
	}
	ids, err := q.AddTasks(ctx, tasks)
	require.ErrorIs(t, err, ErrLayoutMismatch)
	var le *LayoutError
	require.ErrorAs(t, err, &le)
	assert.Equal(t, 1, le.Partition)
	assert.Empty(t, ids)
	for i := range before {
		assert.Equal(t, before[i], dumpKeys(t, s[i], prefix), "server %d changed", i)
	}
}

// failingPushConn fails every LPUSH after the first it sends, as a
// connection that breaks part way through a pipeline; it is broken from
// then on.
type failingPushConn struct {
	fullConn
	pushes *atomic.Int32
	broken bool
}

func (c *failingPushConn) Send(cmd string, args ...any) error {
	if c.broken || (cmd == "LPUSH" && c.pushes.Add(1) > 1) {
		c.broken = true
		return errors.New("connection broke")
	}
	return c.fullConn.Send(cmd, args...)
}

func (c *failingPushConn) Err() error {
	if c.broken {
		return errors.New("connection broke")
	}
	return c.fullConn.Err()
}

// fullConn is what a redigo connection is: one with contexts and timeouts.
type fullConn interface {
	redis.ConnWithContext
	redis.ConnWithTimeout
}

// A call large enough that its LPUSHes go out while its later entries are
// encoded returns its partition's error, rather than hanging, when the
// partition gives no connection, or its connection breaks part way.
func TestAddTasksLargeCallFailsWithoutHanging(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tasks := make([]Task, 6*maxPushArgs)
	for i := range tasks {
		tasks[i] = Task{OrderID: 1, Payload: []byte("x")}
	}
	add := func(q *Queue) error {
		errc := make(chan error, 1)
		go func() {
			_, err := q.AddTasks(ctx, tasks)
			errc <- err
		}()
		select {
		case err := <-errc:
			return err
		case <-time.After(time.Minute):
			t.Fatal("AddTasks hangs")
			return nil
		}
	}
	servers := newTestServers(t, 1)

	pushes := &atomic.Int32{}
	pool := servers[0].wrapPool(4, func(c redis.Conn) redis.Conn { return &failingPushConn{fullConn: c.(fullConn), pushes: pushes} })
	err := add(queueOnPool(t, pool))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "connection broke")
	assert.Contains(t, err.Error(), "partition 0")

	pool = servers[0].wrapPool(1, func(c redis.Conn) redis.Conn { return c })
	pool.MaxActive = 1
	q := queueOnPool(t, pool)
	_, err = q.AddTasks(ctx, tasks[:1]) // records the layout
	require.NoError(t, err)
	held := pool.Get() // the only connection
	defer held.Close()
	err = add(q)
	require.ErrorIs(t, err, redis.ErrPoolExhausted)
	assert.Contains(t, err.Error(), "partition 0")
}

func indexOf(ids []string, id string) int {
	for i, x := range ids {
		if x == id {
			return i
		}
	}
	return -1
}

func TestAddTaskIDsUnique(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, _ := newTestQueue(t, 1, Config{})
	var ids []string
	for i := 0; i < 200; i++ {
		id, err := q.AddTask(ctx, uint64(i), []byte("x"))
		require.NoError(t, err)
		ids = append(ids, id)
	}
	batch := make([]Task, 300)
	for i := range batch {
		batch[i] = Task{OrderID: uint64(i), Payload: []byte("y")}
	}
	more, err := q.AddTasks(ctx, batch)
	require.NoError(t, err)
	ids = append(ids, more...)
	require.Len(t, ids, 500)
	for _, id := range ids {
		assert.Len(t, id, 20)
		assert.True(t, ValidTaskID(id), id)
	}
	assertUnique(t, ids)
}

func TestAddTaskContextCancelled(t *testing.T) {
	t.Parallel()
	q, servers := newTestQueue(t, 1, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := q.AddTask(ctx, 1, []byte("x"))
	assert.ErrorIs(t, err, context.Canceled)
	_, err = q.AddTasks(ctx, []Task{{OrderID: 1, Payload: []byte("x")}})
	assert.ErrorIs(t, err, context.Canceled)
	assert.Empty(t, scanKeys(t, servers[0], q.cfg.Prefix))
	assert.True(t, bytes.HasPrefix([]byte(err.Error()), []byte("queue: ")), err.Error())
}

// TestPartitionCountBounded checks that New and Dial refuse more servers
// than maxPartitions with ErrBadConfig, before touching any.
func TestPartitionCountBounded(t *testing.T) {
	t.Parallel()
	pools := make([]*redis.Pool, maxPartitions+1)
	for i := range pools {
		pools[i] = &redis.Pool{}
	}
	_, err := New(pools, Config{})
	assert.ErrorIs(t, err, ErrBadConfig)
	_, err = New(pools[:maxPartitions], Config{})
	assert.NoError(t, err)
	urls := make([]string, maxPartitions+1)
	for i := range urls {
		urls[i] = "redis://127.0.0.1:1"
	}
	_, err = Dial(context.Background(), urls, Config{})
	assert.ErrorIs(t, err, ErrBadConfig)
	// R*Q is bounded too: 4096 queues on each of 17 servers are refused
	// before anything is allocated per queue, on 16 they are not.
	_, err = New(pools[:17], Config{Queues: maxQueues})
	assert.ErrorIs(t, err, ErrBadConfig)
	assert.ErrorContains(t, err, "69632 analysers, at most 65536")
	_, err = Dial(context.Background(), urls[:17], Config{Queues: maxQueues})
	assert.ErrorIs(t, err, ErrBadConfig)
	_, err = New(pools[:16], Config{Queues: maxQueues})
	assert.NoError(t, err)
}
