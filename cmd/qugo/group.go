package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/qugo/queue"
)

// groupDoc is the JSON output of group: one snapshot of a consumer group.
type groupDoc struct {
	Time       time.Time        `json:"time"` // when the snapshot was taken, UTC
	Group      string           `json:"group"`
	Generation int64            `json:"generation"` // Redis's clock in ms when the assignment last changed
	Analysers  int              `json:"analysers"`  // R*Q, the queues the group shares
	Members    []groupMemberRow `json:"members"`    // live members, by name
	Unassigned []int            `json:"unassigned"` // analysers no live member is given
	// Mismatches are the analysers whose lease is not held by the member
	// they are assigned to, in analyser order.
	Mismatches []groupMismatch `json:"mismatches"`
}

// groupMemberRow is one live member.
type groupMemberRow struct {
	Name           string     `json:"name"`
	Weight         int        `json:"weight"`
	Joined         *time.Time `json:"joined"`           // by Redis's clock, UTC; null when unknown
	HeartbeatAgeMS int64      `json:"heartbeat_age_ms"` // since its last heartbeat
	SessionLeftMS  int64      `json:"session_left_ms"`  // until it is dropped unless it beats again
	Analysers      []int      `json:"analysers"`        // assigned to it
	Leases         []int      `json:"leases"`           // whose lease it holds (lease owner == name)
}

// groupMismatch is an analyser whose lease holder is not its assigned
// member: a move in progress, a pool still starting, or a process outside
// the group holding the queue.
type groupMismatch struct {
	Analyser int    `json:"analyser"`
	Assigned string `json:"assigned"` // "" when unassigned
	Owner    string `json:"owner"`    // the lease holder; "" when none
}

func groupFlags(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	every := fs.Duration("watch", 0, "refresh every `DURATION` (at least 100ms) until interrupted")
	asJSON := fs.Bool("json", false, "print JSON (with -watch, one line per refresh)")
	return func(ctx context.Context, e *env, args []string) error {
		if len(args) != 1 {
			return usagef("group takes one NAME, got %d arguments", len(args))
		}
		name := args[0]
		if *every != 0 && *every < minWatch {
			return usagef("-watch %v: must be at least %v", *every, minWatch)
		}
		if err := e.checkGroupName(name); err != nil {
			return err
		}
		q, err := e.dial(ctx)
		if err != nil {
			return err
		}
		defer q.Close()
		show := func(doc groupDoc) error {
			if *asJSON {
				return writeJSON(e.stdout, doc)
			}
			return printGroup(e.stdout, doc, *every)
		}
		take := func(ctx context.Context) (groupDoc, error) { return takeGroup(ctx, q, name) }
		doc, err := take(ctx)
		if err != nil {
			return err
		}
		if doc.Generation == 0 && len(doc.Members) == 0 {
			fmt.Fprintf(e.stderr, "qugo: warning: no member has joined group %q under prefix %q; "+
				"check the group name (and -prefix)\n", name, e.prefix)
		}
		if *every == 0 {
			return show(doc)
		}
		return watch(ctx, e, *every, doc, take, show, !*asJSON && isTerminal(e.stdout))
	}
}

// checkGroupName makes a bad group name a usage error, before anything
// is sent to Redis.
func (e *env) checkGroupName(name string) error {
	if err := queue.CheckGroupName(name); err != nil {
		return &usageError{msg: err.Error()}
	}
	return nil
}

// takeGroup reads one snapshot: the group's membership and assignment
// (one round trip to partition 0), then every queue's lease holder (one
// round trip per partition). The two reads are not atomic: a move that
// ends between them shows as a mismatch until the next snapshot.
func takeGroup(ctx context.Context, q *queue.Queue, name string) (groupDoc, error) {
	st, err := q.GroupStatus(ctx, name)
	if err != nil {
		return groupDoc{}, err
	}
	stats, err := q.Stats(ctx)
	if err != nil {
		return groupDoc{}, err
	}
	return newGroupDoc(st, stats, q.Analysers()), nil
}

// newGroupDoc is the snapshot of a group with status st, whose queues
// (analysers of them) have the lease holders of stats.
func newGroupDoc(st queue.GroupStatus, stats []queue.AnalyserStats, analysers int) groupDoc {
	doc := groupDoc{
		Time: time.Now().UTC(), Group: st.Group, Generation: st.Generation, Analysers: analysers,
		Members: make([]groupMemberRow, len(st.Members)), Unassigned: orEmpty(st.Unassigned), Mismatches: []groupMismatch{},
	}
	assigned := map[int]string{}
	byName := map[string]int{}
	for i, m := range st.Members {
		doc.Members[i] = groupMemberRow{
			Name: m.Name, Weight: m.Weight, Joined: jsonTime(m.Joined),
			HeartbeatAgeMS: m.Heartbeat.Milliseconds(), SessionLeftMS: m.Expires.Milliseconds(),
			Analysers: orEmpty(m.Analysers), Leases: []int{},
		}
		for _, a := range m.Analysers {
			assigned[a] = m.Name
		}
		byName[m.Name] = i
	}
	for _, s := range stats {
		if i, ok := byName[s.Owner]; ok {
			doc.Members[i].Leases = append(doc.Members[i].Leases, s.Analyser)
		}
		if assigned[s.Analyser] != s.Owner {
			doc.Mismatches = append(doc.Mismatches, groupMismatch{Analyser: s.Analyser, Assigned: assigned[s.Analyser], Owner: s.Owner})
		}
	}
	return doc
}

func orEmpty(s []int) []int {
	if s == nil {
		return []int{}
	}
	return s
}

func printGroup(w io.Writer, doc groupDoc, every time.Duration) error {
	if every > 0 {
		fmt.Fprintf(w, "qugo group at %s, every %v (Ctrl-C to stop)\n", doc.Time.Local().Format(time.RFC3339), every)
	}
	fmt.Fprintf(w, "group %s: generation %d, %d member(s), %d analyser(s), unassigned: %s\n\n",
		cell(doc.Group), doc.Generation, len(doc.Members), doc.Analysers, rangesCell(doc.Unassigned))
	t := newTable(w, "MEMBER", "WEIGHT", "QUEUES", "ASSIGNED", "LEASES HELD", "HEARTBEAT", "SESSION LEFT", "JOINED")
	for _, m := range doc.Members {
		joined := none
		if m.Joined != nil {
			joined = timeCell(*m.Joined)
		}
		t.row(cell(m.Name), strconv.Itoa(m.Weight), strconv.Itoa(len(m.Analysers)), rangesCell(m.Analysers), rangesCell(m.Leases),
			durationCell(time.Duration(m.HeartbeatAgeMS)*time.Millisecond),
			durationCell(time.Duration(m.SessionLeftMS)*time.Millisecond), joined)
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(doc.Mismatches) > 0 {
		fmt.Fprintln(w, "\nLeases not held by the assigned member (a move in progress, a pool starting, or a process outside the group):")
		t = newTable(w, "ANALYSER", "ASSIGNED", "LEASE HOLDER")
		for _, m := range doc.Mismatches {
			t.row(strconv.Itoa(m.Analyser), cell(m.Assigned), cell(m.Owner))
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	if every > 0 {
		_, err := fmt.Fprintln(w)
		return err
	}
	return nil
}
