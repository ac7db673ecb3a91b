package queue

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

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
	b := encodeDead(encodeTask(task, 3), 3, "boom: it broke")
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
	d = decodeDead("bad:5", encodeDead(raw, 0, "claim: queue: malformed record: bad header"))
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

func TestSplitPending(t *testing.T) {
	t.Parallel()
	accounted, entry, legacy, err := splitPending([]byte("\x01rest:with:colons"))
	require.NoError(t, err)
	assert.False(t, accounted)
	assert.Equal(t, "\x01rest:with:colons", string(entry))
	assert.EqualValues(t, -1, legacy)
	accounted, entry, legacy, err = splitPending([]byte("+\x01e"))
	require.NoError(t, err)
	assert.True(t, accounted)
	assert.Equal(t, "\x01e", string(entry))
	assert.EqualValues(t, -1, legacy)
	// Records as claims wrote them before order records.
	accounted, entry, legacy, err = splitPending([]byte("12:\x01rest:with:colons"))
	require.NoError(t, err)
	assert.False(t, accounted)
	assert.Equal(t, "\x01rest:with:colons", string(entry))
	assert.EqualValues(t, 12, legacy)
	accounted, entry, legacy, err = splitPending([]byte("7+:\x01e"))
	require.NoError(t, err)
	assert.True(t, accounted)
	assert.Equal(t, "\x01e", string(entry))
	assert.EqualValues(t, 7, legacy)
	for _, bad := range []string{"", "+", "++\x01e", "x", "+x", "\x02e", "12", "05:x", "5++:x", "05+:x", "5 +:x",
		"99999999999999999999:x", "-5:x", "+5:x", ":x"} {
		_, _, _, err := splitPending([]byte(bad))
		assert.ErrorIs(t, err, ErrMalformed, "%q", bad)
	}
}

func TestClaimOrder(t *testing.T) {
	t.Parallel()
	id := func(c byte) string { return strings.Repeat(string(c), idLen) }
	got := claimSeqs(map[string]string{
		"10": id('a') + id('b') + seqFiller,
		"13": id('c') + id('a'), // a was handed back and claimed again
		"7":  id('z'),
		// Not order records as the claim script writes them: skipped.
		"07":                   id('x'),
		"-1":                   id('x'),
		"x":                    id('x'),
		"20":                   id('x') + "short",
		"99999999999999999999": id('x'),
	})
	assert.Equal(t, map[string]int64{
		id('z'): 8, id('b'): 12, seqFiller: 13, id('c'): 14, id('a'): 15,
	}, got)
}

// deadQueue returns a one-queue Queue, its server and its keys.
func deadQueue(t *testing.T) (*Queue, *testServer, queueKeys) {
	t.Helper()
	q, servers := newTestQueue(t, 1, Config{})
	return q, servers[0], newQueueKeys(q.cfg.Prefix, 0, 0)
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
	garbage := map[string][]byte{"junk1": []byte("\x02garbage"), "junk2": {}, "junk3": encodeDead([]byte("raw"), 0, "x")}
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

// garbageEntries are ready-list elements that are not tasks.
func garbageEntries() [][]byte {
	good := encodeTask(Task{ID: testID, OrderID: 5, AddedAt: time.UnixMilli(1), Payload: []byte("p")}, 0)
	return [][]byte{
		[]byte("garbage"),
		{},
		{entryVersion},
		append([]byte{entryVersion}, "ABCDEFGHIJKLMNOPQRST\x01\x01\x00p"...), // bad ID characters
		append(append([]byte{}, good[:entryHeader]...), 0x80),                // truncated varint
		append([]byte{0x07}, good[1:]...),                                    // wrong version
	}
}

// TestMalformedReadyQuarantined writes garbage straight into a ready list
// between real tasks: claims skip it, and it lands in the dead-letter store
// with its raw bytes.
func TestMalformedReadyQuarantined(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, s, k := deadQueue(t)
	garbage := garbageEntries()
	var want []string
	for i, g := range garbage {
		id, err := q.AddTask(ctx, uint64(i), []byte("task "+strconv.Itoa(i)))
		require.NoError(t, err)
		want = append(want, id)
		s.do(t, "LPUSH", k.ready, g)
	}
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	var got []string
	for {
		ts, err := c.Claim(ctx, 3)
		require.NoError(t, err)
		if len(ts) == 0 {
			break
		}
		for _, task := range ts {
			got = append(got, task.ID)
		}
	}
	assert.Equal(t, want, got, "the real tasks, in order")
	assert.Zero(t, s.do(t, "LLEN", k.ready))
	pending, err := q.Pending(ctx, 0)
	require.NoError(t, err)
	assert.Len(t, pending, len(want), "only real tasks are pending")
	assert.EqualValues(t, len(want), s.do(t, "HLEN", k.pending))

	assertQuarantined(t, q, garbage, "claim: ")
	st := statsOf(t, q, 0)
	assert.EqualValues(t, len(garbage), st.Failed)
	assert.EqualValues(t, len(garbage), st.Dead)
	require.NoError(t, c.Release(ctx))
}

// TestRemoveTaskSkipsMalformed checks that garbage at the head of the ready
// list does not make RemoveTask report an empty queue.
func TestRemoveTaskSkipsMalformed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, s, k := deadQueue(t)
	for _, g := range garbageEntries() {
		s.do(t, "LPUSH", k.ready, g)
	}
	id, err := q.AddTask(ctx, 1, []byte("real"))
	require.NoError(t, err)
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	task, err := c.RemoveTask(ctx)
	require.NoError(t, err)
	assert.Equal(t, id, task.ID)
	_, err = c.RemoveTask(ctx)
	assert.ErrorIs(t, err, ErrNoTask)
	assertQuarantined(t, q, garbageEntries(), "claim: ")
	require.NoError(t, c.Release(ctx))
}

// TestPoolSkipsMalformed runs a pool that claims one task at a time over a
// ready list that starts with garbage: ExitOnEmpty must not stop it before
// the real tasks are done.
func TestPoolSkipsMalformed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, s, k := deadQueue(t)
	for _, g := range garbageEntries() {
		s.do(t, "LPUSH", k.ready, g)
	}
	_, err := q.AddTasks(ctx, []Task{{OrderID: 1, Payload: []byte("x")}, {OrderID: 2, Payload: []byte("y")}})
	require.NoError(t, err)
	var done []string
	err = q.AnalysePool(ctx, 0, PoolConfig{Workers: 1, Prefetch: 1, ExitOnEmpty: true, Logger: slog.New(slog.DiscardHandler)},
		func(_ context.Context, task Task) error {
			done = append(done, string(task.Payload))
			return nil
		})
	require.NoError(t, err)
	assert.Equal(t, []string{"x", "y"}, done)
	assertQuarantined(t, q, garbageEntries(), "claim: ")
	// One task a claim: claims of garbage alone dropped their order
	// records at once, the others with their task's ack.
	assert.Zero(t, s.do(t, "EXISTS", k.pending, k.claims))
}

// assertQuarantined checks that the dead-letter store holds exactly the
// given raw records, each with an error naming where it was found.
func assertQuarantined(t *testing.T, q *Queue, raw [][]byte, where string) {
	t.Helper()
	list, err := q.Dead(context.Background(), 0)
	require.NoError(t, err)
	var got []string
	for _, d := range list {
		assert.NotNil(t, d.Raw, "record %q", d.ID)
		assert.True(t, strings.HasPrefix(d.LastError, where), d.LastError)
		assert.Contains(t, d.LastError, ErrMalformed.Error())
		assert.Zero(t, d.Attempts)
		got = append(got, string(d.Raw))
	}
	var want []string
	for _, r := range raw {
		want = append(want, string(r))
	}
	assert.ElementsMatch(t, want, got)
}

// TestMalformedPendingQuarantined writes garbage straight into a pending
// hash: the next owner's recovery moves it to the dead-letter store with
// its raw bytes, and puts the real pending tasks back in claim order.
func TestMalformedPendingQuarantined(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, s, k := deadQueue(t)
	mk := func(id string, order uint64, deliveries int) []byte {
		return encodeTask(Task{ID: id, OrderID: order, AddedAt: time.UnixMilli(1000), Payload: []byte(id[:3])}, deliveries)
	}
	idA, idB, idC := "aaa00000000000000000", "bbb00000000000000000", "ccc00000000000000000"
	plus := func(b []byte) []byte { return append([]byte{accountedMark}, b...) }
	records := map[string][]byte{
		idB:                    plus(mk(idB, 1, 2)), // claimed second; its second delivery started
		idA:                    mk(idA, 1, 0),       // claimed first
		idC:                    plus(mk(idC, 2, 5)), // its fifth delivery started: dead
		"x":                    []byte("no task at all"),
		"y":                    []byte("5:garbage"),
		"bad:6":                []byte("\x01"),
		"ddd00000000000000000": mk("eee00000000000000000", 3, 0), // field and ID disagree
		"zzz":                  plus(mk("zzz00000000000000000", 3, 0)),
	}
	for f, v := range records {
		s.do(t, "HSET", k.pending, f, v)
	}
	// Claim order: A (seq 3), then B and C (seqs 8 and 9).
	s.do(t, "HSET", k.claims, "2", idA, "7", idB+idC, "x7", "not an order record")
	pending, err := q.Pending(ctx, 0)
	require.NoError(t, err)
	assert.Equal(t, []string{idA, idB, idC}, taskIDsOf(pending), "Pending lists decodable records in claim order")
	assert.Equal(t, []int{1, 2, 5}, []int{pending[0].Attempt, pending[1].Attempt, pending[2].Attempt})

	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 5})
	require.NoError(t, err)
	assert.Zero(t, s.do(t, "EXISTS", k.pending, k.claims))
	assert.Equal(t, []string{idA, idB}, readyIDs(t, s, k.ready), "recovered in claim order")
	got, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	require.Len(t, got, 2)
	assert.Equal(t, []int{1, 3}, []int{got[0].Attempt, got[1].Attempt},
		"a recorded interrupted delivery counts; an unrecorded first one may never have started, and does not")

	list, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	var raws [][]byte
	for _, d := range list {
		if d.ID == idC {
			assert.Nil(t, d.Raw)
			assert.Equal(t, 5, d.Attempts)
			assert.Contains(t, d.LastError, "delivered 5 times")
			assert.Equal(t, []byte("ccc"), d.Payload)
			continue
		}
		assert.Equal(t, records[d.ID], d.Raw, "record %q keeps its raw bytes", d.ID)
		assert.True(t, strings.HasPrefix(d.LastError, "recover: "), d.LastError)
		raws = append(raws, d.Raw)
	}
	assert.Len(t, raws, len(records)-3)
	st := statsOf(t, q, 0)
	assert.EqualValues(t, len(records)-2, st.Failed)
	assert.EqualValues(t, 2, st.Redelivered)
	assert.EqualValues(t, 2, st.Pending)
	require.NoError(t, c.Release(ctx))
}

func taskIDsOf(ts []Task) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.ID
	}
	return out
}

// statsOf returns the Stats row of analyser a.
func statsOf(t *testing.T, q *Queue, a int) AnalyserStats {
	t.Helper()
	st, err := q.Stats(context.Background())
	require.NoError(t, err)
	require.Greater(t, len(st), a)
	return st[a]
}

// FuzzDecodePending checks that a pending record, an entry as a claim
// writes it or '+' and an entry as a recorded delivery does (or either in
// the older form with a claim seq in front), never panics the decoder, and
// that one that decodes re-encodes to its own bytes.
func FuzzDecodePending(f *testing.F) {
	task := Task{ID: testID, OrderID: 9, AddedAt: time.UnixMilli(1_700_000_000_000), Payload: []byte("x:y")}
	f.Add(encodeTask(task, 2))
	f.Add(accountedRecord(task, 2))
	f.Add([]byte("+"))
	f.Add([]byte("17:no seq any more"))
	f.Fuzz(func(t *testing.T, b []byte) {
		accounted, e, legacy, err := splitPending(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		task, deliveries, err := decodeEntry(e)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		re := encodeTask(task, deliveries)
		if accounted {
			re = accountedRecord(task, deliveries)
		}
		if legacy >= 0 {
			head := strconv.FormatInt(legacy, 10)
			if accounted {
				head += "+"
			}
			re = append([]byte(head+":"), encodeTask(task, deliveries)...)
		}
		if !bytes.Equal(re, b) {
			t.Fatalf("re-encoded %q as %q", b, re)
		}
	})
}

// FuzzClaimOrder checks that any order record is read without a panic, and
// that one as the claim script writes it numbers each of its IDs.
func FuzzClaimOrder(f *testing.F) {
	f.Add("10", testID+testID)
	f.Add("0", seqFiller)
	f.Add("07", testID)
	f.Add("x", "short")
	f.Fuzz(func(t *testing.T, field, ids string) {
		got := claimSeqs(map[string]string{field: ids})
		first, err := strconv.ParseInt(field, 10, 64)
		valid := err == nil && first >= 0 && strconv.FormatInt(first, 10) == field && len(ids)%idLen == 0
		if !valid {
			if len(got) != 0 {
				t.Fatalf("record %q = %q read as %v", field, ids, got)
			}
			return
		}
		for i := len(ids) - idLen; i >= 0; i -= idLen {
			id := ids[i : i+idLen]
			if want := first + int64(i/idLen) + 1; got[id] != want && strings.Count(ids, id) == 1 {
				t.Fatalf("ID %q at %d: seq %d, want %d", id, i, got[id], want)
			}
		}
	})
}

// FuzzDecodeDead checks that any dead record lists without a panic: one
// that decodes re-encodes to its own bytes, one that does not keeps them.
func FuzzDecodeDead(f *testing.F) {
	entry := encodeTask(Task{ID: testID, OrderID: 9, AddedAt: time.UnixMilli(1_700_000_000_000), Payload: []byte("p")}, 3)
	f.Add(testID, append(deadHeader(3, 1_700_000_000_001, "boom"), entry...))
	f.Add("bad:1", append(deadHeader(0, 1, "claim: bad"), "raw"...))
	f.Add("x", []byte("garbage"))
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
		if d.Attempt != d.Attempts || task.ID != d.ID || task.OrderID != d.OrderID || !bytes.Equal(task.Payload, d.Payload) {
			t.Fatalf("dead task %+v disagrees with its entry %+v", d, task)
		}
		if re := appendEntry(nil, d.ID, d.OrderID, d.AddedAt.UnixMilli(), deliveries, d.Payload); !bytes.Equal(re, tail) {
			t.Fatalf("entry %q re-encoded as %q", tail, re)
		}
	})
}

// TestRecoveryReadsOlderPendingRecords: records written before claims kept
// their order in order records ("<seq>:<entry>", "<seq>+:<entry>") are
// put back with the new ones, in claim order, their deliveries counted as
// before.
func TestRecoveryReadsOlderPendingRecords(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, s, k := deadQueue(t)
	mk := func(id string, deliveries int) []byte {
		return encodeTask(Task{ID: id, OrderID: 1, AddedAt: time.UnixMilli(1000), Payload: []byte(id[:3])}, deliveries)
	}
	idA, idB, idC := "aaa00000000000000000", "bbb00000000000000000", "ccc00000000000000000"
	s.do(t, "HSET", k.pending,
		idB, append([]byte("3:"), mk(idB, 0)...), // claimed second
		idA, append([]byte("2+:"), mk(idA, 2)...), // claimed first; its second delivery started
		idC, mk(idC, 0)) // claimed after the upgrade
	s.do(t, "HSET", k.claims, "9", idC)
	pending, err := q.Pending(ctx, 0)
	require.NoError(t, err)
	assert.Equal(t, []string{idA, idB, idC}, taskIDsOf(pending))

	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	assert.Zero(t, s.do(t, "EXISTS", k.pending, k.claims, k.dead))
	got, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	assert.Equal(t, []string{idA, idB, idC}, taskIDs(got))
	assert.Equal(t, []int{3, 1, 1}, taskAttempts(got), "only recorded deliveries count")
}

// TestRecoveryFollowsOrderRecords: the claim order comes from the order
// records, not from the task IDs (which sort by add time only for tasks of
// one producer): here the claims took the IDs in reverse order.
func TestRecoveryFollowsOrderRecords(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, s, k := deadQueue(t)
	ids := []string{"vvv00000000000000000", "uuu00000000000000000", "ttt00000000000000000", "sss00000000000000000"}
	for _, id := range ids {
		s.do(t, "HSET", k.pending, id, encodeTask(Task{ID: id, OrderID: 1, AddedAt: time.UnixMilli(1000), Payload: []byte("p")}, 0))
	}
	s.do(t, "HSET", k.claims, "4", ids[2]+ids[3], "1", ids[0]+ids[1])
	pending, err := q.Pending(ctx, 0)
	require.NoError(t, err)
	assert.Equal(t, ids, taskIDsOf(pending))
	_, err = q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	assert.Equal(t, ids, readyIDs(t, s, k.ready), "back in claim order")
	assert.Zero(t, s.do(t, "EXISTS", k.pending, k.claims))
}
