package main

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/qugo/queue"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// statsScenario fills a 2x2 queue: analyser 0 has 3 ready tasks, 2 has 1,
// 3 none; analyser 1 (owned by "cli-test") has processed one task,
// dead-lettered one, and has one pending that was redelivered once.
func statsScenario(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	f := newFixture(t, 2, 2)
	f.add(t, 0, 4, 8, 1, 5, 2)
	c := f.consumeN(t, 1, 2)
	tasks, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	require.Len(t, tasks, 2)
	_, err = c.Ack(ctx, tasks[0].ID)
	require.NoError(t, err)
	for dead := false; !dead; tasks[1].Attempt++ {
		dead, err = c.Fail(ctx, tasks[1], errors.New("boom"))
		require.NoError(t, err)
	}
	f.add(t, 9)
	_, err = c.Claim(ctx, 10)
	require.NoError(t, err)
	require.NoError(t, c.Release(ctx)) // order 9 stays pending for the next owner
	c = f.consumeN(t, 1, 2)            // puts it back: a redelivery
	tasks, err = c.Claim(ctx, 10)
	require.NoError(t, err)
	require.Len(t, tasks, 1)
	require.Equal(t, 1, tasks[0].Attempt) // its first delivery was never recorded as started: not counted
	return f
}

// consumeN is consume with n attempts per task.
func (f *fixture) consumeN(t *testing.T, a, n int) *queue.Consumer {
	t.Helper()
	c, err := f.q.Consume(context.Background(), a, queue.ConsumerConfig{Owner: "cli-test", MaxAttempts: n, LeaseTTL: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { c.Release(context.Background()) })
	return c
}

func TestStatsJSON(t *testing.T) {
	t.Parallel()
	f := statsScenario(t)
	doc := qugoJSON[statsDoc](t, f.args("stats", "-json")...)
	assert.Equal(t, 2, doc.Partitions)
	assert.Equal(t, 2, doc.Queues)
	assert.WithinDuration(t, time.Now(), doc.Time, time.Minute)
	require.Len(t, doc.Analysers, 4)
	for a, r := range doc.Analysers {
		assert.Equal(t, a, r.Analyser)
		assert.Equal(t, a%2, r.Partition)
		assert.Equal(t, a/2, r.Queue)
	}
	owned := doc.Analysers[1]
	assert.Equal(t, [6]int64{0, 1, 1, 1, 1, 1},
		[6]int64{owned.Ready, owned.Pending, owned.Dead, owned.Processed, owned.Failed, owned.Redelivered})
	assert.Equal(t, "cli-test", owned.Owner)
	assert.Positive(t, owned.Token)
	assert.Positive(t, owned.LeaseLeftMS)
	if assert.NotNil(t, owned.OldestPendingAgeMS) {
		assert.GreaterOrEqual(t, *owned.OldestPendingAgeMS, int64(0))
	}
	for a, ready := range map[int]int64{0: 3, 2: 1, 3: 0} {
		r := doc.Analysers[a]
		assert.Equal(t, ready, r.Ready, a)
		assert.Zero(t, r.Scheduled+r.Pending+r.Dead+r.Processed+r.Failed+r.Redelivered+r.Cancelled+r.Token+r.LeaseLeftMS, a)
		assert.False(t, r.Paused, a)
		assert.Empty(t, r.Owner, a)
		assert.Nil(t, r.OldestPendingAgeMS, a)
	}
}

// The JSON field names are a contract with scripts.
func TestStatsJSONFieldNames(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	code, out, errOut := qugo(t, f.args("stats", "-json")...)
	require.Equal(t, exitOK, code, errOut)
	var doc struct {
		Analysers []map[string]any `json:"analysers"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &doc))
	require.Len(t, doc.Analysers, 1)
	var names []string
	for k := range doc.Analysers[0] {
		names = append(names, k)
	}
	assert.ElementsMatch(t, []string{"analyser", "partition", "queue", "ready", "scheduled", "pending", "dead", "processed",
		"failed", "redelivered", "cancelled", "paused", "owner", "workers", "token", "lease_left_ms", "oldest_pending_age_ms"}, names)
	assert.Contains(t, out, `"oldest_pending_age_ms":null`)
}

func TestStatsTable(t *testing.T) {
	t.Parallel()
	f := statsScenario(t)
	code, out, errOut := qugo(t, f.args("stats")...)
	require.Equal(t, exitOK, code, errOut)
	assert.Empty(t, errOut)
	rows := tableRows(out)
	require.Len(t, rows, 5)
	assert.Equal(t, "ANALYSER PARTITION QUEUE READY SCHEDULED PENDING DEAD PROCESSED FAILED REDELIVERED CANCELLED PAUSED OWNER WORKERS LEASE LEFT OLDEST PENDING",
		strings.Join(rows[0], " "))
	owned := rows[2]
	require.Len(t, owned, 16)
	// A Consumer holds the lease: no pool, no workers.
	assert.Equal(t, []string{"1", "1", "0", "0", "0", "1", "1", "1", "1", "1", "0", "-", "cli-test", "-"}, owned[:14])
	_, err := time.ParseDuration(owned[14])
	assert.NoError(t, err, "lease left %q", owned[14])
	_, err = time.ParseDuration(owned[15])
	assert.NoError(t, err, "oldest pending %q", owned[15])
	assert.Equal(t, []string{"0", "0", "0", "3", "0", "0", "0", "0", "0", "0", "0", "-", "-", "-", "-", "-"}, rows[1])
	assert.Equal(t, []string{"3", "1", "1", "0", "0", "0", "0", "0", "0", "0", "0", "-", "-", "-", "-", "-"}, rows[4])
}

// controlScenario gives analyser 0 of a 1x2 queue two tasks scheduled an
// hour ahead and one cancelled, and pauses analyser 1.
func controlScenario(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	f := newFixture(t, 1, 2)
	var ids []string
	for i := range 3 {
		id, err := f.q.AddTaskAfter(ctx, 0, time.Hour, []byte("later-"+itoa(uint64(i))))
		require.NoError(t, err)
		ids = append(ids, id)
	}
	where, err := f.q.Cancel(ctx, 0, ids[1])
	require.NoError(t, err)
	require.Equal(t, queue.StateScheduled, where)
	require.NoError(t, f.q.Pause(ctx, queue.QueueOf(1)))
	return f
}

func TestStatsScheduledCancelledPaused(t *testing.T) {
	t.Parallel()
	f := controlScenario(t)
	doc := qugoJSON[statsDoc](t, f.args("stats", "-json")...)
	require.Len(t, doc.Analysers, 2)
	a0, a1 := doc.Analysers[0], doc.Analysers[1]
	assert.Equal(t, [3]int64{0, 2, 1}, [3]int64{a0.Ready, a0.Scheduled, a0.Cancelled})
	assert.False(t, a0.Paused)
	assert.Equal(t, [3]int64{0, 0, 0}, [3]int64{a1.Ready, a1.Scheduled, a1.Cancelled})
	assert.True(t, a1.Paused)

	code, out, errOut := qugo(t, f.args("stats")...)
	require.Equal(t, exitOK, code, errOut)
	rows := tableRows(out)
	require.Len(t, rows, 3)
	assert.Equal(t, []string{"0", "0", "0", "0", "2", "0", "0", "0", "0", "0", "1", "-"}, rows[1][:12])
	assert.Equal(t, []string{"1", "0", "1", "0", "0", "0", "0", "0", "0", "0", "0", "yes"}, rows[2][:12])
}

// watchRun runs qugo in the background with a context the test cancels.
func watchRun(t *testing.T, args ...string) (stdout, stderr *syncBuffer, stop func() int) {
	t.Helper()
	stdout, stderr = &syncBuffer{}, &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- run(ctx, args, stdout, stderr) }()
	stopped := false
	stop = func() int {
		stopped = true
		cancel()
		return <-done
	}
	t.Cleanup(func() {
		if !stopped {
			stop()
		}
	})
	return stdout, stderr, stop
}

func TestStatsWatchJSON(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	f.add(t, 7) // records the layout: no warning about an unused prefix
	stdout, stderr, stop := watchRun(t, f.args("stats", "-watch", "100ms", "-json")...)
	assert.Eventually(t, func() bool { return strings.Count(stdout.String(), "\n") >= 3 }, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, exitOK, stop(), "an interrupted watch is a success")
	assert.Empty(t, stderr.String())
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var doc statsDoc
		require.NoError(t, json.Unmarshal([]byte(line), &doc), line)
		assert.Len(t, doc.Analysers, 1)
	}
}

func TestStatsWatchTable(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	f.add(t, 1, 2)
	stdout, _, stop := watchRun(t, f.args("stats", "-watch", "100ms")...)
	assert.Eventually(t, func() bool { return strings.Count(stdout.String(), "qugo stats at ") >= 2 }, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, exitOK, stop())
	assert.Contains(t, stdout.String(), "every 100ms")
	assert.NotContains(t, stdout.String(), "\x1b[", "no screen clearing when not on a terminal")
}

// A watch reports Redis errors and carries on when the server is back.
func TestStatsWatchSurvivesRedisDown(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	if f.minis == nil {
		t.Skip("stops the server: miniredis only")
	}
	stdout, stderr, stop := watchRun(t, f.args("stats", "-watch", "100ms", "-json")...)
	lines := func() int { return strings.Count(stdout.String(), "\n") }
	require.Eventually(t, func() bool { return lines() >= 1 }, 10*time.Second, 10*time.Millisecond)
	f.minis[0].Close()
	// Nothing recorded a layout: each read checks it first, and fails there.
	require.Eventually(t, func() bool { return strings.Contains(stderr.String(), "qugo: queue: check layout of partition 0: ") }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, f.minis[0].Restart())
	n := lines()
	assert.Eventually(t, func() bool { return lines() > n }, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, exitOK, stop())
}

func TestStatsCancelled(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errOut syncBuffer
	assert.Equal(t, exitRuntime, run(ctx, f.args("stats"), &out, &errOut))
	assert.Contains(t, errOut.String(), "qugo: ")
}
