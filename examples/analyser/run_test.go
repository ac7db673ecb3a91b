package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qugo/queue"
)

// TestRunWritesEveryTaskOnceInOrder runs the analyser on four queues (two
// servers, two queues each) and checks that every task has one row, in
// enqueue order per OrderID, and that /metrics reports the work.
func TestRunWritesEveryTaskOnceInOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pgURL := testDB(t)
	q, urls := newTestQueue(t, 2, 2)

	const orders, perOrder = 40, 50
	var tasks []queue.Task
	for n := range perOrder {
		for o := range orders {
			tasks = append(tasks, queue.Task{OrderID: uint64(o), Payload: fmt.Appendf(nil, "%d:%d", o, n)})
		}
	}
	ids, err := q.AddTasks(ctx, tasks)
	require.NoError(t, err)

	// A row already written by an earlier delivery: the redelivery must
	// not add a second one.
	db, err := pgxpool.New(ctx, pgURL)
	require.NoError(t, err)
	defer db.Close()
	require.NoError(t, migrate(ctx, db))
	require.NoError(t, insertTasks(ctx, db, []taskRow{{ID: ids[0], OrderID: 0, Payload: []byte("0:0"), AddedAt: time.Now(), Attempt: 1}}))

	cfg, err := parseFlags([]string{
		"-id", "0-3", "-worker", "4", "-redis", strings.Join(urls, ","), "-queues", "2",
		"-pg", pgURL, "-batch", "32", "-metrics", "127.0.0.1:0", "-log-every", "50ms",
	}, io.Discard)
	require.NoError(t, err)
	runCtx, stop := context.WithCancel(ctx)
	addrs := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- run(runCtx, cfg, quiet, func(a net.Addr) { addrs <- a }) }()
	stopped := false
	defer func() {
		if !stopped {
			stop()
			<-done
		}
	}()
	addr := <-addrs

	count := func() int {
		var n int
		require.NoError(t, db.QueryRow(ctx, `SELECT count(*) FROM tasks`).Scan(&n))
		return n
	}
	require.Eventually(t, func() bool { return count() == len(tasks) }, 60*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool {
		body := scrape(t, addr)
		return strings.Contains(body, "qugo_up 1") &&
			metricSum(body, "qugo_queue_processed_total") == float64(len(tasks)) &&
			strings.Contains(body, `qugo_handler_duration_seconds_count{analyser="3",outcome="ok"}`)
	}, 30*time.Second, 20*time.Millisecond, "every ack reaches Redis and the metrics")

	stop()
	require.NoError(t, <-done)
	stopped = true

	next := rowsInOrder(t, db)
	assert.Len(t, next, orders)
	for o, n := range next {
		assert.Equal(t, perOrder, n, "order %s", o)
	}
	st, err := q.Stats(ctx)
	require.NoError(t, err)
	for _, s := range st {
		assert.Zero(t, s.Ready+s.Pending+s.Dead, "analyser %d drained", s.Analyser)
		assert.Empty(t, s.Owner, "analyser %d released its lease", s.Analyser)
	}
}

func TestRunRejectsAnAnalyserOutOfRange(t *testing.T) {
	t.Parallel()
	pgURL := testDB(t)
	_, urls := newTestQueue(t, 1, 1)
	_, err := parseFlags([]string{"-id", "0-1", "-redis", urls[0], "-pg", pgURL, "-metrics", ""}, io.Discard)
	assert.EqualError(t, err, "-id 1: out of range: -id must be 0 (1 Redis server x 1 queue; raise -queues, or give more -redis URLs, as every process of this queue does)")
	// A config made otherwise is refused by run.
	cfg, err := parseFlags([]string{"-id", "0", "-redis", urls[0], "-pg", pgURL, "-metrics", ""}, io.Discard)
	require.NoError(t, err)
	cfg.IDs = idList{0, 1}
	err = run(context.Background(), cfg, quiet, nil)
	assert.EqualError(t, err, "-id 1: out of range: -id must be 0 (1 Redis server x 1 queue; raise -queues, or give more -redis URLs, as every process of this queue does)")
}

// A -metrics address in use (the first analyser's, for a standby started
// on the same machine) is refused, saying which flag to give.
func TestServeMetricsAddressInUse(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	_, err = serveMetrics(ln.Addr().String(), quiet, nil)
	assert.ErrorContains(t, err, "address already in use: give this process another -metrics address (or -metrics \"\" for none)")
}

// A Postgres that does not answer is reported on one line: pgx's error
// has a line per address tried, which the text log showed as \n\t.
func TestOpenDBErrorOnOneLine(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	// sslmode=prefer (the default) dials twice: two lines from pgx.
	_, err = openDB(context.Background(), config{PG: "postgres://u@" + addr + "/db", Flushers: 1})
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "\n")
	assert.Contains(t, err.Error(), "postgres: failed to connect to `user=u database=db`: "+addr+" (127.0.0.1): dial error: ")
	assert.Contains(t, err.Error(), "; "+addr+" (127.0.0.1): dial error: ")

	var log strings.Builder
	slog.New(slog.NewTextHandler(&log, nil)).Error("analyser stopped", "err", err)
	assert.NotContains(t, log.String(), `\n`)
}

func scrape(t *testing.T, addr net.Addr) string {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}} // no idle conns left for goleak
	resp, err := client.Get("http://" + addr.String() + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(b))
	return string(b)
}

// metricSum adds the values of every sample of name in a text exposition.
func metricSum(body, name string) float64 {
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		if v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// A wrong -queues fails before anything says started, and says what the
// server has recorded and which flag to change.
func TestRunRefusesAWrongLayoutBeforeStarting(t *testing.T) {
	t.Parallel()
	pgURL := testDB(t)
	q, urls := newTestQueue(t, 1, 2)
	_, err := q.AddTask(context.Background(), 1, []byte("x")) // records 1 server x 2 queues
	require.NoError(t, err)
	cfg, err := parseFlags([]string{"-id", "0", "-redis", urls[0], "-pg", pgURL, "-metrics", ""}, io.Discard)
	require.NoError(t, err)
	logs := &captured{}
	err = run(context.Background(), cfg, slog.New(logs), nil)
	assert.ErrorIs(t, err, queue.ErrLayoutMismatch)
	assert.EqualError(t, err, "layout mismatch: "+urls[0]+` under -prefix "qugo" has recorded 1 Redis server x 2 queues with itself at place 1: `+
		"start with -queues 2 and 1 -redis URL, this one at place 1 (or, to start afresh, another -prefix)")
	for _, l := range logs.lines() {
		assert.NotContains(t, l, "started")
		assert.NotContains(t, l, "stopped")
	}
}

// A layout mismatch is told in flags, never in the library's
// Config fields, which the analyser's user cannot set; the library's
// error stays its cause.
func TestLayoutAdviceNamesFlags(t *testing.T) {
	t.Parallel()
	urls := []string{"redis://:pw@a:1", "redis://:pw@b:2"}
	for _, tc := range []struct{ want, got, advice string }{
		{"partitions=2 queues=1 index=1", "partitions=1 queues=2 index=0", `layout mismatch: redis://b:2 under -prefix "orders" has recorded ` +
			"1 Redis server x 2 queues with itself at place 1: start with -queues 2 and 1 -redis URL, this one at place 1 " +
			"(or, to start afresh, another -prefix)"},
		{"partitions=2 queues=1 index=1", "x", `layout mismatch: redis://b:2 under -prefix "orders" has recorded x, not a layout this program reads: ` +
			"give another -prefix, or delete the record if nothing uses it"},
	} {
		le := &queue.LayoutError{Partition: 1, Prefix: "orders", Want: tc.want, Got: tc.got}
		err := layoutAdvice(fmt.Errorf("check: %w", le), urls)
		assert.EqualError(t, err, tc.advice)
		assert.ErrorIs(t, err, queue.ErrLayoutMismatch)
		assert.NotContains(t, err.Error(), "Config.")
		assert.NotContains(t, err.Error(), "pw")
	}
	other := errors.New("other")
	assert.Same(t, other, layoutAdvice(other, urls), "other errors pass unchanged")
}

// TestRunGroupMembersShareTheQueues runs two analysers as members of one
// group over four queues: both hold two, every task has one row, and
// when one stops, the other takes its queues over and finishes the work.
func TestRunGroupMembersShareTheQueues(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pgURL := testDB(t)
	q, urls := newTestQueue(t, 2, 2)
	db, err := pgxpool.New(ctx, pgURL)
	require.NoError(t, err)
	defer db.Close()
	require.NoError(t, migrate(ctx, db))

	// The members' logs, shown should the test fail.
	logs := map[string]*captured{"a": {}, "b": {}}
	var summary string // what the test saw when it failed, logged again last
	t.Cleanup(func() {
		if t.Failed() {
			for _, m := range []string{"a", "b"} {
				t.Logf("member %s logged:\n%s", m, logs[m])
			}
			t.Logf("failed: %s", summary)
		}
	})
	start := func(member string) (stop func() error) {
		cfg, err := parseFlags([]string{
			"-group", "billing", "-member", member, "-worker", "1-3", "-redis", strings.Join(urls, ","), "-queues", "2",
			"-pg", pgURL, "-batch", "32", "-metrics", "", "-log-every", "50ms",
		}, io.Discard)
		require.NoError(t, err)
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- run(runCtx, cfg, slog.New(logs[member]), nil) }()
		var once sync.Once
		var runErr error
		return func() error { once.Do(func() { cancel(); runErr = <-done }); return runErr }
	}
	stopA := start("a")
	stopB := start("b")
	defer stopB()
	require.Eventually(t, func() bool {
		st, err := q.GroupStatus(ctx, "billing")
		return err == nil && len(st.Members) == 2 && len(st.Members[0].Analysers) == 2 && len(st.Members[1].Analysers) == 2
	}, 30*time.Second, 10*time.Millisecond)

	const orders, perOrder = 40, 25
	add := func(from, to int) {
		var tasks []queue.Task
		for n := from; n < to; n++ {
			for o := range orders {
				tasks = append(tasks, queue.Task{OrderID: uint64(o), Payload: fmt.Appendf(nil, "%d:%d", o, n)})
			}
		}
		_, err := q.AddTasks(ctx, tasks)
		require.NoError(t, err)
	}
	count := func() int {
		var n int
		require.NoError(t, db.QueryRow(ctx, `SELECT count(*) FROM tasks`).Scan(&n))
		return n
	}
	add(0, perOrder/2)
	require.NoError(t, stopA()) // leaves: b takes its queues
	add(perOrder/2, perOrder)
	if !assert.Eventually(t, func() bool { return count() == orders*perOrder }, 60*time.Second, 20*time.Millisecond) {
		st, err := q.Stats(ctx)
		gs, gerr := q.GroupStatus(ctx, "billing")
		summary = fmt.Sprintf("%d rows of %d; stats %+v (%v); group %+v (%v)", count(), orders*perOrder, st, err, gs, gerr)
		t.Fatal(summary)
	}

	// A leave that left a lease behind costs the others its TTL (the
	// servers' clocks run): not wrong, but worth seeing in the output.
	for _, l := range logs["a"].lines() {
		if strings.HasPrefix(l, "WARN") || strings.HasPrefix(l, "ERROR") {
			t.Logf("member a, leaving: %s", l)
		}
	}
	st, err := q.Stats(ctx)
	require.NoError(t, err)
	for _, s := range st {
		assert.Equal(t, "b", s.Owner, "analyser %d", s.Analyser)
	}
	var analysers int
	require.NoError(t, db.QueryRow(ctx, `SELECT count(DISTINCT analyser) FROM tasks`).Scan(&analysers))
	assert.Equal(t, 4, analysers)
	next := rowsInOrder(t, db)
	assert.Len(t, next, orders)
	require.NoError(t, stopB())
}

// rowsInOrder checks that the rows of each order hold its payloads
// "<order>:<n>" with n = 0, 1, 2... in seq order, and returns each
// order's row count.
func rowsInOrder(t *testing.T, db *pgxpool.Pool) map[string]int {
	t.Helper()
	rows, err := db.Query(context.Background(), `SELECT order_id::text, convert_from(payload, 'UTF8') FROM tasks ORDER BY order_id, seq`)
	require.NoError(t, err)
	defer rows.Close()
	next := map[string]int{}
	for rows.Next() {
		var order, payload string
		require.NoError(t, rows.Scan(&order, &payload))
		o, n, _ := strings.Cut(payload, ":")
		require.Equal(t, order, o)
		require.Equal(t, strconv.Itoa(next[order]), n, "order %s out of order", order)
		next[order]++
	}
	require.NoError(t, rows.Err())
	return next
}
