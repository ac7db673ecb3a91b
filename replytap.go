package queue

import (
	"bufio"
	"context"
	"errors"
	"io"
	"strconv"
	"sync/atomic"

	"github.com/gomodule/redigo/redis"
)

// A claim's entries read without redigo's parse.
//
// redigo makes a reply of n bulk strings into n byte slices, each boxed in
// an interface: two allocations and a parse of the whole reply an entry,
// about as much of a pool's CPU as the rest of the fetch. A connection
// made by Dial reads its socket through a buffer of its own
// (bufferedReader), under redigo's; a tap armed there takes one reply of
// a pipeline off the stream before redigo sees it: the entries' bytes are
// copied into a few shared chunks, and redigo reads an empty array in its
// place. The replies before it are handed to redigo unchanged, byte for
// byte, the tap only telling where each ends; the ones after it are not
// touched.
//
// A tap is armed on a connection just taken from its pool, after its
// pipeline is flushed and before any of its replies is read: nothing is
// read ahead then (a borrow drops a connection with bytes waiting), so the
// stream is at the first reply of the pipeline. A reply that is not an
// array of bulk strings (an error, a nil array) is handed to redigo as it
// came, and the tap takes nothing. A read that fails (the stream cut, or
// not RESP) fails redigo's read, which closes the connection, and every
// later read of it.
//
// Only a plain TCP connection made by Dial without WaitReplicas is tapped
// (TLS's records are not RESP, and WAITs slip replies in); elsewhere the
// caller reads the reply through redigo, as before.

// replyTap takes the reply after skip others off a connection's stream.
type replyTap struct {
	skip  int    // replies still to hand over before the one taken
	chunk int    // bytes a chunk of entries holds (see tapChunk); 0: an allocation an entry
	out   []byte // bytes due to redigo before the stream goes on
	raw   []byte // out's buffer, reused for each reply handed over
	done  bool   // the reply was taken (or handed over, not an array)
	err   error  // the read that failed: the stream is lost, and so is every later read

	entries [][]byte  // the taken reply's bulk strings, in its order (in spare, when it is long enough)
	spare   [][]byte  // an emptied entry list to read them into
	taken   bool      // entries holds the reply
	line    [128]byte // raw's first buffer: a claim's script reply fits
}

// tapChunk bounds the chunks a tapped reply's entries are copied into.
// A task's payload keeps its chunk alive as long as the task is held, so
// a pool reads its claims into chunks of at most MaxHeldBytes /
// MaxHeldTasks bytes (heldChunk): its held tasks then keep at most about
// twice MaxHeldBytes, however few of a chunk's tasks are still held. An
// entry of more than a quarter of a chunk gets an allocation of its own.
const tapChunk = 8 << 10

// heldChunk is the chunk size of a pool of cfg (withDefaults applied).
func heldChunk(cfg PoolConfig) int {
	return int(min(tapChunk, max(cfg.MaxHeldBytes/int64(max(cfg.MaxHeldTasks, 1)), 64)))
}

// tapsTaken counts the replies taps took.
var tapsTaken atomic.Int64

// emptyArray is what redigo reads in place of a taken reply.
var emptyArray = []byte("*0\r\n")

// read is bufferedReader.Read while the tap is armed on it: it fills p
// from what is due to redigo, and when nothing is, reads the next reply
// off r to hand it over or take it. It reports whether the tap is done
// with the stream, after p.
func (t *replyTap) read(r *bufio.Reader, p []byte) (n int, finished bool, err error) {
	if t.err != nil {
		return 0, false, t.err
	}
	defer func() { t.err = err }()
	for len(t.out) == 0 {
		if t.done {
			return 0, true, nil
		}
		if t.skip > 0 {
			if t.raw, err = appendReply(r, t.raw[:0]); err != nil {
				return 0, false, err
			}
			t.out = t.raw
			t.skip--
			continue
		}
		if err := t.take(r); err != nil {
			return 0, false, err
		}
		t.done = true
	}
	n = copy(p, t.out)
	t.out = t.out[n:]
	return n, t.done && len(t.out) == 0, nil
}

// take reads the tapped reply off r: an array of bulk strings is taken,
// and redigo reads an empty array; any other reply is handed over whole.
func (t *replyTap) take(r *bufio.Reader) error {
	if b, err := r.Peek(1); err != nil {
		return err
	} else if b[0] != '*' {
		t.raw, err = appendReply(r, t.raw[:0])
		t.out = t.raw
		return err
	}
	line, err := readLine(r, t.raw[:0])
	if err != nil {
		return err
	}
	n, err := parseRESPLen(line[1:])
	if err != nil {
		return err
	}
	if n < 0 { // a nil array
		t.raw, t.out = line, line
		return nil
	}
	entries := t.spare[:0]
	if cap(entries) < n {
		entries = make([][]byte, n)
	}
	entries = entries[:n]
	var chunk []byte
	for i := 0; i < n; {
		// The entries whole in the buffer, read there; the next one, if
		// it is not, read as it comes.
		buf, _ := r.Peek(r.Buffered())
		used := 0
		for ; i < n; i++ {
			size, at, ok := bulkIn(buf[used:])
			if !ok {
				break
			}
			e := t.slot(&chunk, size, n-i)
			copy(e, buf[used+at:])
			entries[i] = e
			used += at + size + 2
		}
		if _, err := r.Discard(used); err != nil {
			return err
		}
		if i == n {
			break
		}
		if line, err = readLine(r, line[:0]); err != nil {
			return err
		}
		if line[0] != '$' {
			return errors.New("queue: a claim's entry is not a bulk string")
		}
		size, err := parseRESPLen(line[1:])
		if err != nil || size < 0 {
			return errors.New("queue: a claim's entry is not a bulk string")
		}
		e := t.slot(&chunk, size, n-i)
		if _, err := io.ReadFull(r, e); err != nil {
			return err
		}
		if err := readCRLF(r); err != nil {
			return err
		}
		entries[i] = e
		i++
	}
	t.raw = line
	t.entries, t.taken = entries, true
	tapsTaken.Add(1)
	t.out = emptyArray
	return nil
}

// slot returns room for an entry of size bytes, left entries to go with
// it: in *chunk, taken from it, or an allocation of its own. A new chunk
// is no larger than left entries of its size need: a claim of one task
// takes its own bytes.
func (t *replyTap) slot(chunk *[]byte, size, left int) []byte {
	if size > t.chunk/4 || t.chunk == 0 {
		return make([]byte, size)
	}
	c := *chunk
	if size > cap(c)-len(c) {
		c = make([]byte, 0, min(t.chunk, size*left))
	}
	e := c[len(c) : len(c)+size : len(c)+size]
	*chunk = c[:len(c)+size]
	return e
}

// bulkIn reads a bulk string of a non-negative size at the start of b,
// its header of at bytes: ok when it is there whole, CRLF included, and
// well formed. Anything else is left to the reads that wait for more, and
// that tell a malformed reply.
func bulkIn(b []byte) (size, at int, ok bool) {
	if len(b) < 4 || b[0] != '$' {
		return 0, 0, false
	}
	for at = 1; at < len(b) && at <= 11; at++ {
		c := b[at]
		if c == '\r' {
			break
		}
		if c < '0' || c > '9' {
			return 0, 0, false
		}
		size = size*10 + int(c-'0')
	}
	if at == 1 || at+1 >= len(b) || b[at] != '\r' || b[at+1] != '\n' {
		return 0, 0, false
	}
	at += 2
	if end := at + size; end+2 > len(b) || b[end] != '\r' || b[end+1] != '\n' {
		return 0, 0, false
	}
	return size, at, true
}

// appendReply appends the bytes of the next reply on r, whole, to dst.
func appendReply(r *bufio.Reader, dst []byte) ([]byte, error) {
	for want := 1; want > 0; want-- {
		start := len(dst)
		var err error
		if dst, err = readLine(r, dst); err != nil {
			return dst, err
		}
		line := dst[start:]
		switch line[0] {
		case '+', '-', ':':
		case '$':
			n, err := parseRESPLen(line[1:])
			if err != nil {
				return dst, err
			}
			if n >= 0 {
				at := len(dst)
				dst = append(dst, make([]byte, n+2)...)
				if _, err := io.ReadFull(r, dst[at:]); err != nil {
					return dst, err
				}
			}
		case '*':
			n, err := parseRESPLen(line[1:])
			if err != nil {
				return dst, err
			}
			if n > 0 {
				want += n
			}
		default:
			return dst, errors.New("queue: unexpected reply line")
		}
	}
	return dst, nil
}

// readLine appends the next line on r, its CRLF included, to dst, which
// it returns; the line is at least one byte before the CRLF.
func readLine(r *bufio.Reader, dst []byte) ([]byte, error) {
	start := len(dst)
	for {
		b, err := r.ReadSlice('\n')
		dst = append(dst, b...)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return dst, err
		}
		if len(dst)-start < 3 || dst[len(dst)-2] != '\r' {
			return dst, errors.New("queue: bad reply line")
		}
		return dst, nil
	}
}

// readCRLF reads the CRLF after a bulk string's bytes.
func readCRLF(r *bufio.Reader) error {
	b, err := r.Peek(2)
	if err != nil {
		return err
	}
	if b[0] != '\r' || b[1] != '\n' {
		return errors.New("queue: bad bulk string end")
	}
	_, err = r.Discard(2)
	return err
}

// parseRESPLen parses the length of a reply line (CRLF included): -1 for
// a nil, a non-negative count otherwise.
func parseRESPLen(b []byte) (int, error) {
	b = b[:len(b)-2]
	if len(b) == 2 && b[0] == '-' && b[1] == '1' {
		return -1, nil
	}
	if len(b) == 0 || len(b) > 10 {
		return 0, errors.New("queue: bad reply length")
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, errors.New("queue: bad reply length " + strconv.Quote(string(b)))
		}
		n = n*10 + int(c-'0')
	}
	return n, nil
}

// A connection's tap for one call: the ctx the call borrows its
// connection with carries a tapHolder, which the pool's borrow fills with
// the connection it hands out when that one can be tapped.
type tapHolder struct{ conn *bufferedReader }

type tapHolderKey struct{}

// withTapHolder returns ctx carrying h for the borrow of a connection.
func withTapHolder(ctx context.Context, h *tapHolder) context.Context {
	return context.WithValue(ctx, tapHolderKey{}, h)
}

// noteBorrowed tells the tapHolder ctx carries, if any, of the connection
// a borrow with ctx hands out, whose replies redigo reads from tcp as they
// came.
func noteBorrowed(ctx context.Context, tcp *bufferedReader) {
	if h, ok := ctx.Value(tapHolderKey{}).(*tapHolder); ok {
		h.conn = tcp
	}
}

// arm arms a tap on the connection h holds, if any, to take the reply
// after skip others, its entries copied into chunks of chunk bytes, and
// returns it (nil: read the reply through redigo). Call it once the
// pipeline is flushed, before any of its replies is read.
func (h *tapHolder) arm(skip, chunk int, spare [][]byte) *replyTap {
	if h == nil || h.conn == nil {
		return nil
	}
	t := &replyTap{skip: skip, chunk: chunk, spare: spare}
	t.raw = t.line[:0]
	h.conn.tap = t
	return t
}

// entriesOf returns the entries t took, or (nil t, or none taken) the
// bulk strings of the array reply redigo read, v.
func (t *replyTap) entriesOf(v any, err error) ([][]byte, error) {
	if err == nil && t != nil && t.taken {
		return t.entries, nil
	}
	return bulkStrings(v, err)
}

// bulkStrings is redis.Values for an array of bulk strings.
func bulkStrings(v any, err error) ([][]byte, error) {
	vs, err := redis.Values(v, err)
	if err != nil {
		return nil, err
	}
	return bytesOf(vs), nil
}

// bytesOf returns the bulk strings of a reply's array, nil for an element
// that is none.
func bytesOf(vs []any) [][]byte {
	out := make([][]byte, len(vs))
	for i, v := range vs {
		out[i], _ = v.([]byte)
	}
	return out
}
