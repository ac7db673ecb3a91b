package main

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/qugo/queue"
)

//go:embed schema.sql
var schemaSQL string

// schemaLock is the advisory lock key that serialises schema creation
// among analysers starting at the same time.
const schemaLock = 0x7175676f

// migrate creates the tables if they do not exist.
func migrate(ctx context.Context, db *pgxpool.Pool) error {
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", schemaLock); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, schemaSQL)
		return err
	})
	if err != nil {
		return fmt.Errorf("create schema: %w", err)
	}
	return nil
}

// taskRow is one row of the tasks table.
type taskRow struct {
	ID       string
	OrderID  uint64
	Payload  []byte
	AddedAt  time.Time
	Attempt  int
	Analyser int
}

func newTaskRow(t queue.Task, analyser int) taskRow {
	return taskRow{ID: t.ID, OrderID: t.OrderID, Payload: t.Payload, AddedAt: t.AddedAt, Attempt: t.Attempt, Analyser: analyser}
}

// insertTasksSQL writes a batch in one statement (one implicit
// transaction), in the order given; rows already there are left alone, so
// a redelivered task adds nothing. OrderIDs travel as text because a
// uint64 does not fit a bigint.
const insertTasksSQL = `
INSERT INTO tasks (task_id, order_id, payload, added_at, attempt, analyser)
SELECT u.task_id, u.order_id::numeric, u.payload, u.added_at, u.attempt, u.analyser
FROM unnest($1::text[], $2::text[], $3::bytea[], $4::timestamptz[], $5::int[], $6::int[])
     WITH ORDINALITY AS u(task_id, order_id, payload, added_at, attempt, analyser, n)
ORDER BY u.n
ON CONFLICT (task_id) DO NOTHING`

// insertTasks writes rows to the tasks table, all or none.
func insertTasks(ctx context.Context, db *pgxpool.Pool, rows []taskRow) error {
	ids := make([]string, len(rows))
	orders := make([]string, len(rows))
	payloads := make([][]byte, len(rows))
	added := make([]time.Time, len(rows))
	attempts := make([]int32, len(rows))
	analysers := make([]int32, len(rows))
	for i, r := range rows {
		ids[i], orders[i], payloads[i], added[i] = r.ID, strconv.FormatUint(r.OrderID, 10), r.Payload, r.AddedAt
		attempts[i], analysers[i] = int32(r.Attempt), int32(r.Analyser)
	}
	if _, err := db.Exec(ctx, insertTasksSQL, ids, orders, payloads, added, attempts, analysers); err != nil {
		return fmt.Errorf("insert %d tasks: %w", len(rows), err)
	}
	return nil
}

// isServerError reports whether Postgres itself rejected a statement (as
// opposed to a connection or timeout error): then retrying a failed batch
// row by row can isolate the row at fault.
func isServerError(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr)
}

// upsertFailedSQL writes dead tasks to failed_jobs, keeping each task's
// latest death.
const upsertFailedSQL = `
INSERT INTO failed_jobs (task_id, order_id, payload, attempts, error, died_at, analyser)
SELECT u.task_id, u.order_id::numeric, u.payload, u.attempts, u.error, u.died_at, $7
FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int[], $5::text[], $6::timestamptz[])
     AS u(task_id, order_id, payload, attempts, error, died_at)
ON CONFLICT (task_id) DO UPDATE SET
    order_id = excluded.order_id, payload = excluded.payload, attempts = excluded.attempts,
    error = excluded.error, died_at = excluded.died_at, analyser = excluded.analyser, recorded_at = now()
WHERE failed_jobs.died_at <= excluded.died_at`

// failedChunk bounds the rows of one failed_jobs upsert.
const failedChunk = 1000

// upsertFailed writes dead tasks of analyser to failed_jobs.
func upsertFailed(ctx context.Context, db *pgxpool.Pool, analyser int, dead []queue.DeadTask) error {
	for len(dead) > 0 {
		chunk := dead[:min(len(dead), failedChunk)]
		dead = dead[len(chunk):]
		ids := make([]string, len(chunk))
		orders := make([]string, len(chunk))
		payloads := make([][]byte, len(chunk))
		attempts := make([]int32, len(chunk))
		errs := make([]string, len(chunk))
		died := make([]time.Time, len(chunk))
		for i, d := range chunk {
			ids[i], orders[i], payloads[i] = d.ID, strconv.FormatUint(d.OrderID, 10), d.Payload
			if d.Raw != nil {
				payloads[i] = d.Raw
			}
			attempts[i], errs[i], died[i] = int32(d.Attempts), d.LastError, d.DiedAt
		}
		if _, err := db.Exec(ctx, upsertFailedSQL, ids, orders, payloads, attempts, errs, died, int32(analyser)); err != nil {
			return fmt.Errorf("record %d failed jobs of analyser %d: %w", len(chunk), analyser, err)
		}
	}
	return nil
}

// deadMirror copies the queue's dead-letter stores into failed_jobs. The
// dead-letter store in Redis stays the source of truth (inspect, replay,
// purge it there); the mirror syncs an analyser when a pool reports a
// dead-lettered task, at start, and every Every, so tasks buried without
// a report (recovered crash loops) arrive too.
type deadMirror struct {
	q         *queue.Queue
	db        *pgxpool.Pool
	log       *slog.Logger
	analysers []int
	every     time.Duration

	mu    sync.Mutex
	dirty map[int]bool
	kick  chan struct{}

	written map[int]map[string]string // per analyser: task ID -> deathKey recorded; Run's goroutine only
}

func newDeadMirror(q *queue.Queue, db *pgxpool.Pool, log *slog.Logger, analysers []int, every time.Duration) *deadMirror {
	m := &deadMirror{
		q: q, db: db, log: log, analysers: analysers, every: every,
		dirty: map[int]bool{}, kick: make(chan struct{}, 1), written: map[int]map[string]string{},
	}
	for _, a := range analysers {
		m.dirty[a] = true // the first sync catches up on deaths from before this process
	}
	return m
}

// Notify marks analyser's dead-letter store for a sync. It never blocks,
// so a pool's OnError may call it.
func (m *deadMirror) Notify(analyser int) {
	m.mu.Lock()
	m.dirty[analyser] = true
	m.mu.Unlock()
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// Run syncs marked analysers until ctx ends, then once more (bounded by
// a few seconds) so deaths reported during the shutdown are recorded.
//
// A sync reads the whole store from Redis: while syncs fail (Postgres
// down, when deaths pile up), the next waits a second, then twice as long
// each time up to mirrorMaxBackoff, and reports and ticks only mark the
// stores for it, rather than read them all again for each death.
func (m *deadMirror) Run(ctx context.Context) {
	tick := time.NewTicker(m.every)
	defer tick.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	var backoff time.Duration // 0 while syncs succeed
	sync := true
	for {
		if sync {
			if m.syncDirty(ctx) {
				backoff = 0
			} else {
				backoff = min(max(2*backoff, time.Second), mirrorMaxBackoff)
				retry.Reset(backoff)
			}
		}
		select {
		case <-ctx.Done():
			final, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			m.syncDirty(final)
			cancel()
			return
		case <-m.kick:
			sync = backoff == 0
		case <-retry.C:
			sync = true
		case <-tick.C:
			m.mu.Lock()
			for _, a := range m.analysers {
				m.dirty[a] = true
			}
			m.mu.Unlock()
			sync = backoff == 0
		}
	}
}

// mirrorMaxBackoff bounds the wait between failed syncs of the dead-letter
// mirror, and mirrorSyncTimeout one analyser's sync (a Postgres that hangs
// does not hold the mirror).
const (
	mirrorMaxBackoff  = time.Minute
	mirrorSyncTimeout = time.Minute
)

// syncDirty syncs every marked analyser and reports whether all succeeded;
// those that failed stay marked.
func (m *deadMirror) syncDirty(ctx context.Context) bool {
	m.mu.Lock()
	todo := make([]int, 0, len(m.dirty))
	for a := range m.dirty {
		todo = append(todo, a)
	}
	clear(m.dirty)
	m.mu.Unlock()
	ok := true
	for _, a := range todo {
		sctx, cancel := context.WithTimeout(ctx, mirrorSyncTimeout)
		err := m.sync(sctx, a)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				m.log.Error("record failed jobs", "analyser", a, "err", err)
			}
			m.mu.Lock()
			m.dirty[a] = true
			m.mu.Unlock()
			ok = false
		}
	}
	return ok
}

// sync writes analyser's dead tasks that are not yet recorded.
func (m *deadMirror) sync(ctx context.Context, analyser int) error {
	dead, err := m.q.Dead(ctx, analyser)
	if err != nil {
		return err
	}
	seen := m.written[analyser]
	var news []queue.DeadTask
	now := make(map[string]string, len(dead))
	for _, d := range dead {
		key := deathKey(d)
		now[d.ID] = key
		if seen[d.ID] != key {
			news = append(news, d)
		}
	}
	if err := upsertFailed(ctx, m.db, analyser, news); err != nil {
		return err
	}
	if len(news) > 0 {
		m.log.Info("recorded failed jobs", "analyser", analyser, "tasks", len(news))
	}
	m.written[analyser] = now // forgets tasks replayed or purged since
	return nil
}

// deathKey tells one death of a task from another: a replayed task that
// dies again has a new time (and likely a new error).
func deathKey(d queue.DeadTask) string {
	return strconv.FormatInt(d.DiedAt.UnixMilli(), 10) + ":" + strconv.Itoa(d.Attempts) + ":" + d.LastError
}
