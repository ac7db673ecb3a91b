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
	NotBefore      *time.Time      `json:"not_before"` // RFC 3339
}

// postBody is a POST body, checked.
type postBody struct {
	tasks  []queue.Task
	single bool // the body was one object, not an array
	// key and notBefore are the idempotency key and not_before of a single
	// task; arrays take neither.
	key       string
	notBefore time.Time
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
	body, err := s.readTasks(w, r)
	if err != nil {
		writeErr(w, err)
		return
	}
	if body.single {
		s.postOne(w, r, body)
		return
	}
	tasks := body.tasks
	ids, err := s.q.AddTasks(r.Context(), tasks)
	if err != nil {
		s.log.Error("enqueue tasks", "tasks", len(tasks), "err", err)
		code, msg := s.enqueueError(err)
		body := map[string]any{"error": msg}
		if len(ids) > 0 {
			// Some partitions may have taken their tasks: return the ids
			// so the caller can look them up before retrying, and record
			// those of the partitions that did not fail, so that they are
			// found (the others read as unknown: the ones to retry).
			body["ids"] = ids
			if failed := failedPartitions(err); failed != nil {
				var took []queue.Task
				var tookIDs []string
				for i, t := range tasks {
					if p, _ := s.q.Route(t.OrderID); !failed[p] {
						took, tookIDs = append(took, t), append(tookIDs, ids[i])
					}
				}
				if len(took) > 0 {
					s.record(r.Context(), took, tookIDs)
				}
			}
		}
		writeJSON(w, code, body)
		return
	}
	s.record(r.Context(), tasks, ids)
	writeJSON(w, http.StatusCreated, map[string]any{"ids": ids})
}

// failedPartitions returns the partitions an AddTasks error names as
// failed, or nil when it is not one partition's or more (then none may
// be known to have taken its tasks).
func failedPartitions(err error) map[int]bool {
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	failed := map[int]bool{}
	for _, e := range errs {
		var pe *queue.PartitionError
		if !errors.As(e, &pe) {
			return nil
		}
		failed[pe.Partition] = true
	}
	return failed
}

// record notes ids as issued. The tasks are in the queue already, so a
// failure is logged and counted, not answered: GET says 404 for them until
// their rows are written. It outlives ctx (a client that hangs up once its
// tasks are queued still gets them recorded), for up to lookupTimeout.
func (s *server) record(ctx context.Context, tasks []queue.Task, ids []string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lookupTimeout)
	defer cancel()
	if err := s.issued.Record(ctx, tasks, ids); err != nil {
		s.log.Warn("enqueued, but GET will not find these ids until done", "tasks", len(ids), "err", err)
		if s.metrics != nil {
			s.metrics.recordErrors.Add(float64(len(ids)))
		}
	}
}

// postOne enqueues one task; with an idempotency key and a dedup window,
// a repeat within the window returns the first task's id with 200; with
// not_before, it is scheduled.
func (s *server) postOne(w http.ResponseWriter, r *http.Request, b postBody) {
	var (
		t     = b.tasks[0]
		id    string
		added = true
		err   error
	)
	switch {
	case b.key != "" && s.dedup > 0:
		id, added, err = s.q.AddTaskOnce(r.Context(), t.OrderID, b.key, s.dedup, t.Payload)
	case !b.notBefore.IsZero():
		id, err = s.q.AddTaskAt(r.Context(), t.OrderID, b.notBefore, t.Payload)
	default:
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

// readTasks reads and validates a POST body.
func (s *server) readTasks(w http.ResponseWriter, r *http.Request) (postBody, error) {
	var b postBody
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBody))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return b, &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than %d bytes", s.maxBody)}
		}
		return b, badRequest("read request body: %v", err)
	}
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return b, badRequest("request body is empty")
	}
	var in []taskIn
	b.single = body[0] == '{'
	switch {
	case b.single:
		in = make([]taskIn, 1)
		err = decodeStrict(body, &in[0])
	case body[0] == '[':
		err = decodeStrict(body, &in)
	default:
		return b, badRequest("request body must be a JSON object or an array of them")
	}
	if err == nil {
		err = checkFieldNames(body, b.single)
	}
	if err != nil {
		return b, err
	}
	if len(in) == 0 {
		return b, badRequest("no tasks in the array")
	}
	b.tasks = make([]queue.Task, len(in))
	for i, t := range in {
		where := ""
		if !b.single {
			where = fmt.Sprintf("task %d: ", i)
		}
		if t.OrderID == nil {
			return b, badRequest("%sorder_id is required", where)
		}
		raw := bytes.TrimSpace(t.Payload)
		if len(raw) == 0 || bytes.Equal(raw, []byte("null")) || bytes.Equal(raw, []byte(`""`)) {
			return b, badRequest("%spayload is required and must not be null or empty", where)
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, raw); err != nil {
			return b, badRequest("%spayload: %v", where, err)
		}
		if t.IdempotencyKey != "" && !b.single {
			return b, badRequest("%sidempotency_key is supported only when posting a single task", where)
		}
		if len(t.IdempotencyKey) > maxKeyLen {
			return b, badRequest("idempotency_key is longer than %d bytes", maxKeyLen)
		}
		if t.NotBefore != nil {
			switch {
			case !b.single:
				return b, badRequest("%snot_before is supported only when posting a single task", where)
			case t.IdempotencyKey != "":
				return b, badRequest("not_before and idempotency_key cannot be combined")
			}
			b.notBefore = *t.NotBefore
		}
		b.tasks[i] = queue.Task{OrderID: *t.OrderID, Payload: buf.Bytes()}
		b.key = t.IdempotencyKey
	}
	return b, nil
}

// taskFields are the names of a posted task's fields, as they must be
// written: encoding/json matches names in any case ("ORDER_ID").
var taskFields = map[string]bool{"order_id": true, "payload": true, "idempotency_key": true, "not_before": true}

// checkFieldNames refuses a task field whose name is not one of
// taskFields exactly, in body (decodeStrict took it already).
func checkFieldNames(body []byte, single bool) error {
	var objs []map[string]json.RawMessage
	var err error
	if single {
		objs = make([]map[string]json.RawMessage, 1)
		err = json.Unmarshal(body, &objs[0])
	} else {
		err = json.Unmarshal(body, &objs)
	}
	if err != nil {
		return badRequest("malformed JSON: %v", err)
	}
	for i, o := range objs {
		for name := range o {
			if !taskFields[name] {
				where := ""
				if !single {
					where = fmt.Sprintf("task %d: ", i)
				}
				return badRequest("%sunknown field %q (the fields are order_id, payload, idempotency_key and not_before, in lower case)", where, name)
			}
		}
	}
	return nil
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
