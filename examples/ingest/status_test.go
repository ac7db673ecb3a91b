package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/qugo/queue"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStatus(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	post := func(orderID uint64) string {
		code, out := f.post(t, fmt.Sprintf(`{"order_id": %d, "payload": "p"}`, orderID))
		require.Equal(t, http.StatusCreated, code)
		return ids(t, out)[0]
	}
	ctx := context.Background()

	// queued: in the ready list.
	queued := post(1)
	assert.Equal(t, map[string]any{"id": queued, "order_id": 1.0, "status": "queued", "attempts": 0.0}, f.status(t, queued, 1))

	// running: claimed, not finished.
	running := post(2)
	c2 := f.consume(t, 2, 0)
	task, err := c2.RemoveTask(ctx)
	require.NoError(t, err)
	require.Equal(t, running, task.ID)
	st := f.status(t, running, 2)
	assert.Equal(t, "running", st["status"])
	assert.EqualValues(t, 1, st["attempts"])

	// failed in Redis: dead-lettered, attempts and error from the store.
	dead := post(3)
	c3 := f.consume(t, 3, 1)
	task, err = c3.RemoveTask(ctx)
	require.NoError(t, err)
	isDead, err := c3.Fail(ctx, task, errors.New("bad sku"))
	require.NoError(t, err)
	require.True(t, isDead)
	assert.Equal(t, map[string]any{"id": dead, "order_id": 3.0, "status": "failed", "attempts": 1.0, "last_error": "bad sku"}, f.status(t, dead, 3))

	// done: the analyser wrote its row, and Redis keeps nothing.
	done := post(4)
	c4 := f.consume(t, 4, 0)
	task, err = c4.RemoveTask(ctx)
	require.NoError(t, err)
	f.store.set(done, storeRecord{OrderID: 4, Done: true, Attempts: 2})
	st = f.status(t, done, 4)
	assert.Equal(t, "done", st["status"], "a row in tasks means done even before the ack")
	_, err = c4.Ack(ctx, task.ID)
	require.NoError(t, err)
	assert.Equal(t, map[string]any{"id": done, "order_id": 4.0, "status": "done", "attempts": 2.0}, f.status(t, done, 4))

	// failed in Postgres only: the dead record was purged.
	purged := post(5)
	f.store.set(purged, storeRecord{OrderID: 5, Failed: true, Attempts: 5, LastError: "timeout"})
	st = f.status(t, purged, 5)
	assert.Equal(t, "failed", st["status"])
	assert.EqualValues(t, 5, st["attempts"])
	assert.Equal(t, "timeout", st["last_error"])

	// An id the service never issued is not found, nor is the README's
	// literal placeholder.
	f.notFound(t, "00000000000000000000", 9)
	f.notFound(t, "ID", 42)

	// Neither is a real id given with another task's order_id, whatever
	// the state of the task: queued, running, dead, done or purged.
	for _, tc := range []struct {
		id    string
		right uint64
	}{{queued, 1}, {running, 2}, {dead, 3}, {done, 4}, {purged, 5}} {
		for _, wrong := range []uint64{tc.right + 4, tc.right + 1} { // the same queue, another queue
			f.notFound(t, tc.id, wrong)
		}
	}
}

// notFound asserts that GET answers 404 for id with orderID.
func (f *fixture) notFound(t *testing.T, id string, orderID uint64) {
	t.Helper()
	code, out := f.do(t, http.MethodGet, fmt.Sprintf("/v1/tasks/%s?order_id=%d", id, orderID), "")
	assert.Equal(t, http.StatusNotFound, code, "%s with order_id %d: %v", id, orderID, out)
	assert.Equal(t, fmt.Sprintf("no task %s with order_id %d: the id is unknown, belongs to another order_id, "+
		"or was issued longer ago than this service remembers", id, orderID), out["error"])
}

func TestStatusWithoutPostgres(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{noStore: true})
	code, out := f.post(t, `{"order_id": 11, "payload": "p"}`)
	require.Equal(t, http.StatusCreated, code)
	id := ids(t, out)[0]
	c := f.consume(t, 11, 0)
	task, err := c.RemoveTask(context.Background())
	require.NoError(t, err)
	assert.Equal(t, "running", f.status(t, id, 11)["status"])
	_, err = c.Ack(context.Background(), task.ID)
	require.NoError(t, err)
	assert.Equal(t, "queued", f.status(t, id, 11)["status"], "without Postgres a finished task cannot be told from a queued one")
}

func TestStatusBadRequest(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	for _, path := range []string{
		"/v1/tasks/abc",                        // no order_id
		"/v1/tasks/abc?order_id=",              // empty order_id
		"/v1/tasks/abc?order_id=-3",            // negative
		"/v1/tasks/abc?order_id=x",             // not a number
		"/v1/tasks/a-b?order_id=1",             // bad id
		"/v1/tasks/" + strings.Repeat("a", 65), // too long
	} {
		code, out := f.do(t, http.MethodGet, path, "")
		assert.Equal(t, http.StatusBadRequest, code, path)
		assert.NotEmpty(t, out["error"], path)
	}
}

// runPool runs a pool on orderID's analyser with handler fn until the
// test ends; with exitOnEmpty, until its queue is empty, and it waits.
func (f *fixture) runPool(t *testing.T, orderID uint64, cfg queue.PoolConfig, fn queue.AnalyseFunc) {
	t.Helper()
	if cfg.ExitOnEmpty {
		require.NoError(t, f.q.AnalysePool(context.Background(), f.q.AnalyserOf(orderID), cfg, fn))
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.q.AnalysePool(ctx, f.q.AnalyserOf(orderID), cfg, fn) }()
	t.Cleanup(func() {
		stop()
		assert.NoError(t, <-done)
	})
}

// A delivery that failed waits out its backoff: retrying, with its error
// and when it runs again.
func TestStatusRetrying(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{noStore: true})
	code, out := f.post(t, `{"order_id": 6, "payload": "p"}`)
	require.Equal(t, http.StatusCreated, code)
	id := ids(t, out)[0]
	f.runPool(t, 6, queue.PoolConfig{Workers: 1, OnError: func(error) {}, Backoff: func(int) time.Duration { return time.Hour }},
		func(context.Context, queue.Task) error { return errors.New("supplier down") })
	var st map[string]any
	require.Eventually(t, func() bool {
		st = f.status(t, id, 6)
		return st["status"] == "retrying"
	}, 10*time.Second, 10*time.Millisecond)
	assert.EqualValues(t, 1, st["attempts"], "deliveries made")
	assert.Equal(t, "supplier down", st["last_error"])
	due, err := time.Parse(time.RFC3339Nano, st["due"].(string))
	require.NoError(t, err)
	assert.WithinDuration(t, time.Now().Add(time.Hour), due, time.Minute)
	f.notFound(t, id, 6+4) // the same queue, another order
}

// With -retention, finished tasks are told from Redis alone: done, or
// cancelled.
func TestStatusWithRetention(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{noStore: true, retention: time.Hour})
	post := func(payload string) string {
		code, out := f.post(t, `{"order_id": 3, "payload": "`+payload+`"}`)
		require.Equal(t, http.StatusCreated, code)
		return ids(t, out)[0]
	}
	done, cancelled := post("run"), post("skip")
	where, err := f.q.Cancel(context.Background(), 3, cancelled)
	require.NoError(t, err)
	require.Equal(t, queue.StateUnknown, where, "queued: marked")
	var ran []string
	f.runPool(t, 3, queue.PoolConfig{Workers: 1, ExitOnEmpty: true}, func(_ context.Context, task queue.Task) error {
		ran = append(ran, string(task.Payload))
		return nil
	})
	assert.Equal(t, []string{`"run"`}, ran)
	assert.Equal(t, map[string]any{"id": done, "order_id": 3.0, "status": "done", "attempts": 1.0}, f.status(t, done, 3))
	assert.Equal(t, map[string]any{"id": cancelled, "order_id": 3.0, "status": "cancelled", "attempts": 0.0}, f.status(t, cancelled, 3))
	f.notFound(t, done, 7)
	f.notFound(t, cancelled, 4)
}
