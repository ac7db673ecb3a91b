package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/qugo/queue"
)

// Page sizes of the Queue page's lists: ?limit=N, at most maxPageLimit.
const (
	defaultPageLimit = 50
	maxPageLimit     = 1000
)

// queueData is the Queue page of one analyser's queue.
type queueData struct {
	Analyser  int
	Stats     queue.AnalyserStats
	Read      bool          // Stats was read
	LeaseAge  time.Duration // 0 when unknown
	Pending   list[pendingRow]
	Scheduled list[scheduledRow]
	Dead      list[deadRow]
	Malformed int // dead records that do not decode, on every page
}

// list is one page of a list of tasks.
type list[T any] struct {
	Rows       []T
	Read       bool // the list was read (false after an error)
	Offset     int
	Total      int    // how many there are in all
	Prev, Next string // the URLs of the pages around; "" when none
}

// Last is the position of the last row shown, counted from 1.
func (l list[T]) Last() int { return l.Offset + len(l.Rows) }

type pendingRow struct {
	queue.Task
	Age     time.Duration
	Payload preview
}

type scheduledRow struct {
	queue.ScheduledTask
	In      time.Duration // until it falls due; negative when overdue
	Payload preview
}

type deadRow struct {
	queue.DeadTask
	Payload   preview // the task's payload, or a malformed record's bytes
	Error     clip
	Malformed bool
	Headers   []header
}

// header is one task header, for a list sorted by key.
type header struct{ Key, Value string }

func headersOf(m map[string]string) []header {
	out := make([]header, 0, len(m))
	for k, v := range m {
		out = append(out, header{k, v})
	}
	slices.SortFunc(out, func(a, b header) int {
		if a.Key < b.Key {
			return -1
		}
		if a.Key > b.Key {
			return 1
		}
		return 0
	})
	return out
}

// queueParams are a Queue page's query: the page size and where each
// list starts.
type queueParams struct {
	limit                    int
	pending, scheduled, dead int
}

func parseQueueParams(q url.Values) (queueParams, error) {
	p := queueParams{limit: defaultPageLimit}
	num := func(name string, dst *int, lo, hi int) error {
		v := q.Get(name)
		if v == "" {
			return nil
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			return fmt.Errorf("%s=%q: must be a number from %d to %d", name, v, lo, hi)
		}
		*dst = n
		return nil
	}
	for _, f := range []struct {
		name   string
		dst    *int
		lo, hi int
	}{
		{"limit", &p.limit, 1, maxPageLimit},
		{"pending_offset", &p.pending, 0, 1 << 30},
		{"scheduled_offset", &p.scheduled, 0, 1 << 30},
		{"dead_offset", &p.dead, 0, 1 << 30},
	} {
		if err := num(f.name, f.dst, f.lo, f.hi); err != nil {
			return p, err
		}
	}
	return p, nil
}

// analyserOf reads the {a} of a path: an analyser of the layout.
func (s *server) analyserOf(r *http.Request) (int, bool) {
	a, err := strconv.Atoi(r.PathValue("a"))
	if err != nil || strconv.Itoa(a) != r.PathValue("a") || a < 0 || a >= s.e.layout().Analysers() {
		return 0, false
	}
	return a, true
}

func (s *server) queuePage(w http.ResponseWriter, r *http.Request) {
	a, ok := s.analyserOf(r)
	if !ok {
		s.message(w, r, http.StatusNotFound, "No such queue",
			fmt.Sprintf("Analysers are 0 to %d (%s × %s).", s.e.layout().Analysers()-1, plural(s.e.partitions(), "server"), plural(s.e.queues, "queue")))
		return
	}
	params, err := parseQueueParams(r.URL.Query())
	if err != nil {
		s.message(w, r, http.StatusBadRequest, "Bad request", err.Error())
		return
	}
	pi, qi, _ := s.e.layout().Serves(a)
	v := s.newView(r, fmt.Sprintf("Queue %d (server %d, queue %d)", a, pi, qi), "")
	v.refreshing(r)
	d := queueData{Analyser: a}
	d.Stats.Analyser, d.Stats.Partition, d.Stats.Queue = a, pi, qi
	status := http.StatusOK
	if err := s.readQueue(r, &d, params); err != nil {
		status = s.failure(v, err)
	}
	s.render(w, r, status, "queue", v, d)
}

// readQueue reads what the Queue page shows into d. A key of the wrong
// type or a malformed record fails only what it is part of (Stats reads
// every queue, so one broken key of another queue fails it): the rest is
// read, and the errors are returned together. Any other error (Redis
// down, the -timeout run out) stops it, keeping what it read.
func (s *server) readQueue(r *http.Request, d *queueData, p queueParams) error {
	ctx, cancel := s.redisContext(r)
	defer cancel()
	q, err := s.be.get(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	var errs []error
	for _, read := range []func() error{
		func() error { return s.readStats(ctx, q, d, now) },
		func() error { return readPending(ctx, r, q, d, p, now) },
		func() error { return readScheduled(ctx, r, q, d, p, now) },
		func() error { return s.readDead(ctx, r, q, d, p) },
	} {
		if err := read(); err != nil {
			errs = append(errs, err)
			if !errors.Is(err, queue.ErrWrongType) && !errors.Is(err, queue.ErrMalformed) {
				break
			}
		}
	}
	return errors.Join(errs...)
}

func (s *server) readStats(ctx context.Context, q *queue.Queue, d *queueData, now time.Time) error {
	stats, err := q.Stats(ctx)
	if err != nil {
		return err
	}
	d.Stats, d.Read = stats[d.Analyser], true
	if d.Stats.Owner != "" && d.Stats.Token > 0 {
		d.LeaseAge = max(now.Sub(time.UnixMicro(d.Stats.Token)), 0)
	}
	return nil
}

func readPending(ctx context.Context, r *http.Request, q *queue.Queue, d *queueData, p queueParams, now time.Time) error {
	pending, err := q.Pending(ctx, d.Analyser)
	if err != nil {
		return err
	}
	d.Pending = page[pendingRow](r, "pending_offset", p.pending, p.limit, len(pending))
	for _, t := range pending[min(p.pending, len(pending)):min(p.pending+p.limit, len(pending))] {
		d.Pending.Rows = append(d.Pending.Rows, pendingRow{Task: t, Age: age(now, t.AddedAt), Payload: newPreview(t.Payload)})
	}
	return nil
}

func readScheduled(ctx context.Context, r *http.Request, q *queue.Queue, d *queueData, p queueParams, now time.Time) error {
	// One more than a page tells whether another follows, should the
	// count in Stats be behind (or Stats not read).
	sched, err := q.Scheduled(ctx, d.Analyser, p.scheduled, p.limit+1)
	if err != nil {
		return err
	}
	total := max(int(d.Stats.Scheduled), p.scheduled+len(sched))
	d.Scheduled = page[scheduledRow](r, "scheduled_offset", p.scheduled, p.limit, total)
	for _, t := range sched[:min(len(sched), p.limit)] {
		d.Scheduled.Rows = append(d.Scheduled.Rows, scheduledRow{ScheduledTask: t, In: t.Due.Sub(now), Payload: newPreview(t.Payload)})
	}
	return nil
}

func (s *server) readDead(ctx context.Context, r *http.Request, q *queue.Queue, d *queueData, p queueParams) error {
	dead, err := q.Dead(ctx, d.Analyser)
	if err != nil {
		if ctx.Err() != nil && d.Read && d.Stats.Dead > int64(p.limit) {
			// Stats answered in time: the store is what took too long.
			return fmt.Errorf("the dead-letter store of queue %d (%d tasks) could not be read whole within %v (-timeout): %w; "+
				"page through it with qugo dead -a %d -json (%v)", d.Analyser, d.Stats.Dead, s.cfg.timeout, errStoreTooLarge, d.Analyser, err)
		}
		return err
	}
	d.Dead = page[deadRow](r, "dead_offset", p.dead, p.limit, len(dead))
	for _, t := range dead {
		if t.Raw != nil {
			d.Malformed++
		}
	}
	for _, t := range dead[min(p.dead, len(dead)):min(p.dead+p.limit, len(dead))] {
		row := deadRow{DeadTask: t, Payload: newPreview(t.Payload), Error: newClip(t.LastError), Malformed: t.Raw != nil, Headers: headersOf(t.Headers)}
		if row.Malformed {
			row.Payload = newPreview(t.Raw)
		}
		d.Dead.Rows = append(d.Dead.Rows, row)
	}
	return nil
}

// errStoreTooLarge is a list read whole that a page could not read in
// time, Redis answering: its page says so rather than blame Redis.
var errStoreTooLarge = errors.New("too large to read in time")

// page is a list's page from offset, of at most limit of total rows,
// with the URLs of the pages before and after: r's, with key changed.
func page[T any](r *http.Request, key string, offset, limit, total int) list[T] {
	l := list[T]{Read: true, Offset: offset, Total: total}
	link := func(off int) string {
		q := r.URL.Query()
		q.Del("fragment")
		if off == 0 {
			q.Del(key)
		} else {
			q.Set(key, strconv.Itoa(off))
		}
		if len(q) == 0 {
			return r.URL.Path
		}
		return r.URL.Path + "?" + q.Encode()
	}
	if offset > 0 {
		l.Prev = link(max(min(offset-limit, total-limit), 0))
	}
	if offset+limit < total {
		l.Next = link(offset + limit)
	}
	return l
}
