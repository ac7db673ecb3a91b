package main

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qugo/queue"
)

var quiet = slog.New(slog.DiscardHandler)

// openTestDB returns a pool on a fresh database with the schema applied.
func openTestDB(t *testing.T) *pgxpool.Pool {
	t.Helper()
	db, err := pgxpool.New(context.Background(), testDB(t))
	require.NoError(t, err)
	t.Cleanup(db.Close)
	require.NoError(t, migrate(context.Background(), db))
	return db
}

// newTestQueue returns a queue over r miniredis servers with q queues each,
// their clocks running (runClock).
func newTestQueue(t *testing.T, r, q int) (*queue.Queue, []string) {
	t.Helper()
	urls := make([]string, r)
	for i := range urls {
		m := miniredis.RunT(t)
		runClock(t, m)
		urls[i] = "redis://" + m.Addr()
	}
	qu, err := queue.Dial(context.Background(), urls, queue.Config{Queues: q})
	require.NoError(t, err)
	t.Cleanup(func() { qu.Close() })
	return qu, urls
}

// runClock makes m's keys expire as time passes, as a real server's do
// (miniredis's stand still unless moved on): a lease its holder could not
// release (its renewals too late, say, on a loaded machine) lapses after
// its TTL rather than keep the queue from every other member for good.
func runClock(t *testing.T, m *miniredis.Miniredis) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		last := time.Now()
		for {
			select {
			case <-done:
				return
			case now := <-tick.C:
				m.FastForward(now.Sub(last))
				last = now
			}
		}
	})
	t.Cleanup(func() { close(done); wg.Wait() })
}

func TestMigrateIsIdempotentAndConcurrent(t *testing.T) {
	t.Parallel()
	db := openTestDB(t)
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() { assert.NoError(t, migrate(context.Background(), db)) })
	}
	wg.Wait()
}

func TestInsertTasksIsIdempotentAndKeepsOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTestDB(t)
	at := time.UnixMilli(1_700_000_000_123)
	rows := []taskRow{
		{ID: "a", OrderID: math.MaxUint64, Payload: []byte("p1"), AddedAt: at, Attempt: 1, Analyser: 2},
		{ID: "b", OrderID: 7, Payload: []byte{0, 1, 2}, AddedAt: at, Attempt: 3},
		{ID: "a", OrderID: math.MaxUint64, Payload: []byte("p1 again"), AddedAt: at, Attempt: 2},
	}
	require.NoError(t, insertTasks(ctx, db, rows))
	require.NoError(t, insertTasks(ctx, db, rows[:1]), "a redelivery inserts nothing and is no error")
	require.NoError(t, insertTasks(ctx, db, []taskRow{{ID: "c", OrderID: 7, Payload: []byte("x"), AddedAt: at, Attempt: 1}}))

	r, err := db.Query(ctx, `SELECT task_id, order_id::text, payload, added_at, attempt, analyser FROM tasks ORDER BY seq`)
	require.NoError(t, err)
	type got struct {
		id, order  string
		payload    []byte
		added      time.Time
		attempt, a int32
	}
	var all []got
	for r.Next() {
		var g got
		require.NoError(t, r.Scan(&g.id, &g.order, &g.payload, &g.added, &g.attempt, &g.a))
		all = append(all, g)
	}
	require.NoError(t, r.Err())
	require.Len(t, all, 3)
	assert.Equal(t, got{"a", "18446744073709551615", []byte("p1"), all[0].added, 1, 2}, all[0], "the first write wins")
	assert.True(t, at.Equal(all[0].added))
	assert.Equal(t, []string{"a", "b", "c"}, []string{all[0].id, all[1].id, all[2].id}, "seq follows insert order")
	assert.Equal(t, []byte{0, 1, 2}, all[1].payload)
}

func TestInsertTasksReportsServerErrors(t *testing.T) {
	t.Parallel()
	db := openTestDB(t)
	err := insertTasks(context.Background(), db, []taskRow{{ID: "nil payload", Payload: nil, AddedAt: time.Now()}})
	require.Error(t, err)
	assert.True(t, isServerError(err), "a NOT NULL violation comes from the server: %v", err)
	assert.False(t, isServerError(errors.New("dial tcp: connection refused")))
}

// buryOne enqueues a task on analyser 0 and fails it until it is dead.
func buryOne(t *testing.T, q *queue.Queue, payload, cause string) string {
	t.Helper()
	ctx := context.Background()
	id, err := q.AddTask(ctx, 0, []byte(payload))
	require.NoError(t, err)
	c, err := q.Consume(ctx, 0, queue.ConsumerConfig{MaxAttempts: 1})
	require.NoError(t, err)
	defer c.Release(ctx)
	tasks, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Len(t, tasks, 1)
	dead, err := c.Fail(ctx, tasks[0], errors.New(cause))
	require.NoError(t, err)
	require.True(t, dead)
	return id
}

func TestDeadMirrorRecordsFailedJobs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTestDB(t)
	q, _ := newTestQueue(t, 1, 1)
	before := buryOne(t, q, "early", "died before the mirror started")

	m := newDeadMirror(q, db, quiet, []int{0}, time.Hour)
	mctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Run(mctx)
	}()
	defer func() { stop(); <-done }()

	type job struct {
		payload  string
		attempts int32
		err      string
	}
	read := func(id string) (job, bool) {
		var j job
		var payload []byte
		err := db.QueryRow(ctx, `SELECT payload, attempts, error FROM failed_jobs WHERE task_id = $1`, id).Scan(&payload, &j.attempts, &j.err)
		j.payload = string(payload)
		return j, err == nil
	}
	require.Eventually(t, func() bool { _, ok := read(before); return ok }, 10*time.Second, 10*time.Millisecond,
		"the first sync records deaths from before the process")
	j, _ := read(before)
	assert.Equal(t, job{"early", 1, "died before the mirror started"}, j)

	later := buryOne(t, q, "late", "boom")
	m.Notify(0)
	require.Eventually(t, func() bool { _, ok := read(later); return ok }, 10*time.Second, 10*time.Millisecond)

	// Replayed and dead again: the row holds the latest death.
	n, err := q.Replay(ctx, 0, later)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	c, err := q.Consume(ctx, 0, queue.ConsumerConfig{MaxAttempts: 1})
	require.NoError(t, err)
	tasks, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Len(t, tasks, 1)
	_, err = c.Fail(ctx, tasks[0], errors.New("boom again"))
	require.NoError(t, err)
	require.NoError(t, c.Release(ctx))
	m.Notify(0)
	require.Eventually(t, func() bool { j, _ := read(later); return j.err == "boom again" }, 10*time.Second, 10*time.Millisecond)

	var rows int
	require.NoError(t, db.QueryRow(ctx, `SELECT count(*) FROM failed_jobs`).Scan(&rows))
	assert.Equal(t, 2, rows)
}

// While Postgres is down, the mirror reads the dead-letter store from
// Redis a second, then two, then four after its first failure, whatever
// the deaths reported meanwhile: it read the whole store again every
// second, and again for each report.
func TestDeadMirrorBacksOffWhilePostgresIsDown(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	q, err := queue.Dial(context.Background(), []string{"redis://" + mr.Addr()}, queue.Config{})
	require.NoError(t, err)
	defer q.Close()
	buryOne(t, q, "x", "dead")
	db, err := pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/none?connect_timeout=1")
	require.NoError(t, err)
	defer db.Close()
	m := newDeadMirror(q, db, quiet, []int{0}, time.Hour)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	before := mr.CommandCount()
	go func() {
		defer close(done)
		m.Run(ctx)
	}()
	reads := func() int { return mr.CommandCount() - before }
	require.Eventually(t, func() bool { return reads() > 0 }, 5*time.Second, time.Millisecond, "the first sync")
	first := reads() // a sync's commands
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); {
		m.Notify(0) // deaths reported while Postgres is down
		time.Sleep(time.Millisecond)
	}
	stop()
	<-done
	// Over 2 s: the first sync, the retry after 1 s (the next comes 2 s
	// later), and the final one at the stop.
	assert.LessOrEqual(t, reads(), 3*first, "syncs: %d commands, %d a sync", reads(), first)
}
