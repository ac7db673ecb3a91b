package main

import (
	"encoding/hex"
	"html/template"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// How the dashboard's pages show numbers, times and task data. Every
// value reaches the page through html/template, which escapes it for
// where it lands (text, attribute, URL); nothing here builds HTML.

func (s *server) funcs() template.FuncMap {
	return template.FuncMap{
		"num":    formatCount,
		"rate":   formatRate,
		"dur":    durationCell,
		"ts":     formatTime,
		"iso":    isoTime,
		"ranges": rangesCell,
		"static": func(name string) string { return "/static/" + name + "?v=" + s.assets[name].version },
		"sparkW": func() int { return sparkW },
		"sparkH": func() int { return sparkH },
		"inc":    func(n int) int { return n + 1 },
		"neg":    func(d time.Duration) time.Duration { return -d },
		"pauseForm": func(op, scope string, n int, from, csrf string) pauseForm {
			return pauseForm{Op: op, Scope: scope, N: n, From: from, CSRF: csrf}
		},
		// deadForm acts on one dead task, whatever its ID: a malformed
		// record may sit under any field, the empty one too.
		"deadForm": func(op string, a int, id, label, csrf string) actForm {
			return actForm{Op: op, Label: label, CSRF: csrf, Fields: []field{{"a", strconv.Itoa(a)}, {"id", id}}}
		},
		"deadAllForm": func(op string, a int, label, csrf string) actForm {
			return actForm{Op: op, Label: label, CSRF: csrf, All: true, Fields: []field{{"a", strconv.Itoa(a)}, {"all", "1"}}}
		},
		// actionable reports whether an action takes id: a malformed
		// record's field may be longer.
		"actionable": func(id string) bool { return len(id) <= maxFieldLen },
		"cancelForm": func(order uint64, id, from, csrf string) actForm {
			return actForm{Op: "cancel", Label: "Cancel", CSRF: csrf,
				Fields: []field{{"order", strconv.FormatUint(order, 10)}, {"id", id}, {"from", from}}}
		},
	}
}

// pauseForm is a button that pauses or resumes queues: Op is "pause" or
// "resume", Scope "analyser" (N), "partition" (N) or "all"; From the
// page to come back to.
type pauseForm struct {
	Op, Scope string
	N         int
	From      string
	CSRF      string
}

// actForm is a button that posts action Op with Fields.
type actForm struct {
	Op, Label string
	All       bool // it acts on every dead task of a queue
	Fields    []field
	CSRF      string
}

// formatCount shows n with thousands separated: 1,234,567.
func formatCount(n any) string {
	var v int64
	switch n := n.(type) {
	case int:
		v = int64(n)
	case int64:
		v = n
	default:
		return "?"
	}
	s := strconv.FormatInt(v, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// formatRate shows tasks per second: tenths below 100, whole above.
func formatRate(r float64) string {
	switch {
	case r == 0:
		return "0/s"
	case r < 100:
		return strconv.FormatFloat(r, 'f', 1, 64) + "/s"
	default:
		return formatCount(int64(r+0.5)) + "/s"
	}
}

// formatTime shows t in this machine's zone to the second, or "-" when
// zero.
func formatTime(t time.Time) string {
	if t.IsZero() {
		return none
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

// isoTime is t for a datetime attribute: RFC 3339 in UTC to the
// millisecond.
func isoTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

// Payload previews show this many bytes at first, and this many when
// opened.
const (
	previewShort = 96
	previewLong  = 4096
)

// preview is how a page shows bytes of task data: as text when they are
// printable UTF-8, else as hex; cut short with the full size said.
type preview struct {
	Short string // the first previewShort bytes, as text or hex
	Long  string // the first previewLong bytes, when they say more than Short
	Hex   bool   // shown as hex: not printable text
	Size  int    // bytes in all
	Cut   bool   // Long does not hold it all
}

func newPreview(b []byte) preview {
	p := preview{Size: len(b), Hex: !printable(b)}
	show := func(n int) (string, bool) {
		if p.Hex {
			if len(b) <= n/2 {
				return spacedHex(b), false
			}
			return spacedHex(b[:n/2]), true
		}
		if len(b) <= n {
			return string(b), false
		}
		return string(b[:runeCut(b, n)]), true
	}
	var cut bool
	p.Short, cut = show(previewShort)
	if cut {
		p.Long, p.Cut = show(previewLong)
	}
	return p
}

// printable reports whether b is UTF-8 text without control characters
// other than tabs and line breaks.
func printable(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if unicode.IsControl(r) && r != '\n' && r != '\r' && r != '\t' || r == unicode.ReplacementChar {
			return false
		}
	}
	return true
}

// spacedHex shows b as hex in groups of four bytes: "7b226964 223a3132".
func spacedHex(b []byte) string {
	h := hex.EncodeToString(b)
	var s strings.Builder
	for i := 0; i < len(h); i += 8 {
		if i > 0 {
			s.WriteByte(' ')
		}
		s.WriteString(h[i:min(i+8, len(h))])
	}
	return s.String()
}

// Errors are shown to errorShort bytes, and whole when opened.
const errorShort = 160

// clip is text shown cut, with the whole behind a disclosure.
type clip struct {
	Short string
	Full  string // "" when Short is all of it
}

// newClip clips s. Text that is not printable (see printable) is shown
// Go-quoted, as the command shows it: a control character would
// otherwise reach the page raw, unseen.
func newClip(s string) clip {
	if !printable([]byte(s)) {
		s = strconv.Quote(s)
	}
	if len(s) <= errorShort {
		return clip{Short: s}
	}
	return clip{Short: s[:runeCut(s, errorShort)] + "…", Full: s}
}
