package queue

import (
	"context"
	"errors"
	"net"
	"syscall"
)

// Round trips that a failed connection cuts short: a step that reads or
// writes much (recovery's reads and push-backs, a claim) makes such a
// round trip again, smaller, rather than starting over whole.

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
