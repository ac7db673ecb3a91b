package queue

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestHistoryRecordRoundTrip(t *testing.T) {
	start := time.Now().UnixMilli() / 1000 * 1000
	added := time.UnixMilli(start - 90_000)
	for _, r := range []historyRecord{
		{state: StateDone, added: added, started: time.UnixMilli(start + 10), finished: time.UnixMilli(start + 250), attempts: 2},
		{state: StateCancelled, added: added, finished: time.UnixMilli(start + 999), attempts: 0},
		{state: StateDone, added: added, started: time.UnixMilli(start - 40), finished: time.UnixMilli(start - 3), attempts: 1}, // finished before its bucket began
	} {
		enc := r.encode(start)
		assert.LessOrEqual(t, len(enc), 12, "a record fits a 16-byte allocation")
		got, err := decodeHistory(enc, start)
		require.NoError(t, err)
		assert.Equal(t, r.state, got.state)
		assert.Equal(t, r.attempts, got.attempts)
		assert.Equal(t, r.added.UnixMilli(), got.added.UnixMilli())
		assert.Equal(t, r.started.IsZero(), got.started.IsZero())
		if !r.started.IsZero() {
			assert.Equal(t, r.started.UnixMilli(), got.started.UnixMilli())
		}
		assert.Equal(t, r.finished.UnixMilli(), got.finished.UnixMilli())
	}
	for _, bad := range []string{"", "\x80", "\x02\x02\x02", "\x02\x02\x02\x02\x02"} {
		_, err := decodeHistory(bad, start)
		assert.ErrorIs(t, err, ErrMalformed, "%q", bad)
	}
}

func TestPackIDIsUniqueAndShort(t *testing.T) {
	var ids idSource
	seen := map[string]string{}
	for _, id := range append(ids.nextN(1000), "vvvvvvvvvvvvvvvvvvvv", "00000000000000000000", "10000000000000000000") {
		p := packID(id)
		assert.Len(t, p, 13)
		if other, dup := seen[p]; dup {
			t.Fatalf("%s and %s pack alike", id, other)
		}
		seen[p] = id
	}
}
