package queue

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Corrupt values, not just wrong types: every field a script or recovery
// reads (the meta hash's counters, the lease, the layout, the claim-order
// records, pending records) holding a non-number, a number too big, an
// empty string, or a truncated record. A pool then runs the queue: it may
// report errors and get nowhere, and it may quarantine a record that no
// longer decodes in the dead-letter store (documented: guarantee 7), but
// no task may be lost and none may start before an earlier task of its
// OrderID. Cases that break this through a known hole are skipped under
// its number (corruptHoles, in faultcall_test.go).

// corruptEnv is the world of one corrupt-value case: orders x per tasks
// (payloads pl), and, with crashed, a consumer that claimed them all in
// one claim and died.
type corruptEnv struct {
	q   *Queue
	s   *testServer
	k   queueKeys
	ids []string
}

const corruptOrders, corruptPer = 3, 4

// garbageValues are the corrupt forms of a number: not a number, too big
// for Redis's 64-bit counters, empty.
var garbageValues = map[string]string{
	"nan": "x1", "huge": "99999999999999999999", "max": "9223372036854775807", "empty": "",
}

func TestCorruptValues(t *testing.T) {
	t.Parallel()
	type corruptCase struct {
		name    string
		crashed bool // a consumer claimed every task and died: recovery reads pending and order records
		corrupt func(t *testing.T, e *corruptEnv)
	}
	var cases []corruptCase
	for g, v := range garbageValues {
		for _, f := range []string{"seq", "fence", "processed", "failed", "redelivered", lastDeathField} {
			cases = append(cases, corruptCase{"meta " + f + " " + g, f == "redelivered", func(t *testing.T, e *corruptEnv) {
				e.s.do(t, "HSET", e.k.meta, f, v)
			}})
		}
		for _, f := range []string{"partitions", "queues", "index"} {
			cases = append(cases, corruptCase{"layout " + f + " " + g, false, func(t *testing.T, e *corruptEnv) {
				e.s.do(t, "HSET", layoutKey(e.q.cfg.Prefix), f, v)
			}})
		}
		cases = append(cases, corruptCase{"lease " + g, false, func(t *testing.T, e *corruptEnv) {
			e.s.do(t, "SET", e.k.lease, v, "PX", 300)
		}}, corruptCase{"lease token " + g, false, func(t *testing.T, e *corruptEnv) {
			e.s.do(t, "SET", e.k.lease, v+":someone", "PX", 300)
		}}, corruptCase{"order field " + g, true, func(t *testing.T, e *corruptEnv) {
			renameField(t, e.s, e.k.claims, v)
		}})
	}
	cases = append(cases,
		corruptCase{"order record truncated", true, func(t *testing.T, e *corruptEnv) {
			editValues(t, e.s, e.k.claims, func(b []byte) []byte { return b[:len(b)-idLen/2] })
		}},
		corruptCase{"order record empty", true, func(t *testing.T, e *corruptEnv) {
			editValues(t, e.s, e.k.claims, func([]byte) []byte { return nil })
		}},
		corruptCase{"order record with a stray byte", true, func(t *testing.T, e *corruptEnv) {
			editValues(t, e.s, e.k.claims, func(b []byte) []byte { return append(b, '!') })
		}},
		corruptCase{"pending record truncated", true, func(t *testing.T, e *corruptEnv) {
			e.s.do(t, "HSET", e.k.pending, e.ids[6], encodeTask(Task{ID: e.ids[6], OrderID: 1, Payload: []byte(pl(1, 1))}, 0)[:entryHeader+1])
		}},
		corruptCase{"pending record empty", true, func(t *testing.T, e *corruptEnv) {
			e.s.do(t, "HSET", e.k.pending, e.ids[6], "")
		}},
		corruptCase{"pending record count huge", true, func(t *testing.T, e *corruptEnv) {
			rec := append([]byte{accountedMark}, encodeTask(Task{ID: e.ids[6], OrderID: 1, Payload: []byte(pl(1, 1))}, 1<<40)...)
			e.s.do(t, "HSET", e.k.pending, e.ids[6], rec)
		}},
	)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q, s, k := testQueue1(t) // its miniredis keeps the real clock (newTestServers)
			e := &corruptEnv{q: q, s: s, k: k}
			e.ids = crossProducerTasks(t, q, s)
			if tc.crashed {
				c, err := q.Consume(context.Background(), 0, ConsumerConfig{Owner: "crashed", LeaseTTL: time.Minute})
				require.NoError(t, err)
				got, err := c.Claim(context.Background(), 100)
				require.NoError(t, err)
				require.Equal(t, e.ids, taskIDs(got))
				lapse(t, s, k.lease)
			}
			tc.corrupt(t, e)
			rec := newRecorder()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			var errs errLog
			err := q.AnalysePool(ctx, 0, PoolConfig{Workers: 2, LeaseTTL: time.Second, ExitOnEmpty: true, MaxAttempts: 3,
				OnError: errs.add, Backoff: func(int) time.Duration { return 5 * time.Millisecond }}, rec.fn(nil))
			if err != nil {
				assert.ErrorIs(t, err, ErrLayoutMismatch, "only a layout the pool disagrees with ends it")
			}
			lost, reordered := corruptOutcome(t, e, rec)
			t.Logf("%d tasks run, %d errors reported (first: %v), pool returned %v", rec.total(), len(errs.all()), firstErr(errs.all()), err)
			if (len(lost) > 0 || len(reordered) > 0) && corruptHoles[tc.name] != 0 {
				t.Skipf("known hole: issue 10 item %d: lost %v, out of order %v", corruptHoles[tc.name], lost, reordered)
			}
			assert.Empty(t, lost, "tasks neither run, nor in Redis, nor dead-lettered")
			assert.Empty(t, reordered, "OrderIDs whose tasks started out of order")
		})
	}
}

func firstErr(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return errs[0]
}

// crossProducerTasks adds corruptOrders x corruptPer tasks (payloads pl,
// task i of every OrderID before task i+1) from two producers, taking
// turns, the first being the one whose IDs sort last: enqueue order and
// ID order disagree, as they do across producers. It returns the IDs in
// enqueue order (the order a claim takes them).
func crossProducerTasks(t *testing.T, q *Queue, s *testServer) []string {
	ctx := context.Background()
	other, err := New([]*redis.Pool{s.pool}, Config{Prefix: q.cfg.Prefix})
	require.NoError(t, err)
	probe, err := other.AddTasks(ctx, []Task{{OrderID: corruptOrders, Payload: []byte(pl(corruptOrders, 0))}})
	require.NoError(t, err)
	mine, err := q.AddTasks(ctx, []Task{{OrderID: corruptOrders, Payload: []byte(pl(corruptOrders, 1))}})
	require.NoError(t, err)
	producers := []*Queue{q, other}
	if probe[0] > mine[0] {
		producers = []*Queue{other, q}
	}
	ids := []string{probe[0], mine[0]}
	for i, ts := range chunk(orderTasks(corruptOrders, corruptPer), corruptOrders) {
		got, err := producers[i%2].AddTasks(ctx, ts)
		require.NoError(t, err)
		ids = append(ids, got...)
	}
	return ids
}

func chunk(ts []Task, n int) [][]Task {
	var out [][]Task
	for len(ts) > 0 {
		out = append(out, ts[:n])
		ts = ts[n:]
	}
	return out
}

// renameField moves every field of hash key under name (the last one
// wins when there are several).
func renameField(t *testing.T, s *testServer, key, name string) {
	m, err := redis.StringMap(s.do(t, "HGETALL", key), nil)
	require.NoError(t, err)
	require.NotEmpty(t, m)
	for f, v := range m {
		s.do(t, "HDEL", key, f)
		s.do(t, "HSET", key, name, v)
	}
}

// editValues replaces every value of hash key with edit's.
func editValues(t *testing.T, s *testServer, key string, edit func([]byte) []byte) {
	m, err := redis.StringMap(s.do(t, "HGETALL", key), nil)
	require.NoError(t, err)
	require.NotEmpty(t, m)
	for f, v := range m {
		s.do(t, "HSET", key, f, edit([]byte(v)))
	}
}

// corruptOutcome returns the tasks lost (neither run, nor anywhere in
// Redis, nor dead-lettered, raw or not) and the OrderIDs whose first runs
// are out of order.
func corruptOutcome(t *testing.T, e *corruptEnv, rec *recorder) (lost []string, reordered []uint64) {
	// The reads below check the layout, which refuses a record this
	// package did not write: the layout cases leave one. Without a
	// record they pass (and record none).
	e.s.do(t, "DEL", layoutKey(e.q.cfg.Prefix))
	ready, err := redis.ByteSlices(e.s.do(t, "LRANGE", e.k.ready, 0, -1), nil)
	require.NoError(t, err)
	pending := pendingOf(t, e.s, e.k)
	dead, err := e.q.Dead(context.Background(), 0)
	require.NoError(t, err)
	var held [][]byte
	held = append(held, ready...)
	for f, v := range pending {
		held = append(held, []byte(f+"="+v))
	}
	for _, d := range dead {
		held = append(held, append([]byte(d.ID+"="), d.Raw...))
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, id := range e.ids {
		if rec.starts[id] > 0 || slicesContainsSub(held, id) {
			continue
		}
		lost = append(lost, id)
	}
	for o, runs := range rec.byOrder {
		last, seen := -1, map[string]bool{}
		for _, p := range runs {
			if seen[p] {
				continue
			}
			seen[p] = true
			_, i, _ := strings.Cut(p, ":")
			n := int(i[0] - '0')
			if n < last {
				reordered = append(reordered, o)
				break
			}
			last = n
		}
	}
	return lost, reordered
}

func slicesContainsSub(held [][]byte, id string) bool {
	for _, h := range held {
		if bytes.Contains(h, []byte(id)) {
			return true
		}
	}
	return false
}

// A task written by hand into the queue of an analyser that does not
// serve its OrderID would run beside the tasks of that OrderID in its
// own queue: the claim quarantines it, and Replay leaves such a record.
func TestTaskOfAnotherQueueIsQuarantined(t *testing.T) {
	t.Parallel()
	q, servers := newTestQueue(t, 1, Config{Queues: 2})
	s, k := servers[0], newQueueKeys(q.cfg.Prefix, 0, 0)
	ctx := bounded(t)
	const stray = "aaa00000000000000000"
	_, err := q.AddTask(ctx, 2, []byte("ours")) // analyser 0
	require.NoError(t, err)
	s.do(t, "LPUSH", k.ready, encodeTask(Task{ID: stray, OrderID: 1, AddedAt: time.Now(), Payload: []byte("theirs")}, 0))
	var ran []uint64
	require.NoError(t, q.AnalysePool(ctx, 0, PoolConfig{Workers: 1, ExitOnEmpty: true}, func(_ context.Context, t Task) error {
		ran = append(ran, t.OrderID)
		return nil
	}))
	assert.Equal(t, []uint64{2}, ran)
	dead, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, dead, 1)
	assert.Equal(t, stray, dead[0].ID)
	assert.Contains(t, dead[0].LastError, "OrderID 1, which analyser 1 serves, in the queue of analyser 0")

	s.do(t, "HSET", k.dead, "bbb00000000000000000", encodeDead(encodeTask(Task{ID: "bbb00000000000000000", OrderID: 3, AddedAt: time.Now(), Payload: []byte("x")}, 1), 1, "by hand", time.Now().UnixMilli()))
	n, err := q.Replay(ctx, 0)
	require.NoError(t, err)
	assert.Zero(t, n, "neither record is this queue's to replay")
	assert.EqualValues(t, 2, s.do(t, "HLEN", k.dead))
	assert.Zero(t, s.do(t, "LLEN", k.ready))
}
