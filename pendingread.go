package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"

	"github.com/gomodule/redigo/redis"
)

// Reading a queue's pending records back in claim order, for recovery
// and Pending. The records' formats are in pending.go.

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
	p, k, err := q.verifiedKeys(ctx, analyser)
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
