package main

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/qugo/queue"
)

// taskStatus is the answer of GET /v1/tasks/{id}.
type taskStatus struct {
	ID        string     `json:"id"`
	OrderID   uint64     `json:"order_id"`
	Status    string     `json:"status"`
	Attempts  int        `json:"attempts"`
	LastError string     `json:"last_error,omitempty"`
	Due       *time.Time `json:"due,omitempty"` // scheduled: when it falls due; retrying: its next delivery
}

// getTask reports a task's status. Task IDs do not encode their queue, so
// the client passes the task's order_id. An id this service did not issue
// (within -status-ttl), or one given with another order_id than its
// task's, gets 404.
func (s *server) getTask(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !validID(id) {
		writeError(w, http.StatusBadRequest, "malformed task id")
		return
	}
	oid := r.URL.Query().Get("order_id")
	if oid == "" {
		writeError(w, http.StatusBadRequest, "order_id query parameter is required (task ids do not encode their queue)")
		return
	}
	orderID, err := strconv.ParseUint(oid, 10, 64)
	if err != nil {
		writeError(w, http.StatusBadRequest, "order_id must be an unsigned integer")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), lookupTimeout)
	defer cancel()
	st, found, err := s.status(ctx, orderID, id)
	if err != nil {
		s.log.Error("task status", "id", id, "order_id", orderID, "err", err)
		writeError(w, http.StatusServiceUnavailable, "status lookup failed: "+err.Error())
		return
	}
	if !found {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no task %s with order_id %d: the id is unknown, "+
			"belongs to another order_id, or was issued longer ago than this service remembers", id, orderID))
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// status asks the queue (Queue.Status) first, then Postgres, so a task
// that finishes between the two reads as done, never as queued.
//
// Status looks the id up in the queue that orderID routes to, and does
// not say which OrderID the task it found has; nor can it find a task
// waiting in the ready list. A row in Postgres names the task's OrderID;
// for a task without one, the issued records do both: they tie the id to
// the OrderID this service issued it for, and tell a queued task from an
// unknown id. It reports found false for an unknown id and for one whose
// task has another OrderID.
func (s *server) status(ctx context.Context, orderID uint64, id string) (taskStatus, bool, error) {
	st := taskStatus{ID: id, OrderID: orderID}
	qs, err := s.q.Status(ctx, orderID, id)
	if err != nil {
		return st, false, err
	}
	var rec storeRecord
	if s.store != nil {
		if rec, err = s.store.Lookup(ctx, id); err != nil {
			return st, false, err
		}
	}
	switch {
	case (rec.Done || rec.Failed) && rec.OrderID != orderID:
		return st, false, nil
	case rec.Done:
		st.Status, st.Attempts = "done", rec.Attempts
		return st, true, nil
	case rec.Failed && (qs.State == queue.StateUnknown || qs.State == queue.StateDead):
		// A dead task, one whose dead record was purged already, or one
		// replayed and not yet claimed again.
		st.Status, st.Attempts, st.LastError = "failed", rec.Attempts, rec.LastError
		return st, true, nil
	case !rec.Failed:
		issuedTo, ok, err := s.issued.Lookup(ctx, orderID, id)
		if err != nil || !ok || issuedTo != orderID {
			return st, false, err
		}
	}
	st.Status = "queued"
	due := qs.Due.UTC()
	switch qs.State {
	case queue.StateScheduled:
		st.Status, st.Due = "scheduled", &due
	case queue.StatePending:
		st.Status, st.Attempts = "running", qs.Attempt
	case queue.StateRetrying:
		// qs.Attempt is the next delivery's number.
		st.Status, st.Attempts, st.LastError, st.Due = "retrying", qs.Attempt-1, qs.LastError, &due
	case queue.StateDead:
		st.Status, st.Attempts, st.LastError = "failed", qs.Attempt, qs.LastError
	case queue.StateDone: // with -retention
		st.Status, st.Attempts = "done", qs.Attempt
	case queue.StateCancelled:
		st.Status, st.Attempts = "cancelled", qs.Attempt
	case queue.StateUnknown:
		if qs.CancelAsked {
			// Issued and not done by the store's records: queued, and
			// finished as cancelled when claimed.
			st.Status = "cancelled"
		}
	}
	return st, true, nil
}

// validID accepts what the queue issues as task ids, loosely: 1 to 64
// letters and digits.
func validID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}
