package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/qugo/queue"
)

// statsDoc is the JSON output of stats: one snapshot of every queue.
type statsDoc struct {
	Time       time.Time  `json:"time"`       // when the snapshot was taken, UTC
	Partitions int        `json:"partitions"` // R
	Queues     int        `json:"queues"`     // Q
	Analysers  []statsRow `json:"analysers"`  // R*Q rows, in analyser order
}

// statsRow describes one analyser's queue.
type statsRow struct {
	Analyser    int    `json:"analyser"`
	Partition   int    `json:"partition"`
	Queue       int    `json:"queue"`
	Ready       int64  `json:"ready"`       // waiting to be claimed
	Scheduled   int64  `json:"scheduled"`   // waiting for their due time
	Pending     int64  `json:"pending"`     // claimed, not finished
	Dead        int64  `json:"dead"`        // in the dead-letter store
	Processed   int64  `json:"processed"`   // acknowledged, ever
	Failed      int64  `json:"failed"`      // dead-lettered, ever
	Redelivered int64  `json:"redelivered"` // put back by a new owner, ever
	Cancelled   int64  `json:"cancelled"`   // cancelled, ever
	Paused      bool   `json:"paused"`      // claims nothing new until resumed
	Owner       string `json:"owner"`       // lease holder; "" when none
	Workers     int    `json:"workers"`     // the lease holder's live worker goroutines; 0 when none
	Token       int64  `json:"token"`       // lease holder's fencing token; 0 when none
	LeaseLeftMS int64  `json:"lease_left_ms"`
	// OldestPendingAgeMS is now minus the enqueue time of the oldest
	// pending task; null when nothing is pending.
	OldestPendingAgeMS *int64 `json:"oldest_pending_age_ms"`
}

// minWatch bounds how often -watch refreshes.
const minWatch = 100 * time.Millisecond

func statsFlags(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	every := fs.Duration("watch", 0, "refresh every `DURATION` (at least 100ms) until interrupted")
	asJSON := fs.Bool("json", false, "print JSON (with -watch, one line per refresh)")
	return func(ctx context.Context, e *env, args []string) error {
		if len(args) > 0 {
			return usagef("stats takes no arguments, got %q", args[0])
		}
		if *every != 0 && *every < minWatch {
			return usagef("-watch %v: must be at least %v", *every, minWatch)
		}
		q, err := e.dial(ctx)
		if err != nil {
			return err
		}
		defer q.Close()
		show := func(doc statsDoc) error {
			if *asJSON {
				return writeJSON(e.stdout, doc)
			}
			return printStats(e.stdout, doc, *every)
		}
		doc, err := e.takeStats(ctx, q)
		if err != nil {
			return err
		}
		if *every == 0 {
			return show(doc)
		}
		take := func(ctx context.Context) (statsDoc, error) { return e.takeStats(ctx, q) }
		return watch(ctx, e, *every, doc, take, show, !*asJSON && isTerminal(e.stdout))
	}
}

// watch shows doc, then a new snapshot taken with take every interval
// until ctx ends, and returns nil then. Redis errors are reported and
// retried at the next refresh; an error writing the output ends the watch.
func watch[T any](ctx context.Context, e *env, every time.Duration, doc T, take func(context.Context) (T, error), show func(T) error, clear bool) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if clear {
			fmt.Fprint(e.stdout, "\x1b[H\x1b[2J")
		}
		if err := show(doc); err != nil {
			return err
		}
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
			var err error
			doc, err = take(ctx)
			if ctx.Err() != nil {
				return nil
			}
			if err == nil {
				break
			}
			fmt.Fprintf(e.stderr, "qugo: %v\n", err)
		}
	}
}

// takeStats reads one snapshot: one round trip per partition, and one
// per analyser with pending tasks for their age.
func (e *env) takeStats(ctx context.Context, q *queue.Queue) (statsDoc, error) {
	stats, err := q.Stats(ctx)
	if err != nil {
		return statsDoc{}, err
	}
	oldest := make([]time.Time, len(stats))
	for i, s := range stats {
		if s.Pending == 0 {
			continue
		}
		tasks, err := q.Pending(ctx, s.Analyser)
		if err != nil {
			return statsDoc{}, err
		}
		for _, t := range tasks {
			if oldest[i].IsZero() || t.AddedAt.Before(oldest[i]) {
				oldest[i] = t.AddedAt
			}
		}
	}
	now := time.Now()
	doc := statsDoc{Time: now.UTC(), Partitions: e.partitions(), Queues: e.queues, Analysers: make([]statsRow, len(stats))}
	for i, s := range stats {
		r := statsRow{
			Analyser: s.Analyser, Partition: s.Partition, Queue: s.Queue,
			Ready: s.Ready, Scheduled: s.Scheduled, Pending: s.Pending, Dead: s.Dead,
			Processed: s.Processed, Failed: s.Failed, Redelivered: s.Redelivered,
			Cancelled: s.Cancelled, Paused: s.Paused,
			Owner: s.Owner, Workers: s.Workers, LeaseLeftMS: s.LeaseLeft.Milliseconds(),
		}
		if s.Owner != "" {
			r.Token = s.Token
		}
		if !oldest[i].IsZero() {
			ms := age(now, oldest[i]).Milliseconds()
			r.OldestPendingAgeMS = &ms
		}
		doc.Analysers[i] = r
	}
	return doc, nil
}

func printStats(w io.Writer, doc statsDoc, every time.Duration) error {
	if every > 0 {
		fmt.Fprintf(w, "qugo stats at %s, every %v (Ctrl-C to stop)\n\n", doc.Time.Local().Format(time.RFC3339), every)
	}
	t := newTable(w, "ANALYSER", "PARTITION", "QUEUE", "READY", "SCHEDULED", "PENDING", "DEAD",
		"PROCESSED", "FAILED", "REDELIVERED", "CANCELLED", "PAUSED", "OWNER", "WORKERS", "LEASE LEFT", "OLDEST PENDING")
	for _, r := range doc.Analysers {
		lease, oldest, workers, paused := none, none, none, none
		if r.Paused {
			paused = "yes"
		}
		if r.Owner != "" {
			lease = durationCell(time.Duration(r.LeaseLeftMS) * time.Millisecond)
		}
		if r.Workers > 0 {
			workers = strconv.Itoa(r.Workers)
		}
		if r.OldestPendingAgeMS != nil {
			oldest = durationCell(time.Duration(*r.OldestPendingAgeMS) * time.Millisecond)
		}
		t.row(strconv.Itoa(r.Analyser), strconv.Itoa(r.Partition), strconv.Itoa(r.Queue),
			i64(r.Ready), i64(r.Scheduled), i64(r.Pending), i64(r.Dead), i64(r.Processed), i64(r.Failed), i64(r.Redelivered),
			i64(r.Cancelled), paused, cell(r.Owner), workers, lease, oldest)
	}
	if err := t.flush(); err != nil {
		return err
	}
	if every > 0 {
		_, err := fmt.Fprintln(w)
		return err
	}
	return nil
}

func i64(n int64) string { return strconv.FormatInt(n, 10) }

// isTerminal reports whether w is a terminal, where -watch clears the
// screen between refreshes.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
