package main

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// garbage is a malformed record: its first byte is not an encoded task's
// flags byte.
var garbage = []byte("\x00\xffjunk")

// deadScenario gives the one analyser of a 1x1 queue three dead records:
// order 7 (error with a newline), order 8, and a malformed one, in that
// order of death.
func deadScenario(t *testing.T) (f *fixture, ids []string) {
	t.Helper()
	ctx := context.Background()
	f = newFixture(t, 1, 1)
	ids = f.add(t, 7, 8)
	// The ready list of partition 0 queue 0, as the queue package names it.
	_, err := f.do(t, 0, "LPUSH", "{"+f.prefix+":0.0}:ready", garbage)
	require.NoError(t, err)
	c := f.consume(t, 0)
	tasks, err := c.Claim(ctx, 10) // buries the malformed record
	require.NoError(t, err)
	require.Len(t, tasks, 2)
	for i, cause := range []string{"bad\nthing", "worse"} {
		dead, err := c.Fail(ctx, tasks[i], errors.New(cause))
		require.NoError(t, err)
		require.True(t, dead)
	}
	return f, ids
}

func deadCount(t *testing.T, f *fixture) int {
	t.Helper()
	dead, err := f.q.Dead(context.Background(), 0)
	require.NoError(t, err)
	return len(dead)
}

func TestDeadJSON(t *testing.T) {
	t.Parallel()
	f, ids := deadScenario(t)
	doc := qugoJSON[deadDoc](t, f.args("dead", "-a", "0", "-json")...)
	require.Len(t, doc.Tasks, 3)
	byID := map[string]deadTask{}
	var bad []deadTask
	for _, d := range doc.Tasks {
		if d.Malformed {
			bad = append(bad, d)
		} else {
			byID[d.ID] = d
		}
	}
	for i, want := range []struct {
		order uint64
		err   string
	}{{7, "bad\nthing"}, {8, "worse"}} {
		d, ok := byID[ids[i]]
		require.True(t, ok, ids[i])
		assert.Equal(t, want.order, d.OrderID)
		assert.Equal(t, 1, d.Attempts)
		assert.Equal(t, want.err, d.Error)
		assert.Equal(t, []byte("task-"+itoa(want.order)), d.Payload)
		assert.Equal(t, fixtureHeaders(want.order), d.Headers, "order 7 has headers, 8 none")
		assert.Nil(t, d.Raw)
		if assert.NotNil(t, d.DiedAt) && assert.NotNil(t, d.AddedAt) {
			assert.WithinDuration(t, time.Now(), *d.DiedAt, time.Minute)
			assert.False(t, d.DiedAt.Before(d.AddedAt.Add(-time.Millisecond)))
		}
	}
	require.Len(t, bad, 1)
	assert.Equal(t, garbage, bad[0].Raw)
	assert.Nil(t, bad[0].Payload)
	assert.Nil(t, bad[0].AddedAt)
	assert.Contains(t, bad[0].Error, "malformed")
	assert.NotEmpty(t, bad[0].ID)
}

func TestDeadTable(t *testing.T) {
	t.Parallel()
	f, ids := deadScenario(t)
	code, out, errOut := qugo(t, f.args("dead", "-a", "0")...)
	require.Equal(t, exitOK, code, errOut)
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	require.Len(t, lines, 4, out)
	assert.Equal(t, []string{"ID", "ORDER", "ATTEMPTS", "DIED", "AT", "ERROR", "RAW"}, strings.Fields(lines[0]))
	assert.Contains(t, out, ids[0]+"  7 ")
	assert.Contains(t, out, `"bad\nthing"`, "control characters are quoted")
	assert.Contains(t, out, `"\x00\xffjunk"`, "malformed bytes are shown quoted")
}

func TestReplay(t *testing.T) {
	t.Parallel()
	f, ids := deadScenario(t)
	code, out, errOut := qugo(t, f.args("replay", "-a", "0", ids[1], "nosuchid")...)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "replayed 1 task(s) of analyser 0\n", out)
	assert.Contains(t, errOut, "qugo: warning: nosuchid is not in the dead-letter store")
	assert.Equal(t, 2, deadCount(t, f))

	doc := qugoJSON[replayDoc](t, f.args("replay", "-a", "0", "-json")...)
	assert.Equal(t, replayDoc{Analyser: 0, Replayed: 1, MalformedLeft: 1, NotFound: []string{}}, doc)
	assert.Equal(t, 1, deadCount(t, f), "the malformed record stays")

	stats, err := f.q.Stats(context.Background())
	require.NoError(t, err)
	assert.Equal(t, int64(2), stats[0].Ready)

	code, out, errOut = qugo(t, f.args("replay", "-a", "0")...)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "replayed 0 task(s) of analyser 0\n", out)
	assert.Contains(t, errOut, "1 malformed record(s) left in place")
}

func TestPurge(t *testing.T) {
	t.Parallel()
	f, ids := deadScenario(t)

	code, out, errOut := qugo(t, f.args("purge", "-a", "0")...)
	assert.Equal(t, exitUsage, code)
	assert.Empty(t, out)
	assert.Contains(t, errOut, "qugo: purge: refusing to purge every dead task of analyser 0 without -all")
	assert.Equal(t, 3, deadCount(t, f), "a refused purge deletes nothing")

	code, out, errOut = qugo(t, f.args("purge", "-a", "0", ids[0], ids[0], "nosuchid", "no\x01such")...)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "purged 1 task(s) of analyser 0\n", out)
	assert.Equal(t, "qugo: warning: nosuchid is not in the dead-letter store of analyser 0\n"+
		"qugo: warning: \"no\\x01such\" is not in the dead-letter store of analyser 0\n", errOut, "named, as replay names them")
	assert.Equal(t, 2, deadCount(t, f))

	doc := qugoJSON[purgeDoc](t, f.args("purge", "-a", "0", "-all", "-json")...)
	assert.Equal(t, purgeDoc{Analyser: 0, Purged: 2}, doc)
	assert.Equal(t, 0, deadCount(t, f))
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// A long error is cut in the table, whose rows are all as wide as the
// widest: -json has it whole.
func TestDeadTableCutsALongError(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 1, 1)
	f.add(t, 7)
	c := f.consume(t, 0)
	tasks, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	long := strings.Repeat("é", 300)
	dead, err := c.Fail(ctx, tasks[0], errors.New(long))
	require.NoError(t, err)
	require.True(t, dead)
	code, out, errOut := qugo(t, f.args("dead", "-a", "0")...)
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, strings.Repeat("é", maxErrorCell/2)+"... (-json shows it whole)")
	assert.NotContains(t, out, strings.Repeat("é", maxErrorCell/2+1))
	code, out, errOut = qugo(t, f.args("dead", "-a", "0", "-json")...)
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, long)
}

// The table's cut bounds what is shown: an error quoted for its control
// characters is cut after the quoting, and bytes that are not UTF-8 are
// cut at the bound.
func TestErrorCellBounds(t *testing.T) {
	t.Parallel()
	for _, s := range []string{strings.Repeat("a\n", 300), strings.Repeat("\x80", 500), strings.Repeat("é", 300)} {
		c := errorCell(s)
		assert.LessOrEqual(t, len(c), maxErrorCell+len("... (-json shows it whole)"), "%q", c)
		assert.Greater(t, len(c), maxErrorCell-utf8.UTFMax, "%q", c)
	}
}
