package main

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/qugo/queue"
)

// taskData is the Task lookup page: the form, and what Status knows of
// the task asked for.
type taskData struct {
	Order, ID                  string // as given, for the form
	Asked                      bool   // a task was asked for, and its order and ID are valid
	Read                       bool   // Status answered
	OrderID                    uint64
	Analyser, Partition, Queue int
	Status                     queue.TaskStatus
	State                      string // Status.State, as a word
	Error                      clip
	Timeline                   []event
	// OtherOrder is set when the task's own record holds another
	// OrderID than the one asked for: the ID is of another order.
	OtherOrder bool
	// Cancellable is set when Cancel would do something: the task is
	// scheduled, pending, retrying, or found nowhere (it may be ready).
	Cancellable bool
}

// event is one moment of a task's life.
type event struct {
	At   time.Time
	What string
}

// parseTaskRef checks an order and a task ID as a form gives them.
func parseTaskRef(order, id string) (uint64, string, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(order), 10, 64)
	if err != nil {
		return 0, "", fmt.Errorf("order %q: not an OrderID (0 to %d)", order, uint64(1<<64-1))
	}
	id = strings.TrimSpace(id)
	if !queue.ValidTaskID(id) {
		return 0, "", fmt.Errorf("task ID %q: not a task ID (20 characters of 0-9 and a-v, as AddTask returns it)", id)
	}
	return n, id, nil
}

func (s *server) taskPage(w http.ResponseWriter, r *http.Request) {
	v := s.newView(r, "Task lookup", "task")
	q := r.URL.Query()
	d := taskData{Order: q.Get("order"), ID: q.Get("id")}
	if d.Order == "" && d.ID == "" {
		s.render(w, r, http.StatusOK, "task", v, d)
		return
	}
	order, id, err := parseTaskRef(d.Order, d.ID)
	if err != nil {
		v.Warn = err.Error()
		s.render(w, r, http.StatusBadRequest, "task", v, d)
		return
	}
	l := s.e.layout()
	d.Asked, d.OrderID, d.ID, d.Analyser = true, order, id, l.AnalyserOf(order)
	d.Partition, d.Queue = l.Route(order)
	v.Title = "Task " + id
	ctx, cancel := s.redisContext(r)
	defer cancel()
	status := http.StatusOK
	qq, err := s.be.get(ctx)
	var st queue.TaskStatus
	if err == nil {
		st, err = qq.Status(ctx, order, id)
	}
	if err != nil {
		status = s.failure(v, err)
	} else {
		d.fill(st)
	}
	s.render(w, r, status, "task", v, d)
}

// fill sets what the page shows of st.
func (d *taskData) fill(st queue.TaskStatus) {
	d.Read, d.Status, d.State = true, st, st.State.String()
	d.Error = newClip(st.LastError)
	order, known := taskOrder(st)
	d.OtherOrder = known && order != d.OrderID
	switch st.State {
	case queue.StateScheduled, queue.StatePending, queue.StateRetrying, queue.StateUnknown:
		d.Cancellable = !d.OtherOrder
	}
	add := func(at time.Time, what string) {
		if !at.IsZero() {
			d.Timeline = append(d.Timeline, event{at, what})
		}
	}
	add(st.AddedAt, "added")
	switch st.State {
	case queue.StateScheduled:
		add(st.Due, "falls due")
	case queue.StateRetrying:
		add(st.Due, "next delivery, after a failed one")
	}
	add(st.StartedAt, "last delivery started")
	add(st.FinishedAt, "finished: "+st.State.String())
}
