package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"time"

	"github.com/qugo/queue"
)

// scheduledDoc is the JSON output of scheduled.
type scheduledDoc struct {
	Analyser  int             `json:"analyser"`
	Partition int             `json:"partition"`
	Queue     int             `json:"queue"`
	Time      time.Time       `json:"time"` // when the list was read, UTC
	Offset    int             `json:"offset"`
	Limit     int             `json:"limit"`
	Tasks     []scheduledTask `json:"tasks"` // earliest due first
}

// scheduledTask is one task waiting for its due time.
type scheduledTask struct {
	ID      string     `json:"id"`
	OrderID uint64     `json:"order_id"`
	Due     *time.Time `json:"due"`       // UTC; null when JSON cannot hold it (a score set by hand)
	DueInMS int64      `json:"due_in_ms"` // due minus time; negative when overdue
	AddedAt *time.Time `json:"added_at"`  // when it was added, UTC; null when unknown
	Payload []byte     `json:"payload"`   // base64
}

// defaultScheduledLimit is how many scheduled tasks are listed without
// -limit; maxScheduledLimit bounds -limit, as one read holds them all.
const (
	defaultScheduledLimit = 100
	maxScheduledLimit     = 100000
)

func scheduledFlags(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	a := analyserFlag(fs)
	limit := fs.Int("limit", defaultScheduledLimit, fmt.Sprintf("list at most `N` tasks (at most %d)", maxScheduledLimit))
	offset := fs.Int("offset", 0, "skip the first `N` tasks, earliest due first")
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	return func(ctx context.Context, e *env, args []string) error {
		if err := e.checkAnalyser(a); err != nil {
			return err
		}
		switch {
		case len(args) > 0:
			return usagef("scheduled takes no arguments, got %q", args[0])
		case *limit < 1 || *limit > maxScheduledLimit:
			return usagef("-limit %d: must be 1 to %d", *limit, maxScheduledLimit)
		case *offset < 0:
			return usagef("-offset %d: must not be negative", *offset)
		}
		q, err := e.dial(ctx)
		if err != nil {
			return err
		}
		defer q.Close()
		tasks, err := q.Scheduled(ctx, a.n, *offset, *limit)
		if err != nil {
			return err
		}
		doc := e.newScheduledDoc(a.n, *offset, *limit, time.Now(), tasks)
		if *asJSON {
			return writeJSON(e.stdout, doc)
		}
		t := newTable(e.stdout, "ID", "ORDER", "DUE", "DUE IN", "ADDED AT", "BYTES")
		for i, s := range doc.Tasks {
			t.row(cell(s.ID), strconv.FormatUint(s.OrderID, 10), timeCell(tasks[i].Due),
				dueInCell(s.DueInMS), timeCell(tasks[i].AddedAt), strconv.Itoa(len(s.Payload)))
		}
		if err := t.flush(); err != nil {
			return err
		}
		if len(tasks) == *limit {
			fmt.Fprintf(e.stderr, "qugo: %d task(s) from offset %d shown; more may follow: -offset %d\n", len(tasks), *offset, *offset+len(tasks))
		}
		return nil
	}
}

func (e *env) newScheduledDoc(a, offset, limit int, now time.Time, tasks []queue.ScheduledTask) scheduledDoc {
	pi, qi, _ := e.layout().Serves(a) // a is checked by the caller
	doc := scheduledDoc{Analyser: a, Partition: pi, Queue: qi, Time: now.UTC(), Offset: offset, Limit: limit,
		Tasks: make([]scheduledTask, len(tasks))}
	for i, s := range tasks {
		doc.Tasks[i] = scheduledTask{
			ID: s.ID, OrderID: s.OrderID, Due: jsonTime(s.Due), DueInMS: dueInMS(s.Due, now),
			AddedAt: jsonTime(s.AddedAt), Payload: s.Payload,
		}
	}
	return doc
}

// dueInMS is how many milliseconds after now due is: time.Time.Sub stops
// at about 292 years, and a task may be due later (to year 287,396).
func dueInMS(due, now time.Time) int64 { return due.UnixMilli() - now.UnixMilli() }

// maxDurationMS is the longest span dueInCell shows through
// signedDurationCell: a time.Duration stops at about 292 years.
const maxDurationMS = 100 * 365 * 24 * 3600 * 1000

// dueInCell shows ms, a dueInMS, as signedDurationCell does, or in years
// when it is over a hundred.
func dueInCell(ms int64) string {
	if ms > maxDurationMS || ms < -maxDurationMS {
		return yearsCell(float64(ms) / float64(year.Milliseconds()))
	}
	return signedDurationCell(time.Duration(ms) * time.Millisecond)
}

// signedDurationCell is durationCell for a duration that may be negative:
// "-1.5s", "-12d3h", "about -2.0y".
func signedDurationCell(d time.Duration) string {
	switch {
	case d >= 0:
		return durationCell(d)
	case d <= -year:
		return yearsCell(float64(d) / float64(year))
	}
	return "-" + durationCell(-d)
}
