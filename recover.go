package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"syscall"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Recovery: reading a queue's pending records back in claim order, and putting
// every pending task back at the consuming end, which a new owner does
// before it takes new work and a pool does after a claim whose reply it
// lost. The records' formats are in pending.go.

// pendingRecord is one decoded entry of a pending hash.
type pendingRecord struct {
	claimed
	deliveries int    // deliveries recorded before the current one, or with it when accounted
	accounted  bool   // the count includes the current delivery (written by retryScript)
	raw        []byte // the record as stored
	err        error  // set when the record does not decode
	seqLost    bool   // it decodes, but no claim-sequence record names it: its place is unknown
}

// splitPending splits a pending record: an encoded task as the claim
// script writes it, or '+' and an encoded task as retryScript does, and
// reports which (accounted: the entry's count includes the current
// delivery). Records written before claims kept their sequence in
// records, "<seq>:<entry>" and "<seq>+:<entry>", are read too, with their
// claim seq (legacy; -1 for the others), so that tasks pending across an
// upgrade are put back, in order. The entry itself is not checked.
func splitPending(v []byte) (accounted bool, entry []byte, legacy int64, err error) {
	switch {
	case len(v) > 0 && isEntryStart(v[0]):
		return false, v, -1, nil
	case len(v) > 1 && v[0] == accountedMark && isEntryStart(v[1]):
		return true, v[1:], -1, nil
	case len(v) > 0 && v[0] >= '0' && v[0] <= '9':
		num, rest, ok := bytes.Cut(v, []byte{':'})
		accounted = bytes.HasSuffix(num, []byte{accountedMark})
		if accounted {
			num = num[:len(num)-1]
		}
		seq, perr := strconv.ParseInt(string(num), 10, 64)
		if ok && perr == nil && seq >= 0 && strconv.FormatInt(seq, 10) == string(num) { // only as claims wrote it
			return accounted, rest, seq, nil
		}
	}
	return false, nil, -1, fmt.Errorf("%w: pending record holds no task", ErrMalformed)
}

// claimSeqs reads the claim-sequence records of the pending hash's format:
// it maps each task ID to its claim seq, the latest claim's when an ID is
// in several (a task handed back and claimed again). Records that do not
// decode (a field that is not a canonical number, a length that is not a
// multiple of idLen) are skipped, and so are claim records: their tasks
// come after the others.
func claimSeqs(records map[string]string) map[string]int64 {
	type rec struct {
		first int64
		ids   string
	}
	recs := make([]rec, 0, len(records))
	for f, v := range records {
		first, ok := claimFirst(f)
		ids, list, valid := claimIDs(v)
		if !ok || list || !valid {
			continue
		}
		recs = append(recs, rec{first, ids})
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].first < recs[j].first })
	seq := make(map[string]int64)
	for _, r := range recs {
		for i := 0; i < len(r.ids); i += idLen {
			seq[r.ids[i:i+idLen]] = r.first + int64(i/idLen) + 1
		}
	}
	return seq
}

// decodePending decodes one pending record (a claim list's entry, or a
// pending hash's value) into r, whose raw, field and seq are set.
func decodePending(r *pendingRecord) {
	accounted, entry, legacy, err := splitPending(r.raw)
	r.accounted = accounted
	if err == nil {
		r.Task, r.deliveries, err = decodeEntry(entry)
	}
	if err == nil && r.Task.ID != r.field {
		err = fmt.Errorf("%w: pending record %q holds task %q", ErrMalformed, r.field, r.Task.ID)
	}
	r.err = err
	r.recovered = err == nil && entry[0]&entryRecovered != 0
	if r.seq < 0 {
		r.seq = legacy // -1 unless the record carries its own
	}
	r.seqLost = err == nil && r.seq < 0
	r.Attempt = r.deliveries + 1
	if r.accounted {
		r.Attempt = r.deliveries
	}
}

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

// cutRetry decides whether a round trip that failed is made again, at
// half its size, by a step that reads or writes much: when the
// connection failed in the middle of it or the link reset its dial
// (cutAgain), ctx has not ended, and fewer than cutTries in a row failed.
type cutRetry struct {
	fails int // round trips in a row cut short
}

// cutTries bounds the round trips in a row a failed connection may cut
// short, each half as large as the last.
const cutTries = 10

func (r *cutRetry) again(ctx context.Context, err error) bool {
	if ctx.Err() != nil || !cutAgain(err) || r.fails+1 >= cutTries {
		return false
	}
	r.fails++
	return true
}

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

// cutMidway reports whether err says that a connection failed in the
// middle of a round trip, or that its reply did not come in the
// connection's time: not a dial that failed, nor a reply Redis refused,
// nor a call its ctx ended.
func cutMidway(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" || ctxEnded(err) {
		return false
	}
	return isConnErr(err)
}

// ctxEnded reports whether err is, or wraps, a ctx's end.
func ctxEnded(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// cutAgain reports whether a round trip that failed with err may be made
// again at once: cut midway, or a dial reset by the link (one refused or
// timed out says Redis is down or out of reach, which the same call made
// again at once would only repeat).
func cutAgain(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return errors.Is(err, syscall.ECONNRESET)
	}
	return cutMidway(err)
}

// errEndMoved is claimLists' answer when the claimed end changed while
// it read it.
var errEndMoved = errors.New("queue: the claimed end changed while it was read")

// pendingRead is what readPending read of a queue.
type pendingRead struct {
	recs    []pendingRecord
	claims  []string // the fields of its claim-sequence records
	endSize int64    // the tasks of its claims in place at the end (0: the end is open)
	seq     int64    // the meta hash's claim count: the first seq of the next claim
}

// pendingHead is what readPending starts from: the pending hash of
// earlier releases, the claim-sequence records, the claimed end's fields
// and the meta hash's claim count.
type pendingHead struct {
	pending, claims        map[string]string
	endFirst, endSize, seq int64
}

// hashScanCount is the COUNT of the HSCAN calls that read the pending
// hash and the claim-sequence hash: a hash small enough to be stored
// compactly comes back whole in one, a large one a part at a time.
const hashScanCount = 256

// readHead reads a pendingHead: the two hashes a part at a time (HSCAN),
// and the end's fields and the claim count in the first round trip. A
// round trip that a failed connection cuts short is made again, at half
// the count (cutRetry). A record added while it reads may be missed, and
// one read twice counts once: the caller that puts tasks back makes no
// claim meanwhile, and to Pending a claim made during the call is one
// made just after it.
func readHead(ctx context.Context, p *partition, k queueKeys, what string) (pendingHead, error) {
	h := pendingHead{pending: map[string]string{}, claims: map[string]string{}}
	type scan struct {
		key    string
		into   map[string]string
		cursor string
	}
	scans := []*scan{{k.pending, h.pending, "0"}, {k.claims, h.claims, "0"}}
	type page struct {
		cursors []string
		kvs     []map[string]string
		head    pendingHead
	}
	count := hashScanCount
	var cut cutRetry
	for first := true; len(scans) > 0; {
		got, err := onPartition(ctx, p, what, func(c redis.Conn) (page, error) {
			for _, sc := range scans {
				c.Send("HSCAN", sc.key, sc.cursor, "COUNT", count)
			}
			if first {
				sendEnd(c, k)
				c.Send("HGET", k.meta, "seq")
			}
			if err := c.Flush(); err != nil {
				return page{}, err
			}
			var pg page
			var errs []error
			for range scans {
				v, err := redis.Values(receiveContext(c, ctx))
				if err == nil && len(v) != 2 {
					err = fmt.Errorf("%w: HSCAN replied %d values", ErrMalformed, len(v))
				}
				var cursor string
				var kv map[string]string
				if err == nil {
					cursor, err = redis.String(v[0], nil)
				}
				if err == nil {
					kv, err = redis.StringMap(v[1], nil)
				}
				errs = append(errs, err)
				pg.cursors, pg.kvs = append(pg.cursors, cursor), append(pg.kvs, kv)
			}
			if first {
				var merr error
				pg.head.endFirst, pg.head.endSize, merr = endFields(receiveContext(c, ctx))
				seq, serr := redis.Int64(receiveContext(c, ctx))
				if serr != nil || seq < 0 || seq > maxClaimSeq {
					seq = 0 // none, or not a count: a claim's refusal tells (seqReply)
				}
				pg.head.seq = seq
				errs = append(errs, merr)
			}
			return pg, replyErr(errs...)
		})
		if err != nil {
			if cut.again(ctx, err) {
				count = max(1, count/2)
				continue
			}
			return pendingHead{}, err
		}
		cut.fails = 0
		if first {
			h.endFirst, h.endSize, h.seq = got.head.endFirst, got.head.endSize, got.head.seq
			first = false
		}
		for i, sc := range scans {
			for f, v := range got.kvs[i] {
				sc.into[f] = v
			}
			sc.cursor = got.cursors[i]
		}
		scans = slices.DeleteFunc(scans, func(sc *scan) bool { return sc.cursor == "0" })
	}
	return h, nil
}

// readPending reads a queue's pending records, in claim order: the tasks
// of its claim records not finished yet, and the records of the pending
// hash of earlier releases; and the fields of its claim-sequence records.
// Records that do not decode come last, with err set, and so do tasks no
// claim-sequence record names (by ID, with seqLost set). It reads in round
// trips of a bounded size (readHead, claimLists): two when the queue has
// few claim records and pending tasks, one when it has none. With toOpen,
// a read that finds claims in place at the end stops there, its endSize
// and seq set: the caller opens the end, and reads again.
func readPending(ctx context.Context, p *partition, k queueKeys, what string, toOpen bool) (pendingRead, error) {
	type both struct {
		pendingHead
		lists []pendingRecord
	}
	read := func() (both, error) {
		head, err := readHead(ctx, p, k, what)
		if err != nil || toOpen && head.endSize > 0 {
			return both{pendingHead: head}, err
		}
		lists, err := claimLists(ctx, p, k, what, head.claims, head.endFirst, head.endSize)
		return both{head, lists}, err
	}
	var got both
	var err error
	// The owner opens or trims the end now and then: a read it
	// overlapped is read again.
	for try := 0; try < seqTries; try++ {
		if got, err = read(); !errors.Is(err, errEndMoved) {
			break
		}
	}
	if err != nil {
		return pendingRead{}, err
	}
	if toOpen && got.endSize > 0 {
		return pendingRead{endSize: got.endSize, seq: got.seq}, nil
	}
	seqs := claimSeqs(got.claims)
	out := got.lists
	for field, v := range got.pending {
		r := pendingRecord{raw: []byte(v)}
		r.field, r.seq = field, -1
		if s, ok := seqs[field]; ok {
			r.seq = s
		}
		decodePending(&r)
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if (a.err == nil) != (b.err == nil) {
			return a.err == nil
		}
		if (a.seq < 0) != (b.seq < 0) {
			return a.seq >= 0
		}
		if a.seq != b.seq {
			return a.seq < b.seq
		}
		return a.field < b.field
	})
	claims := make([]string, 0, len(got.claims))
	for f := range got.claims {
		claims = append(claims, f)
	}
	return pendingRead{out, claims, got.endSize, got.seq}, nil
}

// Pending lists the tasks analyser's queue has claimed and not finished,
// in claim order, each with the Attempt of its current delivery. Records
// that do not decode are left out. It is safe for concurrent use. It reads
// in round trips of bounded size: one or two for a few claims of small
// tasks, more for thousands of pending tasks or large ones.
func (q *Queue) Pending(ctx context.Context, analyser int) ([]Task, error) {
	p, k, err := q.analyserKeys(analyser)
	if err != nil {
		return nil, err
	}
	got, err := readPending(ctx, p, k, fmt.Sprintf("list pending of analyser %d", analyser), false)
	if err != nil {
		return nil, err
	}
	out := make([]Task, 0, len(got.recs))
	for _, r := range got.recs {
		if r.err == nil {
			out = append(out, r.Task)
		}
	}
	return out, nil
}

// recover puts every pending task back at the consuming end in claim
// order, counting the interrupted deliveries that were recorded; tasks
// that have had MaxAttempts deliveries, records that do not decode, and
// tasks whose place in the claim sequence is lost go to the dead-letter
// store. It returns how many tasks it requeued and how many of these
// went to the dead-letter store for their lost claim sequence.
func (s *store) recover(ctx context.Context) (back, seqLost int, err error) {
	return s.putBack(ctx, "recover", true, nil)
}

// putBack puts every pending task back at the consuming end in claim
// order, but those that keep names (tasks in the caller's hands, which go
// on), and moves records that do not decode to the dead-letter store; op
// names the step in errors and dead records. As a redelivery it counts
// the recorded interrupted deliveries and dead-letters tasks that used up
// MaxAttempts; otherwise (the tasks of a claim whose reply was lost, which
// delivered nothing) the counts stay as recorded, less a delivery
// recorded for a task never handed out. A task that no
// claim-sequence record names has lost its place among its OrderID's
// tasks: rather than guess, it goes to the dead-letter store, where it
// can be seen and replayed. putBack returns how many tasks it put back and
// how many it dead-lettered for that reason.
func (s *store) putBack(ctx context.Context, op string, redelivery bool, keep map[string]slot) (back, seqLost int, err error) {
	what := s.what(op + " pending of")
	made := s.endMade.Load()
	got, err := readPending(ctx, s.part, s.keys, what, true)
	switch {
	case err != nil:
	case got.endSize > 0:
		// Claims in place (this store's, or an earlier owner's) go to
		// claim lists first, where the rest of recovery reads them. (No
		// claim is made meanwhile: the caller holds the lease and makes
		// none, so an end read open stays open.)
		if err = s.openEnd(ctx); err == nil {
			got, err = readPending(ctx, s.part, s.keys, what, false)
		}
	default:
		s.openedEnd(made) // as openEnd notes an end it found open
	}
	if err != nil {
		return 0, 0, err
	}
	s.learnSeq(got.seq)
	recs, claims := got.recs, got.claims
	put := make([]claimed, 0, len(recs))
	var dead []burial
	for _, r := range recs {
		if _, ok := keep[r.field]; ok {
			continue
		}
		n := r.deliveries
		if !redelivery && r.accounted && n > 0 {
			// Not in the caller's hands, yet recorded as delivered: the
			// caller recorded the delivery, then failed before it handed
			// the task out (a Consumer's Claim). It did not happen. The
			// mark has the next one recorded before it starts.
			n--
			r.recovered = true
		}
		if redelivery && r.accounted && n > 0 {
			// Charged for a delivery a crash interrupted: a suspect
			// (see gate), its next delivery recorded first.
			r.recovered = true
		}
		if redelivery && n == 0 && !r.accounted && !r.recovered {
			// A first delivery with nothing recorded: it may or may not
			// have started. It is not charged, but marked, so that its
			// next delivery is recorded before it starts.
			r.recovered = true
		}
		switch {
		case r.err != nil:
			dead = append(dead, burial{r.ref(), encodeDead(r.raw, 0, op+": "+r.err.Error(), time.Now().UnixMilli())})
		case r.seqLost:
			msg := op + ": the claim-sequence record of this pending task is lost, so its place among its OrderID's tasks is unknown; replay it if its order does not matter"
			dead = append(dead, burial{r.ref(), encodeDead(encodeTask(r.Task, n), n, msg, s.deaths.stamp(r.OrderID))})
			seqLost++
		case redelivery && n >= s.maxAttempts:
			msg := fmt.Sprintf("delivered %d times without finishing (the owner crashed or lost its lease)", n)
			dead = append(dead, burial{r.ref(), encodeDead(encodeTask(r.Task, n), n, msg, s.deaths.stamp(r.OrderID))})
		default:
			r.Attempt = n // recorded as the delivery count
			put = append(put, r.claimed)
		}
	}
	if _, err := s.bury(ctx, dead); err != nil {
		return 0, 0, err
	}
	if err := s.requeue(ctx, put, redelivery); err != nil {
		return len(put), seqLost, err
	}
	// Nothing is pending now but what keep names, and nothing is claimed
	// meanwhile: the other claim-sequence records have served, and what
	// the records left hold is all the queue has pending in claim records
	// (recounted, as the count may have been overwritten).
	live := make(map[string]bool, len(keep))
	for _, sl := range keep {
		if sl.claim != nil {
			live[sl.claim.record] = true
		}
	}
	var drop []string
	for _, c := range claims {
		if !live[c] {
			drop = append(drop, c)
		}
	}
	kept := make([]string, 0, len(live))
	for c := range live {
		kept = append(kept, c)
	}
	return len(put), seqLost, s.dropClaims(ctx, drop, kept)
}
