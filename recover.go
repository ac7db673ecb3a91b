package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"

	"github.com/gomodule/redigo/redis"
)

// Recovery: reading a queue's pending hash back in claim order, and putting
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
	case len(v) > 0 && v[0] == entryVersion:
		return false, v, -1, nil
	case len(v) > 1 && v[0] == accountedMark && v[1] == entryVersion:
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

// claimSeqs reads the claim-sequence records of a queue: it maps each task ID to
// its claim seq, the latest claim's when an ID is in several (a task
// handed back and claimed again). Records that do not decode (a field
// that is not a canonical number, a length that is not a multiple of
// idLen) are skipped; their tasks come after the others.
func claimSeqs(records map[string]string) map[string]int64 {
	type rec struct {
		first int64
		ids   string
	}
	recs := make([]rec, 0, len(records))
	for f, v := range records {
		first, err := strconv.ParseInt(f, 10, 64)
		if err != nil || first < 0 || strconv.FormatInt(first, 10) != f || len(v)%idLen != 0 {
			continue
		}
		recs = append(recs, rec{first, v})
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

// readPending reads a pending hash, in claim order, and the fields of the
// queue's claim-sequence records. Records that do not decode come last,
// with err set, and so do tasks no claim-sequence record names (by ID).
func readPending(ctx context.Context, p *partition, k queueKeys, what string) ([]pendingRecord, []string, error) {
	type both struct{ pending, claims map[string]string }
	got, err := onPartition(ctx, p, what, func(c redis.Conn) (both, error) {
		c.Send("HGETALL", k.pending)
		c.Send("HGETALL", k.claims)
		if err := c.Flush(); err != nil {
			return both{}, err
		}
		pending, err := redis.StringMap(receiveContext(c, ctx))
		claims, cerr := redis.StringMap(receiveContext(c, ctx))
		return both{pending, claims}, errors.Join(err, cerr)
	})
	if err != nil {
		return nil, nil, err
	}
	seqs := claimSeqs(got.claims)
	out := make([]pendingRecord, 0, len(got.pending))
	for field, v := range got.pending {
		r := pendingRecord{raw: []byte(v)}
		r.field = field
		accounted, entry, legacy, err := splitPending(r.raw)
		r.accounted = accounted
		if err == nil {
			r.Task, r.deliveries, err = decodeEntry(entry)
		}
		if err == nil && r.Task.ID != field {
			err = fmt.Errorf("%w: pending record %q holds task %q", ErrMalformed, field, r.Task.ID)
		}
		r.err = err
		r.seq = legacy // -1 unless the record carries its own
		if s, ok := seqs[field]; ok {
			r.seq = s
		}
		r.Attempt = r.deliveries + 1
		if r.accounted {
			r.Attempt = r.deliveries
		}
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
	return out, claims, nil
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
	recs, _, err := readPending(ctx, p, k, fmt.Sprintf("list pending of analyser %d", analyser))
	if err != nil {
		return nil, err
	}
	out := make([]Task, 0, len(recs))
	for _, r := range recs {
		if r.err == nil {
			out = append(out, r.Task)
		}
	}
	return out, nil
}

// recover puts every pending task back at the consuming end in claim
// order, counting the interrupted delivery; tasks that have had
// MaxAttempts deliveries, and records that do not decode, go to the
// dead-letter store. It returns how many tasks it requeued.
func (s *store) recover(ctx context.Context) (int, error) {
	return s.putBack(ctx, "recover", true)
}

// putBackPending puts every pending task back at the consuming end in
// claim order, and moves records that do not decode to the dead-letter
// store; op names the step in errors and dead records. As a redelivery it
// counts the interrupted delivery and dead-letters tasks that used up
// MaxAttempts; otherwise (the tasks of a claim whose reply was lost, which
// delivered nothing) the counts stay as recorded. It returns how many
// tasks it put back.
func (s *store) putBack(ctx context.Context, op string, redelivery bool) (int, error) {
	recs, claims, err := readPending(ctx, s.part, s.keys, s.what(op+" pending of"))
	if err != nil {
		return 0, err
	}
	var back []claimed
	var dead []any
	for _, r := range recs {
		n := r.deliveries
		if redelivery && n == 0 && !r.accounted {
			// Count the interrupted delivery of a task pending for the
			// first time, started or not. A task delivered before had its
			// delivery recorded when it started (store.recordDelivery);
			// without that record it never started, and is not charged.
			n = 1
		}
		switch {
		case r.err != nil:
			dead = append(dead, r.field, encodeDead(r.raw, 0, op+": "+r.err.Error()))
		case redelivery && n >= s.maxAttempts:
			msg := fmt.Sprintf("delivered %d times without finishing (the owner crashed or lost its lease)", n)
			dead = append(dead, r.field, encodeDead(encodeTask(r.Task, n), n, msg))
		default:
			r.Attempt = n // recorded as the delivery count
			back = append(back, r.claimed)
		}
	}
	if err := s.bury(ctx, dead); err != nil {
		return 0, err
	}
	if err := s.requeue(ctx, back, redelivery); err != nil {
		return len(back), err
	}
	// Nothing is pending now, and nothing is claimed meanwhile: the claim-sequence
	// records have served.
	return len(back), s.dropClaims(ctx, claims)
}
