package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qugo/queue"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// benchPayload is what qugo bench adds as the place-th of total tasks.
func benchPayload(total, place uint32) []byte {
	p := make([]byte, benchHeader)
	copy(p, benchMagic)
	binary.BigEndian.PutUint32(p[len(benchMagic):], total)
	binary.BigEndian.PutUint32(p[len(benchMagic)+4:], place)
	binary.BigEndian.PutUint64(p[len(benchMagic)+8:], uint64(time.Now().UnixNano()))
	return p
}

func TestBench(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 2, 2)
	doc := qugoJSON[benchDoc](t, f.args("bench", "-n", "3000", "-orders", "70", "-workers", "4", "-batch", "64", "-json")...)
	assert.Equal(t, "bench", doc.Mode)
	assert.Equal(t, f.prefix, doc.Prefix)
	assert.Equal(t, 3000, doc.Tasks)
	assert.Equal(t, 70, doc.Orders)
	require.NotNil(t, doc.Check)
	assert.Equal(t, orderCheck{OK: true, Handled: 3000}, *doc.Check)
	require.NotNil(t, doc.LatencyMS)
	l := doc.LatencyMS
	assert.True(t, 0 <= l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max, "%+v", l)
	assert.Positive(t, doc.AddPerSecond)
	assert.Positive(t, doc.DrainPerSecond)

	// The table form says the same.
	code, out, errOut := qugo(t, f.args("bench", "-n", "200", "-orders", "7")...)
	assert.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "add:     200 tasks over 7 OrderIDs")
	assert.Contains(t, out, "drain:   200 tasks")
	assert.Contains(t, out, "(from the first add to the last task started: with the adds, at most their rate)")
	assert.Contains(t, out, "latency: add to start of handling: p50 ")
	assert.Contains(t, out, "order:   ok: every task handled, in order per OrderID (OrderIDs 7, duplicates 0, out of order 0, missing 0, foreign 0)")
}

// Without -prefix, bench works under its own prefix, never the default
// queue's.
func TestBenchOwnPrefix(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	if testRedisURL != "" {
		t.Skip("uses the fixed prefix qugo-bench-1x1, which tests on a shared server must not")
	}
	f.add(t, 1, 2, 3) // tasks of the default-prefixed fixture queue stay
	doc := qugoJSON[benchDoc](t, "-redis", f.urls[0], "bench", "-n", "50", "-orders", "5", "-json")
	assert.Equal(t, "qugo-bench-1x1", doc.Prefix)
	assert.True(t, doc.Check.OK)
	st, err := f.q.Stats(context.Background())
	require.NoError(t, err)
	assert.EqualValues(t, 3, st[0].Ready)
}

func TestBenchFillThenVerify(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 2)
	doc := qugoJSON[benchDoc](t, f.args("bench", "-fill", "-n", "500", "-orders", "9", "-json")...)
	assert.Equal(t, "fill", doc.Mode)
	assert.Nil(t, doc.Check)
	st, err := f.q.Stats(context.Background())
	require.NoError(t, err)
	assert.EqualValues(t, 500, st[0].Ready+st[1].Ready)

	// bench refuses a queue that holds tasks; after a fill, which
	// nothing drained, it advises the full check.
	code, _, errOut := qugo(t, f.args("bench", "-n", "10")...)
	assert.Equal(t, exitRuntime, code)
	assert.Regexp(t, `^qugo: bench: analyser \d's queue holds \d+ tasks: drain them with qugo bench -verify `+
		`\(qugo bench -verify -partial if the bench or fill that added them was stopped part way\); or give another -prefix\n$`, errOut)

	doc = qugoJSON[benchDoc](t, f.args("bench", "-verify", "-json")...)
	assert.Equal(t, "verify", doc.Mode)
	assert.Equal(t, 9, doc.Orders)
	assert.Equal(t, orderCheck{OK: true, Handled: 500}, *doc.Check)

	// An empty queue has nothing to verify, which is no failed check.
	code, out, errOut := qugo(t, f.args("bench", "-verify")...)
	assert.Equal(t, exitRuntime, code)
	assert.Equal(t, fmt.Sprintf("qugo: bench: nothing to verify: the queue under prefix %q is empty (add tasks with qugo bench -fill, or check -prefix)\n", f.prefix), errOut)
	assert.NotContains(t, out, "FAILED")
	assert.NotContains(t, out, "order:")

	// The text of a verify, which added nothing, times the drain from its start.
	qugoJSON[benchDoc](t, f.args("bench", "-fill", "-n", "20", "-orders", "3", "-json")...)
	code, out, errOut = qugo(t, f.args("bench", "-verify")...)
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "drain:   20 tasks in ")
	assert.Contains(t, out, "(from the start to the last task started: the drain alone, the analysers' ceiling)")
	assert.NotContains(t, out, "first add")
}

func TestBenchVerifyFindsFaults(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	// The next task is its OrderID's first, as after a fill: no drain
	// handled part of them, and the full check runs.
	_, err := f.q.AddTasks(context.Background(), []queue.Task{
		{OrderID: 5, Payload: benchPayload(2, 1)}, // place 2 never comes
		{OrderID: 4, Payload: benchPayload(3, 2)},
		{OrderID: 4, Payload: benchPayload(3, 1)}, // after place 2: out of order
	})
	require.NoError(t, err)
	code, out, errOut := qugo(t, f.args("bench", "-verify")...)
	assert.Equal(t, exitRuntime, code)
	assert.Contains(t, errOut, "qugo: bench: order check failed")
	assert.Contains(t, out, "order:   FAILED (OrderIDs 2, duplicates 0, out of order 2, missing 2, foreign 0)")
}

// A verify after an earlier drain handled each OrderID's first tasks:
// -verify, whose full check would find them missing (it cannot tell them
// from lost ones), refuses as bench does, before it takes anything, and
// names -partial; -verify -partial counts each OrderID from the first
// task it sees, and passes.
func TestBenchVerifyAfterAnEarlierDrain(t *testing.T) {
	t.Parallel()
	for _, partial := range []bool{false, true} {
		f := newFixture(t, 1, 1)
		ctx := context.Background()
		var tasks []queue.Task
		for place := uint32(1); place <= 5; place++ {
			for order := uint64(1); order <= 3; order++ {
				tasks = append(tasks, queue.Task{OrderID: order, Payload: benchPayload(5, place)})
			}
		}
		_, err := f.q.AddTasks(ctx, tasks)
		require.NoError(t, err)
		// The first drain handles the first 7 tasks, and stops.
		c, err := f.q.Consume(ctx, 0, queue.ConsumerConfig{LeaseTTL: time.Minute})
		require.NoError(t, err)
		got, err := c.Claim(ctx, 7)
		require.NoError(t, err)
		require.Len(t, got, 7)
		for _, task := range got {
			_, err := c.Ack(ctx, task.ID)
			require.NoError(t, err)
		}
		require.NoError(t, c.Release(ctx))

		// A bench refuses them, and advises -partial: some were drained.
		code, _, errOut := qugo(t, f.args("bench", "-n", "10")...)
		assert.Equal(t, exitRuntime, code)
		assert.Equal(t, "qugo: bench: analyser 0's queue holds 8 tasks: some were handled before "+
			"(by a bench or verify stopped part way, or by analysers): drain them with qugo bench -verify -partial; or give another -prefix\n", errOut)

		args := f.args("bench", "-verify", "-json")
		if !partial {
			code, out, errOut := qugo(t, args...)
			assert.Equal(t, exitRuntime, code, errOut)
			assert.Empty(t, out)
			assert.Regexp(t, `^qugo: bench: analyser 0's queue holds 8 tasks, and some were handled before \(the next one, task \w+ \(OrderID 2\), `+
				`is not its OrderID's first: by a bench or verify stopped part way, or by analysers\): a full check would count those as missing; `+
				`nothing was drained: drain them with qugo bench -verify -partial\n$`, errOut)
			st, err := f.q.Stats(ctx)
			require.NoError(t, err)
			assert.EqualValues(t, 8, st[0].Ready, "nothing taken")
			assert.EqualValues(t, 7, st[0].Processed, "the first drain's only")
			assert.Zero(t, st[0].Pending)
			continue
		}
		doc := qugoJSON[benchDoc](t, append(args, "-partial")...)
		require.NotNil(t, doc.Check)
		assert.Equal(t, orderCheck{OK: true, Handled: 8}, *doc.Check)
	}
}

func TestBenchUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"bench", "-fill", "-verify"},
		{"bench", "-partial"},
		{"bench", "-n", "0"},
		{"bench", "-size", "5"},
		{"bench", "-workers", "4097"},
		{"bench", "extra"},
	} {
		code, _, errOut := qugo(t, append([]string{"-redis", "redis://127.0.0.1:1"}, args...)...)
		assert.Equal(t, exitUsage, code, strings.Join(args, " "))
		assert.NotEmpty(t, errOut)
	}
}

// TestBenchWorkersBound checks that bench's -workers bound is the
// library's: a pool of maxBenchWorkers runs, one more is refused, so no
// -workers that bench takes makes its pools fail after the adds.
func TestBenchWorkersBound(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	ctx := context.Background()
	fn := func(context.Context, queue.Task) error { return nil }
	err := f.q.AnalysePool(ctx, 0, queue.PoolConfig{Workers: maxBenchWorkers + 1, ExitOnEmpty: true}, fn)
	require.ErrorIs(t, err, queue.ErrBadConfig)
	require.NoError(t, f.q.AnalysePool(ctx, 0, queue.PoolConfig{Workers: maxBenchWorkers, ExitOnEmpty: true}, fn))

	before := f.keys(t, 0)
	code, _, errOut := qugo(t, f.args("bench", "-n", "10", "-workers", fmt.Sprint(maxBenchWorkers+1))...)
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "-workers 4097: at most 4096")
	assert.ElementsMatch(t, before, f.keys(t, 0), "a refused bench writes nothing")
	n, err := f.q.Stats(ctx)
	require.NoError(t, err)
	assert.Zero(t, n[0].Ready, "a refused bench adds no task")
}

func TestBenchRate(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	// 200 tasks at 1000/s in batches of 10: the last batch is due at 190ms.
	doc := qugoJSON[benchDoc](t, f.args("bench", "-n", "200", "-orders", "4", "-batch", "10", "-producers", "2", "-rate", "1000", "-json")...)
	assert.GreaterOrEqual(t, doc.AddSeconds, 0.18)
	assert.True(t, doc.Check.OK)

	// The rate is over all producers, however many: 40 tasks at 200/s,
	// one task a batch, the last due at 195ms.
	f = newFixture(t, 1, 1)
	doc = qugoJSON[benchDoc](t, f.args("bench", "-n", "40", "-orders", "40", "-producers", "8", "-rate", "200", "-json")...)
	assert.GreaterOrEqual(t, doc.AddSeconds, 0.19)
	assert.True(t, doc.Check.OK)
}

// A bench that -timeout stops says so once, with what to do; the next
// bench names -verify -partial, which drains what is left and passes.
func TestBenchTimeout(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 2)
	code, out, errOut := qugo(t, f.args("bench", "-n", "2000000", "-orders", "50", "-timeout", "1s")...)
	assert.Equal(t, exitRuntime, code)
	assert.Empty(t, out)
	assert.Equal(t, 1, strings.Count(errOut, "\n"), errOut)
	assert.Regexp(t, `^qugo: bench: -timeout 1s ran out after at least \d+ of 2000000 tasks were added and \d+ handled: `+
		`give a longer -timeout or a smaller -n; (no task is left queued|\d+ tasks are left queued: `+
		`drain them with qugo bench -verify -partial before the next bench \(or give another -prefix\))\n$`, errOut)
	assert.NotContains(t, errOut, "deadline exceeded")
	assert.NotContains(t, errOut, "i/o timeout")
	if !strings.Contains(errOut, "no task is left queued") {
		// The pools stopped gracefully: their lease is free, and what
		// they had claimed is back in the ready list, in order.
		code, out, errOut = qugo(t, f.args("bench", "-verify", "-partial", "-timeout", "1m")...)
		assert.Equal(t, exitOK, code, errOut)
		assert.Contains(t, out, "order:   ok: ")
	}

	// A fill stopped part way leaves each OrderID's first tasks, and no
	// drain: -verify -partial passes on them.
	f = newFixture(t, 1, 2)
	code, out, errOut = qugo(t, f.args("bench", "-fill", "-n", "2000000", "-orders", "50", "-timeout", "1s")...)
	assert.Equal(t, exitRuntime, code)
	assert.Empty(t, out)
	assert.Regexp(t, `^qugo: bench: -timeout 1s ran out after at least \d+ of 2000000 tasks were added: `+
		`give a longer -timeout or a smaller -n; (no task is left queued|\d+ tasks are left queued: drain them with qugo bench -verify -partial before the next bench)`, errOut)
	if strings.Contains(errOut, "no task is left queued") {
		return // a machine stalled for the whole second: nothing to drain
	}

	// Nothing drained them: the refusal cannot tell them from a complete
	// fill's, and names -partial for a fill stopped part way.
	code, _, errOut = qugo(t, f.args("bench", "-n", "10")...)
	assert.Equal(t, exitRuntime, code)
	assert.Contains(t, errOut, "qugo bench -verify -partial if the bench or fill that added them was stopped part way")

	// A lease the stopped bench kept would never run out on miniredis:
	// -timeout bounds the wait.
	code, out, errOut = qugo(t, f.args("bench", "-verify", "-partial", "-timeout", "1m")...)
	assert.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "order:   ok: ")
	assert.Empty(t, errOut)
}

// A verify that -timeout stops before the queue is empty reports the
// check as incomplete, not failed, and how many tasks are left.
func TestBenchVerifyTimeout(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 2)
	layout := queue.Layout{Partitions: 1, Queues: 2}
	var tasks []queue.Task
	held := 0 // tasks of analyser 1, whose lease another consumer holds
	for order := uint64(0); order < 20; order++ {
		for place := uint32(1); place <= 3; place++ {
			tasks = append(tasks, queue.Task{OrderID: order, Payload: benchPayload(3, place)})
		}
		if layout.AnalyserOf(order) == 1 {
			held += 3
		}
	}
	require.Positive(t, held)
	require.Less(t, held, len(tasks))
	_, err := f.q.AddTasks(context.Background(), tasks)
	require.NoError(t, err)
	f.consume(t, 1) // the verify's pool of analyser 1 waits for its lease
	code, out, errOut := qugo(t, f.args("bench", "-verify", "-timeout", "1s")...)
	assert.Equal(t, exitRuntime, code)
	// Analyser 0's tasks are drained within the second on any machine
	// but a stalled one; the counts are checked for what they say
	// together, whatever the machine managed.
	m := regexp.MustCompile(`^qugo: bench: -timeout 1s ran out before the drain was complete, after (\d+) tasks were handled: ` +
		`give a longer -timeout; (\d+) tasks are left queued: drain them with qugo bench -verify -partial\n$`).FindStringSubmatch(errOut)
	require.NotNil(t, m, errOut)
	handled, _ := strconv.Atoi(m[1])
	left, _ := strconv.Atoi(m[2])
	assert.Equal(t, len(tasks), handled+left, "every task handled or left queued")
	assert.GreaterOrEqual(t, left, held, "analyser 1's tasks are all left")
	assert.Contains(t, out, fmt.Sprintf("drain:   %d tasks in ", handled))
	assert.Regexp(t, `order:   INCOMPLETE: -timeout 1s ran out \(OrderIDs \d+, duplicates 0, out of order 0, missing 0, foreign 0\)`, out)
	if handled == len(tasks)-held {
		assert.Contains(t, out, fmt.Sprintf("(OrderIDs %d,", 20-held/3))
	}
}

// With no server named, bench runs on an embedded miniredis, to try qugo
// with nothing installed, and says so.
func TestBenchEmbedded(t *testing.T) {
	t.Parallel()
	if name, _ := redisEnv(); name != "" {
		t.Skip(name + " names a server")
	}
	code, out, errOut := qugo(t, "bench", "-n", "500", "-orders", "20", "-workers", "4")
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, errOut, "qugo: bench: no -redis, $QUEUE_REDIS or $REDIS_URL given: using an embedded miniredis")
	assert.Contains(t, out, "order:   ok: every task handled, in order per OrderID")
}

// A field a mode does not measure is left out: a fill runs no workers, a
// verify adds no tasks.
func TestBenchFieldsByMode(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	code, out, errOut := qugo(t, f.args("bench", "-fill", "-n", "20", "-orders", "2", "-json")...)
	require.Equal(t, exitOK, code, errOut)
	var fill map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &fill), out)
	assert.NotContains(t, fill, "workers")
	assert.EqualValues(t, 20, fill["tasks"])
	code, out, errOut = qugo(t, f.args("bench", "-fill", "-n", "20", "-orders", "2", "-prefix", f.prefix+"-text")...)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, fmt.Sprintf("qugo bench (fill): prefix %q, 1 server x 1 queue\n", f.prefix+"-text"), strings.SplitAfter(out, "\n")[0])

	code, out, errOut = qugo(t, f.args("bench", "-verify", "-workers", "3", "-json")...)
	require.Equal(t, exitOK, code, errOut)
	var verify map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &verify), out)
	assert.NotContains(t, verify, "tasks")
	assert.EqualValues(t, 3, verify["workers"])
	assert.EqualValues(t, 20, verify["check"].(map[string]any)["handled"], "the tasks verified")
}

// A verify on a prefix nothing has used (a mistyped one) finds nothing
// to verify and writes nothing: no layout, no queue state. Else the
// layout of its flags would be recorded there, and refuse the producers
// and analysers of another layout that come later.
func TestBenchVerifyWritesNothingOnAnUnusedPrefix(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 2, 2)
	for _, json := range []bool{false, true} {
		args := f.args("bench", "-verify")
		if json {
			args = append(args, "-json")
		}
		code, out, errOut := qugo(t, args...)
		assert.Equal(t, exitRuntime, code)
		assert.Equal(t, fmt.Sprintf("qugo: bench: nothing to verify: the queue under prefix %q is empty (add tasks with qugo bench -fill, or check -prefix)\n", f.prefix), errOut)
		if json {
			assert.JSONEq(t, fmt.Sprintf(`{"mode":"verify","prefix":%q,"partitions":2,"queues":2,"orders":0,"workers":16,`+
				`"check":{"ok":false,"handled":0,"duplicates":0,"out_of_order":0,"missing":0,"foreign":0}}`, f.prefix), out)
		} else {
			assert.NotContains(t, out, "order:")
		}
		for i := range f.urls {
			assert.Empty(t, f.keys(t, i), "partition %d", i)
		}
	}
	// Another layout is still free to take the prefix.
	code, _, errOut := qugo(t, "-redis", f.urls[0], "-queues", "3", "-prefix", f.prefix, "stats")
	assert.Equal(t, exitOK, code, errOut)
}

// With -json, a bench or fill that -timeout stops while it adds prints
// its document all the same, saying what it did and why it stopped, and
// exits 1 with the message on standard error; the tasks it says were
// added are at least those it handled and those it left.
func TestBenchTimeoutWhileAddingJSON(t *testing.T) {
	t.Parallel()
	for _, fill := range []bool{false, true} {
		f := newFixture(t, 1, 2)
		args := f.args("bench", "-n", "2000", "-orders", "50", "-workers", "4", "-rate", "500", "-timeout", "1s", "-json")
		if fill {
			args = append(args, "-fill")
		}
		code, out, errOut := qugo(t, args...)
		assert.Equal(t, exitRuntime, code, fill)
		assert.Regexp(t, `^qugo: bench: -timeout 1s ran out after at least \d+ of 2000 tasks were added`, errOut, fill)
		require.Equal(t, 1, strings.Count(out, "\n"), "one JSON document on one line: %q", out)
		var doc benchDoc
		require.NoError(t, json.Unmarshal([]byte(out), &doc), out)
		assert.Equal(t, "-timeout 1s ran out", doc.Stopped, fill)
		assert.Less(t, doc.Tasks, 2000, fill)
		assert.Positive(t, doc.AddSeconds, fill)
		st, err := f.q.Stats(context.Background())
		require.NoError(t, err)
		var left int64
		for _, s := range st {
			left += s.Ready + s.Pending
		}
		if fill {
			assert.Equal(t, "fill", doc.Mode)
			assert.Nil(t, doc.Check)
			assert.GreaterOrEqual(t, int64(doc.Tasks), left)
			continue
		}
		assert.Equal(t, "bench", doc.Mode)
		require.NotNil(t, doc.Check)
		assert.False(t, doc.Check.OK)
		assert.Equal(t, 2000-doc.Check.Handled, doc.Check.Missing, "the tasks not handled yet")
		assert.GreaterOrEqual(t, int64(doc.Tasks), doc.Check.Handled-doc.Check.Duplicates+left)
		assert.Contains(t, errOut, fmt.Sprintf("were added and %d handled: ", doc.Check.Handled))

		// What is left is the tail of a drain, once the drain handled
		// more than every OrderID's first task (its pools may be slow to
		// start): a verify without -partial refuses it, and takes
		// nothing.
		if left == 0 || doc.Check.Handled < 200 {
			t.Logf("%d tasks handled and %d left: no tail to refuse", doc.Check.Handled, left)
			continue
		}
		code, out, errOut = qugo(t, f.args("bench", "-verify", "-timeout", "1m")...)
		assert.Equal(t, exitRuntime, code)
		assert.Empty(t, out)
		assert.Regexp(t, `, and some were handled before \(.*\): a full check would count those as missing; `+
			`nothing was drained: drain them with qugo bench -verify -partial\n$`, errOut)
		after, err := f.q.Stats(context.Background())
		require.NoError(t, err)
		for i := range st {
			assert.Equal(t, st[i].Ready+st[i].Pending, after[i].Ready+after[i].Pending, "analyser %d", i)
			assert.Equal(t, st[i].Processed, after[i].Processed, "analyser %d", i)
		}
		code, out, errOut = qugo(t, f.args("bench", "-verify", "-partial", "-timeout", "1m")...)
		assert.Equal(t, exitOK, code, errOut)
		assert.Contains(t, out, "order:   ok: ")
	}
}
