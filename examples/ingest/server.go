package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/qugo/queue"
)

// maxKeyLen bounds an idempotency key, in bytes.
const maxKeyLen = 256

// lookupTimeout bounds the Redis and Postgres lookups of one request.
const lookupTimeout = 10 * time.Second

// server is the HTTP API over one queue. It is safe for concurrent use.
type server struct {
	q       *queue.Queue
	issued  *issued   // the ids this service issued, for GET
	metrics *metrics  // nil: no metrics
	store   taskStore // nil without Postgres
	health  func(context.Context) error
	maxBody int64         // largest request body, in bytes
	dedup   time.Duration // idempotency window; zero disables it
	log     *slog.Logger
}

// taskStore answers what the analysers recorded about a task.
type taskStore interface {
	// Lookup reports whether task id has a row in tasks (done) or in
	// failed_jobs (failed, with its attempts and error).
	Lookup(ctx context.Context, id string) (storeRecord, error)
}

// storeRecord is what the analysers' tables say about one task.
type storeRecord struct {
	OrderID   uint64 // the task's, when Done or Failed
	Done      bool
	Failed    bool
	Attempts  int
	LastError string
}

// handler returns the routes of the API.
func (s *server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/tasks", s.postTasks)
	mux.HandleFunc("/v1/tasks", methodNotAllowed("POST"))
	mux.HandleFunc("GET /v1/tasks/{id}", s.getTask)
	mux.HandleFunc("/v1/tasks/{id}", methodNotAllowed("GET, HEAD"))
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
	})
	if s.metrics == nil {
		return mux
	}
	mux.Handle("GET /metrics", s.metrics.handler())
	return s.metrics.instrument(mux)
}

func methodNotAllowed(allow string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		writeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed; use "+allow)
	}
}

// taskIn is one task in a POST body.
type taskIn struct {
	OrderID        *uint64         `json:"order_id"`
	Payload        json.RawMessage `json:"payload"`
	IdempotencyKey string          `json:"idempotency_key"`
}

// httpError is an error with the status code to answer it with.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &httpError{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

// postTasks enqueues one task (a JSON object) or many (a JSON array).
// It validates the whole body before enqueuing anything.
func (s *server) postTasks(w http.ResponseWriter, r *http.Request) {
	tasks, key, single, err := s.readTasks(w, r)
	if err != nil {
		writeErr(w, err)
		return
	}
	if single {
		s.postOne(w, r, tasks[0], key)
		return
	}
	ids, err := s.q.AddTasks(r.Context(), tasks)
	if err != nil {
		s.log.Error("enqueue tasks", "tasks", len(tasks), "err", err)
		code, msg := s.enqueueError(err)
		body := map[string]any{"error": msg}
		if len(ids) > 0 {
			// Some partitions may have taken their tasks: return the ids
			// so the caller can look them up before retrying.
			body["ids"] = ids
		}
		writeJSON(w, code, body)
		return
	}
	s.record(r.Context(), tasks, ids)
	writeJSON(w, http.StatusCreated, map[string]any{"ids": ids})
}

// record notes ids as issued. The tasks are in the queue already, so a
// failure is logged and counted, not answered: GET says 404 for them until
// their rows are written.
func (s *server) record(ctx context.Context, tasks []queue.Task, ids []string) {
	if err := s.issued.Record(ctx, tasks, ids); err != nil {
		s.log.Warn("enqueued, but GET will not find these ids until done", "tasks", len(ids), "err", err)
		if s.metrics != nil {
			s.metrics.recordErrors.Add(float64(len(ids)))
		}
	}
}

// postOne enqueues one task; with an idempotency key and a dedup window,
// a repeat within the window returns the first task's id with 200.
func (s *server) postOne(w http.ResponseWriter, r *http.Request, t queue.Task, key string) {
	var (
		id    string
		added = true
		err   error
	)
	if key != "" && s.dedup > 0 {
		id, added, err = s.q.AddTaskOnce(r.Context(), t.OrderID, key, s.dedup, t.Payload)
	} else {
		id, err = s.q.AddTask(r.Context(), t.OrderID, t.Payload)
	}
	if err != nil {
		s.log.Error("enqueue task", "order_id", t.OrderID, "err", err)
		code, msg := s.enqueueError(err)
		writeError(w, code, msg)
		return
	}
	code := http.StatusCreated
	if added {
		s.record(r.Context(), []queue.Task{t}, []string{id})
	} else {
		code = http.StatusOK
	}
	writeJSON(w, code, map[string]any{"ids": []string{id}})
}

// readTasks reads and validates a POST body: the tasks, the idempotency
// key of a single task, and whether the body was a single object.
func (s *server) readTasks(w http.ResponseWriter, r *http.Request) (tasks []queue.Task, key string, single bool, err error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBody))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, "", false, &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than %d bytes", s.maxBody)}
		}
		return nil, "", false, badRequest("read request body: %v", err)
	}
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, "", false, badRequest("request body is empty")
	}
	var in []taskIn
	single = body[0] == '{'
	switch {
	case single:
		in = make([]taskIn, 1)
		err = decodeStrict(body, &in[0])
	case body[0] == '[':
		err = decodeStrict(body, &in)
	default:
		return nil, "", false, badRequest("request body must be a JSON object or an array of them")
	}
	if err != nil {
		return nil, "", false, err
	}
	if len(in) == 0 {
		return nil, "", false, badRequest("no tasks in the array")
	}
	tasks = make([]queue.Task, len(in))
	for i, t := range in {
		where := ""
		if !single {
			where = fmt.Sprintf("task %d: ", i)
		}
		if t.OrderID == nil {
			return nil, "", false, badRequest("%sorder_id is required", where)
		}
		raw := bytes.TrimSpace(t.Payload)
		if len(raw) == 0 || bytes.Equal(raw, []byte("null")) || bytes.Equal(raw, []byte(`""`)) {
			return nil, "", false, badRequest("%spayload is required and must not be null or empty", where)
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, raw); err != nil {
			return nil, "", false, badRequest("%spayload: %v", where, err)
		}
		if t.IdempotencyKey != "" && !single {
			return nil, "", false, badRequest("%sidempotency_key is supported only when posting a single task", where)
		}
		if len(t.IdempotencyKey) > maxKeyLen {
			return nil, "", false, badRequest("idempotency_key is longer than %d bytes", maxKeyLen)
		}
		tasks[i] = queue.Task{OrderID: *t.OrderID, Payload: buf.Bytes()}
		key = t.IdempotencyKey
	}
	return tasks, key, single, nil
}

// decodeStrict decodes exactly one JSON value into v, refusing unknown
// fields and trailing data.
func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("malformed JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("malformed JSON: data after the first value")
	}
	return nil
}

// enqueueError maps an error of the queue to a status code and message,
// and counts it.
func (s *server) enqueueError(err error) (int, string) {
	code, reason, msg := http.StatusServiceUnavailable, "unavailable", "queue unavailable: "+err.Error()
	switch {
	case errors.Is(err, queue.ErrPayloadTooLarge):
		code, reason, msg = http.StatusRequestEntityTooLarge, "too_large", err.Error()
	case errors.Is(err, queue.ErrEmptyPayload), errors.Is(err, queue.ErrBadConfig):
		code, reason, msg = http.StatusBadRequest, "bad_request", err.Error()
	case errors.Is(err, queue.ErrLayoutMismatch):
		code, reason, msg = http.StatusInternalServerError, "layout", err.Error()
	}
	if s.metrics != nil {
		s.metrics.enqueueErrors.WithLabelValues(reason).Inc()
	}
	return code, msg
}

// taskStatus is the answer of GET /v1/tasks/{id}.
type taskStatus struct {
	ID        string `json:"id"`
	OrderID   uint64 `json:"order_id"`
	Status    string `json:"status"`
	Attempts  int    `json:"attempts"`
	LastError string `json:"last_error,omitempty"`
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

// status looks the task up in Redis first, then in Postgres, so a task
// that finishes between the two reads as done, never as queued; then in
// the issued records, which tell a queued task from an unknown id. It
// reports found false for an unknown id and for one whose task has
// another OrderID.
func (s *server) status(ctx context.Context, orderID uint64, id string) (taskStatus, bool, error) {
	st := taskStatus{ID: id, OrderID: orderID, Status: "queued"}
	state, err := s.q.State(ctx, orderID, id)
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
	case rec.Failed && state != queue.StatePending:
		// A dead task, or one whose dead record was purged already.
		st.Status, st.Attempts, st.LastError = "failed", rec.Attempts, rec.LastError
	case state == queue.StateDead:
		st.Status = "failed"
		dead, err := s.q.Dead(ctx, s.q.AnalyserOf(orderID))
		if err != nil {
			return st, false, err
		}
		for _, d := range dead {
			if d.ID == id {
				if d.OrderID != orderID {
					return st, false, nil
				}
				st.Attempts, st.LastError = d.Attempts, d.LastError
				break
			}
		}
	case state == queue.StatePending:
		st.Status, st.Attempts = "running", 1
		pending, err := s.q.Pending(ctx, s.q.AnalyserOf(orderID))
		if err != nil {
			return st, false, err
		}
		for _, t := range pending {
			if t.ID == id {
				if t.OrderID != orderID {
					return st, false, nil
				}
				st.Attempts = t.Attempt
				break
			}
		}
	default:
		issuedTo, ok, err := s.issued.Lookup(ctx, orderID, id)
		if err != nil || !ok || issuedTo != orderID {
			return st, false, err
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

// healthz answers 200 when every Redis server (and Postgres, when
// configured) answers a ping.
func (s *server) healthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if s.health != nil {
		if err := s.health(ctx); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "error": err.Error()})
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func writeErr(w http.ResponseWriter, err error) {
	if he, ok := errors.AsType[*httpError](err); ok {
		writeError(w, he.code, he.msg)
		return
	}
	writeError(w, http.StatusInternalServerError, err.Error())
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
