package queue

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strconv"

	"github.com/gomodule/redigo/redis"
)

// Claim lists read a part at a time, for readPending.

// claimLists reads, for each claim record among records (the
// claim-sequence hash), the entries of its list whose place is not set,
// as pending records.
//
// The claims in place of the claimed end that starts at endFirst and
// holds endSize entries (claimend.go) are read from the ready list, and
// the end's fields once more after them in the same round trip:
// errEndMoved when they changed meanwhile (the owner opened the end, or
// trimmed it), as the entries read may then be others.
//
// The lists are read a part at a time (listReads), a round trip each,
// rather than whole in one: a reply of thousands of large entries takes
// long enough for a link that drops connections now and then to cut it
// every time, and the step would then start over, whole, for ever. A
// round trip that the connection's failure cuts short is made again on
// another connection, reading half as much; what was read stays read. A
// list's entries do not move while it exists (a claim writes it whole,
// and its entries change in place), and its bitmap is read with each
// part, so the parts read as the whole would.
func claimLists(ctx context.Context, p *partition, k queueKeys, what string, records map[string]string, endFirst, endSize int64) ([]pendingRecord, error) {
	// A record's first is in its value and its field: should one of them
	// have been overwritten, the other still leads to its list. A record
	// of the pending hash's format has no list; the read of one its field
	// would name finds none, and costs nothing more (the reads are
	// pipelined). A value overwritten with another format must not hide
	// the list its field names: the drop that follows recovery deletes it.
	var firsts []string
	seen := map[int64]bool{}
	add := func(first int64, ok bool) {
		if ok && !seen[first] {
			seen[first] = true
			firsts = append(firsts, strconv.FormatInt(first, 10))
		}
	}
	for f, v := range records {
		add(claimRecordFirst(v))
		add(claimFirst(f))
	}
	if len(firsts) == 0 {
		return nil, nil
	}
	inEnd := map[string]bool{}
	for _, f := range endWalk(records, endFirst, endSize) {
		inEnd[f] = true
	}
	lists := make([]*listRead, len(firsts))
	for i, f := range firsts {
		first, _ := claimFirst(f)
		l := &listRead{field: f, first: first, count: -1, batch: &claimBatch{record: f}}
		if n, ok := recordCount(records[f]); ok {
			l.count = int64(n)
		}
		if inEnd[f] {
			l.inEnd, l.off = true, first-endFirst
		}
		lists[i] = l
	}
	// Room for the entries the records name (thousands, at a recovery
	// after a crash): growing a slice of records as large costs more than
	// reading them. Capped: a record names its claim's every place, and
	// most may be finished (many claims of one straggler each).
	room := 0
	for _, l := range lists {
		room += int(max(l.count, 0))
	}
	out := make([]pendingRecord, 0, min(room, maxRoom))
	var errs []error
	rd := listReads{per: listReadFirst}
	for len(lists) > 0 {
		parts := rd.plan(lists)
		got, err := onPartition(ctx, p, what, func(c redis.Conn) ([]listPart, error) {
			return readParts(ctx, c, k, parts, endFirst, endSize)
		})
		if err != nil {
			if rd.again(ctx, err) {
				continue
			}
			return nil, err
		}
		size, n := 0, 0
		for _, pt := range got {
			l := pt.list
			if pt.err != nil {
				errs = append(errs, pt.err)
				l.finished = true
				continue
			}
			for i, e := range pt.entries {
				size += len(e)
				place := l.next + int64(i)
				if placeSet(pt.done, int(place)) {
					continue
				}
				r := pendingRecord{raw: e}
				r.claim, r.place, r.seq = l.batch, int32(place), l.first+place+1
				r.field = pendingField(bytes.TrimPrefix(e, []byte{accountedMark}), r.seq)
				decodePending(&r)
				out = append(out, r)
			}
			n += len(pt.entries)
			l.next += int64(len(pt.entries))
			if pt.n < 0 || int64(len(pt.entries)) < pt.n || l.inEnd && l.next >= l.count {
				l.finished = true
			}
		}
		rd.read(n, size)
		lists = slices.DeleteFunc(lists, func(l *listRead) bool { return l.finished })
	}
	return out, redisErr(what, errors.Join(errs...))
}

// maxRoom bounds the records claimLists makes room for before it reads
// them (about 2 MB).
const maxRoom = 8192

// listRead is claimLists' reading of one claim list.
type listRead struct {
	field    string
	first    int64
	count    int64 // the entries its record names; -1: unknown (read until a part comes back short)
	inEnd    bool  // a claim in place: its entries are at the ready list's end, off entries from the end's first
	off      int64
	next     int64 // the place of the next entry to read
	finished bool
	batch    *claimBatch
}

// listPart is one part of a list that a round trip reads: n entries from
// the list's next (n < 0: all that are left), and what came back.
type listPart struct {
	list    *listRead
	n       int64
	entries [][]byte
	done    []byte
	err     error // the list's own reply was an error (the key holds another type, say)
}

const (
	// listReadFirst is how many entries the first round trip of a read of
	// claim lists asks for, their size unknown.
	listReadFirst = 256
	// listReadBytes is what later round trips ask for, in entries of the
	// mean size read so far.
	listReadBytes = 256 << 10
)

// listReads sizes the round trips of a read of claim lists.
type listReads struct {
	cutRetry
	per int64 // entries the next round trip asks for
}

// plan returns the parts the next round trip reads, from the lists in
// order: at most per entries, but the last part of a list whose count is
// known reads all that is left of it, so that a list longer than its
// record says is read whole, as one read of it would.
func (rd *listReads) plan(lists []*listRead) []listPart {
	var parts []listPart
	left := rd.per
	for _, l := range lists {
		if left <= 0 {
			break
		}
		n := left
		switch {
		case l.inEnd:
			n = min(left, l.count-l.next)
		case l.count >= 0 && l.count-l.next <= left:
			left -= max(l.count-l.next, 1)
			parts = append(parts, listPart{list: l, n: -1})
			continue
		}
		left -= n
		parts = append(parts, listPart{list: l, n: n})
	}
	return parts
}

// again reports whether a round trip that failed with err is to be made
// again (cutRetry), asking for half as much.
func (rd *listReads) again(ctx context.Context, err error) bool {
	if !rd.cutRetry.again(ctx, err) {
		return false
	}
	rd.per = max(1, rd.per/2)
	return true
}

// read notes a round trip that came back with n entries of size bytes:
// the next asks for listReadBytes at their mean size, at most twice as
// many as this one did (after a cut, the size grows back step by step),
// and at most maxMoved.
func (rd *listReads) read(n, size int) {
	rd.fails = 0
	if n == 0 {
		return
	}
	mean := max(int64(size/n), 1)
	rd.per = max(1, min(listReadBytes/mean, 2*rd.per, maxMoved))
}

// readParts reads parts on c in one round trip: each part's entries and
// its list's bitmap, and the end's fields after them when a part reads
// the claimed end.
func readParts(ctx context.Context, c redis.Conn, k queueKeys, parts []listPart, endFirst, endSize int64) ([]listPart, error) {
	anyEnd := false
	for _, pt := range parts {
		l := pt.list
		switch {
		case l.inEnd:
			// Toward the consuming end: place i is at -(off+i+1).
			anyEnd = true
			from := l.off + l.next
			c.Send("LRANGE", k.ready, -(from + pt.n), -(from + 1))
		case pt.n < 0:
			c.Send("LRANGE", claimListKey(k, l.field), l.next, -1)
		default:
			c.Send("LRANGE", claimListKey(k, l.field), l.next, l.next+pt.n-1)
		}
		c.Send("GET", claimDoneKey(k, l.field))
	}
	if anyEnd {
		sendEnd(c, k)
	}
	if err := c.Flush(); err != nil {
		return nil, err
	}
	for i := range parts {
		pt := &parts[i]
		entries, err := redis.ByteSlices(receiveContext(c, ctx))
		done, derr := redis.Bytes(receiveContext(c, ctx))
		if derr == redis.ErrNil {
			derr = nil
		}
		if c.Err() != nil || ctx.Err() != nil {
			// The connection failed, or ctx ended: the round trip did.
			if err = replyErr(err, derr); err == nil {
				err = c.Err()
			}
			return nil, err
		}
		if err = errors.Join(err, derr); err != nil {
			pt.err = err
			continue
		}
		if pt.list.inEnd {
			slices.Reverse(entries) // read toward the consuming end
		}
		pt.entries, pt.done = entries, done
	}
	if anyEnd {
		f, n, err := endFields(receiveContext(c, ctx))
		if err != nil {
			return nil, err
		}
		if f != endFirst || n < endSize {
			return nil, errEndMoved
		}
	}
	return parts, nil
}
