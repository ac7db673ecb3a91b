package queue

import (
	"context"
	"encoding/binary"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// argLog records, for each command sent through an argPool, its name
// and the number of its arguments (scripts as "script").
type argLog struct {
	mu   sync.Mutex
	cmds []string
	args []int
}

func (l *argLog) take() (cmds []string, args []int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	cmds, args, l.cmds, l.args = l.cmds, l.args, nil, nil
	return cmds, args
}

type argConn struct {
	redis.Conn
	log *argLog
}

func (c argConn) record(cmd string, args []any) {
	if cmd == "" { // the pool's flush on Close
		return
	}
	if cmd == "EVALSHA" || cmd == "EVAL" {
		cmd = "script"
	}
	c.log.mu.Lock()
	c.log.cmds = append(c.log.cmds, cmd)
	c.log.args = append(c.log.args, len(args))
	c.log.mu.Unlock()
}

func (c argConn) Do(cmd string, args ...any) (any, error) {
	c.record(cmd, args)
	return c.Conn.Do(cmd, args...)
}

func (c argConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	c.record(cmd, args)
	return redis.DoContext(c.Conn, ctx, cmd, args...)
}

func (c argConn) Send(cmd string, args ...any) error {
	c.record(cmd, args)
	return c.Conn.Send(cmd, args...)
}

func (c argConn) ReceiveContext(ctx context.Context) (any, error) {
	return redis.ReceiveContext(c.Conn, ctx)
}

// deadRecordAt encodes a dead record of t (added at ms) that died at ms.
func deadRecordAt(t Task, ms int64) []byte {
	t.AddedAt = time.UnixMilli(ms)
	b := []byte{deadVersion}
	b = binary.AppendUvarint(b, 3)
	b = binary.AppendUvarint(b, uint64(ms))
	b = binary.AppendUvarint(b, 4)
	b = append(b, "boom"...)
	return append(b, encodeTask(t, 3)...)
}

// TestDeadStoreWorkedInChunks fills a dead-letter store with more than
// three chunks of records and checks that Dead, Replay and Purge never
// send Redis a command or script over more than deadChunk records (no
// HGETALL, no script over the whole hash), that Replay keeps the order,
// oldest death first, and that everything is moved or deleted.
func TestDeadStoreWorkedInChunks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, s, k, log := loggedQueue(t)

	const n = 3*deadChunk + 17
	const base = int64(1_700_000_000_000)
	ids := make([]string, n)
	died := map[string]int64{}
	args := []any{k.dead}
	for i := range ids {
		ids[i] = q.ids.next()
		died[ids[i]] = base + int64(i*7919%n) // deaths in another order than IDs
		args = append(args, ids[i], deadRecordAt(Task{ID: ids[i], OrderID: uint64(i), Payload: []byte{byte(i)}}, died[ids[i]]))
	}
	s.do(t, "HSET", args...)
	byDeath := slices.Clone(ids)
	slices.SortFunc(byDeath, func(a, b string) int { return int(died[a] - died[b]) })
	log.take()

	checkChunks := func(op string, maxArgs map[string]int) {
		t.Helper()
		cmds, nargs := log.take()
		require.NotEmpty(t, cmds, op)
		maxArgs["HMGET"] = 1 + deadChunk // and the layout check's
		for i, c := range cmds {
			limit, ok := maxArgs[c]
			if assert.True(t, ok, "%s sent %s", op, c) {
				assert.LessOrEqual(t, nargs[i], limit, "%s: %s with %d arguments", op, c, nargs[i])
			}
		}
	}

	list, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, list, n)
	listed := make([]string, len(list))
	for i, d := range list {
		listed[i] = d.ID
	}
	assert.True(t, slices.Equal(byDeath, listed), "Dead lists oldest death first")
	checkChunks("Dead", map[string]int{"HSCAN": 4})

	moved, err := q.Replay(ctx, 0)
	require.NoError(t, err)
	assert.Equal(t, n, moved)
	// A script's arguments: sha, key count, 3 keys, then ID and task per record.
	checkChunks("Replay", map[string]int{"HSCAN": 4, "script": 5 + 2*deadChunk})
	assert.True(t, slices.Equal(byDeath, readyIDs(t, s, k.ready)), "replayed oldest death first")
	assert.Zero(t, s.do(t, "EXISTS", k.dead))

	s.do(t, "HSET", args...)
	log.take()
	purged, err := q.Purge(ctx, 0)
	require.NoError(t, err)
	assert.Equal(t, n, purged)
	checkChunks("Purge", map[string]int{"HSCAN": 4, "HDEL": 1 + deadChunk})
	assert.Zero(t, s.do(t, "EXISTS", k.dead))

	s.do(t, "HSET", args...)
	log.take()
	purged, err = q.Purge(ctx, 0, ids...)
	require.NoError(t, err)
	assert.Equal(t, n, purged)
	checkChunks("Purge by ID", map[string]int{"HDEL": 1 + deadChunk})
	assert.Zero(t, s.do(t, "EXISTS", k.dead))
}

// TestReplayChunkBytes checks that one replay script carries at most
// deadChunkBytes of records, but always at least one.
func TestReplayChunkBytes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, s, k, log := loggedQueue(t)
	big := make([]byte, deadChunkBytes/3+1) // three do not fit in one script
	var ids []string
	for i := range 4 {
		id := q.ids.next()
		ids = append(ids, id)
		s.do(t, "HSET", k.dead, id, deadRecordAt(Task{ID: id, OrderID: 1, Payload: big}, int64(1000+i)))
	}
	c := s.pool.Get()
	require.NoError(t, replayScript.Load(c)) // so that each script is one EVALSHA
	c.Close()
	log.take()
	moved, err := q.Replay(ctx, 0)
	require.NoError(t, err)
	assert.Equal(t, 4, moved)
	cmds, nargs := log.take()
	var perScript []int
	for i, c := range cmds {
		if c == "script" {
			perScript = append(perScript, (nargs[i]-4)/2)
		}
	}
	assert.Equal(t, []int{2, 2}, perScript)
	assert.Equal(t, ids, readyIDs(t, s, k.ready))
}

// TestConcurrentReplaysMoveEachOnce runs Replays side by side over a
// store of several chunks: each record is moved by exactly one of them.
func TestConcurrentReplaysMoveEachOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, servers := newTestQueue(t, 1, Config{})
	s, k := servers[0], newQueueKeys(q.cfg.Prefix, 0, 0)
	require.NoError(t, q.CheckLayout(ctx))
	const n = 2*deadChunk + 5
	args := []any{k.dead}
	for i := range n {
		id := q.ids.next()
		args = append(args, id, deadRecordAt(Task{ID: id, OrderID: uint64(i), Payload: []byte("p")}, int64(1000+i)))
	}
	s.do(t, "HSET", args...)
	var wg sync.WaitGroup
	moved := make([]int, 4)
	for i := range moved {
		wg.Go(func() {
			m, err := q.Replay(ctx, 0)
			assert.NoError(t, err)
			moved[i] = m
		})
	}
	wg.Wait()
	total := 0
	for _, m := range moved {
		total += m
	}
	assert.Equal(t, n, total)
	ready := readyIDs(t, s, k.ready)
	assert.Len(t, ready, n)
	assert.Len(t, slices.Compact(slices.Sorted(slices.Values(ready))), n, "no task twice")
}

// loggedQueue returns a queue of one partition whose commands log records,
// with its server and keys.
func loggedQueue(t *testing.T) (*Queue, *testServer, queueKeys, *argLog) {
	t.Helper()
	s := newTestServers(t, 1)[0]
	log := &argLog{}
	pool := s.wrapPool(0, func(c redis.Conn) redis.Conn { return argConn{c, log} })
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	require.NoError(t, q.CheckLayout(context.Background()))
	return q, s, newQueueKeys(q.cfg.Prefix, 0, 0), log
}

// A task's other records count against a replay script's bound: the
// script never touches more than deadChunk records.
func TestReplayChunkBoundCountsOtherRecords(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, s, k, log := loggedQueue(t)
	const n = deadChunk + 10
	const records = 4 // a task's: id, id#2 .. id#4
	base := int64(1_700_000_000_000)
	args := []any{k.dead}
	for i := range n {
		id := q.ids.next()
		task := Task{ID: id, OrderID: 0, Payload: []byte{byte(i)}}
		args = append(args, id, deadRecordAt(task, base+int64(i)+10_000))
		for j := 2; j <= records; j++ {
			args = append(args, id+"#"+strconv.Itoa(j), deadRecordAt(task, base+int64(i)))
		}
	}
	s.do(t, "HSET", args...)
	log.take()
	moved, err := q.Replay(ctx, 0)
	require.NoError(t, err)
	assert.Equal(t, n, moved, "each task once")
	cmds, nargs := log.take()
	most := 0
	for i, c := range cmds {
		if c == "script" {
			most = max(most, nargs[i])
		}
	}
	assert.LessOrEqual(t, (most-4)/2, deadChunk, "records in the largest replay script")
	assert.Zero(t, s.do(t, "EXISTS", k.dead), "every record went")
}

// One record of a task replayed by its field takes the task's others with
// it, so Replay of everything, then or at the same time, does not queue
// the task again.
func TestReplayOneRecordThenAll(t *testing.T) {
	t.Parallel()
	q, srv := newTestQueue(t, 1, Config{})
	s, k := srv[0], newQueueKeys(q.cfg.Prefix, 0, 0)
	ctx := bounded(t)
	const id = "bbb00000000000000000"
	task := Task{ID: id, OrderID: 0, AddedAt: time.UnixMilli(2), Payload: []byte("q")}
	for round := range 20 {
		s.do(t, "DEL", k.ready, k.dead)
		s.do(t, "HSET", k.dead, id, deadRecordAt(task, 2000), id+"#2", deadRecordAt(task, 1000))
		var n1, n2 int
		var err1, err2 error
		if round == 0 {
			n1, err1 = q.Replay(ctx, 0, id+"#2")
			n2, err2 = q.Replay(ctx, 0)
		} else { // side by side
			var wg sync.WaitGroup
			wg.Go(func() { n1, err1 = q.Replay(ctx, 0, id+"#2") })
			wg.Go(func() { n2, err2 = q.Replay(ctx, 0) })
			wg.Wait()
		}
		require.NoError(t, err1)
		require.NoError(t, err2)
		assert.Equal(t, 1, n1+n2, "round %d", round)
		assert.Len(t, readyTasks(t, s, k), 1, "round %d: queued once", round)
		assert.Zero(t, s.do(t, "EXISTS", k.dead), "round %d", round)
	}
}
