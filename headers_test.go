package queue

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// uv is v as a uvarint.
func uv(v uint64) []byte { return binary.AppendUvarint(nil, v) }

// join concatenates byte slices.
func join(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// oldEntry is an entry as releases before headers wrote it, by hand:
// first byte, ID, OrderID, AddedAt, deliveries, payload.
func oldEntry(first byte, id string, orderID, addedAt, deliveries uint64, payload string) []byte {
	return join([]byte{first}, []byte(id), uv(orderID), uv(addedAt), uv(deliveries), []byte(payload))
}

func TestHeadersEncoding(t *testing.T) {
	t.Parallel()
	task := Task{ID: testID, OrderID: 300, AddedAt: time.UnixMilli(1000), Payload: []byte("pay"),
		Headers: map[string]string{"traceparent": "00-ab-cd-01", "a": "", "tenant": "x"}}
	b := encodeTask(task, 2)
	want := join([]byte{entryTask | entryHeaders}, []byte(testID), uv(300), uv(1000), uv(2),
		uv(3), // three headers, sorted by key
		uv(1), []byte("a"), uv(0),
		uv(6), []byte("tenant"), uv(1), []byte("x"),
		uv(11), []byte("traceparent"), uv(11), []byte("00-ab-cd-01"),
		[]byte("pay"))
	assert.Equal(t, want, b)
	for range 20 { // map order varies; the encoding does not
		m := map[string]string{}
		for k, v := range task.Headers {
			m[k] = v
		}
		assert.Equal(t, b, encodeTask(Task{ID: testID, OrderID: 300, AddedAt: time.UnixMilli(1000), Payload: []byte("pay"), Headers: m}, 2))
	}
	got, d, err := decodeEntry(b)
	require.NoError(t, err)
	assert.Equal(t, 2, d)
	assert.Equal(t, task.Headers, got.Headers)
	assert.Equal(t, "pay", string(got.Payload))
	assert.Equal(t, testID, got.ID)

	// Recovery's mark sits beside the headers flag, and keeps it.
	got.Attempt = d // encodeClaimed's delivery count
	rec := encodeClaimed(claimed{Task: got, recovered: true})
	assert.Equal(t, byte(entryTask|entryRecovered|entryHeaders), rec[0])
	assert.Equal(t, b[1:], rec[1:])
	again, _, err := decodeEntry(rec)
	require.NoError(t, err)
	assert.Equal(t, task.Headers, again.Headers)

	acc := accountedRecord(got, 3)
	accounted, entry, _, err := splitPending(acc)
	require.NoError(t, err)
	assert.True(t, accounted)
	again, d, err = decodeEntry(entry)
	require.NoError(t, err)
	assert.Equal(t, 3, d)
	assert.Equal(t, task.Headers, again.Headers)
}

// Entries as the previous release wrote them, byte by byte, read as they
// did, and a task without headers is still written so.
func TestOldEntriesRead(t *testing.T) {
	t.Parallel()
	for _, first := range []byte{0x01, 0x03} {
		t.Run(fmt.Sprintf("%#02x", first), func(t *testing.T) {
			b := oldEntry(first, testID, 42, 1_700_000_000_123, 3, "hello")
			got, d, err := decodeEntry(b)
			require.NoError(t, err)
			assert.Equal(t, Task{ID: testID, OrderID: 42, AddedAt: time.UnixMilli(1_700_000_000_123), Payload: []byte("hello")}, got)
			assert.Nil(t, got.Headers)
			assert.Equal(t, 3, d)
			assert.True(t, isEntryStart(first))
			assert.Equal(t, first == 0x03, first&entryRecovered != 0)
			got.Attempt = d // encodeClaimed's delivery count
			assert.Equal(t, b, encodeClaimed(claimed{Task: got, recovered: first == 0x03}), "written the same today")
		})
	}
	assert.Equal(t, oldEntry(0x01, testID, 7, 5, 0, "p"),
		appendEntry(nil, 0, testID, 7, 5, 0, map[string]string{}, []byte("p")), "empty headers are none")
}

func TestDecodeHeadersMalformed(t *testing.T) {
	t.Parallel()
	head := join([]byte{entryTask | entryHeaders}, []byte(testID), uv(1), uv(1), uv(0))
	hdr := func(k, v string) []byte { return join(uv(uint64(len(k))), []byte(k), uv(uint64(len(v))), []byte(v)) }
	many := uv(65)
	for i := range 65 {
		many = append(many, hdr(fmt.Sprintf("k%02d", i), "")...)
	}
	big := strings.Repeat("v", maxHeaderBytes)
	tests := []struct {
		name string
		b    []byte
	}{
		{"flag but nothing after the count", head},
		{"zero headers", join(head, uv(0), []byte("p"))},
		{"count over the limit", join(head, many, []byte("p"))},
		{"huge count", join(head, uv(1<<62), []byte("p"))},
		{"non-minimal count", join(head, []byte{0x81, 0x00}, hdr("a", "b"), []byte("p"))},
		{"truncated count", join(head, []byte{0x80})},
		{"no key length", join(head, uv(1))},
		{"key past the end", join(head, uv(1), uv(10), []byte("abc"))},
		{"key length overflows", join(head, uv(1), uv(1<<63), []byte("abc"))},
		{"no value length", join(head, uv(1), uv(1), []byte("a"))},
		{"value past the end", join(head, uv(1), uv(1), []byte("a"), uv(5), []byte("xy"))},
		{"non-minimal key length", join(head, uv(1), []byte{0x81, 0x00}, []byte("a"), uv(0), []byte("p"))},
		{"empty key", join(head, uv(1), hdr("", "v"), []byte("p"))},
		{"keys out of order", join(head, uv(2), hdr("b", "1"), hdr("a", "2"), []byte("p"))},
		{"key twice", join(head, uv(2), hdr("a", "1"), hdr("a", "2"), []byte("p"))},
		{"fewer headers than counted", join(head, uv(3), hdr("a", "1"), hdr("b", "2"))},
		{"section over 8 KiB", join(head, uv(1), hdr("k", big), []byte("p"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, d, err := decodeEntry(tt.b)
			assert.ErrorIs(t, err, ErrMalformed)
			assert.Zero(t, got.ID)
			assert.Nil(t, got.Headers)
			assert.Zero(t, d)
			require.True(t, isEntryStart(tt.b[0]), "the claim script takes it for a task: the Go side quarantines it")
		})
	}
	// A section at the limit, and payloads that look like headers, read.
	at := strings.Repeat("v", maxHeaderBytes-1-1-1-2) // count, key length, key, value length (2 bytes)
	for _, b := range [][]byte{
		join(head, uv(1), hdr("k", at), []byte("p")),
		join(head, uv(1), hdr("a", "1"), uv(1), hdr("a", "1")),
	} {
		_, _, err := decodeEntry(b)
		assert.NoError(t, err)
	}
}

func TestHeadersLimits(t *testing.T) {
	t.Parallel()
	n := func(k int) map[string]string {
		m := make(map[string]string, k)
		for i := range k {
			m[fmt.Sprintf("k%02d", i)] = "v"
		}
		return m
	}
	for _, tt := range []struct {
		name string
		h    map[string]string
		size int // -1: refused
	}{
		{"nil", nil, 0},
		{"empty", map[string]string{}, 0},
		{"one", map[string]string{"a": "bc"}, 1 + 1 + 1 + 1 + 2},
		{"empty value", map[string]string{"a": ""}, 1 + 1 + 1 + 1},
		{"64 headers", n(64), 1 + 64*(1+3+1+1)},
		{"65 headers", n(65), -1},
		{"empty key", map[string]string{"": "v"}, -1},
		{"8 KiB", map[string]string{"k": strings.Repeat("v", maxHeaderBytes-5)}, maxHeaderBytes},
		{"8 KiB and a byte", map[string]string{"k": strings.Repeat("v", maxHeaderBytes-4)}, -1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			size, err := headersSize(tt.h)
			if tt.size < 0 {
				assert.ErrorIs(t, err, ErrBadHeaders)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.size, size)
			if len(tt.h) > 0 {
				b := appendHeaders(nil, tt.h)
				assert.Len(t, b, size, "headersSize is the encoded size")
				h, rest, err := parseHeaders(b)
				require.NoError(t, err)
				assert.Empty(t, rest)
				assert.Equal(t, tt.h, h)
			}
		})
	}
}

func TestEntryRoundTripHeadersProperty(t *testing.T) {
	t.Parallel()
	var ids idSource
	for i := range 2000 {
		h := map[string]string{}
		for j := range i % 7 {
			h[strings.Repeat(string(rune('a'+j)), 1+i%130)] = strings.Repeat("\x00\xff", i%200)
		}
		task := Task{ID: ids.next(), OrderID: uint64(i) << (i % 50), AddedAt: time.UnixMilli(int64(i)), Payload: []byte(fmt.Sprint(i)), Headers: h}
		if len(h) == 0 {
			task.Headers = nil
		}
		b := encodeTask(task, i)
		got, d, err := decodeEntry(b)
		require.NoError(t, err)
		require.Equal(t, i, d)
		require.Equal(t, task, got)
		require.Equal(t, b, encodeTask(got, d))
	}
}

// Tasks without headers cost no allocation to encode into a buffer or to
// parse: the claim's hot path is as before headers. With headers, parsing
// costs the map and one string, whatever their number.
func TestEntryAllocations(t *testing.T) {
	payload := []byte("payload")
	buf := make([]byte, 0, 256)
	b := appendEntry(nil, 0, testID, 42, 1_700_000_000_000, 0, nil, payload)
	allocs := testing.AllocsPerRun(100, func() {
		buf = appendEntry(buf[:0], 0, testID, 42, 1_700_000_000_000, 0, nil, payload)
		if _, _, err := parseEntry(b); err != nil {
			t.Fatal(err)
		}
	})
	assert.Zero(t, allocs)

	// With headers: none to encode (up to 8), the map and one string for
	// all keys and values to parse, however many headers.
	h := map[string]string{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tenant": "acme"}
	for i := range 6 {
		h[fmt.Sprint("k", i)] = "v"
	}
	b = appendEntry(nil, 0, testID, 42, 1_700_000_000_000, 0, h, payload)
	assert.Zero(t, testing.AllocsPerRun(100, func() {
		buf = appendEntry(buf[:0], 0, testID, 42, 1_700_000_000_000, 0, h, payload)
	}), "encoding 8 headers")
	allocs = testing.AllocsPerRun(100, func() {
		got, _, err := parseEntry(b)
		if err != nil || len(got.Headers) != len(h) {
			t.Fatal(err, got.Headers)
		}
	})
	assert.LessOrEqual(t, allocs, 3.0, "parsing 8 headers")
}
