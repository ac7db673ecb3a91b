package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/qugo/queue"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// retention is the Config.Retention of the queues of these tests that
// keep finished tasks' status.
const retention = time.Minute

// retained returns a Queue over the fixture's servers that keeps finished
// tasks' status for retention, as the analysers of such a queue run.
func (f *fixture) retained(t *testing.T) *queue.Queue {
	t.Helper()
	q, err := queue.Dial(context.Background(), f.urls, queue.Config{Prefix: f.prefix, Queues: f.queues, Retention: retention})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	return q
}

// taskArgs returns the fixture's flags, then cmd -order order -id id and
// rest.
func (f *fixture) taskArgs(cmd string, order uint64, id string, rest ...string) []string {
	return f.args(append([]string{cmd, "-order", itoa(order), "-id", id}, rest...)...)
}

func TestCancelWhereverTheTaskIs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 2, 1)
	ret := f.retained(t)
	c, err := ret.Consume(ctx, 1, queue.ConsumerConfig{Owner: "cli-test", MaxAttempts: 1, LeaseTTL: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { c.Release(context.Background()) })

	sched, err := f.q.AddTaskAfter(ctx, 1, time.Hour, []byte("later"))
	require.NoError(t, err)
	ids := f.add(t, 3, 5, 7, 9) // analyser 1: 3 and 7 stay pending, 5 dies, 9 waits
	claimKilling(t, c, 3, 1)

	for _, tc := range []struct {
		order          uint64
		id             string
		found, outcome string
	}{
		{1, sched, "scheduled", "removed"},
		{7, ids[2], "pending", "marked"},
		{9, ids[3], "unknown", "marked"},
		{5, ids[1], "dead", "unchanged"},
	} {
		doc := qugoJSON[cancelDoc](t, f.taskArgs("cancel", tc.order, tc.id, "-json")...)
		assert.Equal(t, cancelDoc{ID: tc.id, OrderID: tc.order, Analyser: 1, Partition: 1, Queue: 0, Found: tc.found, Outcome: tc.outcome}, doc)
	}
	stats, err := f.q.Stats(ctx)
	require.NoError(t, err)
	assert.Equal(t, [2]int64{0, 1}, [2]int64{stats[1].Scheduled, stats[1].Cancelled}, "the scheduled task is gone, and counted")

	// The marked ready task is finished as cancelled when claimed, never
	// handed out.
	rest, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	assert.Empty(t, rest)
	st, err := ret.Status(ctx, 9, ids[3])
	require.NoError(t, err)
	assert.Equal(t, queue.StateCancelled, st.State)

	// In words. Cancel's doc says what becomes of a task a Consumer
	// holds, as this one: no owner took the mark, and cancel says so.
	code, out, errOut := qugo(t, f.taskArgs("cancel", 3, ids[0])...)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "task "+ids[0]+" of order 3 (analyser 1) is held by a Consumer, or by an owner that did not take the mark within a second: "+
		"marked; it is finished as cancelled when it is claimed again (after a takeover), though a stalled owner that comes back may start it first\n", out)
	code, out, errOut = qugo(t, f.taskArgs("status", 3, ids[0])...)
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "asked, not yet carried out")
	assert.NotContains(t, out, "seen by its owner")
	code, out, errOut = qugo(t, f.taskArgs("cancel", 5, ids[1])...)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "task "+ids[1]+" of order 5 (analyser 1) is a dead letter: left as it is (qugo purge -a 1 "+ids[1]+" deletes it)\n", out)
	// Pending with no one holding the queue (its owner died): said so.
	_, err = f.do(t, 1, "DEL", "{"+f.prefix+":1.0}:lease")
	require.NoError(t, err)
	code, out, errOut = qugo(t, f.taskArgs("cancel", 7, ids[2])...)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "task "+ids[2]+" of order 7 (analyser 1) is pending, and no pool holds its queue now (its owner stopped or died): "+
		"marked; it is finished as cancelled, without running, when a pool takes the queue and claims it again\n", out)
	later, err := f.q.AddTaskAfter(ctx, 3, time.Hour, []byte("later"))
	require.NoError(t, err)
	code, out, errOut = qugo(t, f.taskArgs("cancel", 3, later)...)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "task "+later+" of order 3 (analyser 1) was scheduled: removed, it will never run\n", out)
}

func TestCancelRefusals(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	// Under a prefix nothing has used, nothing is written.
	code, out, errOut := qugo(t, f.taskArgs("cancel", 1, "0123456789abcdefghij")...)
	assert.Equal(t, exitRuntime, code)
	assert.Empty(t, out)
	assert.Contains(t, errOut, "refusing to write")
	keys, err := f.do(t, 0, "KEYS", "*"+f.prefix+"*")
	require.NoError(t, err)
	assert.Empty(t, keys)
	// A malformed ID is a usage error there too: it is looked at first.
	code, out, errOut = qugo(t, f.taskArgs("cancel", 1, "nope")...)
	assert.Equal(t, exitUsage, code)
	assert.Empty(t, out)
	assert.Contains(t, errOut, "qugo: cancel: -id nope is malformed")

	// An ID not of the library's form is a usage error, and marks nothing.
	f.add(t, 1)
	code, out, errOut = qugo(t, f.taskArgs("cancel", 1, "not-an-id")...)
	assert.Equal(t, exitUsage, code)
	assert.Empty(t, out)
	assert.Contains(t, errOut, "qugo: cancel: -id not-an-id is malformed: a task ID is 20 characters of 0-9 and a-v")
	assert.NotContains(t, errOut, "config", "a mistyped -id is no config problem")
	stats, err := f.q.Stats(context.Background())
	require.NoError(t, err)
	assert.Zero(t, stats[0].Cancelled)
}

// TestStatusOfNoTaskID checks that status tells a mistyped ID from a
// task it cannot find.
func TestStatusOfNoTaskID(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	f.add(t, 1)
	code, out, errOut := qugo(t, f.taskArgs("status", 1, "not-an-id")...)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "unknown", statusRows(t, out)["state"])
	assert.Equal(t, "qugo: state unknown: -id not-an-id is not a task ID (20 characters of 0-9 and a-v, as AddTask returns it)\n", errOut)

	code, _, errOut = qugo(t, f.taskArgs("status", 1, "0123456789abcdefghij")...)
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, errOut, "waits in the ready list", "an ID of the right form gets the usual reasons")
}

// statusRows parses status's list: field name -> value.
func statusRows(t *testing.T, out string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		name, value, ok := strings.Cut(line, "  ")
		require.True(t, ok, line)
		m[strings.TrimSpace(name)] = strings.TrimSpace(value)
	}
	return m
}

func TestStatusScheduledPendingDead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 1, 2)
	due := time.Now().Add(time.Hour).Truncate(time.Millisecond) // kept to the millisecond
	sched, err := f.q.AddTaskAt(ctx, 0, due, []byte("later"))
	require.NoError(t, err)
	ids := f.add(t, 2, 4)
	c := f.consume(t, 0)
	claimed, err := c.Claim(ctx, 2)
	require.NoError(t, err)
	require.Len(t, claimed, 2)
	dead, err := c.Fail(ctx, claimed[1], errors.New("boom\tagain"))
	require.NoError(t, err)
	require.True(t, dead)

	doc := qugoJSON[statusDoc](t, f.taskArgs("status", 0, sched, "-json")...)
	assert.Equal(t, "scheduled", doc.State)
	assert.Equal(t, [4]int{0, 0, 0, 0}, [4]int{doc.Analyser, doc.Partition, doc.Queue, doc.Attempt})
	if assert.NotNil(t, doc.Due) {
		assert.Equal(t, due.UnixMilli(), doc.Due.UnixMilli())
	}
	assert.NotNil(t, doc.AddedAt)
	assert.Nil(t, doc.FinishedAt)

	doc = qugoJSON[statusDoc](t, f.taskArgs("status", 2, ids[0], "-json")...)
	assert.Equal(t, "pending", doc.State)
	assert.Equal(t, 1, doc.Attempt)
	assert.Equal(t, "cli-test", doc.Owner)
	assert.Nil(t, doc.Due)

	doc = qugoJSON[statusDoc](t, f.taskArgs("status", 4, ids[1], "-json")...)
	assert.Equal(t, "dead", doc.State)
	assert.Equal(t, 1, doc.Attempt)
	assert.Equal(t, "boom\tagain", doc.LastError)
	assert.NotNil(t, doc.FinishedAt)
	assert.Empty(t, doc.Owner)

	code, out, errOut := qugo(t, f.taskArgs("status", 4, ids[1])...)
	require.Equal(t, exitOK, code, errOut)
	assert.Empty(t, errOut)
	rows := statusRows(t, out)
	assert.Equal(t, ids[1], rows["id"])
	assert.Equal(t, "4 (analyser 0: partition 0, queue 0)", rows["order"])
	assert.Equal(t, "dead", rows["state"])
	assert.Equal(t, "1", rows["attempt"])
	assert.Equal(t, `"boom\tagain"`, rows["last error"])
	for _, k := range []string{"added", "finished"} {
		_, err := time.Parse(time.RFC3339, rows[k])
		assert.NoError(t, err, k)
	}
	assert.NotContains(t, rows, "owner", "fields not set are not listed")
	assert.NotContains(t, rows, "due")
	assert.NotContains(t, rows, "started")
}

// A task whose delivery failed waits out its backoff as retrying; a
// cancel reaches it there, and with -retention its status is then kept.
func TestStatusRetryingThenCancelled(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	ret := f.retained(t)
	ids := f.add(t, 6)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() {
		done <- ret.AnalysePool(ctx, 0, queue.PoolConfig{
			Workers: 1, Owner: "cli-pool", MaxAttempts: 5, OnError: func(error) {},
			Backoff: func(int) time.Duration { return time.Hour },
		}, func(context.Context, queue.Task) error { return errors.New("not yet") })
	}()
	withRet := func(cmd string) []string { return f.taskArgs(cmd, 6, ids[0], "-retention", retention.String()) }

	var doc statusDoc
	require.Eventually(t, func() bool {
		doc = qugoJSON[statusDoc](t, append(withRet("status"), "-json")...)
		return doc.State == "retrying"
	}, 10*time.Second, 20*time.Millisecond)
	assert.Equal(t, 2, doc.Attempt, "the next delivery's number")
	assert.Equal(t, "cli-pool", doc.Owner)
	assert.Equal(t, "not yet", doc.LastError)
	if assert.NotNil(t, doc.Due) {
		assert.WithinDuration(t, time.Now().Add(time.Hour), *doc.Due, time.Minute)
	}

	code, out, errOut := qugo(t, withRet("status")...)
	require.Equal(t, exitOK, code, errOut)
	rows := statusRows(t, out)
	assert.Equal(t, "retrying", rows["state"])
	assert.Equal(t, "cli-pool", rows["owner"])
	in, ok := strings.CutPrefix(strings.TrimSuffix(rows["due"], ")"), doc.Due.Local().Format(time.RFC3339)+" (in ")
	if assert.True(t, ok, rows["due"]) {
		d, err := time.ParseDuration(in)
		assert.NoError(t, err)
		assert.InDelta(t, time.Hour.Seconds(), d.Seconds(), 60)
	}

	c := qugoJSON[cancelDoc](t, append(withRet("cancel"), "-json")...)
	assert.Equal(t, "pending", c.Found)
	require.Eventually(t, func() bool {
		doc = qugoJSON[statusDoc](t, append(withRet("status"), "-json")...)
		return doc.State == "cancelled" && !doc.CancelAsked
	}, 10*time.Second, 20*time.Millisecond, "the pool finishes it as cancelled without waiting out the backoff")
	assert.Equal(t, 1, doc.Attempt, "deliveries made")
	assert.NotNil(t, doc.AddedAt)
	assert.NotNil(t, doc.FinishedAt)
	stop()
	require.NoError(t, <-done)

	// Without -retention the finished task is found all the same: the
	// queue's owner recorded its retention.
	code, out, errOut = qugo(t, f.taskArgs("status", 6, ids[0])...)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "cancelled", statusRows(t, out)["state"])
}

// With -retention, a task done is found, and cancel leaves it.
func TestStatusAndCancelOfADoneTask(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	ret := f.retained(t)
	ids := f.add(t, 8)
	require.NoError(t, ret.AnalysePool(context.Background(), 0, queue.PoolConfig{Workers: 1, ExitOnEmpty: true},
		func(context.Context, queue.Task) error { return nil }))
	withRet := func(cmd string) []string {
		return f.taskArgs(cmd, 8, ids[0], "-retention", retention.String(), "-json")
	}
	doc := qugoJSON[statusDoc](t, withRet("status")...)
	assert.Equal(t, "done", doc.State)
	assert.Equal(t, 1, doc.Attempt)
	require.NotNil(t, doc.AddedAt)
	require.NotNil(t, doc.StartedAt)
	require.NotNil(t, doc.FinishedAt)
	assert.False(t, doc.StartedAt.Before(*doc.AddedAt))
	assert.False(t, doc.FinishedAt.Before(*doc.StartedAt))
	c := qugoJSON[cancelDoc](t, withRet("cancel")...)
	assert.Equal(t, [2]string{"done", "unchanged"}, [2]string{c.Found, c.Outcome})

	code, out, errOut := qugo(t, f.taskArgs("cancel", 8, ids[0], "-retention", retention.String())...)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "task "+ids[0]+" of order 8 (analyser 0) finished already (done): left as it is\n", out)
	stats, err := f.q.Stats(context.Background())
	require.NoError(t, err)
	assert.Zero(t, stats[0].Cancelled)
}

// Task IDs do not say which queue holds them: on one queue, the ID of a
// task of order 9 is found under -order 1 too. Its record says whose it
// is, and status and cancel refuse it (a usage error: a wrong argument),
// cancel before it writes anything.
func TestStatusAndCancelOfAnotherOrdersTask(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 1, 1) // every OrderID shares the one queue
	sched, err := f.q.AddTaskAfter(ctx, 9, time.Hour, []byte("later"))
	require.NoError(t, err)
	ids := f.add(t, 0, 9, 9) // order 0's is pending, then 9's dies and 9's waits
	claimKilling(t, f.consume(t, 0), 2, 1)

	for _, tc := range []struct {
		order, asked uint64
		id, state    string
	}{
		{9, 1, sched, "scheduled"},
		{0, 5, ids[0], "pending"}, // OrderID 0 is an OrderID too
		{9, 0, ids[1], "dead"},
	} {
		for _, flags := range [][]string{nil, {"-json"}} {
			code, out, errOut := qugo(t, f.taskArgs("status", tc.asked, tc.id, flags...)...)
			assert.Equal(t, exitUsage, code, tc.state)
			assert.Empty(t, out, tc.state)
			assert.Contains(t, errOut, fmt.Sprintf("qugo: status: task %s belongs to order %d, not to -order %d (the two share a queue): "+
				"give -order %d for its status\n", tc.id, tc.order, tc.asked, tc.order), tc.state)
			assert.NotContains(t, errOut, "for usage", "the fix is in the message, not in the flags' usage")
		}
		code, out, errOut := qugo(t, f.taskArgs("cancel", tc.asked, tc.id)...)
		assert.Equal(t, exitUsage, code, tc.state)
		assert.Empty(t, out, tc.state)
		assert.Contains(t, errOut, fmt.Sprintf("qugo: cancel: task %s belongs to order %d, not to -order %d (the two share a queue): "+
			"nothing was cancelled; to cancel it, give -order %d\n", tc.id, tc.order, tc.asked, tc.order), tc.state)
		assert.NotContains(t, errOut, "for usage", tc.state)

		// Nothing was marked nor removed, and under its own order the
		// task reads as before.
		st, err := f.q.Status(ctx, tc.order, tc.id)
		require.NoError(t, err)
		assert.Equal(t, tc.state, st.State.String())
		assert.False(t, st.CancelAsked, tc.state)
		doc := qugoJSON[statusDoc](t, f.taskArgs("status", tc.order, tc.id, "-json")...)
		assert.Equal(t, tc.state, doc.State)
	}
	stats, err := f.q.Stats(ctx)
	require.NoError(t, err)
	assert.Equal(t, [2]int64{1, 0}, [2]int64{stats[0].Scheduled, stats[0].Cancelled})

	// A task in the ready list has no record to tell whose it is: status
	// and cancel take -order's word for it, as before.
	code, _, errOut := qugo(t, f.taskArgs("status", 1, ids[2])...)
	assert.Equal(t, exitOK, code, errOut)
	assert.Contains(t, errOut, "never was under this -order")
	doc := qugoJSON[cancelDoc](t, f.taskArgs("cancel", 9, sched, "-json")...)
	assert.Equal(t, [2]string{"scheduled", "removed"}, [2]string{doc.Found, doc.Outcome})
}

func TestTaskOrder(t *testing.T) {
	t.Parallel()
	added := time.UnixMilli(1)
	for _, tc := range []struct {
		name  string
		st    queue.TaskStatus
		order uint64
		known bool
	}{
		{"pending", queue.TaskStatus{State: queue.StatePending, OrderID: 7, AddedAt: added}, 7, true},
		{"order 0", queue.TaskStatus{State: queue.StateScheduled, AddedAt: added}, 0, true},
		{"retrying", queue.TaskStatus{State: queue.StateRetrying, OrderID: 7, AddedAt: added}, 7, true},
		{"dead", queue.TaskStatus{State: queue.StateDead, OrderID: 7, AddedAt: added}, 7, true},
		{"a record that does not decode", queue.TaskStatus{State: queue.StateDead}, 0, false},
		{"done: the history keeps no OrderID", queue.TaskStatus{State: queue.StateDone, AddedAt: added}, 0, false},
		{"cancelled", queue.TaskStatus{State: queue.StateCancelled, AddedAt: added}, 0, false},
		{"unknown", queue.TaskStatus{CancelAsked: true}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			order, known := taskOrder(tc.st)
			assert.Equal(t, tc.order, order)
			assert.Equal(t, tc.known, known)
		})
	}
}

// A task that runs when it is cancelled: its owner takes the mark, and
// cancel and status say so.
func TestCancelSaysTheOwnerSawIt(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	ret := f.retained(t)
	ids := f.add(t, 4)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	running, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- ret.AnalysePool(ctx, 0, queue.PoolConfig{Workers: 1, TaskTimeout: -1, OnError: func(error) {}},
			func(tctx context.Context, _ queue.Task) error {
				close(running)
				<-tctx.Done()
				<-release // runs on after its ctx ended
				return tctx.Err()
			})
	}()
	<-running
	code, out, errOut := qugo(t, f.taskArgs("cancel", 4, ids[0])...)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "task "+ids[0]+" of order 4 (analyser 0) is held by an analyser, which has seen the cancel: the task does not start "+
		"if it had not, and if it runs its ctx is cancelled and, unless it returns nil, it is finished as cancelled, not retried\n", out)
	code, out, errOut = qugo(t, f.taskArgs("status", 4, ids[0])...)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "asked, seen by its owner, not yet carried out", statusRows(t, out)["cancel"])
	doc := qugoJSON[statusDoc](t, f.taskArgs("status", 4, ids[0], "-json")...)
	assert.True(t, doc.CancelAsked)
	assert.True(t, doc.CancelSeen)
	d, _ := loggedDashboard(t, f)
	cookie, _ := d.signIn(t)
	page := d.get(t, taskURL("4", ids[0]), cookie).Body.String()
	assert.Contains(t, page, `<dd id="cancel-asked">asked, seen by its owner, not yet carried out</dd>`)
	close(release)
	require.Eventually(t, func() bool {
		doc = qugoJSON[statusDoc](t, f.taskArgs("status", 4, ids[0], "-json")...)
		return doc.State == "cancelled"
	}, 10*time.Second, 20*time.Millisecond)
	assert.False(t, doc.CancelSeen)
	stop()
	require.NoError(t, <-done)
}
