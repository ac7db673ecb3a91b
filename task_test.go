package queue

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const testID = "0123456789abcdefghij"

func TestEntryRoundTrip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		task       Task
		deliveries int
	}{
		{"smallest", Task{ID: testID, OrderID: 0, AddedAt: time.UnixMilli(0), Payload: []byte{0}}, 0},
		{"typical", Task{ID: "00938ljojaudtvfarfnf", OrderID: 42, AddedAt: time.UnixMilli(1_700_000_000_123), Payload: []byte("hello")}, 3},
		{"max order", Task{ID: "vvvvvvvvvvvvvvvvvvvv", OrderID: math.MaxUint64, AddedAt: time.UnixMilli(1 << 53), Payload: []byte("x")}, 1<<31 - 1},
		{"binary payload", Task{ID: testID, OrderID: 1 << 63, AddedAt: time.UnixMilli(1), Payload: []byte{0, 1, 0xff, ':', '\n', 0x80}}, 127},
		{"varint edges", Task{ID: testID, OrderID: 128, AddedAt: time.UnixMilli(16383), Payload: bytes.Repeat([]byte("p"), 300)}, 128},
		{"empty payload", Task{ID: testID, OrderID: 7, AddedAt: time.UnixMilli(5)}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := encodeTask(tt.task, tt.deliveries)
			assert.Equal(t, byte(entryTask), b[0])
			assert.Equal(t, tt.task.ID, string(b[1:entryHeader]))
			assert.LessOrEqual(t, len(b)-len(tt.task.Payload), 44, "overhead")
			got, deliveries, err := decodeEntry(b)
			require.NoError(t, err)
			assert.Equal(t, tt.deliveries, deliveries)
			assert.Equal(t, tt.task.ID, got.ID)
			assert.Equal(t, tt.task.OrderID, got.OrderID)
			assert.Equal(t, tt.task.AddedAt.UnixMilli(), got.AddedAt.UnixMilli())
			assert.Equal(t, len(tt.task.Payload), len(got.Payload))
			assert.True(t, bytes.Equal(tt.task.Payload, got.Payload))
			assert.Zero(t, got.Attempt, "decodeEntry leaves Attempt zero")
			assert.Equal(t, b, encodeTask(got, deliveries), "re-encoding")
		})
	}
}

func TestEntryRoundTripProperty(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	var ids idSource
	for i := 0; i < 5000; i++ {
		task := Task{
			ID:      ids.next(),
			OrderID: rng.Uint64() >> rng.IntN(64),
			AddedAt: time.UnixMilli(rng.Int64N(1<<53 + 1)),
			Payload: make([]byte, rng.IntN(200)),
		}
		for j := range task.Payload {
			task.Payload[j] = byte(rng.Uint32())
		}
		deliveries := rng.IntN(1 << 31)
		b := encodeTask(task, deliveries)
		got, d, err := decodeEntry(b)
		require.NoError(t, err, "task %+v", task)
		require.Equal(t, deliveries, d)
		require.Equal(t, task.ID, got.ID)
		require.Equal(t, task.OrderID, got.OrderID)
		require.Equal(t, task.AddedAt.UnixMilli(), got.AddedAt.UnixMilli())
		require.True(t, bytes.Equal(task.Payload, got.Payload))
		require.Equal(t, b, encodeTask(got, d))
	}
}

func TestDecodeEntryCopiesPayload(t *testing.T) {
	t.Parallel()
	b := encodeTask(Task{ID: testID, OrderID: 1, AddedAt: time.UnixMilli(1), Payload: []byte("abc")}, 0)
	got, _, err := decodeEntry(b)
	require.NoError(t, err)
	for i := range b {
		b[i] = 'z'
	}
	assert.Equal(t, "abc", string(got.Payload))
}

func TestDecodeEntryMalformed(t *testing.T) {
	t.Parallel()
	good := encodeTask(Task{ID: testID, OrderID: 300, AddedAt: time.UnixMilli(1000), Payload: []byte("p")}, 2)
	head := good[:entryHeader]
	with := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	uv := func(v uint64) []byte { return binary.AppendUvarint(nil, v) }
	tests := []struct {
		name string
		b    []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"version only", []byte{entryTask}},
		{"short header", good[:entryHeader-1]},
		{"header only", head},
		{"wrong version", with([]byte{0x02}, good[1:])},
		{"version zero", with([]byte{0x00}, good[1:])},
		{"text", []byte("this is not a task at all, just text")},
		{"upper-case id", with([]byte{entryTask}, []byte(strings.ToUpper(testID)), good[entryHeader:])},
		{"id char w", with([]byte{entryTask}, []byte("0123456789abcdefghiw"), good[entryHeader:])},
		{"id with NUL", with([]byte{entryTask}, []byte("0123456789abcdefghi\x00"), good[entryHeader:])},
		{"order only", with(head, uv(1))},
		{"no deliveries", with(head, uv(1), uv(2))},
		{"truncated varint", with(head, []byte{0x80})},
		{"varint overflow", with(head, bytes.Repeat([]byte{0xff}, 10), []byte{0x01}, uv(1), uv(1))},
		{"added at too large", with(head, uv(1), uv(1<<53+1), uv(0), []byte("p"))},
		{"added at max", with(head, uv(1), uv(math.MaxUint64), uv(0), []byte("p"))},
		{"deliveries too large", with(head, uv(1), uv(1), uv(1<<31+1), []byte("p"))},
		{"deliveries leave no delivery", with(head, uv(1), uv(1), uv(1<<31), []byte("p"))},
		{"non-minimal order", with(head, []byte{0x81, 0x00}, uv(1), uv(0), []byte("p"))},
		{"non-minimal zero", with(head, uv(1), []byte{0x80, 0x80, 0x00}, uv(0), []byte("p"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, d, err := decodeEntry(tt.b)
			assert.ErrorIs(t, err, ErrMalformed)
			assert.Zero(t, got.ID)
			assert.Zero(t, d)
		})
	}
}

func TestFormatIDGolden(t *testing.T) {
	t.Parallel()
	// Values computed independently: the 96-bit node<<32|n in base32 with
	// the digits 0-9a-v, 20 digits, most significant first.
	tests := []struct {
		node uint64
		n    uint32
		want string
	}{
		{0, 0, "00000000000000000000"},
		{0, 1, "00000000000000000001"},
		{0, 31, "0000000000000000000v"},
		{0, 32, "00000000000000000010"},
		{1, 0, "00000000000004000000"},
		{0x0123456789abcdef, 0xdeadbeef, "00938ljojaudtvfarfnf"},
		{math.MaxUint64, math.MaxUint32, "1vvvvvvvvvvvvvvvvvvv"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, formatID(tt.node, tt.n), "formatID(%#x, %#x)", tt.node, tt.n)
	}
}

func TestIDSource(t *testing.T) {
	t.Parallel()
	var s idSource
	const n = 10000
	ids := make([]string, n)
	for i := range ids {
		ids[i] = s.next()
		require.True(t, ValidTaskID(ids[i]), "id %q", ids[i])
	}
	assert.True(t, sort.StringsAreSorted(ids), "IDs of one node sort by their counter")
	assertUnique(t, ids)

	// Concurrent callers never get the same ID.
	var mu sync.Mutex
	var all []string
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]string, 2000)
			for i := range mine {
				mine[i] = s.next()
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	assertUnique(t, append(all, ids...))

	// Two sources (two processes) draw different nodes.
	var other idSource
	other.next()
	assert.NotEqual(t, s.node, other.node)
}

func TestIDSourceCounterWrap(t *testing.T) {
	t.Parallel()
	s := idSource{node: 42, n: math.MaxUint32}
	last := s.next()
	assert.Equal(t, formatID(42, math.MaxUint32), last)
	next := s.next()
	assert.NotEqual(t, uint64(42), s.node, "a wrapped counter draws a new node")
	assert.Equal(t, formatID(s.node, 0), next)
	assert.NotEqual(t, last, next)
	assert.Equal(t, formatID(s.node, 1), s.next())
}

func assertUnique(t *testing.T, ids []string) {
	t.Helper()
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		if seen[id] {
			t.Errorf("duplicate id %q", id)
		}
		seen[id] = true
	}
}

// FuzzDecodeEntry checks that decodeEntry never panics, that what it
// rejects is ErrMalformed, and that what it accepts re-encodes to the same
// bytes (so a record has one encoding).
func FuzzDecodeEntry(f *testing.F) {
	f.Add(encodeTask(Task{ID: testID, OrderID: 42, AddedAt: time.UnixMilli(1_700_000_000_000), Payload: []byte("hello")}, 0))
	f.Add(encodeTask(Task{ID: testID, OrderID: math.MaxUint64, AddedAt: time.UnixMilli(1 << 53), Payload: []byte{0}}, 1<<31-1))
	f.Add([]byte("garbage"))
	withHeaders := encodeTask(Task{ID: testID, OrderID: 7, AddedAt: time.UnixMilli(1), Payload: []byte("p"),
		Headers: map[string]string{"a": "1", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}, 2)
	f.Add(withHeaders)
	f.Add(append([]byte{entryTask | entryRecovered | entryHeaders}, withHeaders[1:]...))
	f.Add(append([]byte{entryTask | entryHeaders}, encodeTask(Task{ID: testID, Payload: []byte("\x01\x01a\x00")}, 0)[1:]...))
	f.Fuzz(func(t *testing.T, b []byte) {
		task, deliveries, err := decodeEntry(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		if !ValidTaskID(task.ID) {
			t.Fatalf("decoded a bad id %q", task.ID)
		}
		re := encodeTask(task, deliveries)
		re[0] = b[0] // with entryRecovered or without: the mark is not the task's
		if !bytes.Equal(re, b) {
			t.Fatalf("re-encoded %q as %q", b, re)
		}
	})
}

// maxEntryOver bounds what an entry holds besides its payload, at every
// field's largest: a claim's read is sized by it.
func TestMaxEntryOverBoundsEveryEntry(t *testing.T) {
	t.Parallel()
	headers := map[string]string{"k": ""}
	for n := 0; ; n++ {
		h := map[string]string{"k": strings.Repeat("v", n)}
		size, err := headersSize(h)
		if err != nil {
			break
		}
		headers = h
		require.LessOrEqual(t, size, maxHeaderBytes)
	}
	size, err := headersSize(headers)
	require.NoError(t, err)
	assert.Greater(t, size, maxHeaderBytes-4, "the headers at their limit")
	payload := []byte("payload")
	e := appendEntry(nil, entryRecovered, testID, math.MaxUint64, math.MaxInt64, math.MaxInt, headers, payload)
	assert.LessOrEqual(t, len(e), maxEntryOver+len(payload))
	assert.Greater(t, len(e), maxEntryOver+len(payload)-64, "the bound is close")
}
