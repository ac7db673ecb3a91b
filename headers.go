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
// in increasing order. It allocates nothing for up to 8 headers.
func appendHeaders(dst []byte, h map[string]string) []byte {
	var few [8]string
	keys := few[:0]
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
// of order or repeated, a length past the end) is ErrMalformed. The keys
// and values share one string: two allocations with the map, however
// many headers.
func parseHeaders(b []byte) (map[string]string, []byte, error) {
	count, n := uvarint(b)
	if n <= 0 {
		return nil, nil, fmt.Errorf("%w: headers: truncated or non-minimal count", ErrMalformed)
	}
	if count == 0 || count > maxHeaders {
		return nil, nil, fmt.Errorf("%w: headers: count %d out of range", ErrMalformed, count)
	}
	// First check the section and find its end, then copy it once.
	rest := b[n:]
	var prev []byte
	for i := range int(count) {
		var k []byte
		var ok bool
		if k, rest, ok = cutField(rest); !ok {
			return nil, nil, fmt.Errorf("%w: headers: truncated key", ErrMalformed)
		}
		if _, rest, ok = cutField(rest); !ok {
			return nil, nil, fmt.Errorf("%w: headers: truncated value", ErrMalformed)
		}
		switch {
		case len(k) == 0:
			return nil, nil, fmt.Errorf("%w: headers: empty key", ErrMalformed)
		case i > 0 && string(k) <= string(prev):
			return nil, nil, fmt.Errorf("%w: headers: keys out of order", ErrMalformed)
		case len(b)-len(rest) > maxHeaderBytes:
			return nil, nil, fmt.Errorf("%w: headers: section over %d bytes", ErrMalformed, maxHeaderBytes)
		}
		prev = k
	}
	section := string(b[n : len(b)-len(rest)])
	h := make(map[string]string, count)
	for range int(count) {
		var k, v string
		k, section = cutStringField(section)
		v, section = cutStringField(section)
		h[k] = v
	}
	return h, rest, nil
}

// cutStringField splits a length-prefixed field that cutField accepted
// off s.
func cutStringField(s string) (field, rest string) {
	l, i := 0, 0
	for shift := 0; ; shift += 7 {
		c := s[i]
		i++
		l |= int(c&0x7f) << shift
		if c < 0x80 {
			break
		}
	}
	return s[i : i+l], s[i+l:]
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
