package queue

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// deadHeader encodes the head of a dead record with a given death time.
func deadHeader(attempts int, diedMS int64, msg string) []byte {
	b := []byte{deadVersion}
	b = binary.AppendUvarint(b, uint64(attempts))
	b = binary.AppendUvarint(b, uint64(diedMS))
	b = binary.AppendUvarint(b, uint64(len(msg)))
	return append(b, msg...)
}

func TestDeadRecordRoundTrip(t *testing.T) {
	t.Parallel()
	task := Task{ID: testID, OrderID: 77, AddedAt: time.UnixMilli(1_700_000_000_000), Payload: []byte("payload")}
	before := time.Now().Add(-time.Millisecond)
	b := encodeDead(encodeTask(task, 3), 3, "boom: it broke", time.Now().UnixMilli())
	after := time.Now().Add(time.Millisecond)
	d := decodeDead(task.ID, b)
	assert.Nil(t, d.Raw)
	assert.Equal(t, task.ID, d.ID)
	assert.Equal(t, task.OrderID, d.OrderID)
	assert.Equal(t, task.Payload, d.Payload)
	assert.Equal(t, task.AddedAt.UnixMilli(), d.AddedAt.UnixMilli())
	assert.Equal(t, 3, d.Attempts)
	assert.Equal(t, 3, d.Attempt)
	assert.Equal(t, "boom: it broke", d.LastError)
	assert.False(t, d.DiedAt.Before(before) || d.DiedAt.After(after), "DiedAt %v", d.DiedAt)

	// A quarantined record keeps its raw bytes.
	raw := []byte("5:not an entry\x00\xff")
	d = decodeDead("bad:5", encodeDead(raw, 0, "claim: queue: malformed record: bad header", time.Now().UnixMilli()))
	assert.Equal(t, raw, d.Raw)
	assert.Equal(t, "bad:5", d.ID)
	assert.Zero(t, d.OrderID)
	assert.Equal(t, "claim: queue: malformed record: bad header", d.LastError)
}

func TestDecodeDeadMalformed(t *testing.T) {
	t.Parallel()
	entry := encodeTask(Task{ID: testID, OrderID: 1, AddedAt: time.UnixMilli(1), Payload: []byte("p")}, 1)
	uv := func(v uint64) []byte { return binary.AppendUvarint(nil, v) }
	with := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name string
		b    []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"entry version", entry},
		{"text", []byte("dead?")},
		{"version only", []byte{deadVersion}},
		{"no time", with([]byte{deadVersion}, uv(1))},
		{"no message length", with([]byte{deadVersion}, uv(1), uv(1))},
		{"message past the end", with([]byte{deadVersion}, uv(1), uv(1), uv(100), []byte("short"))},
		{"attempts out of range", with([]byte{deadVersion}, uv(1<<31+1), uv(1), uv(0), entry)},
		{"time out of range", with([]byte{deadVersion}, uv(1), uv(1<<53+1), uv(0), entry)},
		{"varint overflow", with([]byte{deadVersion}, bytes.Repeat([]byte{0xff}, 11), entry)},
		{"non-minimal attempts", with([]byte{deadVersion}, []byte{0x81, 0x00}, uv(1), uv(0), entry)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := decodeDead("field", tt.b)
			assert.Equal(t, "field", d.ID)
			assert.True(t, strings.HasPrefix(d.LastError, "malformed dead record: "), d.LastError)
			assert.Equal(t, len(tt.b), len(d.Raw))
			assert.True(t, bytes.Equal(tt.b, d.Raw))
		})
	}
}

func TestDeadReplayPurge(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, s, k := deadQueue(t)
	ids, err := q.AddTasks(ctx, []Task{
		{OrderID: 1, Payload: []byte("a")},
		{OrderID: 1, Payload: []byte("b")},
		{OrderID: 2, Payload: []byte("c")},
	})
	require.NoError(t, err)
	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 1})
	require.NoError(t, err)
	tasks, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	require.Len(t, tasks, 3)
	before := time.Now().Add(-time.Millisecond)
	dead, err := c.Fail(ctx, tasks[0], errors.New("boom a"))
	require.NoError(t, err)
	require.True(t, dead)
	dead, err = c.Fail(ctx, tasks[2], errors.New("boom c"))
	require.NoError(t, err)
	require.True(t, dead)
	after := time.Now().Add(time.Millisecond)
	n, err := c.Ack(ctx, tasks[1].ID)
	require.NoError(t, err)
	require.Equal(t, 1, n)

	list, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, list, 2)
	byID := map[string]DeadTask{}
	for _, d := range list {
		byID[d.ID] = d
	}
	for i, want := range map[int]string{0: "boom a", 2: "boom c"} {
		d := byID[ids[i]]
		assert.Equal(t, ids[i], d.ID)
		assert.Equal(t, tasks[i].OrderID, d.OrderID)
		assert.Equal(t, tasks[i].Payload, d.Payload)
		assert.Equal(t, tasks[i].AddedAt.UnixMilli(), d.AddedAt.UnixMilli())
		assert.Equal(t, 1, d.Attempts)
		assert.Equal(t, want, d.LastError)
		assert.Nil(t, d.Raw)
		assert.False(t, d.DiedAt.Before(before) || d.DiedAt.After(after), "DiedAt %v", d.DiedAt)
	}
	st := statsOf(t, q, 0)
	assert.EqualValues(t, 2, st.Dead)
	assert.EqualValues(t, 2, st.Failed)
	assert.EqualValues(t, 1, st.Processed)
	assert.Zero(t, st.Pending)

	// Replay puts a dead task behind the queued ones, as new work.
	newer, err := q.AddTask(ctx, 3, []byte("d"))
	require.NoError(t, err)
	n, err = q.Replay(ctx, 0, ids[0], "unknown-id")
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	n, err = q.Replay(ctx, 0, ids[0])
	require.NoError(t, err)
	assert.Zero(t, n, "already replayed")
	assert.Equal(t, []string{newer, ids[0]}, readyIDs(t, s, k.ready))
	got, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	require.Len(t, got, 2)
	assert.Equal(t, newer, got[0].ID)
	assert.Equal(t, ids[0], got[1].ID)
	assert.Equal(t, 1, got[1].Attempt, "the delivery count starts again")
	assert.Equal(t, []byte("a"), got[1].Payload)
	_, err = c.Ack(ctx, got[0].ID, got[1].ID)
	require.NoError(t, err)

	// Malformed dead records are listed, skipped by Replay, and purged.
	garbage := map[string][]byte{"junk1": []byte("\x02garbage"), "junk2": {}, "junk3": encodeDead([]byte("raw"), 0, "x", time.Now().UnixMilli())}
	for f, v := range garbage {
		s.do(t, "HSET", k.dead, f, v)
	}
	list, err = q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, list, 4)
	for _, d := range list {
		if v, ok := garbage[d.ID]; ok {
			assert.NotNil(t, d.Raw, d.ID)
			assert.True(t, bytes.HasSuffix(v, d.Raw), d.ID)
		}
	}
	n, err = q.Replay(ctx, 0)
	require.NoError(t, err)
	assert.Equal(t, 1, n, "only task c replays")
	n, err = q.Replay(ctx, 0, "junk1")
	require.NoError(t, err)
	assert.Zero(t, n)
	list, err = q.Dead(ctx, 0)
	require.NoError(t, err)
	assert.Len(t, list, 3)

	n, err = q.Purge(ctx, 0, "junk1", "nope")
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	n, err = q.Purge(ctx, 0)
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	n, err = q.Purge(ctx, 0)
	require.NoError(t, err)
	assert.Zero(t, n)
	assert.Zero(t, s.do(t, "EXISTS", k.dead))
	require.NoError(t, c.Release(ctx))
}

func TestDeadCallsBadAnalyser(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, _ := newTestQueue(t, 2, Config{Queues: 2})
	for _, a := range []int{-1, 4} {
		_, err := q.Dead(ctx, a)
		assert.ErrorIs(t, err, ErrAnalyserRange)
		_, err = q.Pending(ctx, a)
		assert.ErrorIs(t, err, ErrAnalyserRange)
		_, err = q.Replay(ctx, a)
		assert.ErrorIs(t, err, ErrAnalyserRange)
		_, err = q.Purge(ctx, a)
		assert.ErrorIs(t, err, ErrAnalyserRange)
		_, err = q.Consume(ctx, a, ConsumerConfig{})
		assert.ErrorIs(t, err, ErrAnalyserRange)
	}
}

// FuzzDecodeDead checks that any dead record lists without a panic: one
// that decodes re-encodes to its own bytes, one that does not keeps them.
func FuzzDecodeDead(f *testing.F) {
	entry := encodeTask(Task{ID: testID, OrderID: 9, AddedAt: time.UnixMilli(1_700_000_000_000), Payload: []byte("p")}, 3)
	f.Add(testID, append(deadHeader(3, 1_700_000_000_001, "boom"), entry...))
	f.Add("bad:1", append(deadHeader(0, 1, "claim: bad"), "raw"...))
	f.Add("x", []byte("garbage"))
	hentry := encodeTask(Task{ID: testID, OrderID: 9, AddedAt: time.UnixMilli(1), Payload: []byte("p"), Headers: map[string]string{"k": "v"}}, 5)
	f.Add(testID, append(deadHeader(5, 2, "boom"), hentry...))
	f.Fuzz(func(t *testing.T, field string, b []byte) {
		d := decodeDead(field, b)
		if strings.HasPrefix(d.LastError, "malformed dead record: ") && d.Raw != nil && bytes.Equal(d.Raw, b) {
			if d.ID != field {
				t.Fatalf("ID %q, want the field %q", d.ID, field)
			}
			return
		}
		head := deadHeader(d.Attempts, d.DiedAt.UnixMilli(), d.LastError)
		if !bytes.HasPrefix(b, head) {
			t.Fatalf("header of %q re-encoded as %q", b, head)
		}
		tail := b[len(head):]
		if d.Raw != nil {
			if !bytes.Equal(d.Raw, tail) || d.ID != field {
				t.Fatalf("raw %q, want %q; ID %q, want %q", d.Raw, tail, d.ID, field)
			}
			return
		}
		task, deliveries, err := decodeEntry(tail)
		if err != nil {
			t.Fatalf("decoded a dead task whose entry does not decode: %v", err)
		}
		if d.Attempt != d.Attempts || task.ID != d.ID || task.OrderID != d.OrderID || !bytes.Equal(task.Payload, d.Payload) || !maps.Equal(task.Headers, d.Headers) {
			t.Fatalf("dead task %+v disagrees with its entry %+v", d, task)
		}
		// A dead task does not keep recovery's mark (entryRecovered):
		// a replay makes it new work. All else re-encodes to the byte.
		if re := appendEntry(nil, 0, d.ID, d.OrderID, d.AddedAt.UnixMilli(), deliveries, d.Headers, d.Payload); !isEntryStart(tail[0]) || !bytes.Equal(re[1:], tail[1:]) {
			t.Fatalf("entry %q re-encoded as %q", tail, re)
		}
	})
}

// A dead record is listed under the field it is stored under, which is
// what Replay and Purge take: a quarantined record that holds another
// task than its field's is malformed there (listed, kept, purged), and a
// second record of one task ("<id>#2") replays as that task.
func TestDeadRecordsAreAddressedByTheirField(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	const field, other = "ccc00000000000000000", "aaa00000000000000000"
	s.do(t, "HSET", k.pending, field, encodeTask(Task{ID: other, OrderID: 1, AddedAt: time.UnixMilli(1), Payload: []byte("p")}, 0))
	c, err := q.Consume(ctx, 0, ConsumerConfig{}) // quarantines it
	require.NoError(t, err)
	require.NoError(t, c.Release(ctx))
	list, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, list, 1)
	assert.Equal(t, field, list[0].ID)
	assert.NotNil(t, list[0].Raw, "malformed: it holds another task than its field's")
	assert.Contains(t, list[0].LastError, other)
	n, err := q.Replay(ctx, 0)
	require.NoError(t, err)
	assert.Zero(t, n, "malformed records are left in place")
	n, err = q.Purge(ctx, 0, list[0].ID)
	require.NoError(t, err)
	assert.Equal(t, 1, n, "purged by the ID Dead lists")

	const id = "bbb00000000000000000"
	task := Task{ID: id, OrderID: 1, AddedAt: time.UnixMilli(2), Payload: []byte("q")}
	s.do(t, "HSET", k.dead, id, encodeDead(encodeTask(task, 3), 3, "newer", time.Now().UnixMilli()), id+"#2", encodeDead(encodeTask(task, 2), 2, "older", time.Now().UnixMilli()))
	list, err = q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, list, 2)
	slices.SortFunc(list, func(a, b DeadTask) int { return strings.Compare(a.ID, b.ID) })
	assert.Equal(t, []string{id, id + "#2"}, []string{list[0].ID, list[1].ID})
	for _, d := range list {
		assert.Nil(t, d.Raw, d.ID)
		assert.Equal(t, []byte("q"), d.Payload, d.ID)
	}
	n, err = q.Replay(ctx, 0, id+"#2")
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	ready := readyTasks(t, s, k)
	require.Len(t, ready, 1)
	assert.Equal(t, id, ready[0].ID, "replayed as the task it holds")
	st, err := q.Status(ctx, 1, id)
	require.NoError(t, err)
	assert.NotEqual(t, StateDead, st.State, "its other record went with it")
	n, err = q.Purge(ctx, 0, id)
	require.NoError(t, err)
	assert.Zero(t, n)

	// Replaying both records queues the task once, from its latest death.
	s.do(t, "DEL", k.ready)
	s.do(t, "HSET", k.dead, id, encodeDead(encodeTask(task, 3), 3, "newer", time.Now().UnixMilli()), id+"#2", encodeDead(encodeTask(task, 2), 2, "older", time.Now().UnixMilli()))
	for _, d := range list {
		assert.Equal(t, id, d.TaskID(), d.ID)
	}
	n, err = q.Replay(ctx, 0)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	require.Len(t, readyTasks(t, s, k), 1)
	left, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	assert.Empty(t, left, "the other record went with it")
	n, err = q.Replay(ctx, 0)
	require.NoError(t, err)
	assert.Zero(t, n, "a second Replay finds nothing of it")
	require.Len(t, readyTasks(t, s, k), 1, "queued once")

	// Purging the task takes its other record too, whichever is named: a
	// later Replay of all finds nothing of it.
	for _, named := range []string{id, id + "#2"} {
		s.do(t, "HSET", k.dead, id, encodeDead(encodeTask(task, 3), 3, "newer", time.Now().UnixMilli()), id+"#2", encodeDead(encodeTask(task, 2), 2, "older", time.Now().UnixMilli()))
		n, err = q.Purge(ctx, 0, named)
		require.NoError(t, err)
		assert.Equal(t, 2, n, "records purged naming %s", named)
		n, err = q.Replay(ctx, 0)
		require.NoError(t, err)
		assert.Zero(t, n, "a purged task came back through Replay")
	}
}

// A dead task keeps the first 4 KiB of an error of any size, cut at a
// character, with its whole length said; the retry record Status reads,
// its first KiB. (An error of 100,000 bytes was stored, listed and shown
// whole.)
func TestDeadErrorBounded(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx := context.Background()
	id, err := q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	long := strings.Repeat("é", 50_000) // 100,000 bytes, no character cut
	var retryMsg string
	require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{
		Workers: 1, MaxAttempts: 2, ExitOnEmpty: true, Backoff: func(int) time.Duration { return 0 },
		Logger: slog.New(slog.DiscardHandler), OnError: func(error) {},
	}, func(ctx context.Context, tk Task) error {
		if tk.Attempt == 2 {
			st, err := q.Status(ctx, tk.OrderID, tk.ID)
			assert.NoError(t, err)
			retryMsg = st.LastError
		}
		return errors.New(long)
	}))
	assert.LessOrEqual(t, len(retryMsg), maxRetryMsg)
	assert.True(t, utf8.ValidString(retryMsg))
	assert.True(t, strings.HasPrefix(retryMsg, "é"), retryMsg)
	dead, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, dead, 1)
	assert.Equal(t, id, dead[0].ID)
	msg := dead[0].LastError
	assert.LessOrEqual(t, len(msg), maxDeadMsg)
	assert.Greater(t, len(msg), maxDeadMsg-100)
	assert.True(t, utf8.ValidString(msg))
	assert.True(t, strings.HasSuffix(msg, " [... 100000 bytes in all]"), msg[len(msg)-40:])
	assert.Equal(t, "short", clipError("short", 10))
	assert.Equal(t, "aaaaaaaaaa", clipError(strings.Repeat("a", 100), 10), "no room for the note: cut to the bound")
	raw := clipError("read body: "+strings.Repeat("\x80", 5000), maxDeadMsg) // bytes that are not UTF-8
	assert.LessOrEqual(t, len(raw), maxDeadMsg)
	assert.Greater(t, len(raw), maxDeadMsg-100, "cut at the bound, not walked back to the last character start")
	assert.Equal(t, "ab [... 30 bytes in all]", clipError(strings.Repeat("ab", 15)[:2]+strings.Repeat("c", 28), 24))
}

// Tasks of one OrderID from two producers, the later one's ID the
// smaller, that die within a millisecond of each other come back from
// Replay in the order they were added: a process stamps such deaths a
// millisecond apart, where a tie in DiedAt would fall to the IDs.
func TestReplayKeepsTheOrderOfDeathsInOneMillisecond(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, _, _ := deadQueue(t)
	const orders = 20
	for o := range orders {
		for i, node := range []uint64{1 << 60, 1} { // the second producer's IDs sort first
			q.ids.mu.Lock()
			q.ids.node, q.ids.n = node, uint32(1+o)
			q.ids.mu.Unlock()
			_, err := q.AddTask(ctx, uint64(o), []byte(pl(o, i)))
			require.NoError(t, err)
		}
	}
	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 1})
	require.NoError(t, err)
	tasks, err := c.Claim(ctx, 2*orders)
	require.NoError(t, err)
	require.Len(t, tasks, 2*orders)
	for _, task := range tasks { // claim order: each OrderID's first, then its second
		dead, err := c.Fail(ctx, task, errors.New("down"))
		require.NoError(t, err)
		require.True(t, dead)
	}
	n, err := q.Replay(ctx, 0)
	require.NoError(t, err)
	require.Equal(t, 2*orders, n)
	again, err := c.Claim(ctx, 2*orders)
	require.NoError(t, err)
	require.Len(t, again, 2*orders)
	got := map[uint64][]string{}
	for _, task := range again {
		got[task.OrderID] = append(got[task.OrderID], string(task.Payload))
	}
	for o := range orders {
		assert.Equal(t, []string{pl(o, 0), pl(o, 1)}, got[uint64(o)], "OrderID %d", o)
	}
}

// producesAs has q's next task IDs made by node: of two producers, the one
// with the smaller node makes the IDs that sort first.
func producesAs(q *Queue, node uint64) {
	q.ids.mu.Lock()
	q.ids.node, q.ids.n = node, 1
	q.ids.mu.Unlock()
}

// stampedLast sets the last death stamp q made for orderID's slot to ms:
// a stamp ahead of the clock is what a burst of deaths stamped a
// millisecond apart leaves (or a clock that is ahead).
func stampedLast(q *Queue, orderID uint64, ms int64) {
	q.deaths.mu.Lock()
	q.deaths.last[orderID%deathSlots] = ms
	q.deaths.mu.Unlock()
}

// deadPayloads returns the payloads of ds, in order.
func deadPayloads(ds []DeadTask) []string {
	ts := make([]Task, len(ds))
	for i, d := range ds {
		ts[i] = d.Task
	}
	return payloadsOf(ts)
}

// Tasks of one OrderID that died under two owners of the queue, one after
// the other (a standby that took over, a restart), are listed by Dead and
// replayed in the order they died: the second owner stamps its deaths
// past the first's, whether the first's stamps ran ahead of the second's
// clock or the second's clock stamps the first's last millisecond (where
// the IDs, which break ties, sort the second's task first).
func TestDeadKeepsTheOrderOfDeathsAcrossOwners(t *testing.T) {
	t.Parallel()
	for _, tie := range []bool{false, true} {
		t.Run(map[bool]string{false: "behind", true: "tie"}[tie], func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			first, servers := newTestQueue(t, 1, Config{})
			second, err := New([]*redis.Pool{servers[0].pool}, Config{Prefix: first.cfg.Prefix})
			require.NoError(t, err)
			defer second.Close()
			producesAs(first, 1<<60)
			producesAs(second, 1)
			const n = 20
			want := make([]string, n+1)
			for i := range want {
				want[i] = pl(7, i)
			}
			for i := range n {
				_, err := first.AddTask(ctx, 7, []byte(want[i]))
				require.NoError(t, err)
			}

			// The first owner, a Consumer, its stamps a minute ahead.
			stampedLast(first, 7, time.Now().Add(time.Minute).UnixMilli())
			failToDeath(t, first, n)

			// The second, a pool.
			if tie {
				ds, err := first.Dead(ctx, 0)
				require.NoError(t, err)
				require.Len(t, ds, n)
				stampedLast(second, 7, ds[n-1].DiedAt.UnixMilli()-1) // its next stamp is the first's last
			}
			_, err = second.AddTask(ctx, 7, []byte(want[n]))
			require.NoError(t, err)
			require.NoError(t, second.AnalysePool(bounded(t), 0, PoolConfig{MaxAttempts: 1, ExitOnEmpty: true, OnError: func(error) {}},
				func(context.Context, Task) error { return errors.New("down") }))

			dead, err := first.Dead(ctx, 0)
			require.NoError(t, err)
			assert.Equal(t, want, deadPayloads(dead), "oldest death first")
			moved, err := first.Replay(ctx, 0)
			require.NoError(t, err)
			require.Equal(t, n+1, moved)
			c, err := first.Consume(ctx, 0, ConsumerConfig{})
			require.NoError(t, err)
			again, err := c.Claim(ctx, n+1)
			require.NoError(t, err)
			assert.Equal(t, want, payloadsOf(again), "replayed in the order they died")
			require.NoError(t, c.Release(ctx))
		})
	}
}

// The next owner's recovery stamps the deaths it finds past the last
// owner's too: a task whose deliveries ran out, a pending record that does
// not decode, and an entry its first claim finds malformed.
func TestNextOwnersBurialsFollowTheLastOwnersDeaths(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	first, s, k := deadQueue(t)
	second, err := New([]*redis.Pool{s.pool}, Config{Prefix: first.cfg.Prefix})
	require.NoError(t, err)
	defer second.Close()
	addAll(t, first, orderTasks(1, 2))
	stampedLast(first, 0, time.Now().Add(time.Minute).UnixMilli())
	task := failToDeath(t, first, 1)[0]
	c, err := first.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 2})
	require.NoError(t, err)
	worn, err := c.RemoveTask(ctx)
	require.NoError(t, err)
	dead, err := c.Fail(ctx, worn, errors.New("down"))
	require.NoError(t, err)
	require.False(t, dead, "its retry is recorded, and never made")
	require.NoError(t, c.Release(ctx))
	s.do(t, "LPUSH", k.ready, "not a task")
	s.do(t, "HSET", k.pending, "junk", "not a record")

	c, err = second.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 2})
	require.NoError(t, err)
	_, err = c.Claim(ctx, 10)
	require.NoError(t, err)
	require.NoError(t, c.Release(ctx))
	ds, err := first.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, ds, 4)
	assert.Equal(t, task.ID, ds[0].ID, "the last owner's death first")
	assert.True(t, slices.ContainsFunc(ds, func(d DeadTask) bool { return d.ID == worn.ID }), "the task whose deliveries ran out")
	for _, d := range ds[1:] {
		assert.True(t, d.DiedAt.After(ds[0].DiedAt), "%s died at %v, the last owner's last death at %v", d.ID, d.DiedAt, ds[0].DiedAt)
	}
}

// A last death in the meta hash that this package did not write (one
// years ahead, here) is read as none, and the next death replaces it: it
// does not push every later stamp on.
func TestLastDeathWrittenByHandIsReplaced(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, s, k := deadQueue(t)
	addAll(t, q, orderTasks(1, 1))
	s.do(t, "HSET", k.meta, lastDeathField, "99999999999999")
	failToDeath(t, q, 1)
	ds, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, ds, 1)
	assert.WithinDuration(t, time.Now(), ds[0].DiedAt, time.Minute)
	last, err := redis.Int64(s.do(t, "HGET", k.meta, lastDeathField), nil)
	require.NoError(t, err)
	assert.Equal(t, ds[0].DiedAt.UnixMilli(), last)
}

// failToDeath claims the next n tasks of analyser 0 with a Consumer of
// MaxAttempts 1, fails each to the dead-letter store, in claim order, and
// releases the queue; it returns the tasks.
func failToDeath(t *testing.T, q *Queue, n int) []Task {
	t.Helper()
	ctx := context.Background()
	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 1})
	require.NoError(t, err)
	tasks, err := c.Claim(ctx, n)
	require.NoError(t, err)
	require.Len(t, tasks, n)
	for _, task := range tasks {
		dead, err := c.Fail(ctx, task, errors.New("down"))
		require.NoError(t, err)
		require.True(t, dead)
	}
	require.NoError(t, c.Release(ctx))
	return tasks
}
