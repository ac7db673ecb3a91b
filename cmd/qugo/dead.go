package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"time"

	"github.com/qugo/queue"
)

// deadDoc is the JSON output of dead.
type deadDoc struct {
	Analyser  int        `json:"analyser"`
	Partition int        `json:"partition"`
	Queue     int        `json:"queue"`
	Tasks     []deadTask `json:"tasks"` // oldest death first
}

// deadTask is one record of the dead-letter store. For a malformed record
// only id (the field it is stored under), error, malformed and raw are
// meaningful, and died_at when the record's own header was readable.
type deadTask struct {
	ID        string            `json:"id"`
	OrderID   uint64            `json:"order_id"`
	Attempts  int               `json:"attempts"`
	AddedAt   *time.Time        `json:"added_at"` // UTC; null when unknown
	DiedAt    *time.Time        `json:"died_at"`  // UTC; null when unknown
	Error     string            `json:"error"`    // the last delivery's error
	Payload   []byte            `json:"payload"`  // base64; null for a malformed record
	Headers   map[string]string `json:"headers"`  // null when none
	Malformed bool              `json:"malformed"`
	Raw       []byte            `json:"raw"` // base64 bytes of a malformed record, else null
}

// replayDoc is the JSON output of replay.
type replayDoc struct {
	Analyser int `json:"analyser"`
	Replayed int `json:"replayed"` // moved back to the ready list
	// MalformedLeft counts malformed records left in place: they cannot
	// be replayed, only purged.
	MalformedLeft int      `json:"malformed_left"`
	NotFound      []string `json:"not_found"` // given IDs not in the store
}

// purgeDoc is the JSON output of purge.
type purgeDoc struct {
	Analyser int `json:"analyser"`
	Purged   int `json:"purged"`
	NotFound int `json:"not_found"` // how many given IDs were not in the store
}

func deadFlags(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return listCommand(fs, "dead", (*queue.Queue).Dead, func(e *env, a int, dead []queue.DeadTask, asJSON bool) error {
		if asJSON {
			return writeJSON(e.stdout, e.newDeadDoc(a, dead))
		}
		return printDead(e, dead)
	})
}

func (e *env) newDeadDoc(a int, dead []queue.DeadTask) deadDoc {
	pi, qi, _ := e.layout().Serves(a) // a is checked by the caller
	doc := deadDoc{Analyser: a, Partition: pi, Queue: qi, Tasks: make([]deadTask, len(dead))}
	for i, d := range dead {
		doc.Tasks[i] = deadTask{
			ID: d.ID, OrderID: d.OrderID, Attempts: d.Attempts,
			AddedAt: jsonTime(d.AddedAt), DiedAt: jsonTime(d.DiedAt), Error: d.LastError,
			Payload: d.Payload, Headers: d.Headers, Malformed: d.Raw != nil, Raw: d.Raw,
		}
	}
	return doc
}

func printDead(e *env, dead []queue.DeadTask) error {
	header := []string{"ID", "ORDER", "ATTEMPTS", "DIED AT", "ERROR"}
	malformed := false
	for _, d := range dead {
		malformed = malformed || d.Raw != nil
	}
	if malformed {
		header = append(header, "RAW")
	}
	t := newTable(e.stdout, header...)
	for _, d := range dead {
		row := []string{cell(d.ID), strconv.FormatUint(d.OrderID, 10), strconv.Itoa(d.Attempts), timeCell(d.DiedAt), errorCell(d.LastError)}
		if d.Raw != nil {
			row[1], row[2] = none, none
			row = append(row, rawCell(d.Raw))
		} else if malformed {
			row = append(row, none)
		}
		t.row(row...)
	}
	return t.flush()
}

// maxErrorCell bounds the bytes of an error a table row shows: every row
// of a table is as wide as its widest. -json has the error whole.
const maxErrorCell = 200

// errorCell is cell for an error, cut to maxErrorCell bytes as shown
// (quoted, when it is), before a character's start.
func errorCell(s string) string {
	c := cell(s)
	if len(c) <= maxErrorCell {
		return c
	}
	return c[:runeCut(c, maxErrorCell)] + "... (-json shows it whole)"
}

func replayFlags(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	a := analyserFlag(fs)
	asJSON := fs.Bool("json", false, "print the result as JSON")
	return func(ctx context.Context, e *env, ids []string) error {
		if err := e.checkAnalyser(a); err != nil {
			return err
		}
		ids = unique(ids)
		q, err := e.dial(ctx)
		if err != nil {
			return err
		}
		defer q.Close()
		dead, err := q.Dead(ctx, a.n)
		if err != nil {
			return err
		}
		doc := replayDoc{Analyser: a.n, NotFound: []string{}}
		known := map[string]bool{}
		for _, d := range dead {
			known[d.ID] = true
		}
		want := map[string]bool{}
		for _, id := range ids {
			want[id] = true
			if !known[id] {
				doc.NotFound = append(doc.NotFound, id)
			}
		}
		for _, d := range dead {
			if d.Raw != nil && (len(ids) == 0 || want[d.ID]) {
				doc.MalformedLeft++
			}
		}
		if doc.Replayed, err = q.Replay(ctx, a.n, ids...); err != nil {
			return err
		}
		if *asJSON {
			return writeJSON(e.stdout, doc)
		}
		for _, id := range doc.NotFound {
			fmt.Fprintf(e.stderr, "qugo: warning: %s is not in the dead-letter store of analyser %d\n", cell(id), a.n)
		}
		if doc.MalformedLeft > 0 {
			fmt.Fprintf(e.stderr, "qugo: warning: %d malformed record(s) left in place; see qugo dead, remove with qugo purge\n", doc.MalformedLeft)
		}
		_, err = fmt.Fprintf(e.stdout, "replayed %d task(s) of analyser %d\n", doc.Replayed, a.n)
		return err
	}
}

func purgeFlags(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	a := analyserFlag(fs)
	all := fs.Bool("all", false, "purge every dead task of the analyser")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	return func(ctx context.Context, e *env, ids []string) error {
		if err := e.checkAnalyser(a); err != nil {
			return err
		}
		switch {
		case *all && len(ids) > 0:
			return usagef("purge: give task IDs or -all, not both")
		case !*all && len(ids) == 0:
			return usagef("purge: refusing to purge every dead task of analyser %d without -all", a.n)
		}
		ids = unique(ids)
		q, err := e.dial(ctx)
		if err != nil {
			return err
		}
		defer q.Close()
		// The given IDs not in the store, to name them as replay does.
		var missing []string
		if len(ids) > 0 {
			dead, err := q.Dead(ctx, a.n)
			if err != nil {
				return err
			}
			known := map[string]bool{}
			for _, d := range dead {
				known[d.ID] = true
			}
			for _, id := range ids {
				if !known[id] {
					missing = append(missing, id)
				}
			}
		}
		doc := purgeDoc{Analyser: a.n}
		if doc.Purged, err = q.Purge(ctx, a.n, ids...); err != nil {
			return err
		}
		if len(ids) > 0 {
			doc.NotFound = len(ids) - doc.Purged
		}
		if *asJSON {
			return writeJSON(e.stdout, doc)
		}
		for _, id := range missing {
			fmt.Fprintf(e.stderr, "qugo: warning: %s is not in the dead-letter store of analyser %d\n", cell(id), a.n)
		}
		if gone := doc.NotFound - len(missing); gone > 0 {
			// Replayed or purged by someone else between the read and the purge.
			fmt.Fprintf(e.stderr, "qugo: warning: %d more of the given IDs %s gone from the dead-letter store of analyser %d before the purge reached them\n",
				gone, were(gone), a.n)
		}
		_, err = fmt.Fprintf(e.stdout, "purged %d task(s) of analyser %d\n", doc.Purged, a.n)
		return err
	}
}

// unique returns ids without repeats, in their first order.
func unique(ids []string) []string {
	seen := map[string]bool{}
	out := ids[:0:0]
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}
