package queue

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Task is one unit of work. Tasks of one OrderID are analysed in the order
// Redis accepted them, one at a time.
type Task struct {
	// ID identifies the task. AddTask fills it in; it is unique across
	// processes (a random 64-bit node and a 32-bit counter).
	ID string
	// OrderID is the key that decides the task's partition, queue, analyser
	// and worker. Use KeyID to turn a string key into one.
	OrderID uint64
	// Payload is the caller's data, stored in Redis as it is.
	Payload []byte
	// Attempt is the 1-based number of this delivery, counting failed
	// deliveries and those that ended in a crash once they were recorded
	// as started. A first delivery is not recorded, so a task whose first
	// delivery crashed its owner comes again with Attempt 1. It is zero in
	// tasks that were not delivered.
	Attempt int
	// AddedAt is when the producer enqueued the task, to the millisecond
	// (for a task replayed from the dead letters, when it was replayed).
	AddedAt time.Time
	// NotBefore, when set in a task given to AddTasks, schedules it: it
	// joins its OrderID's sequence when that time comes (see AddTaskAt).
	// A time not in the future adds it at once; one too late for
	// AddTaskAt is refused. Delivered tasks leave it zero.
	NotBefore time.Time
	// Headers are the caller's small string map (trace context, tenant,
	// content type...), set with WithHeaders or, for AddTasks, here. They
	// are stored in the task's entry beside the payload and come back with
	// every delivery, retry, recovery, dead letter and replay; nil when
	// the task has none. At most 64 headers, keys not empty, and 8 KiB
	// encoded (each key and value with a length byte or two) in all;
	// they do not count against Config.MaxPayload.
	Headers map[string]string
}

// idLen is the length of every task ID: 96 bits in base32 (0-9, a-v).
const idLen = 20

// The first byte of an encoded task is a set of flags. entryTask is set in
// every task entry; a record whose first byte lacks it, or has a bit
// outside entryFlags, is malformed. Entries without headers are written as
// every earlier release wrote them (0x01, and 0x03 when recovered), so
// records already in Redis read unchanged.
const (
	// entryTask is set in every encoded task.
	entryTask = 0x01
	// entryRecovered marks an encoded task that recovery put back after
	// an interrupted delivery: not counted, because nothing showed that it
	// had started, or counted, because its start was recorded (then it is
	// a suspect of the crash: see gate). Its next delivery is recorded
	// before it starts (as a redelivery's is), so that a crash during that
	// one counts.
	entryRecovered = 0x02
	// entryHeaders says that a header section follows the delivery count.
	entryHeaders = 0x04
	// entryFlags holds every bit an encoded task may have.
	entryFlags = entryTask | entryRecovered | entryHeaders
)

// isEntryStart reports whether c can start an encoded task.
func isEntryStart(c byte) bool { return c&entryTask != 0 && c&^entryFlags == 0 }

// entryHeader is the size of the fixed part of an encoded task: the flags
// byte and the ID. The claim script reads the ID from these bytes.
const entryHeader = 1 + idLen

// maxEntryOver is the most an encoded task holds besides its payload:
// the fixed part, three uvarints at their longest and the header section
// at its limit.
const maxEntryOver = entryHeader + 3*binary.MaxVarintLen64 + maxHeaderBytes

// An encoded task (the element of a ready list and the body of a pending
// record) is:
//
//	byte     flags: entryTask, with entryRecovered and entryHeaders
//	[20]byte ID
//	uvarint  OrderID
//	uvarint  AddedAt, milliseconds since the Unix epoch
//	uvarint  deliveries made so far
//	         with entryHeaders only, the header section:
//	uvarint  header count, 1 to maxHeaders
//	         per header, in increasing order of key (so that an entry has
//	         one encoding): uvarint key length (at least 1), key, uvarint
//	         value length, value; at most maxHeaderBytes in all, count
//	         included
//	rest     payload
//
// Its overhead over the payload and headers is at most 44 bytes, typically
// 30.

// appendEntry appends the encoding of a task to dst: its ID, OrderID,
// AddedAt (ms), headers and payload, with deliveries as its delivery count
// and flags (entryTask and, with headers, entryHeaders are added). The
// headers must have passed headersSize.
func appendEntry(dst []byte, flags byte, id string, orderID uint64, addedAt int64, deliveries int, headers map[string]string, payload []byte) []byte {
	flags |= entryTask
	if len(headers) > 0 {
		flags |= entryHeaders
	}
	dst = append(dst, flags)
	dst = append(dst, id...)
	dst = binary.AppendUvarint(dst, orderID)
	dst = binary.AppendUvarint(dst, uint64(addedAt))
	dst = binary.AppendUvarint(dst, uint64(deliveries))
	if len(headers) > 0 {
		dst = appendHeaders(dst, headers)
	}
	return append(dst, payload...)
}

// entryCap is room enough for an entry of a payload of n bytes and a
// header section of h bytes.
func entryCap(h, n int) int { return entryHeader + 3*binary.MaxVarintLen64 + h + n }

// encodeTask encodes t with deliveries as its delivery count.
func encodeTask(t Task, deliveries int) []byte {
	return encodeEntry(t, deliveries, 0)
}

// encodeEntry encodes t with deliveries as its delivery count and flags.
func encodeEntry(t Task, deliveries int, flags byte) []byte {
	h, _ := headersSize(t.Headers) // a decoded task's headers are within the limits
	buf := make([]byte, 0, entryCap(h, len(t.Payload)))
	return appendEntry(buf, flags, t.ID, t.OrderID, t.AddedAt.UnixMilli(), deliveries, t.Headers, t.Payload)
}

// encodeClaimed encodes a claimed task to go back to the ready list, with
// t.Attempt as its delivery count, marked recovered when it is.
func encodeClaimed(t claimed) []byte {
	var flags byte
	if t.recovered {
		flags = entryRecovered
	}
	return encodeEntry(t.Task, t.Attempt, flags)
}

// decodeEntry decodes an encoded task. The returned Task's Attempt is left
// zero; the delivery count comes back separately. The payload is copied, so
// b may be reused.
func decodeEntry(b []byte) (t Task, deliveries int, err error) {
	t, deliveries, err = parseEntry(b)
	if err != nil {
		return Task{}, 0, err
	}
	t.ID = string(b[1:entryHeader])
	t.Payload = append([]byte(nil), t.Payload...)
	return t, deliveries, nil
}

// parseEntry decodes an encoded task as decodeEntry does, but leaves the
// ID empty (it is b[1:entryHeader]) and does not copy: the payload shares
// b's memory. It allocates nothing for an entry without headers.
func parseEntry(b []byte) (t Task, deliveries int, err error) {
	if len(b) < entryHeader || !isEntryStart(b[0]) {
		return Task{}, 0, fmt.Errorf("%w: bad header", ErrMalformed)
	}
	for _, c := range b[1:entryHeader] {
		if !isIDChar(c) {
			return Task{}, 0, fmt.Errorf("%w: bad id", ErrMalformed)
		}
	}
	rest := b[entryHeader:]
	var fields [3]uint64
	for i := range fields {
		v, n := uvarint(rest)
		if n <= 0 {
			return Task{}, 0, fmt.Errorf("%w: truncated or non-minimal varint", ErrMalformed)
		}
		fields[i], rest = v, rest[n:]
	}
	if fields[1] > 1<<53 || fields[2] >= 1<<31 { // the delivery after them is counted: at most 1<<31, as dead records read
		return Task{}, 0, fmt.Errorf("%w: field out of range", ErrMalformed)
	}
	t = Task{
		OrderID: fields[0],
		AddedAt: time.UnixMilli(int64(fields[1])),
	}
	if b[0]&entryHeaders != 0 {
		if t.Headers, rest, err = parseHeaders(rest); err != nil {
			return Task{}, 0, err
		}
	}
	if len(rest) > 0 {
		t.Payload = rest
	}
	return t, int(fields[2]), nil
}

// uvarint reads a uvarint as binary.Uvarint does, and also refuses one
// with needless zero groups, so that every record has a single encoding.
func uvarint(b []byte) (uint64, int) {
	v, n := binary.Uvarint(b)
	if n > 1 && b[n-1] == 0 {
		return 0, 0
	}
	return v, n
}

const idAlphabet = "0123456789abcdefghijklmnopqrstuv"

func isIDChar(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'v'
}

// idSource hands out task IDs: a random 64-bit node followed by a 32-bit
// counter. When the counter wraps, a new node is drawn, so IDs never repeat
// within a process, and two processes share a node with a chance of 2^-64.
type idSource struct {
	mu   sync.Mutex
	node uint64
	n    uint32
}

func (s *idSource) next() string {
	s.mu.Lock()
	if s.n == 0 {
		var b [8]byte
		rand.Read(b[:]) // never fails: it crashes the program instead (Go 1.24+)
		s.node = binary.LittleEndian.Uint64(b[:])
	}
	node, n := s.node, s.n
	s.n++
	s.mu.Unlock()
	return formatID(node, n)
}

// nextN returns n new IDs, as next would, sliced from one string: one
// allocation and one lock (per counter wrap) for the lot.
func (s *idSource) nextN(n int) []string {
	var buf strings.Builder // its String is its buffer, not a copy
	buf.Grow(n * idLen)
	for left := n; left > 0; {
		s.mu.Lock()
		if s.n == 0 {
			var b [8]byte
			rand.Read(b[:])
			s.node = binary.LittleEndian.Uint64(b[:])
		}
		node, first := s.node, s.n
		k := min(uint64(left), 1<<32-uint64(first)) // counters left before the wrap
		s.n += uint32(k)                            // 0 at the wrap: the next call draws a node
		s.mu.Unlock()
		// Consecutive counters of one node: format the first, then count
		// on in base32 (a quarter of AddTasks's time went to formatting).
		id := appendID(make([]byte, 0, idLen), node, first)
		buf.Write(id)
		for i := uint64(1); i < k; i++ {
			incID(id)
			buf.Write(id)
		}
		left -= int(k)
	}
	all := buf.String()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = all[i*idLen : (i+1)*idLen]
	}
	return ids
}

// incID turns id into the next ID of its node: one more, in base32.
func incID(id []byte) {
	for i := len(id) - 1; i >= 0; i-- {
		switch id[i] {
		case 'v':
			id[i] = '0' // and carry
			continue
		case '9':
			id[i] = 'a'
		default:
			id[i]++
		}
		return
	}
}

// formatID renders node and counter as 20 base32 characters, most
// significant first, so IDs from one node sort by their counter.
func formatID(node uint64, n uint32) string {
	var b [idLen]byte
	return string(appendID(b[:0], node, n))
}

// appendID appends formatID(node, n) to dst.
func appendID(dst []byte, node uint64, n uint32) []byte {
	var b [idLen]byte
	hi, lo := node>>32, node<<32|uint64(n) // 96 bits as hi (32) and lo (64)
	for i := idLen - 1; i >= 0; i-- {
		b[i] = idAlphabet[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return append(dst, b[:]...)
}
