package queue

import (
	"context"
	"fmt"

	"github.com/gomodule/redigo/redis"
)

// Recovery: putting every pending task back at the consuming end, which
// a new owner does before it takes new work and a pool does after a
// claim whose reply it lost (the records are read by pendingread.go).

// recover puts every pending task back at the consuming end in claim
// order, counting the interrupted deliveries that were recorded; tasks
// that have had MaxAttempts deliveries (but those whose cancel was
// asked, which go back for the claim to finish as cancelled), records
// that do not decode, and tasks whose place in the claim sequence is lost
// go to the dead-letter store. It returns how many tasks it requeued and how many of these
// went to the dead-letter store for their lost claim sequence.
func (s *store) recover(ctx context.Context) (back, seqLost int, err error) {
	return s.putBack(ctx, "recover", true, nil)
}

// putBack puts every pending task back at the consuming end in claim
// order, but those that keep names (tasks in the caller's hands, which go
// on), and moves records that do not decode to the dead-letter store; op
// names the step in errors and dead records. As a redelivery it counts
// the recorded interrupted deliveries and dead-letters tasks that used up
// MaxAttempts, unless their cancel was asked; otherwise (the tasks of a
// claim whose reply was lost, which delivered nothing) the counts stay as
// recorded, less a delivery recorded for a task never handed out. A task that no
// claim-sequence record names has lost its place among its OrderID's
// tasks: rather than guess, it goes to the dead-letter store, where it
// can be seen and replayed. putBack returns how many tasks it put back and
// how many it dead-lettered for that reason.
func (s *store) putBack(ctx context.Context, op string, redelivery bool, keep map[string]slot) (back, seqLost int, err error) {
	for {
		put, lost, again, err := s.putBackOnce(ctx, op, redelivery, keep)
		seqLost += lost // those dead-lettered stay so in the next pass
		if err != nil || !again {
			return put, seqLost, err
		}
	}
}

// putBackOnce is one pass of putBack. It reports again, having put
// nothing back, when a task whose deliveries ran out had its cancel asked
// after it read the marks: that task stays pending, and a new pass reads
// it again.
func (s *store) putBackOnce(ctx context.Context, op string, redelivery bool, keep map[string]slot) (back, seqLost int, again bool, err error) {
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
		return 0, 0, false, err
	}
	s.learnSeq(got.seq)
	recs, claims := got.recs, got.claims
	// What becomes of each record: put back (in claim order), or dead.
	const (
		fatePut = iota
		fateKept
		fateBuried
		fateWorn // deliveries used up: dead, unless its cancel was asked
	)
	fate := make([]int, len(recs))
	var dead []burial
	var worns []int // indexes in recs
	for i := range recs {
		r := &recs[i]
		if _, ok := keep[r.field]; ok {
			fate[i] = fateKept
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
		r.Attempt = n // recorded as the delivery count
		switch {
		case r.err != nil:
			fate[i] = fateBuried
			dead = append(dead, burial{r.ref(), encodeDead(r.raw, 0, op+": "+r.err.Error(), s.quarantinedNow())})
		case r.seqLost:
			fate[i] = fateBuried
			msg := op + ": the claim-sequence record of this pending task is lost, so its place among its OrderID's tasks is unknown; replay it if its order does not matter"
			dead = append(dead, burial{r.ref(), encodeDead(encodeTask(r.Task, n), n, msg, s.diedNow(r.OrderID))})
			seqLost++
		case redelivery && n >= s.maxAttempts:
			r.deliveries = n
			fate[i] = fateWorn
			worns = append(worns, i)
		}
	}
	var wornDead []burial
	if len(worns) > 0 {
		// A task whose cancel was asked goes back instead: the claim
		// that takes it finishes it as cancelled, never run, as Cancel
		// promised (and one whose mark went meanwhile is dead-lettered
		// there, never run: its deliveries are used up).
		ids := make([]string, len(worns))
		for j, i := range worns {
			ids[j] = recs[i].ID
		}
		asked, err := s.cancelAsked(ctx, ids)
		if err != nil {
			return 0, 0, false, err
		}
		var wornRecs []pendingRecord
		for _, i := range worns {
			if asked[recs[i].ID] {
				fate[i] = fatePut
				continue
			}
			wornRecs = append(wornRecs, recs[i])
		}
		last, err := s.lastFailures(ctx, wornRecs)
		if err != nil {
			return 0, 0, false, err
		}
		for i, r := range wornRecs {
			msg := fmt.Sprintf("delivered %d times without finishing (the owner crashed, lost its lease or gave it up)", r.deliveries)
			if last[i] != "" {
				msg += "; its last failure: " + last[i]
			}
			wornDead = append(wornDead, burial{r.ref(), encodeDead(encodeTask(r.Task, r.deliveries), r.deliveries, msg, s.diedNow(r.OrderID))})
		}
	}
	if _, err := s.bury(ctx, dead); err != nil {
		return 0, 0, false, err
	}
	// Those whose cancel is asked by now stay pending (Cancel may have
	// found them so, and promised): read again.
	if moved, err := s.buryIf(ctx, wornDead, true); err != nil {
		return 0, 0, false, err
	} else if moved < len(wornDead) {
		return 0, seqLost, true, nil
	}
	put := make([]claimed, 0, len(recs))
	for i := range recs {
		if fate[i] == fatePut {
			put = append(put, recs[i].claimed)
		}
	}
	if err := s.requeue(ctx, put, redelivery); err != nil {
		return len(put), seqLost, false, err
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
	return len(put), seqLost, false, s.dropClaims(ctx, drop, kept)
}

// lastFailures returns the text of the last failure recorded for each of
// recs (in the retries hash, by Fail or a pool's failed delivery), or ""
// for one with none: a task whose deliveries ran out in crashes keeps, in
// its dead record, the error it last failed with. Costs one round trip
// per 1000 tasks.
func (s *store) lastFailures(ctx context.Context, recs []pendingRecord) ([]string, error) {
	out := make([]string, 0, len(recs))
	for len(recs) > 0 {
		n := min(len(recs), scriptChunk)
		args := make([]any, 0, n+1)
		args = append(args, s.keys.retries)
		for _, r := range recs[:n] {
			args = append(args, r.ID)
		}
		vs, err := onPartition(ctx, s.part, s.what("read last failures on"), func(conn redis.Conn) ([]string, error) {
			return redis.Strings(doContext(conn, ctx, "HMGET", args...))
		})
		if err != nil {
			return nil, err
		}
		for _, v := range vs {
			msg := ""
			if v != "" {
				_, _, msg = parseRetry(v)
			}
			out = append(out, msg)
		}
		recs = recs[n:]
	}
	return out, nil
}
