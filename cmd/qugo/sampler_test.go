package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/qugo/queue"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestNewSample(t *testing.T) {
	t.Parallel()
	s := newSample(time.Unix(1, 0), []queue.AnalyserStats{
		{Ready: 1, Scheduled: 2, Pending: 4, Dead: 8, Processed: 16, Failed: 32, Cancelled: 64, Redelivered: 128},
	})
	assert.Equal(t, []int64{16}, s.processed)
	assert.Equal(t, []int64{1 + 2 + 4 + 8 + 16 + 64}, s.accounted, "failed tasks are in dead; redeliveries add nothing")
}

func TestRates(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1000, 0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	samples := []sample{
		{at: at(0), processed: []int64{0, 0}, accounted: []int64{10, 0}},
		{at: at(2), processed: []int64{4, 2}, accounted: []int64{20, 2}},      // +10 and +2 added
		{at: at(4), processed: []int64{8, 2}, accounted: []int64{12, 2}},      // a purge of 8: no negative rate
		{at: at(4), processed: []int64{9, 2}, accounted: []int64{13, 2}},      // no time passed: skipped
		{at: at(6), processed: []int64{0, 4}, accounted: []int64{0, 6}},       // counters reset by hand
		{at: at(8), processed: []int64{1, 4, 0}, accounted: []int64{1, 6, 0}}, // another layout: skipped
	}
	all := rates(samples, nil)
	require.Len(t, all, 3)
	assert.Equal(t, ratePoint{at: at(2), processed: 3, added: 6}, all[0])
	assert.Equal(t, ratePoint{at: at(4), processed: 2, added: 0}, all[1])
	assert.Equal(t, ratePoint{at: at(6), processed: 1, added: 2}, all[2], "from the sample at 4s that was taken last")
	one := rates(samples, []int{1})
	assert.Equal(t, []float64{1, 0, 1}, []float64{one[0].processed, one[1].processed, one[2].processed})
	assert.Empty(t, rates(samples[:1], nil))
	assert.Len(t, rates(samples, []int{7}), 3, "an analyser out of range adds nothing")
}

func TestHistoryRing(t *testing.T) {
	t.Parallel()
	h := newHistory(3)
	assert.Empty(t, h.samples())
	for i := range 5 {
		h.add(sample{at: time.Unix(int64(i), 0)})
		got := h.samples()
		require.Len(t, got, min(i+1, 3))
		assert.Equal(t, time.Unix(int64(i), 0), got[len(got)-1].at, "newest last")
		assert.Equal(t, time.Unix(int64(max(i-2, 0)), 0), got[0].at, "oldest first")
	}
	assert.Len(t, newHistory(0).buf, 2, "room for one rate at least")
}

func TestSparkOf(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	window := 100 * time.Second
	pts := []ratePoint{
		{at: now.Add(-100 * time.Second), processed: 0},
		{at: now.Add(-50 * time.Second), processed: 5},
		{at: now, processed: 10},
	}
	s := sparkOf(pts, processedOf, now, window)
	assert.Equal(t, "0.0,23.0 60.0,12.0 120.0,1.0", s.Points, "oldest at the left, the highest at the top")
	assert.Equal(t, 10.0, s.Last)
	assert.Equal(t, 10.0, s.Max)
	flat := sparkOf(pts, addedOf, now, window)
	assert.Equal(t, "0.0,23.0 60.0,23.0 120.0,23.0", flat.Points, "all zero: a line at the bottom")
	one := sparkOf(pts[2:], processedOf, now, window)
	assert.Empty(t, one.Points, "one rate is not a line")
	assert.Equal(t, 10.0, one.Last)
	old := sparkOf([]ratePoint{{at: now.Add(-time.Hour)}, {at: now}}, processedOf, now, window)
	assert.True(t, strings.HasPrefix(old.Points, "0.0,"), "a point older than the window is pinned to the left: %s", old.Points)
	assert.Empty(t, sparkOf(nil, processedOf, now, window).Points)
}

// The sampler fills the history and logs a failure once, and the
// recovery once, not every failed sample.
func TestSampleOnceLogsTransitions(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	if f.minis == nil {
		t.Skip("stops and starts a miniredis")
	}
	f.add(t, 1)
	var logs syncBuffer
	d := newDashboard(t, f, serverConfig{timeout: 500 * time.Millisecond, log: slog.New(slog.NewTextHandler(&logs, nil))})
	ctx := context.Background()
	require.NoError(t, d.sampleOnce(ctx))
	require.Len(t, d.hist.samples(), 1)
	addr := f.minis[0].Addr()
	f.minis[0].Close()
	assert.Error(t, d.sampleOnce(ctx))
	assert.Error(t, d.sampleOnce(ctx))
	assert.Len(t, d.hist.samples(), 1, "a failed sample adds nothing")
	require.NoError(t, f.minis[0].StartAddr(addr))
	assert.Eventually(t, func() bool { return d.sampleOnce(ctx) == nil }, 5*time.Second, 50*time.Millisecond)
	out := logs.String()
	assert.Equal(t, 1, strings.Count(out, "statistics sample failed"), out)
	assert.Equal(t, 1, strings.Count(out, "statistics sample succeeded again"), out)
	var none bytes.Buffer
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	d.cfg.log = slog.New(slog.NewTextHandler(&none, nil))
	d.sampleOnce(cancelled)
	assert.Empty(t, none.String(), "a sample cut short by shutdown is not reported")
}
