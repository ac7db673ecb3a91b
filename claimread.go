package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Reading a claim: its entries, from the claim script's reply or from the
// claim's list where Redis moved them itself, made into claimed tasks.

// takeClaimed makes the claimed tasks of a claim's entries (its reply's,
// or its list's), whose first seq is first, appending them to dst[:0]:
// it dead-letters the malformed ones, marks those whose cancel was asked
// (marks: their 1-based indexes, in order) and, when the claim's record
// does not hold its IDs (written false), keeps them for the acker to
// write. It reports whether it dead-lettered any.
func (s *store) takeClaimed(ctx context.Context, entries [][]byte, first int64, written bool, marks []any, dst []claimed, batch *claimBatch) ([]claimed, bool, error) {
	out := dst[:0]
	if cap(out) < len(entries) {
		out = make([]claimed, 0, len(entries))
	}
	s.nextFirst.Store(first + int64(len(entries)))
	if batch == nil {
		batch = &claimBatch{record: strconv.FormatInt(first, 10)}
	}
	var bad []burial
	// The reply's buffers are the claimer's own: payloads keep pointing
	// into them, and the IDs share one string, place by place, as the
	// claim record holds them (seqFiller for an entry with no readable
	// header).
	var ids strings.Builder // its String is its buffer, not a copy
	ids.Grow(idLen * len(entries))
	size := 0
	for i, raw := range entries {
		size += len(raw)
		if len(raw) >= entryHeader && isEntryStart(raw[0]) {
			ids.Write(raw[1:entryHeader])
		} else {
			ids.WriteString(seqFiller)
		}
		seq := first + int64(i) + 1
		t, deliveries, err := parseEntry(raw)
		if err == nil && t.OrderID%s.analysers != s.analyser {
			// Written by hand: its OrderID's tasks run elsewhere, and it
			// would run beside them.
			err = fmt.Errorf("task of OrderID %d, which analyser %d serves, in the queue of analyser %d",
				t.OrderID, t.OrderID%s.analysers, s.analyser)
		}
		if err != nil {
			ref := taskRef{record: batch.record, place: int32(i), field: pendingField(raw, seq)}
			bad = append(bad, burial{ref, encodeDead(raw, 0, "claim: "+err.Error(), s.quarantinedNow())})
			continue
		}
		t.Attempt = deliveries + 1
		c := claimed{Task: t, seq: seq, claim: batch, place: int32(i), recovered: raw[0]&entryRecovered != 0}
		if len(marks) > 0 {
			if at, _ := redis.Int(marks[0], nil); at == i+1 {
				c.cancelled, marks = true, marks[1:]
			}
		}
		out = append(out, c)
	}
	if len(entries) > 0 {
		s.entrySize.Store(int64(max(size/len(entries), 1)))
	}
	all := ids.String()
	if !written {
		// Its record holds no IDs: the pool's first ack of one of its
		// tasks made idsAfter from now or later writes them (or sooner,
		// see idsAfter).
		batch.ids, batch.at = all, time.Now()
	}
	for i := range out {
		at := int(out[i].place) * idLen
		out[i].ID = all[at : at+idLen]
		out[i].field = out[i].ID
	}
	if len(bad) > 0 {
		if _, err := s.bury(ctx, bad); err != nil {
			return out, true, err
		}
	}
	return out, len(bad) > 0, nil
}

// claimMoved takes a claim made in place (the claim script's {-3, n,
// first, off, endFirst}: see claimend.go): it reads the claim's entries
// from the ready list, one more round trip, and keeps to the byte budget
// as the script's own loop does, handing back (first claimed first, as
// they were) the tasks past maxBytes, all of them when strict and the
// first does not fit (errNoRoom).
func (s *store) claimMoved(ctx context.Context, r []any, read *endRead, maxBytes int64, strict bool, dst []claimed) ([]claimed, bool, error) {
	n, nerr := redis.Int(r[1], nil)
	first, ferr := redis.Int64(r[2], nil)
	off, oerr := redis.Int(r[3], nil)
	endFirst, eerr := redis.Int64(r[4], nil)
	if err := errors.Join(nerr, ferr, oerr, eerr); err != nil || n <= 0 || off < 0 || endFirst < 0 {
		return dst[:0], false, redisErr(s.what("claim from"), fmt.Errorf("%w: unexpected claim reply %v", ErrMalformed, r))
	}
	s.nextFirst.Store(first + int64(n))
	batch := &claimBatch{record: strconv.FormatInt(first, 10)}
	s.claimedInPlace(endFirst, first, n, batch)
	entries, ok := read.of(first, endFirst, off, n)
	var err error
	if !ok {
		entries, err = s.readInPlace(ctx, first, endFirst, off, n)
	}
	if err != nil {
		// Claimed, never seen here: the caller puts back what is pending.
		return dst[:0], false, err
	}
	keep, size := n, int64(0)
	for i, raw := range entries {
		if size += int64(len(raw)); size > maxBytes && (i > 0 || strict) {
			keep = i
			break
		}
	}
	out, buried, err := s.takeClaimed(ctx, entries, first, false, nil, dst, batch)
	s.doneWith(entries) // the tasks keep the entries, not the list
	if err != nil || keep == n {
		return out, buried, err
	}
	cut := len(out)
	for cut > 0 && out[cut-1].place >= int32(keep) {
		cut--
	}
	// The entries vary in size more than the mean told: the next claim
	// counts their bytes in the script.
	s.exactNext.Store(true)
	back := out[cut:]
	for i := range back {
		back[i].Attempt-- // never started: handed back with the deliveries it had
	}
	if err := s.requeue(ctx, back, false); err != nil {
		return out[:cut], buried, err
	}
	clear(back)
	if out = out[:cut]; len(out) == 0 && strict {
		return out, buried, errNoRoom
	}
	return out, buried, nil
}

// entryList returns an entry list for a claim's read to reuse: a claim in
// place of thousands of tasks lists them in tens of KB of pointers, which
// the garbage collector would otherwise scan and free each claim. Nil
// when there is none.
func (s *store) entryList() [][]byte {
	if p := s.spare.Swap(nil); p != nil {
		return *p
	}
	return nil
}

// doneWith keeps the list of a claim's entries, emptied, for the next
// claim's read (entryList): the entries themselves are the tasks'.
func (s *store) doneWith(entries [][]byte) {
	entries = entries[:cap(entries)]
	clear(entries)
	s.spare.Store(&entries)
}
