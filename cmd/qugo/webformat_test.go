package main

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
)

func TestFormatCount(t *testing.T) {
	t.Parallel()
	for in, want := range map[int64]string{0: "0", 7: "7", 999: "999", 1000: "1,000", 123456: "123,456", 1234567: "1,234,567", -1234: "-1,234"} {
		assert.Equal(t, want, formatCount(in), in)
	}
	assert.Equal(t, "12,345", formatCount(12345))
	assert.Equal(t, "?", formatCount("x"))
}

func TestFormatRate(t *testing.T) {
	t.Parallel()
	for in, want := range map[float64]string{0: "0/s", 0.04: "0.0/s", 0.25: "0.2/s", 12.34: "12.3/s", 99.9: "99.9/s", 100: "100/s", 12345.6: "12,346/s"} {
		assert.Equal(t, want, formatRate(in), in)
	}
}

func TestFormatTimes(t *testing.T) {
	t.Parallel()
	assert.Equal(t, none, formatTime(time.Time{}))
	assert.Equal(t, "", isoTime(time.Time{}))
	at := time.Date(2025, 1, 2, 3, 4, 5, 6e6, time.FixedZone("X", 3600))
	assert.Equal(t, "2025-01-02T02:04:05.006Z", isoTime(at))
	assert.Equal(t, at.Local().Format("2006-01-02 15:04:05"), formatTime(at))
}

func TestPreview(t *testing.T) {
	t.Parallel()
	short := newPreview([]byte(`{"a":1}`))
	assert.Equal(t, preview{Short: `{"a":1}`, Size: 7}, short)

	long := newPreview([]byte(strings.Repeat("x", 5000)))
	assert.Len(t, long.Short, previewShort)
	assert.Len(t, long.Long, previewLong)
	assert.True(t, long.Cut)
	assert.False(t, long.Hex)
	assert.Equal(t, 5000, long.Size)

	mid := newPreview([]byte(strings.Repeat("y", 200)))
	assert.Len(t, mid.Long, 200, "opened, it shows all")
	assert.False(t, mid.Cut)

	// A cut never splits a character.
	runes := newPreview([]byte(strings.Repeat("é", 100)))
	assert.True(t, utf8.ValidString(runes.Short))
	assert.LessOrEqual(t, len(runes.Short), previewShort)

	bin := newPreview([]byte{0, 1, 2, 0xff, 'a', 'b', 'c', 'd', 'e'})
	assert.True(t, bin.Hex)
	assert.Equal(t, "000102ff 61626364 65", bin.Short)
	assert.Empty(t, bin.Long)
	bigBin := newPreview(append([]byte{0}, make([]byte, 100)...))
	assert.True(t, bigBin.Hex)
	assert.Len(t, strings.ReplaceAll(bigBin.Short, " ", ""), previewShort, "half as many bytes as text: two digits each")
	assert.NotEmpty(t, bigBin.Long)

	for _, b := range [][]byte{{0xc3}, []byte("a\x1bb"), []byte("a\u00a0\x7f")} {
		assert.True(t, newPreview(b).Hex, "%q", b)
	}
	assert.False(t, newPreview([]byte("line\nnext\ttab")).Hex)
	assert.Equal(t, preview{}, newPreview(nil))
}

func TestClip(t *testing.T) {
	t.Parallel()
	assert.Equal(t, clip{Short: "boom"}, newClip("boom"))
	long := strings.Repeat("é", 200)
	c := newClip(long)
	assert.Equal(t, long, c.Full)
	assert.True(t, strings.HasSuffix(c.Short, "…"))
	assert.True(t, utf8.ValidString(c.Short))
	assert.LessOrEqual(t, len(c.Short), errorShort+len("…"))
	raw := newClip("read: " + strings.Repeat("\x80", 500)) // not UTF-8: quoted, and cut at the bound
	assert.Len(t, raw.Short, errorShort+len("…"))
	assert.True(t, strings.HasPrefix(raw.Short, `"read: \x80\x80`), raw.Short)
	assert.Equal(t, clip{Short: `"bad\x01thing\x1b[31m"`}, newClip("bad\x01thing\x1b[31m"), "control characters shown, as the command shows them")
	assert.Equal(t, clip{Short: "line\nnext\ttab"}, newClip("line\nnext\ttab"), "tabs and line breaks are text")
}
