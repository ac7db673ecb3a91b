package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"
)

// table writes aligned columns; cells must not hold tabs or newlines
// (pass them through cell).
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, header ...string) *table {
	t := &table{tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	t.row(header...)
	return t
}

func (t *table) row(cells ...string) { fmt.Fprintln(t.tw, strings.Join(cells, "\t")) }

func (t *table) flush() error { return t.tw.Flush() }

// writeJSON writes v as one JSON document on one line.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// plural says n of a thing in words: "1 server", "2 servers".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// were is the verb after a count of n: "1 was", "2 were".
func were(n int) string {
	if n == 1 {
		return "was"
	}
	return "were"
}

// none is what an empty cell shows.
const none = "-"

// cell makes s safe for one table cell: empty becomes "-", and text with
// control characters (tabs, newlines, escapes) is shown Go-quoted.
func cell(s string) string {
	if s == "" {
		return none
	}
	if strings.IndexFunc(s, func(r rune) bool { return unicode.IsControl(r) || r == unicode.ReplacementChar }) >= 0 {
		return strconv.Quote(s)
	}
	return s
}

// maxRaw is how many bytes of a malformed record a table shows.
const maxRaw = 48

// rawCell shows the bytes of a malformed record Go-quoted (non-printable
// bytes as \xNN), cut to maxRaw bytes.
func rawCell(b []byte) string {
	if len(b) <= maxRaw {
		return fmt.Sprintf("%q", b)
	}
	return fmt.Sprintf("%q...(%d bytes)", b[:maxRaw], len(b))
}

// timeCell shows t in local time to the second, or "-" when it is zero.
func timeCell(t time.Time) string {
	if t.IsZero() {
		return none
	}
	return t.Local().Format(time.RFC3339)
}

// Spans durationCell shows in days, and in years.
const (
	day  = 24 * time.Hour
	year = 365*day + 6*time.Hour // of 365.25 days
)

// durationCell shows d rounded to what a person reads: milliseconds under
// a second, tenths under a minute, whole seconds under two days, days and
// hours under a year ("12d3h"), and years above ("about 1.5y", "about
// 100y"), where hours alone would read as 876000h0m0s.
func durationCell(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	case d < 2*day:
		return d.Round(time.Second).String()
	case d < year:
		h := int64(d.Round(time.Hour) / time.Hour)
		return fmt.Sprintf("%dd%dh", h/24, h%24)
	default:
		return yearsCell(float64(d) / float64(year))
	}
}

// yearsCell shows y years, which may be negative: to a tenth under ten,
// whole above.
func yearsCell(y float64) string {
	if math.Abs(y) < 9.95 {
		return fmt.Sprintf("about %.1fy", y)
	}
	return fmt.Sprintf("about %.0fy", y)
}

// jsonTime is a time for JSON output: RFC 3339 in UTC, or null when zero.
func jsonTime(t time.Time) *time.Time {
	// Nor a time JSON's RFC 3339 cannot hold (before year 0 or after
	// 9999): a record or score set by hand, which would fail the whole
	// document.
	if t.IsZero() || t.UTC().Year() < 0 || t.UTC().Year() > 9999 {
		return nil
	}
	u := t.UTC()
	return &u
}

// age is how long ago t was, never negative (clocks of producers and of
// this machine may differ).
func age(now, t time.Time) time.Duration { return max(now.Sub(t), 0) }

// rangesCell shows sorted analysers compactly, runs as ranges: "0-3,7",
// or "-" when there are none.
func rangesCell(as []int) string {
	if len(as) == 0 {
		return none
	}
	var b strings.Builder
	for i := 0; i < len(as); {
		j := i
		for j+1 < len(as) && as[j+1] == as[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(as[i]))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(as[j]))
		}
		i = j + 1
	}
	return b.String()
}

// runeCut returns where to cut s, longer than n bytes, to keep at most n:
// n, or less by up to a character's bytes so that no character is cut
// (bytes that are not UTF-8 are cut at n).
func runeCut[T string | []byte](s T, n int) int {
	for i := n; i > max(n-utf8.UTFMax, 0); i-- {
		if utf8.RuneStart(s[i]) {
			return i
		}
	}
	return n
}
