package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/qugo/queue"
)

// taskRef is the task a command works on: -order and -id, and -retention
// for the history of finished tasks.
type taskRef struct {
	order     *orderArg
	id        *string
	retention *time.Duration
}

// cancelPendingText says what became of a task Queue.Cancel found
// pending, as its doc says, when it is not known whether its owner saw
// the cancel: the command and the dashboard print it after the task's
// name. cancelSeenText, cancelUnseenText and cancelEndedText say it once
// the task's status tells (see pendingCancelText).
const (
	cancelPendingText = "is held by an analyser: marked, and its owner was given up to about 200ms (a second at worst) to see the mark: " +
		"if the task had not started by then it never will, and if it runs its ctx is cancelled and, unless it returns nil, " +
		"it is finished as cancelled, not retried; held by a Consumer, or by an owner that did not answer in that time, " +
		"it is finished as cancelled when it is claimed again (after a takeover)"
	cancelSeenText = "is held by an analyser, which has seen the cancel: the task does not start if it had not, " +
		"and if it runs its ctx is cancelled and, unless it returns nil, it is finished as cancelled, not retried"
	cancelUnseenText = "is held by a Consumer, or by an owner that did not take the mark within a second: marked; " +
		"it is finished as cancelled when it is claimed again (after a takeover), though a stalled owner that comes back may start it first"
	cancelEndedText = "was held by an analyser, and has finished since (as cancelled, or done if it returned nil first)"
)

// pendingCancelText returns what became of task id of order, which
// Queue.Cancel found pending, from its status read after: whether its
// owner saw the cancel. cancelPendingText when the read fails.
func pendingCancelText(ctx context.Context, q *queue.Queue, order uint64, id string) string {
	st, err := q.Status(ctx, order, id)
	switch {
	case err != nil:
		return cancelPendingText
	case st.CancelSeen:
		return cancelSeenText
	case st.CancelAsked:
		return cancelUnseenText
	case st.State == queue.StateUnknown || st.State == queue.StateDone || st.State == queue.StateCancelled:
		return cancelEndedText // its mark went with it
	}
	return cancelPendingText
}

// orderArg is the value of -order: an OrderID that must be given.
type orderArg struct {
	n   uint64
	set bool
}

func (o *orderArg) String() string {
	if o == nil || !o.set {
		return ""
	}
	return strconv.FormatUint(o.n, 10)
}

func (o *orderArg) Set(v string) error {
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return fmt.Errorf("not an order ID (0 to %d)", uint64(1<<64-1))
	}
	o.n, o.set = n, true
	return nil
}

func taskFlags(fs *flag.FlagSet) taskRef {
	r := taskRef{order: &orderArg{}}
	fs.Var(r.order, "order", "the task's OrderID `O` (task IDs do not say which queue holds them)")
	r.id = fs.String("id", "", "the task's `ID`, as AddTask returned it")
	r.retention = fs.Duration("retention", 0, "the queue's Config.Retention `DURATION`, as its producers and analysers set it: "+
		"finished tasks are found for that long; 0 (the default): the retention the queue's owner recorded, if any")
	return r
}

// check checks the flags without contacting Redis. The form of the ID is
// the library's to check; here it must only be given and printable.
func (r taskRef) check(name string) error {
	switch {
	case !r.order.set:
		return usagef("%s: -order is required", name)
	case *r.id == "":
		return usagef("%s: -id is required", name)
	case strings.IndexFunc(*r.id, func(c rune) bool { return !unicode.IsPrint(c) || unicode.IsSpace(c) }) >= 0:
		return usagef("%s: -id %q: not a task ID", name, *r.id)
	case *r.retention < 0:
		return usagef("-retention %v: must not be negative", *r.retention)
	}
	return nil
}

// where returns the analyser, partition and queue of the task's OrderID.
func (r taskRef) where(e *env) (a, pi, qi int) {
	l := e.layout()
	pi, qi = l.Route(r.order.n)
	return l.AnalyserOf(r.order.n), pi, qi
}

// taskOrder returns the OrderID of the task st describes, and whether it
// is known: a pending, retrying, scheduled or dead task's own record holds
// it (when that record decodes, which sets AddedAt too). The history of a
// finished task keeps none, nor is anything kept of a task in the ready
// list.
func taskOrder(st queue.TaskStatus) (uint64, bool) {
	switch st.State {
	case queue.StatePending, queue.StateRetrying, queue.StateScheduled, queue.StateDead:
		return st.OrderID, st.OrderID != 0 || !st.AddedAt.IsZero()
	}
	return 0, false
}

// statusOf returns the status of task id, looked for in the queue order
// routes to, and, when its record says it is of another OrderID, that
// OrderID (other true): task IDs do not say which queue holds them, so
// when two OrderIDs share a queue the ID of one is found there under the
// other. qugo status and cancel and the dashboard's cancel refuse it.
func statusOf(ctx context.Context, q *queue.Queue, order uint64, id string) (st queue.TaskStatus, owner uint64, other bool, err error) {
	st, err = q.Status(ctx, order, id)
	if err != nil {
		return st, 0, false, err
	}
	owner, known := taskOrder(st)
	return st, owner, known && owner != order, nil
}

// ownStatus returns the status of r's task, and refuses, as a usage
// error, a task of another OrderID than -order (see statusOf). fix says
// what to do instead, given the task's OrderID.
func (r taskRef) ownStatus(ctx context.Context, q *queue.Queue, name string, fix func(order uint64) string) (queue.TaskStatus, error) {
	st, owner, other, err := statusOf(ctx, q, r.order.n, *r.id)
	if err == nil && other {
		err = &usageError{msg: fmt.Sprintf("%s: task %s belongs to order %d, not to -order %d (the two share a queue): %s",
			name, cell(*r.id), owner, r.order.n, fix(owner)), noHint: true}
	}
	return st, err
}

// cancelDoc is the JSON output of cancel.
type cancelDoc struct {
	ID        string `json:"id"`
	OrderID   uint64 `json:"order_id"`
	Analyser  int    `json:"analyser"`
	Partition int    `json:"partition"`
	Queue     int    `json:"queue"`
	// Found is where the task was: scheduled, pending, dead, done,
	// cancelled, or unknown (see README.md).
	Found string `json:"found"`
	// Outcome is "removed" (a scheduled task, gone for good), "marked"
	// (finished as cancelled when its owner meets it) or "unchanged".
	Outcome string `json:"outcome"`
}

func cancelFlags(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	ref := taskFlags(fs)
	asJSON := fs.Bool("json", false, "print the result as JSON")
	return func(ctx context.Context, e *env, args []string) error {
		if len(args) > 0 {
			return usagef("cancel takes no arguments, got %q", args[0])
		}
		if err := ref.check("cancel"); err != nil {
			return err
		}
		if !queue.ValidTaskID(*ref.id) {
			// The library would refuse it as a bad argument; here that is
			// a mistyped -id, whatever the queue holds.
			return usagef("cancel: -id %s is malformed: a task ID is 20 characters of 0-9 and a-v, as AddTask returns it; nothing was written",
				cell(*ref.id))
		}
		q, err := e.open(ctx, dialOptions{writer: true, retention: *ref.retention})
		if err != nil {
			return err
		}
		defer q.Close()
		// Cancel finds a task by its ID in the queue -order routes to,
		// whatever its OrderID: look first whose it is.
		if _, err := ref.ownStatus(ctx, q, "cancel", func(order uint64) string {
			return fmt.Sprintf("nothing was cancelled; to cancel it, give -order %d", order)
		}); err != nil {
			return err
		}
		found, err := q.Cancel(ctx, ref.order.n, *ref.id)
		if err != nil {
			return err
		}
		a, pi, qi := ref.where(e)
		doc := cancelDoc{ID: *ref.id, OrderID: ref.order.n, Analyser: a, Partition: pi, Queue: qi, Found: found.String()}
		var msg string
		switch found {
		case queue.StateScheduled:
			doc.Outcome, msg = "removed", "was scheduled: removed, it will never run"
		case queue.StatePending:
			doc.Outcome, msg = "marked", pendingCancelText(ctx, q, ref.order.n, *ref.id)
			if stats, err := q.Stats(ctx); err == nil && a < len(stats) && stats[a].Owner == "" {
				msg = "is pending, and no pool holds its queue now (its owner stopped or died): marked; " +
					"it is finished as cancelled, without running, when a pool takes the queue and claims it again"
			}
		case queue.StateUnknown:
			doc.Outcome, msg = "marked", "is neither scheduled nor held by an analyser: marked; if it waits in the ready list "+
				"it is finished as cancelled, without running, when it is claimed (if it finished already or never was, the mark goes)"
		case queue.StateDead:
			doc.Outcome, msg = "unchanged", fmt.Sprintf("is a dead letter: left as it is (qugo purge -a %d %s deletes it)", a, cell(*ref.id))
		default: // done or cancelled, known through -retention
			doc.Outcome, msg = "unchanged", "finished already ("+found.String()+"): left as it is"
		}
		if *asJSON {
			return writeJSON(e.stdout, doc)
		}
		_, err = fmt.Fprintf(e.stdout, "task %s of order %d (analyser %d) %s\n", cell(doc.ID), doc.OrderID, a, msg)
		return err
	}
}

// statusDoc is the JSON output of status: every field of queue.TaskStatus.
type statusDoc struct {
	ID          string     `json:"id"`
	OrderID     uint64     `json:"order_id"`
	Analyser    int        `json:"analyser"`
	Partition   int        `json:"partition"`
	Queue       int        `json:"queue"`
	State       string     `json:"state"`
	Attempt     int        `json:"attempt"`     // 0 when unknown
	Owner       string     `json:"owner"`       // "" unless pending or retrying
	Due         *time.Time `json:"due"`         // scheduled: its due time; retrying: its next delivery
	AddedAt     *time.Time `json:"added_at"`    // null when unknown
	StartedAt   *time.Time `json:"started_at"`  // finished tasks, with -retention; null when it never ran
	FinishedAt  *time.Time `json:"finished_at"` // done, cancelled or dead
	LastError   string     `json:"last_error"`  // retrying and dead tasks
	CancelAsked bool       `json:"cancel_asked"`
	CancelSeen  bool       `json:"cancel_seen"` // the queue's owner has seen the cancel
}

func statusFlags(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	ref := taskFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON instead of a list")
	return func(ctx context.Context, e *env, args []string) error {
		if len(args) > 0 {
			return usagef("status takes no arguments, got %q", args[0])
		}
		if err := ref.check("status"); err != nil {
			return err
		}
		q, err := e.open(ctx, dialOptions{retention: *ref.retention})
		if err != nil {
			return err
		}
		defer q.Close()
		st, err := ref.ownStatus(ctx, q, "status", func(order uint64) string {
			return fmt.Sprintf("give -order %d for its status", order)
		})
		if err != nil {
			return err
		}
		a, pi, qi := ref.where(e)
		if *asJSON {
			return writeJSON(e.stdout, statusDoc{
				ID: st.ID, OrderID: ref.order.n, Analyser: a, Partition: pi, Queue: qi,
				State: st.State.String(), Attempt: st.Attempt, Owner: st.Owner, Due: jsonTime(st.Due),
				AddedAt: jsonTime(st.AddedAt), StartedAt: jsonTime(st.StartedAt), FinishedAt: jsonTime(st.FinishedAt),
				LastError: st.LastError, CancelAsked: st.CancelAsked, CancelSeen: st.CancelSeen,
			})
		}
		if err := printStatus(e, st, ref.order.n, a, pi, qi); err != nil {
			return err
		}
		if st.State == queue.StateUnknown && !queue.ValidTaskID(*ref.id) {
			fmt.Fprintf(e.stderr, "qugo: state unknown: -id %s is not a task ID (20 characters of 0-9 and a-v, as AddTask returns it)\n",
				cell(*ref.id))
		} else if st.State == queue.StateUnknown {
			finished := "finished longer ago than the queue's retention"
			if *ref.retention == 0 {
				finished = "finished longer ago than the queue's Config.Retention, or with none"
			}
			fmt.Fprintf(e.stderr, "qugo: state unknown: the task waits in the ready list (which keeps nothing to find it by), "+
				"or %s, or never was under this -order\n", finished)
		}
		return nil
	}
}

// printStatus prints the fields of st that are set, one per line.
func printStatus(e *env, st queue.TaskStatus, order uint64, a, pi, qi int) error {
	t := newTable(e.stdout, "id", cell(st.ID))
	t.row("order", fmt.Sprintf("%d (analyser %d: partition %d, queue %d)", order, a, pi, qi))
	t.row("state", st.State.String())
	if st.Attempt > 0 {
		t.row("attempt", strconv.Itoa(st.Attempt))
	}
	if st.Owner != "" {
		t.row("owner", cell(st.Owner))
	}
	if !st.Due.IsZero() {
		t.row("due", timeCell(st.Due)+" (in "+dueInCell(dueInMS(st.Due, time.Now()))+")")
	}
	for _, f := range []struct {
		name string
		at   time.Time
	}{{"added", st.AddedAt}, {"started", st.StartedAt}, {"finished", st.FinishedAt}} {
		if !f.at.IsZero() {
			t.row(f.name, timeCell(f.at))
		}
	}
	if st.LastError != "" {
		t.row("last error", cell(st.LastError))
	}
	switch {
	case st.CancelSeen:
		t.row("cancel", "asked, seen by its owner, not yet carried out")
	case st.CancelAsked:
		t.row("cancel", "asked, not yet carried out")
	}
	return t.flush()
}
