package queue

import (
	"errors"
	"strconv"
	"strings"

	"github.com/gomodule/redigo/redis"
)

// The claim seq: every claimed task's number in its queue, counted by the
// meta hash's seq, which a claim proposes and the claim script checks.

// seqReply starts the claim script's refusal, before any write, of a
// claim whose first seq (the caller's guess: the one after its last claim)
// is not the queue's next one; the reply says which is.
const seqReply = "QUGOSEQ"

// maxClaimSeq is the largest claim count (the meta hash's seq) a claim
// reads, and so the largest it writes: a claim that could count past it
// is refused before any write, rather than leave a count every later
// claim refuses. (Only a count written by hand comes near it.)
const maxClaimSeq = 999_999_999_999_999

// seqTries bounds the times one claim is sent: a stale proposal costs a
// refusal, one taken by a record (a claim count set back by hand) another,
// and each claim list or done bitmap left without its record (deleted by
// hand) one more.
const seqTries = 16

// seqRefusal returns the first seq a claim refused with seqReply names.
func seqRefusal(err error) (int64, bool) {
	var re redis.Error
	if !errors.As(err, &re) {
		return 0, false
	}
	rest, ok := strings.CutPrefix(string(re), seqReply+" ")
	if !ok {
		return 0, false
	}
	next, perr := strconv.ParseInt(rest, 10, 64)
	return next, perr == nil && next >= 0
}

// learnSeq takes seq, a claim count read from the meta hash, as the first
// seq of the next claim when it is past the one the store would propose:
// a pool's first claim is not refused for a guess of 0 (seqReply), a
// round trip at its start.
func (s *store) learnSeq(seq int64) {
	for {
		cur := s.nextFirst.Load()
		if seq <= cur || s.nextFirst.CompareAndSwap(cur, seq) {
			return
		}
	}
}
