package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// scheduledScenario schedules, on analyser 1 of a 2x1 queue, order 3 in
// 30 minutes, order 1 in two hours and order 5 in an hour, and adds order
// 7 to run at once. It returns the IDs earliest due first, and the due
// times.
func scheduledScenario(t *testing.T) (*fixture, []string, []time.Time) {
	t.Helper()
	ctx := context.Background()
	f := newFixture(t, 2, 1)
	now := time.Now()
	ids := map[uint64]string{}
	due := map[uint64]time.Time{3: now.Add(30 * time.Minute), 1: now.Add(2 * time.Hour), 5: now.Add(time.Hour)}
	for o, d := range due {
		due[o] = d.Truncate(time.Millisecond) // kept to the millisecond
	}
	for _, order := range []uint64{3, 1, 5} {
		id, err := f.q.AddTaskAt(ctx, order, due[order], []byte("task-"+itoa(order)))
		require.NoError(t, err)
		ids[order] = id
	}
	f.add(t, 7)
	return f, []string{ids[3], ids[5], ids[1]}, []time.Time{due[3], due[5], due[1]}
}

func TestScheduledJSON(t *testing.T) {
	t.Parallel()
	f, ids, due := scheduledScenario(t)
	doc := qugoJSON[scheduledDoc](t, f.args("scheduled", "-a", "1", "-json")...)
	assert.Equal(t, [5]int{1, 1, 0, 0, defaultScheduledLimit}, [5]int{doc.Analyser, doc.Partition, doc.Queue, doc.Offset, doc.Limit})
	assert.WithinDuration(t, time.Now(), doc.Time, time.Minute)
	require.Len(t, doc.Tasks, 3)
	for i, order := range []uint64{3, 5, 1} {
		s := doc.Tasks[i]
		assert.Equal(t, ids[i], s.ID)
		assert.Equal(t, order, s.OrderID)
		if assert.NotNil(t, s.Due) {
			assert.Equal(t, due[i].UnixMilli(), s.Due.UnixMilli())
		}
		assert.InDelta(t, due[i].Sub(doc.Time).Milliseconds(), s.DueInMS, 1000)
		assert.Equal(t, []byte("task-"+itoa(order)), s.Payload)
		if assert.NotNil(t, s.AddedAt) {
			assert.WithinDuration(t, time.Now(), *s.AddedAt, time.Minute)
		}
	}

	page := qugoJSON[scheduledDoc](t, f.args("scheduled", "-a", "1", "-offset", "1", "-limit", "1", "-json")...)
	require.Len(t, page.Tasks, 1)
	assert.Equal(t, ids[1], page.Tasks[0].ID)

	empty := qugoJSON[map[string]any](t, f.args("scheduled", "-a", "0", "-json")...)
	assert.Equal(t, []any{}, empty["tasks"], "an empty list is [], not null")
	for _, k := range []string{"analyser", "partition", "queue", "time", "offset", "limit", "tasks"} {
		assert.Contains(t, empty, k)
	}
}

func TestScheduledTable(t *testing.T) {
	t.Parallel()
	f, ids, _ := scheduledScenario(t)
	code, out, errOut := qugo(t, f.args("scheduled", "-a", "1")...)
	require.Equal(t, exitOK, code, errOut)
	assert.Empty(t, errOut)
	rows := tableRows(out)
	require.Len(t, rows, 4)
	assert.Equal(t, []string{"ID", "ORDER", "DUE", "DUE", "IN", "ADDED", "AT", "BYTES"}, rows[0])
	for i, order := range []string{"3", "5", "1"} {
		r := rows[i+1]
		require.Len(t, r, 6)
		assert.Equal(t, []string{ids[i], order}, r[:2])
		_, err := time.Parse(time.RFC3339, r[2])
		assert.NoError(t, err)
		in, err := time.ParseDuration(r[3])
		if assert.NoError(t, err) {
			assert.Greater(t, in, 29*time.Minute)
		}
		assert.Equal(t, "6", r[5]) // len("task-3")
	}

	// A full page says where the next one starts.
	code, out, errOut = qugo(t, f.args("scheduled", "-a", "1", "-limit", "2")...)
	require.Equal(t, exitOK, code, errOut)
	assert.Len(t, tableRows(out), 3)
	assert.Equal(t, "qugo: 2 task(s) from offset 0 shown; more may follow: -offset 2\n", errOut)
}

// Tasks past their due time that no pool has moved yet show a negative
// DUE IN.
func TestScheduledOverdue(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	_, err := f.q.AddTaskAfter(context.Background(), 1, 200*time.Millisecond, []byte("x"))
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		code, out, _ := qugo(t, f.args("scheduled", "-a", "0")...)
		rows := tableRows(out)
		return code == exitOK && len(rows) == 2 && strings.HasPrefix(rows[1][3], "-")
	}, 10*time.Second, 50*time.Millisecond)
}

func TestSignedDurationCell(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]string{
		0:                        "0s",
		1500 * time.Millisecond:  "1.5s",
		-1500 * time.Millisecond: "-1.5s",
		-90 * time.Minute:        "-1h30m0s",
		-50 * time.Hour:          "-2d2h",
		-3 * year:                "about -3.0y",
	} {
		assert.Equal(t, want, signedDurationCell(d), d)
	}
}

// A due time that JSON cannot hold (a score set by hand far beyond year
// 9999) is null, and the rest of the document is still written.
func TestScheduledJSONDueOutOfRange(t *testing.T) {
	t.Parallel()
	f, ids, _ := scheduledScenario(t)
	_, err := f.do(t, 1, "ZADD", "{"+f.prefix+":1.0}:sched", "1e300", ids[2])
	require.NoError(t, err)
	doc := qugoJSON[scheduledDoc](t, f.args("scheduled", "-a", "1", "-json")...)
	require.Len(t, doc.Tasks, 3)
	byID := map[string]scheduledTask{}
	for _, task := range doc.Tasks {
		byID[task.ID] = task
	}
	assert.Nil(t, byID[ids[2]].Due)
	assert.NotNil(t, byID[ids[0]].Due)
}

// A task due more than a few centuries from now is shown due in years,
// and its due_in_ms is exact, where time's durations stop at about 292
// years (2562047h47m16.854775807s, and a JSON number of that).
func TestScheduledDueCenturiesAhead(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	due := time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
	_, err := f.q.AddTaskAt(context.Background(), 1, due, []byte("x"))
	require.NoError(t, err)
	doc := qugoJSON[scheduledDoc](t, f.args("scheduled", "-a", "0", "-json")...)
	require.Len(t, doc.Tasks, 1)
	got := doc.Tasks[0].DueInMS
	want := due.UnixMilli() - time.Now().UnixMilli()
	assert.InDelta(t, want, got, float64(time.Minute.Milliseconds()))
	code, out, errOut := qugo(t, f.args("scheduled", "-a", "0")...)
	require.Equal(t, exitOK, code, errOut)
	years := float64(want) / float64(year.Milliseconds())
	assert.Contains(t, out, fmt.Sprintf("about %.0fy", years))
	assert.NotContains(t, out, "2562047h")
	assert.Equal(t, "about -300y", dueInCell(-300*year.Milliseconds()-1))
	assert.Equal(t, "about 101y", dueInCell(101*year.Milliseconds()))
	assert.Equal(t, "1.5s", dueInCell(1500))
}

// A task due in days or decades is shown due in days, or years, not in
// hundreds of thousands of hours (875999h59m50s for a century).
func TestScheduledDueDaysAndYearsAhead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 1, 1)
	_, err := f.q.AddTaskAfter(ctx, 1, 3*day+2*time.Hour, []byte("x"))
	require.NoError(t, err)
	_, err = f.q.AddTaskAfter(ctx, 1, 876000*time.Hour, []byte("x"))
	require.NoError(t, err)
	code, out, errOut := qugo(t, f.args("scheduled", "-a", "0")...)
	require.Equal(t, exitOK, code, errOut)
	rows := tableRows(out)
	require.Len(t, rows, 3, out)
	require.Equal(t, "DUE IN", strings.Join(rows[0][3:5], " "), out)
	assert.Equal(t, "3d2h", rows[1][3])
	assert.Equal(t, []string{"about", "100y"}, rows[2][3:5])
	assert.NotContains(t, out, "875999h")
}
