package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/qugo/queue"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const testSessionTTL = 10 * time.Second

// join runs member in group on the fixture's queue, with an analyse
// function that does nothing, and returns a function that makes it leave
// (called at cleanup otherwise).
func (f *fixture) join(t *testing.T, group, member string, weight int) (leave func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cfg := queue.GroupConfig{Member: member, Weight: weight, SessionTTL: testSessionTTL,
		Pool: queue.PoolConfig{Workers: 1, Logger: slog.New(slog.DiscardHandler), OnError: func(error) {}}}
	go func() {
		done <- f.q.JoinGroup(ctx, group, cfg, func(context.Context, queue.Task) error { return nil })
	}()
	left := false
	leave = func() {
		if !left {
			left = true
			cancel()
			assert.NoError(t, <-done, "member %s", member)
		}
	}
	t.Cleanup(leave)
	return leave
}

// groupSnapshot runs "group NAME -json" and decodes it; ok is false when
// the command failed. Safe to call from an Eventually condition.
func (f *fixture) groupSnapshot(group string) (doc groupDoc, ok bool) {
	var out, errOut bytes.Buffer
	if run(context.Background(), f.args("group", group, "-json"), &out, &errOut) != exitOK {
		return doc, false
	}
	return doc, json.Unmarshal(out.Bytes(), &doc) == nil
}

// waitSettled waits until group has exactly the members named, every
// analyser is assigned, and every lease is held by its assigned member.
func (f *fixture) waitSettled(t *testing.T, group string, members ...string) groupDoc {
	t.Helper()
	var doc groupDoc
	require.Eventually(t, func() bool {
		var ok bool
		doc, ok = f.groupSnapshot(group)
		if !ok || len(doc.Members) != len(members) || len(doc.Unassigned) > 0 || len(doc.Mismatches) > 0 {
			return false
		}
		for i, m := range doc.Members {
			if m.Name != members[i] {
				return false
			}
		}
		return true
	}, 10*time.Second, 10*time.Millisecond, "group %s did not settle over %v", group, members)
	return doc
}

func TestGroupJSON(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 2, 2) // analysers 0..3
	f.join(t, "workers", "m1", 1)
	f.waitSettled(t, "workers", "m1")
	f.join(t, "workers", "m2", 3)
	doc := f.waitSettled(t, "workers", "m1", "m2")

	assert.Equal(t, "workers", doc.Group)
	assert.Equal(t, 4, doc.Analysers)
	assert.GreaterOrEqual(t, doc.Generation, int64(2), "one change per join at least")
	assert.WithinDuration(t, time.Now(), doc.Time, time.Minute)
	assert.Equal(t, []int{}, doc.Unassigned)
	var all []int
	for i, m := range doc.Members {
		assert.Equal(t, []int{1, 3}[i], m.Weight, m.Name)
		assert.Len(t, m.Analysers, []int{1, 3}[i], "%s's share by weight", m.Name)
		assert.Equal(t, m.Analysers, m.Leases, "%s holds the leases of its queues", m.Name)
		if assert.NotNil(t, m.Joined, m.Name) {
			assert.WithinDuration(t, time.Now(), *m.Joined, time.Minute, m.Name)
		}
		assert.GreaterOrEqual(t, m.HeartbeatAgeMS, int64(0), m.Name)
		assert.LessOrEqual(t, m.HeartbeatAgeMS, testSessionTTL.Milliseconds(), m.Name)
		assert.Positive(t, m.SessionLeftMS, m.Name)
		assert.LessOrEqual(t, m.SessionLeftMS, testSessionTTL.Milliseconds(), m.Name)
		all = append(all, m.Analysers...)
	}
	assert.ElementsMatch(t, []int{0, 1, 2, 3}, all)
}

// The JSON field names are a contract with scripts.
func TestGroupJSONFieldNames(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 2)
	f.consume(t, 1) // "cli-test" holds analyser 1 outside the group
	f.join(t, "g", "m1", 1)
	require.Eventually(t, func() bool {
		doc, ok := f.groupSnapshot("g")
		return ok && len(doc.Members) == 1 && len(doc.Members[0].Leases) == 1
	}, 10*time.Second, 10*time.Millisecond)
	code, out, errOut := qugo(t, f.args("group", "g", "-json")...)
	require.Equal(t, exitOK, code, errOut)
	var doc map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &doc))
	assert.ElementsMatch(t, []string{"time", "group", "generation", "analysers", "members", "unassigned", "mismatches"}, keys(doc))
	members := doc["members"].([]any)
	require.Len(t, members, 1)
	assert.ElementsMatch(t, []string{"name", "weight", "joined", "heartbeat_age_ms", "session_left_ms", "analysers", "leases"},
		keys(members[0].(map[string]any)))
	mismatches := doc["mismatches"].([]any)
	require.Len(t, mismatches, 1)
	assert.Equal(t, map[string]any{"analyser": 1.0, "assigned": "m1", "owner": "cli-test"}, mismatches[0])
	assert.Contains(t, out, `"unassigned":[]`)
}

func keys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// The table shows a lease held by someone other than the assigned member
// (here a process outside the group) under the members.
func TestGroupTable(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 4) // analysers 0..3
	f.consume(t, 3)
	f.join(t, "g", "m1", 2)
	require.Eventually(t, func() bool {
		doc, ok := f.groupSnapshot("g")
		return ok && len(doc.Members) == 1 && len(doc.Members[0].Leases) == 3
	}, 10*time.Second, 10*time.Millisecond)
	code, out, errOut := qugo(t, f.args("group", "g")...)
	require.Equal(t, exitOK, code, errOut)
	assert.Empty(t, errOut)
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	require.Len(t, lines, 8, out)
	assert.Regexp(t, `^group g: generation \d+, 1 member\(s\), 4 analyser\(s\), unassigned: -$`, lines[0])
	assert.Empty(t, lines[1])
	rows := tableRows(strings.Join(lines[2:4], "\n"))
	assert.Equal(t, "MEMBER WEIGHT QUEUES ASSIGNED LEASES HELD HEARTBEAT SESSION LEFT JOINED", strings.Join(rows[0], " "))
	require.Len(t, rows[1], 8, lines[3])
	assert.Equal(t, []string{"m1", "2", "4", "0-3", "0-2"}, rows[1][:5])
	for _, d := range rows[1][5:7] {
		_, err := time.ParseDuration(d)
		assert.NoError(t, err, "heartbeat and session left %q", d)
	}
	_, err := time.Parse(time.RFC3339, rows[1][7])
	assert.NoError(t, err, "joined %q", rows[1][7])
	assert.Empty(t, lines[4])
	assert.Contains(t, lines[5], "not held by the assigned member")
	assert.Equal(t, [][]string{{"ANALYSER", "ASSIGNED", "LEASE", "HOLDER"}, {"3", "m1", "cli-test"}}, tableRows(strings.Join(lines[6:], "\n")))
}

// A group no member has joined is most likely a typo: warned, exit 0.
func TestGroupUnknown(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 2)
	f.add(t, 1) // records the layout: no warning about the prefix
	code, out, errOut := qugo(t, f.args("group", "nosuch", "-json")...)
	assert.Equal(t, exitOK, code)
	assert.Equal(t, `qugo: warning: no member has joined group "nosuch" under prefix "`+f.prefix+
		`"; check the group name (and -prefix)`+"\n", errOut)
	var doc groupDoc
	require.NoError(t, json.Unmarshal([]byte(out), &doc))
	assert.Zero(t, doc.Generation)
	assert.Equal(t, []int{0, 1}, doc.Unassigned)
	assert.Equal(t, []groupMemberRow{}, doc.Members)
	assert.Equal(t, []groupMismatch{}, doc.Mismatches)
}

// Once the last member has left, every analyser is unassigned, and the
// group is known (no warning).
func TestGroupAfterLastMemberLeft(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 2)
	leave := f.join(t, "g", "m1", 1)
	f.waitSettled(t, "g", "m1")
	leave()
	code, out, errOut := qugo(t, f.args("group", "g", "-json")...)
	require.Equal(t, exitOK, code, errOut)
	assert.Empty(t, errOut)
	var doc groupDoc
	require.NoError(t, json.Unmarshal([]byte(out), &doc))
	assert.Positive(t, doc.Generation)
	assert.Empty(t, doc.Members)
	assert.Equal(t, []int{0, 1}, doc.Unassigned)
	assert.Empty(t, doc.Mismatches, "the leases were released on the way out")
}

func TestGroupWatchJSON(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	f.join(t, "g", "m1", 1)
	f.waitSettled(t, "g", "m1")
	stdout, stderr, stop := watchRun(t, f.args("group", "g", "-watch", "100ms", "-json")...)
	assert.Eventually(t, func() bool { return strings.Count(stdout.String(), "\n") >= 3 }, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, exitOK, stop(), "an interrupted watch is a success")
	assert.Empty(t, stderr.String())
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var doc groupDoc
		require.NoError(t, json.Unmarshal([]byte(line), &doc), line)
		require.Len(t, doc.Members, 1)
		assert.Equal(t, "m1", doc.Members[0].Name)
	}
}

func TestGroupWatchTable(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	f.join(t, "g", "m1", 1)
	stdout, _, stop := watchRun(t, f.args("group", "g", "-watch", "100ms")...)
	assert.Eventually(t, func() bool { return strings.Count(stdout.String(), "qugo group at ") >= 2 }, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, exitOK, stop())
	assert.Contains(t, stdout.String(), "every 100ms")
	assert.NotContains(t, stdout.String(), "\x1b[", "no screen clearing when not on a terminal")
}
