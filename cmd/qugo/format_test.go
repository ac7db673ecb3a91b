package main

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestCell(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"", "-"},
		{"plain text", "plain text"},
		{"tab\there", `"tab\there"`},
		{"two\nlines", `"two\nlines"`},
		{"bad \xff byte", `"bad \xff byte"`},
		{"ünïcode", "ünïcode"},
	} {
		assert.Equal(t, tc.want, cell(tc.in), "%q", tc.in)
	}
}

func TestRawCell(t *testing.T) {
	t.Parallel()
	assert.Equal(t, `"\x00\xffjunk"`, rawCell([]byte("\x00\xffjunk")))
	long := bytes.Repeat([]byte{'a'}, 100)
	assert.Equal(t, `"`+strings.Repeat("a", maxRaw)+`"...(100 bytes)`, rawCell(long))
}

func TestDurationCell(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   time.Duration
		want string
	}{
		{0, "0s"},
		{1500 * time.Microsecond, "2ms"},
		{999 * time.Millisecond, "999ms"},
		{4321 * time.Millisecond, "4.3s"},
		{61*time.Second + 600*time.Millisecond, "1m2s"},
		{3 * time.Hour, "3h0m0s"},
		{47*time.Hour + 59*time.Minute + 59*time.Second, "47h59m59s"},
		{48 * time.Hour, "2d0h"},
		{12*day + 3*time.Hour + 29*time.Minute, "12d3h"},
		{12*day + 3*time.Hour + 30*time.Minute, "12d4h"},
		{365 * day, "365d0h"},
		{year, "about 1.0y"},
		{18 * 30 * day, "about 1.5y"},
		{875999*time.Hour + 59*time.Minute + 50*time.Second, "about 100y"}, // a user's task, due in a century
		{math.MaxInt64, "about 292y"},
	} {
		assert.Equal(t, tc.want, durationCell(tc.in), "%v", tc.in)
	}
}

func TestTimes(t *testing.T) {
	t.Parallel()
	assert.Equal(t, "-", timeCell(time.Time{}))
	at := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	parsed, err := time.Parse(time.RFC3339, timeCell(at))
	assert.NoError(t, err)
	assert.True(t, parsed.Equal(at))
	assert.Nil(t, jsonTime(time.Time{}))
	if assert.NotNil(t, jsonTime(at.Local())) {
		assert.Equal(t, time.UTC, jsonTime(at.Local()).Location())
	}
	for _, far := range []time.Time{time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC), time.UnixMilli(-1 << 63)} {
		assert.Nil(t, jsonTime(far), "JSON cannot hold %v", far)
	}
	assert.Equal(t, time.Duration(0), age(at, at.Add(time.Second)), "a clock ahead gives age 0")
	assert.Equal(t, time.Second, age(at.Add(time.Second), at))
}

func TestWriteJSON(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	assert.NoError(t, writeJSON(&b, map[string]string{"error": "<a & b>"}))
	assert.Equal(t, `{"error":"<a & b>"}`+"\n", b.String())
}

func TestTable(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	tb := newTable(&b, "A", "LONG HEADER", "C")
	tb.row("wide value", "1", "x")
	assert.NoError(t, tb.flush())
	assert.Equal(t, "A           LONG HEADER  C\nwide value  1            x\n", b.String())
}

func TestRangesCell(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   []int
		want string
	}{
		{nil, "-"},
		{[]int{}, "-"},
		{[]int{5}, "5"},
		{[]int{0, 1, 2, 3, 7}, "0-3,7"},
		{[]int{0, 2, 4}, "0,2,4"},
		{[]int{1, 2, 5, 6, 7, 9}, "1-2,5-7,9"},
	} {
		assert.Equal(t, tc.want, rangesCell(tc.in), "%v", tc.in)
	}
}

func TestPlural(t *testing.T) {
	t.Parallel()
	assert.Equal(t, "1 server", plural(1, "server"))
	assert.Equal(t, "2 servers", plural(2, "server"))
	assert.Equal(t, "0 URLs", plural(0, "URL"))
}
