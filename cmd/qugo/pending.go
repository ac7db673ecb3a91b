package main

import (
	"context"
	"flag"
	"strconv"
	"time"

	"github.com/qugo/queue"
)

// pendingDoc is the JSON output of pending.
type pendingDoc struct {
	Analyser  int           `json:"analyser"`
	Partition int           `json:"partition"`
	Queue     int           `json:"queue"`
	Time      time.Time     `json:"time"` // when the list was read, UTC
	Tasks     []pendingTask `json:"tasks"`
}

// pendingTask is one task claimed and not finished, in claim order.
type pendingTask struct {
	ID      string            `json:"id"`
	OrderID uint64            `json:"order_id"`
	Attempt int               `json:"attempt"`  // the 1-based delivery under way
	AddedAt *time.Time        `json:"added_at"` // when it was enqueued, UTC
	AgeMS   int64             `json:"age_ms"`   // time minus added_at
	Payload []byte            `json:"payload"`  // base64
	Headers map[string]string `json:"headers"`  // null when none
}

func pendingFlags(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return listCommand(fs, "pending", (*queue.Queue).Pending, func(e *env, a int, tasks []queue.Task, asJSON bool) error {
		now := time.Now()
		doc := e.newPendingDoc(a, now, tasks)
		if asJSON {
			return writeJSON(e.stdout, doc)
		}
		t := newTable(e.stdout, "ID", "ORDER", "ATTEMPT", "ADDED AT", "AGE", "BYTES")
		for i, p := range doc.Tasks {
			t.row(cell(p.ID), strconv.FormatUint(p.OrderID, 10), strconv.Itoa(p.Attempt),
				timeCell(tasks[i].AddedAt), durationCell(time.Duration(p.AgeMS)*time.Millisecond), strconv.Itoa(len(p.Payload)))
		}
		return t.flush()
	})
}

// listCommand builds a command that takes -a and -json and no arguments,
// reads one analyser's list with fetch and prints it with show.
func listCommand[T any](fs *flag.FlagSet, name string, fetch func(*queue.Queue, context.Context, int) (T, error),
	show func(e *env, a int, v T, asJSON bool) error) func(context.Context, *env, []string) error {
	a := analyserFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	return func(ctx context.Context, e *env, args []string) error {
		if err := e.checkAnalyser(a); err != nil {
			return err
		}
		if len(args) > 0 {
			return usagef("%s takes no arguments, got %q", name, args[0])
		}
		q, err := e.dial(ctx)
		if err != nil {
			return err
		}
		defer q.Close()
		v, err := fetch(q, ctx, a.n)
		if err != nil {
			return err
		}
		return show(e, a.n, v, *asJSON)
	}
}

func (e *env) newPendingDoc(a int, now time.Time, tasks []queue.Task) pendingDoc {
	pi, qi, _ := e.layout().Serves(a) // a is checked by the caller
	doc := pendingDoc{Analyser: a, Partition: pi, Queue: qi, Time: now.UTC(), Tasks: make([]pendingTask, len(tasks))}
	for i, t := range tasks {
		doc.Tasks[i] = pendingTask{
			ID: t.ID, OrderID: t.OrderID, Attempt: t.Attempt,
			AddedAt: jsonTime(t.AddedAt), AgeMS: age(now, t.AddedAt).Milliseconds(), Payload: t.Payload, Headers: t.Headers,
		}
	}
	return doc
}
