package queue

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"slices"
)

// Headers: a task's small string map, set with WithHeaders (or
// Task.Headers for AddTasks) and read back in Task.Headers. They are
// stored in the task's entry, after the delivery count (see task.go): a
// task without headers is encoded as it always was, and costs nothing
// more.

// Limits of a task's headers, checked before anything is written.
const (
	// maxHeaders bounds the headers of one task.
	maxHeaders = 64
	// maxHeaderBytes bounds the encoded header section of one task: the
	// count, and each key and value with its length.
	maxHeaderBytes = 8 << 10
)

// uvarintLen is the length of v as a uvarint.
func uvarintLen(v uint64) int { return (bits.Len64(v|1) + 6) / 7 }

// headersSize checks h against the limits and returns the size of its
// encoded header section: 0 for no headers.
func headersSize(h map[string]string) (int, error) {
	if len(h) == 0 {
		return 0, nil
	}
	if len(h) > maxHeaders {
		return 0, fmt.Errorf("%w: %d headers, the limit is %d", ErrBadHeaders, len(h), maxHeaders)
	}
	n := uvarintLen(uint64(len(h)))
	for k, v := range h {
		if k == "" {
			return 0, fmt.Errorf("%w: a header with an empty key", ErrBadHeaders)
		}
		n += uvarintLen(uint64(len(k))) + len(k) + uvarintLen(uint64(len(v))) + len(v)
		if n > maxHeaderBytes {
			return 0, fmt.Errorf("%w: over %d bytes encoded", ErrBadHeaders, maxHeaderBytes)
		}
	}
	return n, nil
}

// appendHeaders appends the header section of h (not empty) to dst, keys
// in increasing order.
func appendHeaders(dst []byte, h map[string]string) []byte {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	dst = binary.AppendUvarint(dst, uint64(len(keys)))
	for _, k := range keys {
		v := h[k]
		dst = binary.AppendUvarint(dst, uint64(len(k)))
		dst = append(dst, k...)
		dst = binary.AppendUvarint(dst, uint64(len(v)))
		dst = append(dst, v...)
	}
	return dst
}

// parseHeaders decodes the header section at the start of b and returns
// the headers and what follows them. A section appendHeaders would not
// have written (no header, too many or too large, an empty key, keys out
// of order or repeated, a length past the end) is ErrMalformed.
func parseHeaders(b []byte) (map[string]string, []byte, error) {
	malformed := func(why string) (map[string]string, []byte, error) {
		return nil, nil, fmt.Errorf("%w: headers: %s", ErrMalformed, why)
	}
	count, n := uvarint(b)
	if n <= 0 {
		return malformed("truncated or non-minimal count")
	}
	if count == 0 || count > maxHeaders {
		return malformed(fmt.Sprintf("count %d out of range", count))
	}
	rest := b[n:]
	h := make(map[string]string, count)
	var prev []byte
	for i := range int(count) {
		var k, v []byte
		var ok bool
		if k, rest, ok = cutField(rest); !ok {
			return malformed("truncated key")
		}
		if v, rest, ok = cutField(rest); !ok {
			return malformed("truncated value")
		}
		if len(k) == 0 {
			return malformed("empty key")
		}
		if i > 0 && string(k) <= string(prev) {
			return malformed("keys out of order")
		}
		if len(b)-len(rest) > maxHeaderBytes {
			return malformed("section too large")
		}
		prev = k
		h[string(k)] = string(v)
	}
	return h, rest, nil
}

// cutField splits a length-prefixed field (uvarint length, bytes) off b.
func cutField(b []byte) (field, rest []byte, ok bool) {
	l, n := uvarint(b)
	if n <= 0 || l > uint64(len(b)-n) {
		return nil, nil, false
	}
	b = b[n:]
	return b[:l], b[l:], true
}
