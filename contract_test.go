package queue_test

// Black-box tests of the contract in DESIGN.md and the package
// documentation, written against the exported API only, as a user of the
// package would: miniredis by default, the logical databases 0..R-1 of
// QUEUE_TEST_REDIS_URL's server when it names one.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qugo/queue"
)

// contractServer is one partition of a contract test.
type contractServer struct {
	pool *redis.Pool
	mini *miniredis.Miniredis // nil on a real server
	url  string
}

var contractSeq atomic.Int64

// contractSetup returns n partitions and a key prefix of the test's own.
func contractSetup(t *testing.T, n int) ([]*contractServer, string) {
	t.Helper()
	real := os.Getenv("QUEUE_TEST_REDIS_URL")
	if strings.Contains(strings.SplitN(real, "://", 2)[0], "+") {
		t.Skip("the contract tests take one server's databases as partitions")
	}
	out := make([]*contractServer, n)
	for i := range out {
		s := &contractServer{}
		if real == "" {
			s.mini = miniredis.RunT(t)
			s.url = "redis://" + s.mini.Addr()
		} else {
			s.url = fmt.Sprintf("%s/%d", strings.TrimRight(real, "/"), i)
		}
		url := s.url
		s.pool = &redis.Pool{MaxIdle: 8, DialContext: func(ctx context.Context) (redis.Conn, error) {
			return redis.DialURLContext(ctx, url)
		}}
		t.Cleanup(func() { s.pool.Close() })
		out[i] = s
	}
	return out, fmt.Sprintf("qc:%s:%d:%d", t.Name(), time.Now().UnixNano()%1e9, contractSeq.Add(1))
}

func contractPools(servers []*contractServer) []*redis.Pool {
	pools := make([]*redis.Pool, len(servers))
	for i, s := range servers {
		pools[i] = s.pool
	}
	return pools
}

func contractQueue(t *testing.T, servers []*contractServer, cfg queue.Config) *queue.Queue {
	t.Helper()
	q, err := queue.New(contractPools(servers), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	return q
}

// prefixKeys returns the keys of s that belong to prefix, sorted.
func prefixKeys(t *testing.T, s *contractServer, prefix string) []string {
	t.Helper()
	c := s.pool.Get()
	defer c.Close()
	var keys []string
	for cursor := "0"; ; {
		r, err := redis.Values(c.Do("SCAN", cursor, "COUNT", 1000))
		require.NoError(t, err)
		cursor, _ = redis.String(r[0], nil)
		batch, _ := redis.Strings(r[1], nil)
		for _, k := range batch {
			if strings.HasPrefix(k, prefix+":") || strings.HasPrefix(k, "{"+prefix+":") {
				keys = append(keys, k)
			}
		}
		if cursor == "0" {
			break
		}
	}
	sort.Strings(keys)
	return keys
}

// snapshot renders every key of prefix on every server with its type and
// contents, to compare before and after a call that must change nothing.
func snapshot(t *testing.T, servers []*contractServer, prefix string) string {
	t.Helper()
	var b strings.Builder
	for i, s := range servers {
		c := s.pool.Get()
		for _, k := range prefixKeys(t, s, prefix) {
			typ, err := redis.String(c.Do("TYPE", k))
			require.NoError(t, err)
			var v any
			switch typ {
			case "string":
				v, err = redis.String(c.Do("GET", k))
			case "list":
				v, err = redis.Strings(c.Do("LRANGE", k, 0, -1))
			case "hash":
				v, err = redis.StringMap(c.Do("HGETALL", k))
			case "zset":
				v, err = redis.Strings(c.Do("ZRANGE", k, 0, -1, "WITHSCORES"))
			}
			require.NoError(t, err)
			fmt.Fprintf(&b, "%d %s %s %v\n", i, k, typ, v)
		}
		c.Close()
	}
	return b.String()
}

func llen(t *testing.T, s *contractServer, key string) int {
	t.Helper()
	c := s.pool.Get()
	defer c.Close()
	n, err := redis.Int(c.Do("LLEN", key))
	require.NoError(t, err)
	return n
}

func TestContractRoutingArithmetic(t *testing.T) {
	l := queue.Layout{Partitions: 3, Queues: 4}
	require.True(t, l.Valid())
	assert.Equal(t, 12, l.Analysers())
	for _, id := range []uint64{0, 1, 2, 3, 5, 11, 12, 13, 47, 1 << 40, 1<<64 - 1} {
		p, qi := l.Route(id)
		assert.Equal(t, int(id%3), p, "partition of %d", id)
		assert.Equal(t, int((id/3)%4), qi, "queue of %d", id)
		a := l.AnalyserOf(id)
		assert.Equal(t, int(id%12), a, "analyser of %d", id)
		sp, sq, err := l.Serves(a)
		require.NoError(t, err)
		assert.Equal(t, [2]int{p, qi}, [2]int{sp, sq}, "analyser %d serves the queue of %d", a, id)
	}
	for a := 0; a < 12; a++ {
		p, qi, err := l.Serves(a)
		require.NoError(t, err)
		assert.Equal(t, [2]int{a % 3, a / 3}, [2]int{p, qi}, "analyser %d", a)
	}
	for _, a := range []int{-1, 12, 100} {
		_, _, err := l.Serves(a)
		assert.ErrorIs(t, err, queue.ErrAnalyserRange, "analyser %d", a)
	}
	// FNV-1a 64, frozen: the published test vectors of the hash.
	assert.Equal(t, uint64(0xcbf29ce484222325), queue.KeyID(""))
	assert.Equal(t, uint64(0xaf63dc4c8601ec8c), queue.KeyID("a"))
	assert.Equal(t, uint64(0x85944171f73967e8), queue.KeyID("foobar"))
}

// TestContractRoutingInRedis adds a task for OrderIDs 0..23 over R=3,
// Q=4 and finds each in the ready list of partition id%3, queue
// (id/3)%4, then has each analyser a run exactly the OrderIDs with
// id%12 == a.
func TestContractRoutingInRedis(t *testing.T) {
	servers, prefix := contractSetup(t, 3)
	q := contractQueue(t, servers, queue.Config{Prefix: prefix, Queues: 4})
	ctx := context.Background()
	for id := uint64(0); id < 24; id++ {
		_, err := q.AddTask(ctx, id, []byte(fmt.Sprint(id)))
		require.NoError(t, err)
	}
	for p := 0; p < 3; p++ {
		for qi := 0; qi < 4; qi++ {
			want := 0
			for id := uint64(0); id < 24; id++ {
				if int(id%3) == p && int((id/3)%4) == qi {
					want++
				}
			}
			assert.Equal(t, want, llen(t, servers[p], fmt.Sprintf("{%s:%d.%d}:ready", prefix, p, qi)), "partition %d queue %d", p, qi)
		}
	}
	for a := 0; a < 12; a++ {
		var got []uint64
		err := q.AnalysePool(ctx, a, queue.PoolConfig{Workers: 1, ExitOnEmpty: true}, func(_ context.Context, task queue.Task) error {
			got = append(got, task.OrderID)
			return nil
		})
		require.NoError(t, err)
		assert.Equal(t, []uint64{uint64(a), uint64(a + 12)}, got, "analyser %d", a)
	}
}

// TestContractLayoutRefused records R=3, Q=4, then tries every way a
// process can disagree; each gets a *LayoutError and leaves Redis as it was.
func TestContractLayoutRefused(t *testing.T) {
	servers, prefix := contractSetup(t, 3)
	ctx := context.Background()
	q := contractQueue(t, servers, queue.Config{Prefix: prefix, Queues: 4})
	for id := uint64(0); id < 12; id++ {
		_, err := q.AddTask(ctx, id, []byte("x"))
		require.NoError(t, err)
	}
	require.NoError(t, q.CheckLayout(ctx))
	before := snapshot(t, servers, prefix)
	for i := range servers {
		require.Contains(t, prefixKeys(t, servers[i], prefix), prefix+":layout", "server %d records the layout", i)
	}

	swapped := []*contractServer{servers[1], servers[0], servers[2]}
	for _, tc := range []struct {
		name    string
		servers []*contractServer
		queues  int
	}{
		{"other Q", servers, 5},
		{"fewer partitions", servers[:2], 4},
		{"more partitions", append(append([]*contractServer{}, servers...), servers[0]), 4},
		{"other order", swapped, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := contractQueue(t, tc.servers, queue.Config{Prefix: prefix, Queues: tc.queues})
			var le *queue.LayoutError
			err := bad.CheckLayout(ctx)
			require.ErrorAs(t, err, &le)
			assert.ErrorIs(t, err, queue.ErrLayoutMismatch)
			assert.NotEmpty(t, le.Want)
			assert.NotEmpty(t, le.Got)
			assert.NotEqual(t, le.Want, le.Got)

			for id := uint64(0); id < uint64(bad.Analysers()); id++ {
				_, err = bad.AddTask(ctx, id, []byte("y"))
				assert.ErrorIs(t, err, queue.ErrLayoutMismatch, "AddTask %d", id)
			}
			_, err = bad.AddTasks(ctx, []queue.Task{{OrderID: 1, Payload: []byte("y")}})
			assert.ErrorIs(t, err, queue.ErrLayoutMismatch, "AddTasks")
			for a := 0; a < bad.Analysers(); a++ {
				err = bad.AnalysePool(ctx, a, queue.PoolConfig{ExitOnEmpty: true}, func(context.Context, queue.Task) error {
					t.Errorf("a refused pool ran a task")
					return nil
				})
				assert.ErrorIs(t, err, queue.ErrLayoutMismatch, "AnalysePool %d", a)
			}
			_, err = bad.Consume(ctx, 0, queue.ConsumerConfig{})
			assert.ErrorIs(t, err, queue.ErrLayoutMismatch, "Consume")
			_, err = bad.Replay(ctx, 0)
			assert.ErrorIs(t, err, queue.ErrLayoutMismatch, "Replay")
			_, err = bad.Purge(ctx, 0)
			assert.ErrorIs(t, err, queue.ErrLayoutMismatch, "Purge")
			assert.Equal(t, before, snapshot(t, servers, prefix), "a refused process changed Redis")
		})
	}
}

// TestContractDialRefusesOtherOrder dials the recorded servers with the
// URLs in another order: the first call that would write is refused.
func TestContractDialRefusesOtherOrder(t *testing.T) {
	servers, prefix := contractSetup(t, 2)
	ctx := context.Background()
	good, err := queue.Dial(ctx, []string{servers[0].url, servers[1].url}, queue.Config{Prefix: prefix, Queues: 2})
	require.NoError(t, err)
	defer good.Close()
	_, err = good.AddTask(ctx, 7, []byte("x"))
	require.NoError(t, err)
	require.NoError(t, good.CheckLayout(ctx))
	before := snapshot(t, servers, prefix)

	bad, err := queue.Dial(ctx, []string{servers[1].url, servers[0].url}, queue.Config{Prefix: prefix, Queues: 2})
	if err != nil {
		assert.ErrorIs(t, err, queue.ErrLayoutMismatch)
	} else {
		defer bad.Close()
		_, err = bad.AddTask(ctx, 7, []byte("y"))
		assert.ErrorIs(t, err, queue.ErrLayoutMismatch)
		err = bad.AnalysePool(ctx, 0, queue.PoolConfig{ExitOnEmpty: true}, func(context.Context, queue.Task) error { return nil })
		assert.ErrorIs(t, err, queue.ErrLayoutMismatch)
	}
	assert.Equal(t, before, snapshot(t, servers, prefix))
}

// TestContractBadInput checks the typed errors of bad input, and that none
// of them writes anything.
func TestContractBadInput(t *testing.T) {
	servers, prefix := contractSetup(t, 1)
	ctx := context.Background()
	q := contractQueue(t, servers, queue.Config{Prefix: prefix, MaxPayload: 16})

	_, err := q.AddTask(ctx, 1, nil)
	assert.ErrorIs(t, err, queue.ErrEmptyPayload)
	_, err = q.AddTask(ctx, 1, []byte{})
	assert.ErrorIs(t, err, queue.ErrEmptyPayload)
	_, err = q.AddTask(ctx, 1, make([]byte, 17))
	assert.ErrorIs(t, err, queue.ErrPayloadTooLarge)
	assert.Empty(t, prefixKeys(t, servers[0], prefix), "refused payloads wrote to Redis")
	_, err = q.AddTask(ctx, 1, make([]byte, 16))
	assert.NoError(t, err, "a payload of exactly MaxPayload")
	c := servers[0].pool.Get()
	_, err = c.Do("DEL", fmt.Sprintf("{%s:0.0}:ready", prefix), prefix+":layout")
	c.Close()
	require.NoError(t, err)
	_, err = q.AddTasks(ctx, []queue.Task{{OrderID: 1, Payload: []byte("ok")}, {OrderID: 2}})
	assert.ErrorIs(t, err, queue.ErrEmptyPayload)
	_, err = q.AddTasks(ctx, []queue.Task{{OrderID: 1, Payload: []byte("ok")}, {OrderID: 2, Payload: make([]byte, 17)}})
	assert.ErrorIs(t, err, queue.ErrPayloadTooLarge)
	err = q.AnalysePool(ctx, 0, queue.PoolConfig{}, nil)
	assert.ErrorIs(t, err, queue.ErrNilFunc)
	nop := func(context.Context, queue.Task) error { return nil }
	for _, a := range []int{-1, 1} {
		assert.ErrorIs(t, q.AnalysePool(ctx, a, queue.PoolConfig{}, nop), queue.ErrAnalyserRange, "analyser %d", a)
	}
	assert.ErrorIs(t, q.AnalysePool(ctx, 0, queue.PoolConfig{Workers: -1}, nop), queue.ErrBadConfig)
	assert.Empty(t, prefixKeys(t, servers[0], prefix), "refused input wrote to Redis")

	_, err = queue.New(nil, queue.Config{})
	assert.ErrorIs(t, err, queue.ErrNoPartitions)
	_, err = queue.New(contractPools(servers), queue.Config{Queues: -1})
	assert.ErrorIs(t, err, queue.ErrBadConfig)
	_, err = queue.New(contractPools(servers), queue.Config{Prefix: "a{b"})
	assert.ErrorIs(t, err, queue.ErrBadConfig)
	_, err = queue.Dial(ctx, nil, queue.Config{})
	assert.ErrorIs(t, err, queue.ErrNoPartitions)
	for _, u := range []string{"", "http://127.0.0.1:6379", "127.0.0.1:6379", "redis://127.0.0.1:notaport", "redis://127.0.0.1:6379/x", "redis://:secret@[::1"} {
		_, err := queue.Dial(ctx, []string{u}, queue.Config{})
		assert.ErrorIs(t, err, queue.ErrBadConfig, "Dial(%q)", u)
		assert.ErrorIs(t, queue.CheckURL(u), queue.ErrBadConfig, "CheckURL(%q)", u)
		if err != nil {
			assert.NotContains(t, err.Error(), "secret")
		}
	}
	// An unreachable server is not a bad URL, but still an error, which
	// does not quote the URL's password.
	_, err = queue.Dial(ctx, []string{"redis://:secret@127.0.0.1:1"}, queue.Config{DialTimeout: time.Second})
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "secret")

	q.Close()
	_, err = q.AddTask(ctx, 1, []byte("x"))
	assert.ErrorIs(t, err, queue.ErrClosed)
	assert.ErrorIs(t, q.AnalysePool(ctx, 0, queue.PoolConfig{}, nop), queue.ErrClosed)
}

// TestContractContextFirst checks that every exported method that can
// block (all that talk to Redis) takes a context.Context first.
func TestContractContextFirst(t *testing.T) {
	ctxType := reflect.TypeOf((*context.Context)(nil)).Elem()
	pure := map[string]bool{ // no Redis, no wait
		"Queue.Layout": true, "Queue.Route": true, "Queue.AnalyserOf": true,
		"Queue.Analysers": true, "Queue.Pool": true, "Queue.Close": true,
		"Consumer.Token": true, "Consumer.Deadline": true,
	}
	for _, v := range []any{&queue.Queue{}, &queue.Consumer{}} {
		typ := reflect.TypeOf(v)
		for i := 0; i < typ.NumMethod(); i++ {
			m := typ.Method(i)
			name := typ.Elem().Name() + "." + m.Name
			first := m.Type.NumIn() > 1 && m.Type.In(1) == ctxType
			for j := 2; j < m.Type.NumIn(); j++ {
				assert.NotEqual(t, ctxType, m.Type.In(j), "%s takes a ctx not first", name)
			}
			if !pure[name] {
				assert.True(t, first, "%s can block but does not take a ctx first", name)
			}
		}
	}
}

// TestContractZeroConfigs runs a producer, a pool and a Consumer with
// zero-value configs.
func TestContractZeroConfigs(t *testing.T) {
	servers, _ := contractSetup(t, 1)
	ctx := context.Background()
	// The default prefix: clear it first on a real server's database.
	if servers[0].mini == nil {
		c := servers[0].pool.Get()
		for _, k := range prefixKeys(t, servers[0], "qugo") {
			_, err := c.Do("DEL", k)
			require.NoError(t, err)
		}
		c.Close()
		t.Cleanup(func() {
			c := servers[0].pool.Get()
			defer c.Close()
			for _, k := range prefixKeys(t, servers[0], "qugo") {
				c.Do("DEL", k)
			}
		})
	}
	q := contractQueue(t, servers, queue.Config{})
	payload := make([]byte, 256) // every byte value: payloads are stored as they are
	for i := range payload {
		payload[i] = byte(i)
	}
	id, err := q.AddTask(ctx, 1, payload)
	require.NoError(t, err)
	assert.True(t, queue.ValidTaskID(id), "task ID %q", id)
	assert.Contains(t, prefixKeys(t, servers[0], "qugo"), "{qugo:0.0}:ready", "the default prefix is qugo")

	c, err := q.Consume(ctx, 0, queue.ConsumerConfig{})
	require.NoError(t, err)
	task, err := c.RemoveTask(ctx)
	require.NoError(t, err)
	assert.Equal(t, id, task.ID)
	assert.Equal(t, 1, task.Attempt)
	_, err = c.RemoveTask(ctx)
	assert.ErrorIs(t, err, queue.ErrNoTask)
	require.NoError(t, c.Requeue(ctx, task))
	require.NoError(t, c.Release(ctx))

	ran := 0
	require.NoError(t, q.AnalysePool(ctx, 0, queue.PoolConfig{ExitOnEmpty: true}, func(_ context.Context, task queue.Task) error {
		ran++
		assert.Equal(t, payload, task.Payload)
		assert.Equal(t, id, task.ID)
		assert.WithinDuration(t, time.Now(), task.AddedAt, time.Minute)
		return nil
	}))
	assert.Equal(t, 1, ran)
	err = q.AnalysePool(ctx, 0, queue.PoolConfig{}, nil)
	assert.True(t, errors.Is(err, queue.ErrNilFunc))
}
