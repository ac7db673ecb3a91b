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

// TaskState is where a task is, as far as Redis knows.
type TaskState int

const (
	// StateUnknown: the task is in no record the queue keeps. It is
	// queued in the ready list (nothing per queued task is kept besides
	// its entry, which only a scan would find), or it finished before the
	// retention window (or with none: see Config.Retention), or it never
	// existed; the caller's own records tell which.
	StateUnknown TaskState = iota
	// StatePending: an analyser claimed the task and has not finished it:
	// it runs, or is about to, in the holder's hands.
	StatePending
	// StateDead: the task is in the dead-letter store.
	StateDead
	// StateScheduled: the task waits for its due time (AddTaskAt), or,
	// due, for the tasks of its queue added before that time to be
	// claimed.
	StateScheduled
	// StateRetrying: the task's last delivery failed, and it waits out
	// its backoff before the next one (it is pending too).
	StateRetrying
	// StateDone: the task was acknowledged (kept with Config.Retention).
	StateDone
	// StateCancelled: the task was cancelled (Cancel) and finished so,
	// without running or with its run cut short (kept with
	// Config.Retention). A task that is queued with its cancel asked is
	// StateUnknown, with CancelAsked.
	StateCancelled
)

func (s TaskState) String() string {
	switch s {
	case StatePending:
		return "pending"
	case StateDead:
		return "dead"
	case StateScheduled:
		return "scheduled"
	case StateRetrying:
		return "retrying"
	case StateDone:
		return "done"
	case StateCancelled:
		return "cancelled"
	default:
		return "unknown"
	}
}

// TaskStatus is what Status knows of a task.
type TaskStatus struct {
	ID    string    // the task ID asked about
	State TaskState // where the task is
	// OrderID is the task's OrderID as its pending, scheduled or dead
	// record holds it (0 when only the history knows the task): it
	// tells whether the ID belongs to the OrderID asked about.
	OrderID uint64
	// Attempt is the current or next delivery's number (pending,
	// retrying), or the deliveries made (dead, done, cancelled).
	Attempt int
	// Owner is the name of the queue's lease holder, for a pending or
	// retrying task.
	Owner string
	// Due is when a scheduled task falls due, or when a retrying task's
	// next delivery may start.
	Due time.Time
	// AddedAt is when the task was added; StartedAt when its last
	// delivery started (finished tasks, with Config.Retention; zero when
	// it did not run: a task cancelled while it waited to retry keeps the
	// start of the delivery that failed); FinishedAt when it was
	// acknowledged, cancelled or dead-lettered.
	AddedAt, StartedAt, FinishedAt time.Time
	// LastError is the text of the last failed delivery's error (retrying
	// and dead tasks).
	LastError string
	// CancelAsked reports that Cancel was called for the task and its
	// mark is kept: held or queued, the task is finished as cancelled
	// when its owner or the next claim meets it. With StateUnknown, the
	// mark may also name a task that finished before the cancel came, or
	// never was; such marks go once a claim finds the queue empty.
	CancelAsked bool
	// CancelSeen reports, with CancelAsked, that the queue's owner has
	// seen the mark: a task it held that had not started then never
	// starts, and a running one has had its ctx cancelled. An owner that
	// holds as many tasks as there are marks reads them all, so a task
	// still queued may be seen too; it is finished as cancelled when
	// claimed. Without it, the task's holder (a Consumer, or a stalled
	// owner) has not answered yet: the task is finished as cancelled when
	// it is claimed again.
	CancelSeen bool
}

// State reports whether the task id of orderID is scheduled, pending or
// dead (StateUnknown otherwise: see there). It is safe for concurrent use
// and costs one round trip (two when a claim record names the task, or a
// claim's record does not hold its task IDs yet: a pool's latest claims,
// whose lists are read then). Status tells more.
//
// A task that moves on in a round trip's reads or between two is seen
// where it was or where it went, never nowhere: the scheduled set is
// read before the pending records, those before the dead-letter store,
// and where a claim record names the task, the store is read again after
// its place. A string that is not a task ID (ValidTaskID) reads
// StateUnknown, without a round trip.
func (q *Queue) State(ctx context.Context, orderID uint64, id string) (TaskState, error) {
	if q.closed.Load() {
		return StateUnknown, ErrClosed
	}
	if !ValidTaskID(id) {
		return StateUnknown, nil // never a task, as Status answers
	}
	pi, qi, p, err := q.routeVerified(ctx, orderID)
	if err != nil {
		return StateUnknown, err
	}
	k := newQueueKeys(q.cfg.Prefix, pi, qi)
	return onPartition(ctx, p, fmt.Sprintf("state of task %s", id), func(c redis.Conn) (TaskState, error) {
		c.Send("ZSCORE", k.sched, id)
		c.Send("HEXISTS", k.pending, id)
		c.Send("HGETALL", k.claims)
		c.Send("HEXISTS", k.dead, id)
		if err := c.Flush(); err != nil {
			return StateUnknown, err
		}
		sched, serr := receiveContext(c, ctx)
		pending, err := redis.Bool(receiveContext(c, ctx))
		claims, cerr := redis.StringMap(receiveContext(c, ctx))
		dead, derr := redis.Bool(receiveContext(c, ctx))
		if err := replyErr(serr, err, cerr, derr); err != nil {
			return StateUnknown, err
		}
		if sched != nil {
			return StateScheduled, nil
		}
		if found := claimPlaces(claims, id); !pending && len(found) > 0 {
			sendPlaces(c, k, found, id)
			c.Send("HEXISTS", k.dead, id)
			if err := c.Flush(); err != nil {
				return StateUnknown, err
			}
			e, err := receivePlaces(ctx, c, found, id)
			dead, derr = redis.Bool(receiveContext(c, ctx))
			if err := replyErr(err, derr); err != nil {
				return StateUnknown, err
			}
			pending = e != nil
		}
		switch {
		case pending:
			return StatePending, nil
		case dead:
			return StateDead, nil
		}
		return StateUnknown, nil
	})
}

// statusReads is the number of reads Status sends besides the history's
// and the claim records'.
const statusReads = 8

// Status tells where the task id of orderID is in its life: scheduled,
// pending (running, with its attempt and owner), retrying (with its last
// error and when it runs again), dead (with its attempts and last
// error), done or cancelled (with Config.Retention, for that long after
// it finished, with the times it was added, started and finished), or
// unknown (see StateUnknown). The history is read with Config.Retention
// or, when that is zero or finds nothing, with the retention the queue's
// owner last recorded (so that a tool without the producers' Config reads
// it too). It is safe for concurrent use and costs one pipelined round
// trip (one more when a claim record names the task or does not hold its
// task IDs yet, as State, and one more when the retentions differ),
// whatever the length of the queue. A task
// finished in its reads or between them is seen pending or finished,
// never neither, and a scheduled task claimed meanwhile is seen
// scheduled or pending (see State). A string that is not a task ID
// (ValidTaskID) reads StateUnknown, without a round trip.
func (q *Queue) Status(ctx context.Context, orderID uint64, id string) (TaskStatus, error) {
	if q.closed.Load() {
		return TaskStatus{}, ErrClosed
	}
	if !ValidTaskID(id) {
		// Not one AddTask returns: never a task. (The history keys tasks
		// by packed IDs, in which such a string may read as another's.)
		return TaskStatus{ID: id, State: StateUnknown}, nil
	}
	pi, qi, p, err := q.routeVerified(ctx, orderID)
	if err != nil {
		return TaskStatus{}, err
	}
	k := newQueueKeys(q.cfg.Prefix, pi, qi)
	now := time.Now()
	return onPartition(ctx, p, fmt.Sprintf("status of task %s", id), func(c redis.Conn) (TaskStatus, error) {
		// The task's records, the pending ones first; then, in the same
		// round trip, the history's.
		reads := func() []int64 {
			c.Send("HGET", k.pending, id)
			c.Send("HGET", k.retries, id)
			c.Send("GET", k.lease)
			c.Send("ZSCORE", k.sched, id)
			c.Send("HGET", k.later, id)
			c.Send("HGET", k.dead, id)
			c.Send("HGET", k.cancels, id)
			c.Send("HGET", k.meta, "retention")
			return sendHistoryReads(c, k, q.cfg.Retention, id, now)
		}
		// The scheduled set is read before the claim records, as State
		// reads it: a claim moves a due task from the one into the other
		// at once, and one made between the two reads must not leave it
		// in neither. The retry record is read before the pending entry:
		// a failure recorded between two reads (retryScript rewrites the
		// entry and writes the retry record at once) must not show the
		// retry with the entry from before it, one delivery short.
		c.Send("ZSCORE", k.sched, id)
		c.Send("HGET", k.later, id)
		c.Send("HGETALL", k.claims)
		c.Send("HGET", k.retries, id)
		starts := reads()
		r, err := receiveN(ctx, c, 4+statusReads+len(starts), 4+statusReads)
		if err != nil {
			return TaskStatus{}, err
		}
		claims, err := redis.StringMap(r[2], nil)
		if err != nil {
			return TaskStatus{}, err
		}
		r[5] = r[3] // the retry record, read before the entry
		if r[7] == nil {
			r[7], r[8] = r[0], r[1] // scheduled when the claim records were read
		}
		r = r[4:]
		// Not in the pending hash of earlier releases, but a claim record
		// names it: its place, then its other records again, read after it.
		if found := claimPlaces(claims, id); r[0] == nil && len(found) > 0 {
			c.Send("HGET", k.retries, id)
			if err := sendPlaces(c, k, found, id); err != nil {
				return TaskStatus{}, err
			}
			starts = reads()
			if err := c.Flush(); err != nil {
				return TaskStatus{}, err
			}
			retry, rerr := receiveContext(c, ctx)
			e, perr := receivePlaces(ctx, c, found, id)
			r, err = receiveN(ctx, c, statusReads+len(starts), statusReads)
			if err := replyErr(rerr, perr, err); err != nil {
				return TaskStatus{}, err
			}
			r[1] = retry
			if r[0] == nil && e != nil {
				r[0] = e
			}
		}
		st := statusOf(id, r, starts, now)
		ms, _ := redis.Int64(r[7], nil)
		if st.State != StateUnknown || ms <= 0 || ms > maxRetention.Milliseconds() ||
			time.Duration(ms)*time.Millisecond == q.cfg.Retention {
			return st, nil
		}
		// The owner keeps a history with another retention: read it.
		starts = sendHistoryReads(c, k, time.Duration(ms)*time.Millisecond, id, now)
		h, err := receiveN(ctx, c, len(starts), 0)
		if err != nil {
			return TaskStatus{}, err
		}
		if got := statusOf(id, append(r[:statusReads:statusReads], h...), starts, now); got.State != StateUnknown {
			return got, nil
		}
		return st, nil
	})
}

// receiveN flushes c and reads n replies. From the reply at index
// history on (the history's reads), an error reply (a bucket of another
// type, written by hand) reads as no record: the history is a record of
// what happened, and a bucket of it must not stop Status (nor Cancel,
// which asks it first).
func receiveN(ctx context.Context, c redis.Conn, n, history int) ([]any, error) {
	if err := c.Flush(); err != nil {
		return nil, err
	}
	r := make([]any, n)
	var first error
	for i := range r {
		v, err := receiveContext(c, ctx)
		var reply redis.Error
		switch {
		case err == nil:
			r[i] = v
		case i >= history && errors.As(err, &reply):
		case first == nil:
			first = err
			if !errors.As(err, &reply) {
				return nil, err // the connection's: no more replies come
			}
		}
	}
	return r, first
}

// statusOf decides a task's status from Status's replies, in its order.
func statusOf(id string, r []any, starts []int64, now time.Time) TaskStatus {
	st := TaskStatus{ID: id}
	if mark, err := redis.String(r[6], nil); err == nil {
		st.CancelAsked, st.CancelSeen = true, mark == cancelSeen
	}
	if rec, _ := redis.Bytes(r[0], nil); rec != nil { // pending
		st.State = StatePending
		if accounted, entry, _, err := splitPending(rec); err == nil {
			if t, deliveries, err := decodeEntry(entry); err == nil {
				st.AddedAt, st.OrderID = t.AddedAt, t.OrderID
				st.Attempt = deliveries + 1
				if accounted {
					st.Attempt = deliveries
				}
			}
		}
		if lease, err := redis.String(r[2], nil); err == nil {
			_, st.Owner = parseLease(lease)
		}
		if f, _ := redis.String(r[1], nil); f != "" {
			_, retryAt, msg := parseRetry(f)
			st.LastError = msg
			if retryAt.After(now) {
				st.State, st.Due = StateRetrying, retryAt
			}
		}
		return st
	}
	if score, err := redis.Float64(r[3], nil); err == nil { // scheduled
		st.State, st.Due = StateScheduled, dueTime(score)
		if e, _ := redis.Bytes(r[4], nil); e != nil {
			if t, _, err := decodeEntry(e); err == nil {
				st.AddedAt, st.OrderID = t.AddedAt, t.OrderID
			}
		}
		return st
	}
	if rec, _ := redis.Bytes(r[5], nil); rec != nil { // dead
		d := decodeDead(id, rec)
		st.State, st.Attempt, st.LastError = StateDead, d.Attempts, d.LastError
		st.AddedAt, st.FinishedAt, st.OrderID = d.AddedAt, d.DiedAt, d.OrderID
		return st
	}
	for i := len(r) - 1; i >= statusReads; i-- { // the latest bucket first
		if s, _ := redis.String(r[i], nil); s != "" {
			if h, err := decodeHistory(s, starts[i-statusReads]); err == nil {
				st.State, st.Attempt = h.state, h.attempts
				st.AddedAt, st.StartedAt, st.FinishedAt = h.added, h.started, h.finished
				st.CancelAsked, st.CancelSeen = false, false
				return st
			}
		}
	}
	// Only a mark is left (CancelAsked): the task is queued, and will be
	// finished as cancelled when met, or it finished before the cancel
	// came, or never was. Which one, only a scan of the ready list would
	// tell: it stays unknown.
	return st
}

// retryRecord is a retries hash value: when the failure was recorded,
// when the next delivery may start, and the failure's text.
func retryRecord(failedAt, retryAt time.Time, msg string) string {
	msg = clipError(msg, maxRetryMsg)
	return strconv.FormatInt(failedAt.UnixMilli(), 10) + ":" + strconv.FormatInt(retryAt.UnixMilli(), 10) + ":" + msg
}

// maxRetryMsg bounds the error text a retries record keeps.
const maxRetryMsg = 1024

func parseRetry(s string) (failedAt, retryAt time.Time, msg string) {
	a, rest, _ := strings.Cut(s, ":")
	b, msg, _ := strings.Cut(rest, ":")
	fa, _ := strconv.ParseInt(a, 10, 64)
	ra, _ := strconv.ParseInt(b, 10, 64)
	return time.UnixMilli(fa), time.UnixMilli(ra), msg
}
