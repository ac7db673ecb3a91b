package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
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
// as pending records; one more round trip on c.
//
// The claims in place of the claimed end that starts at endFirst and
// holds endSize entries (claimend.go) are read from the ready list, and
// the end's fields once more after them: errEndMoved when they changed
// meanwhile (the owner opened the end, or trimmed it), as the entries
// read may then be others.
func claimLists(ctx context.Context, c redis.Conn, k queueKeys, records map[string]string, endFirst, endSize int64) ([]pendingRecord, error) {
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
	for _, f := range firsts {
		if inEnd[f] {
			first, _ := claimFirst(f)
			n, _ := recordCount(records[f])
			off := first - endFirst
			c.Send("LRANGE", k.ready, -(off + int64(n)), -(off + 1))
		} else {
			c.Send("LRANGE", claimListKey(k, f), 0, -1)
		}
		c.Send("GET", claimDoneKey(k, f))
	}
	if len(inEnd) > 0 {
		sendEnd(c, k)
	}
	if err := c.Flush(); err != nil {
		return nil, err
	}
	var out []pendingRecord
	var errs []error
	for _, f := range firsts {
		entries, err := redis.ByteSlices(receiveContext(c, ctx))
		done, derr := redis.Bytes(receiveContext(c, ctx))
		if derr == redis.ErrNil {
			derr = nil
		}
		if err != nil || derr != nil {
			errs = append(errs, err, derr)
			continue
		}
		first, _ := claimFirst(f)
		b := &claimBatch{record: f}
		if inEnd[f] {
			slices.Reverse(entries) // read toward the consuming end
		}
		for i, e := range entries {
			if placeSet(done, i) {
				continue
			}
			r := pendingRecord{raw: e}
			r.claim, r.place, r.seq = b, int32(i), first+int64(i)+1
			r.field = pendingField(bytes.TrimPrefix(e, []byte{accountedMark}), r.seq)
			decodePending(&r)
			out = append(out, r)
		}
	}
	if len(inEnd) > 0 {
		f, n, err := endFields(receiveContext(c, ctx))
		if err != nil {
			return nil, err
		}
		if f != endFirst || n < endSize {
			return nil, errEndMoved
		}
	}
	return out, errors.Join(errs...)
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

// readPending reads a queue's pending records, in claim order: the tasks
// of its claim records not finished yet, and the records of the pending
// hash of earlier releases; and the fields of its claim-sequence records.
// Records that do not decode come last, with err set, and so do tasks no
// claim-sequence record names (by ID, with seqLost set). Two round trips
// when the queue has claim records, one when it has none. With toOpen,
// a read that finds claims in place at the end stops there, its endSize
// and seq set: the caller opens the end, and reads again.
func readPending(ctx context.Context, p *partition, k queueKeys, what string, toOpen bool) (pendingRead, error) {
	type both struct {
		pending, claims map[string]string
		lists           []pendingRecord
		endSize, seq    int64
	}
	read := func(c redis.Conn) (both, error) {
		c.Send("HGETALL", k.pending)
		c.Send("HGETALL", k.claims)
		sendEnd(c, k)
		c.Send("HGET", k.meta, "seq")
		if err := c.Flush(); err != nil {
			return both{}, err
		}
		pending, err := redis.StringMap(receiveContext(c, ctx))
		claims, cerr := redis.StringMap(receiveContext(c, ctx))
		endFirst, endSize, merr := endFields(receiveContext(c, ctx))
		seq, serr := redis.Int64(receiveContext(c, ctx))
		if serr != nil || seq < 0 || seq > maxClaimSeq {
			seq = 0 // none, or not a count: a claim's refusal tells (seqReply)
		}
		if err = replyErr(err, cerr, merr); err != nil {
			return both{}, err
		}
		if toOpen && endSize > 0 {
			return both{endSize: endSize, seq: seq}, nil
		}
		lists, err := claimLists(ctx, c, k, claims, endFirst, endSize)
		return both{pending, claims, lists, endSize, seq}, err
	}
	var got both
	var err error
	// The owner opens or trims the end now and then: a read it
	// overlapped is read again.
	for try := 0; try < seqTries; try++ {
		if got, err = onPartition(ctx, p, what, read); !errors.Is(err, errEndMoved) {
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
// that do not decode are left out. It is safe for concurrent use and costs
// one round trip (HGETALL).
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
	var put []claimed
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
