package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// pgStore reads the tables the analyser example writes: tasks (one row per
// finished task) and failed_jobs (one row per dead-lettered task). It only
// reads; the analyser creates the schema.
type pgStore struct {
	pool *pgxpool.Pool
}

// lookupSQL answers both questions in one round trip, through the primary
// key of each table (see examples/analyser/schema.sql).
const lookupSQL = `
SELECT t.attempt, t.order_id::text, f.attempts, f.error, f.order_id::text
FROM (SELECT 1) AS one
LEFT JOIN tasks AS t ON t.task_id = $1
LEFT JOIN failed_jobs AS f ON f.task_id = $1`

// Lookup implements taskStore. Before the analyser has created its tables
// every task reads as neither done nor failed.
func (s *pgStore) Lookup(ctx context.Context, id string) (storeRecord, error) {
	var (
		rec                  storeRecord
		done, attempts       *int32
		msg, doneOrd, badOrd *string
	)
	err := s.pool.QueryRow(ctx, lookupSQL, id).Scan(&done, &doneOrd, &attempts, &msg, &badOrd)
	if err != nil {
		if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == "42P01" { // undefined_table
			return storeRecord{}, nil
		}
		return rec, fmt.Errorf("look up task %s in postgres: %w", id, err)
	}
	if done != nil {
		rec.Done, rec.Attempts = true, int(*done)
		return rec, parseOrder(doneOrd, &rec.OrderID)
	}
	if attempts != nil {
		rec.Failed, rec.Attempts = true, int(*attempts)
		if err := parseOrder(badOrd, &rec.OrderID); err != nil {
			return rec, err
		}
	}
	if msg != nil {
		rec.LastError = *msg
	}
	return rec, nil
}

// parseOrder parses an order_id column read as text.
func parseOrder(s *string, to *uint64) error {
	if s == nil {
		return errors.New("postgres: a task row without order_id")
	}
	n, err := strconv.ParseUint(*s, 10, 64)
	if err != nil {
		return fmt.Errorf("postgres: order_id %q: %w", *s, err)
	}
	*to = n
	return nil
}
