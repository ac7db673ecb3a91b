package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/qugo/queue"
)

// Actions: POST /actions/{op}, op one of replay, purge, pause, resume and
// cancel. Each needs the dashboard's token (a signed-in session), the
// session's CSRF token in the form, and for what cannot be undone
// (purge, cancel, replay of a whole store) a second post with
// confirm=yes, which the confirmation page makes. Each is logged, with
// who asked; its outcome is shown once on the page the browser is sent
// back to.

// actionReq is a checked action form.
type actionReq struct {
	op        string
	analyser  int      // replay, purge; pause and resume of scope "analyser"
	partition int      // pause and resume of scope "partition"
	scope     string   // pause and resume: "analyser", "partition" or "all"
	ids       []string // replay, purge: the dead tasks; none with all
	all       bool     // replay, purge: every dead task of the queue
	order     uint64   // cancel
	id        string   // cancel
	from      string   // the page to go back to: "queue", "task" or "overview"
}

// maxActionIDs bounds the task IDs one action names, and maxFieldLen
// the length of each (a malformed dead record's field may be anything).
const (
	maxActionIDs = 1000
	maxFieldLen  = 256
)

// parseAction checks the form of op against the layout l.
func parseAction(op string, f url.Values, l queue.Layout) (actionReq, error) {
	req := actionReq{op: op, from: f.Get("from")}
	switch req.from {
	case "", "overview", "queue", "task":
	default:
		return req, fmt.Errorf("from=%q: not a page", req.from)
	}
	analyser := func(name string) (int, error) {
		a, err := strconv.Atoi(f.Get(name))
		if err != nil || a < 0 || a >= l.Analysers() {
			return 0, fmt.Errorf("%s=%q: not an analyser (0 to %d)", name, f.Get(name), l.Analysers()-1)
		}
		return a, nil
	}
	var err error
	switch op {
	case "replay", "purge":
		if req.analyser, err = analyser("a"); err != nil {
			return req, err
		}
		req.all, req.ids = f.Get("all") == "1", f["id"]
		switch {
		case req.all && len(req.ids) > 0:
			return req, errors.New("give task IDs or all=1, not both")
		case !req.all && len(req.ids) == 0:
			return req, errors.New("no task ID given (all=1 for every dead task)")
		case len(req.ids) > maxActionIDs:
			return req, fmt.Errorf("%d task IDs: at most %d at a time", len(req.ids), maxActionIDs)
		}
		// An empty ID is allowed: a malformed record may sit under the
		// empty field, and purging a field that is not there does nothing.
		for _, id := range req.ids {
			if len(id) > maxFieldLen {
				return req, fmt.Errorf("task ID of %d bytes: at most %d", len(id), maxFieldLen)
			}
		}
		req.ids = unique(req.ids)
	case "pause", "resume":
		switch req.scope = f.Get("scope"); req.scope {
		case "analyser":
			req.analyser, err = analyser("a")
		case "partition":
			req.partition, err = strconv.Atoi(f.Get("p"))
			if err != nil || req.partition < 0 || req.partition >= l.Partitions {
				err = fmt.Errorf("p=%q: not a server (0 to %d)", f.Get("p"), l.Partitions-1)
			}
		case "all":
		default:
			err = fmt.Errorf("scope=%q: one of analyser, partition and all", req.scope)
		}
	case "cancel":
		req.order, req.id, err = parseTaskRef(f.Get("order"), f.Get("id"))
	default:
		return req, fmt.Errorf("no action %q", op)
	}
	return req, err
}

// confirm says what req is about to do when it cannot be undone, and ""
// when it needs no confirmation.
func (req actionReq) confirm() string {
	switch {
	case req.op == "purge" && req.all:
		return fmt.Sprintf("Delete every dead task of queue %d, for good?", req.analyser)
	case req.op == "purge":
		return fmt.Sprintf("Delete %d dead task(s) of queue %d, for good?", len(req.ids), req.analyser)
	case req.op == "replay" && req.all:
		return fmt.Sprintf("Run every dead task of queue %d again? They go back to its ready list, behind the tasks queued there.", req.analyser)
	case req.op == "cancel":
		return fmt.Sprintf("Cancel task %s of order %d? If it has not started it never will; if it runs, its ctx is cancelled and it is not retried.", req.id, req.order)
	}
	return ""
}

// fields are req as the hidden fields of the confirmation form.
func (req actionReq) fields() []field {
	var out []field
	add := func(name, value string) { out = append(out, field{name, value}) }
	switch req.op {
	case "replay", "purge":
		add("a", strconv.Itoa(req.analyser))
		if req.all {
			add("all", "1")
		}
		for _, id := range req.ids {
			add("id", id)
		}
	case "cancel":
		add("order", strconv.FormatUint(req.order, 10))
		add("id", req.id)
	}
	if req.from != "" {
		add("from", req.from)
	}
	return out
}

// field is a hidden form field.
type field struct{ Name, Value string }

// confirmData is the confirmation page.
type confirmData struct {
	Op, Question string
	Fields       []field
	Back         string
}

// back is the page to go to after req: where it was asked from.
func (req actionReq) back(l queue.Layout) string {
	switch {
	case req.op == "cancel" && req.from == "queue":
		return "/queue/" + strconv.Itoa(l.AnalyserOf(req.order))
	case req.op == "cancel":
		return "/task?" + url.Values{"order": {strconv.FormatUint(req.order, 10)}, "id": {req.id}}.Encode()
	case req.from == "queue" || req.op == "replay" || req.op == "purge":
		return "/queue/" + strconv.Itoa(req.analyser)
	}
	return "/"
}

func (s *server) action(w http.ResponseWriter, r *http.Request) {
	op := r.PathValue("op")
	refuse := func(status int, title, why string) {
		s.cfg.log.Warn("action refused", "op", op, "why", why, s.who(r))
		s.message(w, r, status, title, why)
	}
	if s.cfg.token == "" {
		refuse(http.StatusForbidden, "Read-only", "This dashboard is read-only: start qugo serve with -token (or $QUGO_TOKEN) to act on the queues.")
		return
	}
	payload, ok := s.session(r)
	if !ok {
		refuse(http.StatusForbidden, "Sign in first", "Acting on the queues needs the token: sign in, then try again.")
		return
	}
	if !s.parseForm(w, r) {
		return
	}
	if !s.validCSRF(r, payload) {
		refuse(http.StatusForbidden, "Refused", "The form's CSRF token is missing or wrong: reload the page and try again.")
		return
	}
	l := s.e.layout()
	req, err := parseAction(op, r.PostForm, l)
	if err != nil {
		status, title := http.StatusBadRequest, "Bad request"
		if strings.HasPrefix(err.Error(), "no action") {
			status, title = http.StatusNotFound, "Not found"
		}
		refuse(status, title, err.Error())
		return
	}
	if q := req.confirm(); q != "" && r.PostForm.Get("confirm") != "yes" {
		v := s.newView(r, "Confirm", "")
		s.render(w, r, http.StatusOK, "confirm", v, confirmData{Op: op, Question: q, Fields: req.fields(), Back: req.back(l)})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.actionTimeout)
	defer cancel()
	msg, err := s.perform(ctx, req)
	attrs := []any{"op", op, "scope", req.describe(), s.who(r)}
	if err != nil {
		s.cfg.log.Warn("action failed", append(attrs, "err", err)...)
		status := http.StatusServiceUnavailable
		if errors.Is(err, queue.ErrBadConfig) || errors.Is(err, errUnusedPrefix) || errors.Is(err, errOtherOrder) || errors.Is(err, queue.ErrLayoutMismatch) {
			status = http.StatusConflict
		}
		v := s.newView(r, "Action failed", "")
		// A read may time out before ctx does (the pool's read timeout):
		// which bound ran out is not known, only the action's own.
		v.Error = s.explainBound(err, fmt.Sprintf("in time (an action waits at most %v)", s.cfg.actionTimeout), "")
		s.render(w, r, status, "message", v, "Nothing was done, or only part of it: look at the queue before trying again.")
		return
	}
	s.cfg.log.Info("action", append(attrs, "result", msg)...)
	s.setFlash(payload, msg)
	http.Redirect(w, r, req.back(l), http.StatusSeeOther)
}

// describe names what req acts on, for the log.
func (req actionReq) describe() string {
	switch req.op {
	case "cancel":
		return fmt.Sprintf("order %d task %s", req.order, req.id)
	case "pause", "resume":
		return req.queues().String()
	}
	if req.all {
		return fmt.Sprintf("analyser %d, every dead task", req.analyser)
	}
	return fmt.Sprintf("analyser %d, %d task(s): %s", req.analyser, len(req.ids), strings.Join(req.ids, " "))
}

func (req actionReq) queues() queue.Queues {
	switch req.scope {
	case "analyser":
		return queue.QueueOf(req.analyser)
	case "partition":
		return queue.PartitionQueues(req.partition)
	}
	return queue.AllQueues()
}

// errOtherOrder refuses to cancel a task of another OrderID than the one
// given.
var errOtherOrder = errors.New("another order's task")

// errUnusedPrefix refuses to write state under a prefix nothing uses.
var errUnusedPrefix = errors.New("no producer or analyser has used this prefix on these servers yet: refusing to write under it; check -prefix (and -redis)")

// perform carries req out and says what it did.
func (s *server) perform(ctx context.Context, req actionReq) (string, error) {
	q, err := s.be.get(ctx)
	if err == nil {
		err = s.be.recheck(ctx) // writes go under the layout the servers recorded, or none
	}
	if err != nil {
		return "", err
	}
	switch req.op {
	case "replay":
		n, err := q.Replay(ctx, req.analyser, req.ids...)
		if err != nil {
			return "", fmt.Errorf("replayed %d before: %w", n, err)
		}
		msg := fmt.Sprintf("Replayed %s of queue %d", plural(n, "dead task"), req.analyser)
		switch n {
		case 0:
			msg += "."
		case 1:
			msg += ": it is back in its ready list."
		default:
			msg += ": they are back in its ready list."
		}
		if miss := len(req.ids) - n; miss > 0 {
			msg += fmt.Sprintf(" %d %s not in the store (replayed or purged meanwhile, or malformed).", miss, were(miss))
		}
		return msg, nil
	case "purge":
		n, err := q.Purge(ctx, req.analyser, req.ids...)
		if err != nil {
			return "", fmt.Errorf("purged %d before: %w", n, err)
		}
		msg := fmt.Sprintf("Purged %s of queue %d.", plural(n, "dead task"), req.analyser)
		if miss := len(req.ids) - n; miss > 0 {
			msg += fmt.Sprintf(" %d %s not in the store any more.", miss, were(miss))
		}
		return msg, nil
	}
	// The rest write state (a pause, a cancel mark), and with it the
	// layout, which no producer should find under an unused prefix.
	if used, err := s.be.prefixUsed(ctx); err != nil {
		return "", err
	} else if !used {
		return "", errUnusedPrefix
	}
	switch req.op {
	case "pause":
		if err := q.Pause(ctx, req.queues()); err != nil {
			return "", err
		}
		return fmt.Sprintf("Paused %s: pools finish what they hold and claim nothing new until resumed.", req.queues()), nil
	case "resume":
		if err := q.Resume(ctx, req.queues()); err != nil {
			return "", err
		}
		return fmt.Sprintf("Resumed %s.", req.queues()), nil
	}
	// Cancel finds a task by its ID in the queue the order routes to,
	// whatever its OrderID: look first whose it is, as qugo cancel does.
	_, owner, other, err := statusOf(ctx, q, req.order, req.id)
	if err != nil {
		return "", err
	}
	if other {
		return "", fmt.Errorf("%w: task %s belongs to order %d, not to order %d (the two share a queue): nothing was cancelled",
			errOtherOrder, req.id, owner, req.order)
	}
	found, err := q.Cancel(ctx, req.order, req.id)
	if err != nil {
		return "", err
	}
	what := fmt.Sprintf("Task %s of order %d ", req.id, req.order)
	switch found {
	case queue.StateScheduled:
		return what + "was scheduled: removed, it will never run.", nil
	case queue.StatePending:
		return what + pendingCancelText(ctx, q, req.order, req.id) + ".", nil
	case queue.StateUnknown:
		return what + "was found in no record but the ready list's, if any: marked; it is finished as cancelled, without running, when it is claimed.", nil
	case queue.StateDead:
		return what + "is a dead letter: left as it is (purge it instead).", nil
	}
	return what + "had finished (" + found.String() + "): left as it is.", nil
}
