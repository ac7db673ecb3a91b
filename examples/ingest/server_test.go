package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/gomodule/redigo/redis"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/qugo/queue"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeStore stands in for the analysers' Postgres tables.
type fakeStore struct {
	mu   sync.Mutex
	recs map[string]storeRecord
	err  error
}

func (f *fakeStore) Lookup(_ context.Context, id string) (storeRecord, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.recs[id], f.err
}

func (f *fakeStore) set(id string, r storeRecord) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.recs[id] = r
}

// fixture is an ingest server over miniredis, with R=2 partitions and Q=2
// queues so routing is exercised.
type fixture struct {
	ts    *httptest.Server
	q     *queue.Queue
	minis []*miniredis.Miniredis
	store *fakeStore
	srv   *server
}

type fixtureOpts struct {
	maxBody   int64
	dedup     time.Duration
	noStore   bool
	retention time.Duration // the queue's Config.Retention (-retention)
}

func newFixture(t *testing.T, o fixtureOpts) *fixture {
	t.Helper()
	f := &fixture{store: &fakeStore{recs: map[string]storeRecord{}}}
	var urls []string
	for range 2 {
		m := miniredis.RunT(t)
		f.minis = append(f.minis, m)
		urls = append(urls, "redis://"+m.Addr())
	}
	if o.maxBody == 0 {
		o.maxBody = 1 << 16
	}
	q, err := queue.Dial(context.Background(), urls, queue.Config{Prefix: "ingest-test", Queues: 2, MaxPayload: int(o.maxBody), Retention: o.retention})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	pools := []*redis.Pool{q.Pool(0), q.Pool(1)}
	f.q = q
	rec := &issued{pools: pools, route: q.Route, prefix: "ingest-test", ttl: time.Hour, now: time.Now}
	s := &server{q: q, issued: rec, metrics: newMetrics(), maxBody: o.maxBody, dedup: o.dedup, log: slog.New(slog.DiscardHandler)}
	f.srv = s
	if !o.noStore {
		s.store = f.store
	}
	s.health = q.Ping
	f.ts = httptest.NewServer(s.handler())
	t.Cleanup(f.ts.Close)
	return f
}

// do sends a request and decodes the JSON answer into a map.
func (f *fixture) do(t *testing.T, method, path, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, f.ts.URL+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := f.ts.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, "application/json", resp.Header.Get("Content-Type"), "body %s", raw)
	var out map[string]any
	require.NoError(t, json.Unmarshal(raw, &out), "body %q", raw)
	return resp.StatusCode, out
}

func (f *fixture) post(t *testing.T, body string) (int, map[string]any) {
	return f.do(t, http.MethodPost, "/v1/tasks", body)
}

func (f *fixture) status(t *testing.T, id string, orderID uint64) map[string]any {
	t.Helper()
	code, out := f.do(t, http.MethodGet, fmt.Sprintf("/v1/tasks/%s?order_id=%d", id, orderID), "")
	require.Equal(t, http.StatusOK, code, "%v", out)
	return out
}

// ready is how many tasks wait in all queues.
func (f *fixture) ready(t *testing.T) int64 {
	t.Helper()
	st, err := f.q.Stats(context.Background())
	require.NoError(t, err)
	var n int64
	for _, s := range st {
		n += s.Ready
	}
	return n
}

// consume claims a task of orderID's queue; release it with c.Release.
func (f *fixture) consume(t *testing.T, orderID uint64, maxAttempts int) *queue.Consumer {
	t.Helper()
	c, err := f.q.Consume(context.Background(), f.q.AnalyserOf(orderID), queue.ConsumerConfig{MaxAttempts: maxAttempts, LeaseTTL: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { c.Release(context.Background()) })
	return c
}

func ids(t *testing.T, out map[string]any) []string {
	t.Helper()
	raw, ok := out["ids"].([]any)
	require.True(t, ok, "no ids in %v", out)
	s := make([]string, len(raw))
	for i, v := range raw {
		s[i] = v.(string)
	}
	return s
}

func TestPostSingle(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	code, out := f.post(t, `{"order_id": 42, "payload": {"sku": "a-1",  "qty": 3}}`)
	require.Equal(t, http.StatusCreated, code, "%v", out)
	got := ids(t, out)
	require.Len(t, got, 1)
	assert.EqualValues(t, 1, f.ready(t))

	c := f.consume(t, 42, 0)
	task, err := c.RemoveTask(context.Background())
	require.NoError(t, err)
	assert.Equal(t, got[0], task.ID)
	assert.EqualValues(t, 42, task.OrderID)
	assert.Equal(t, `{"sku":"a-1","qty":3}`, string(task.Payload), "payload is stored compacted")
}

func TestPostArrayKeepsOrderPerOrderID(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	var items []string
	for i := range 40 {
		items = append(items, fmt.Sprintf(`{"order_id": %d, "payload": {"seq": %d}}`, i%4, i))
	}
	code, out := f.post(t, "["+strings.Join(items, ",")+"]")
	require.Equal(t, http.StatusCreated, code, "%v", out)
	got := ids(t, out)
	require.Len(t, got, 40)
	assert.EqualValues(t, 40, f.ready(t))

	// OrderIDs 0..3 map to the four analysers; each queue holds its
	// OrderID's tasks in posting order.
	for oid := range uint64(4) {
		c := f.consume(t, oid, 0)
		tasks, err := c.Claim(context.Background(), 100)
		require.NoError(t, err)
		require.Len(t, tasks, 10)
		for k, task := range tasks {
			i := int(oid) + 4*k
			assert.Equal(t, got[i], task.ID)
			assert.Equal(t, fmt.Sprintf(`{"seq":%d}`, i), string(task.Payload))
		}
	}
}

func TestPostBadInputEnqueuesNothing(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{maxBody: 512, dedup: time.Minute})
	cases := []struct {
		name, body string
		code       int
		msg        string
	}{
		{"empty body", ``, 400, "empty"},
		{"malformed", `{"order_id": 1, "payload": `, 400, "malformed JSON"},
		{"not an object", `42`, 400, "JSON object or an array"},
		{"missing order_id", `{"payload": 1}`, 400, "order_id is required"},
		{"negative order_id", `{"order_id": -1, "payload": 1}`, 400, "malformed JSON"},
		{"string order_id", `{"order_id": "7", "payload": 1}`, 400, "malformed JSON"},
		{"fractional order_id", `{"order_id": 1.5, "payload": 1}`, 400, "malformed JSON"},
		{"missing payload", `{"order_id": 1}`, 400, "payload is required"},
		{"null payload", `{"order_id": 1, "payload": null}`, 400, "payload is required"},
		{"empty string payload", `{"order_id": 1, "payload": ""}`, 400, "payload is required"},
		{"unknown field", `{"order_id": 1, "payload": 1, "priority": 9}`, 400, "unknown field"},
		{"trailing data", `{"order_id": 1, "payload": 1} {}`, 400, "after the first value"},
		{"empty array", `[]`, 400, "no tasks"},
		{"bad last item", `[{"order_id": 1, "payload": 1}, {"order_id": 2, "payload": 2}, {"payload": 3}]`, 400, "task 2: order_id is required"},
		{"unknown field in array", `[{"order_id": 1, "payload": 1}, {"order_id": 2, "payload": 2, "x": 1}]`, 400, "unknown field"},
		{"field in another case", `{"ORDER_ID": 7, "payload": 1}`, 400, `unknown field "ORDER_ID"`},
		{"field in another case in array", `[{"order_id": 1, "payload": 1}, {"order_id": 2, "Payload": 2}]`, 400, `task 1: unknown field "Payload"`},
		{"key in array", `[{"order_id": 1, "payload": 1, "idempotency_key": "k"}]`, 400, "only when posting a single task"},
		{"oversized", `{"order_id": 1, "payload": "` + strings.Repeat("x", 600) + `"}`, 413, "larger than 512 bytes"},
		{"oversized array", `[` + strings.Repeat(`{"order_id": 1, "payload": 1},`, 30) + `{"order_id": 1, "payload": 1}]`, 413, "larger than 512 bytes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out := f.post(t, tc.body)
			assert.Equal(t, tc.code, code, "%v", out)
			assert.Contains(t, out["error"], tc.msg)
			assert.NotContains(t, out, "ids")
		})
	}
	assert.Zero(t, f.ready(t), "nothing is enqueued on bad input")
}

// Field names are matched exactly (encoding/json would take "ORDER_ID"),
// the task's own: a payload's keys are the caller's.
func TestPostPayloadKeysInAnyCase(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{dedup: time.Minute})
	code, out := f.post(t, `{"order_id": 1, "payload": {"ORDER_ID": 1, "Payload": [1]}}`)
	assert.Equal(t, http.StatusCreated, code, "%v", out)
	assert.Equal(t, int64(1), f.ready(t))
}

func TestPostKeyTooLong(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{dedup: time.Minute})
	code, out := f.post(t, `{"order_id": 1, "payload": 1, "idempotency_key": "`+strings.Repeat("k", maxKeyLen+1)+`"}`)
	assert.Equal(t, http.StatusBadRequest, code)
	assert.Contains(t, out["error"], "idempotency_key is longer")
	assert.Zero(t, f.ready(t))
}

func TestDedup(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{dedup: time.Minute})
	body := `{"order_id": 7, "payload": {"n": 1}, "idempotency_key": "evt-1"}`
	code, out := f.post(t, body)
	require.Equal(t, http.StatusCreated, code, "%v", out)
	first := ids(t, out)
	require.Len(t, first, 1)

	code, out = f.post(t, body)
	assert.Equal(t, http.StatusOK, code, "a repeat within the window is not created again")
	assert.Equal(t, first, ids(t, out))

	code, out = f.post(t, `{"order_id": 7, "payload": {"n": 1}, "idempotency_key": "evt-2"}`)
	assert.Equal(t, http.StatusCreated, code)
	assert.NotEqual(t, first, ids(t, out), "another key is another task")

	code, out = f.post(t, `{"order_id": 8, "payload": {"n": 1}, "idempotency_key": "evt-1"}`)
	assert.Equal(t, http.StatusCreated, code)
	assert.NotEqual(t, first, ids(t, out), "keys are per order_id")

	code, _ = f.post(t, `{"order_id": 7, "payload": {"n": 1}}`)
	assert.Equal(t, http.StatusCreated, code, "no key, no dedup")
	assert.EqualValues(t, 4, f.ready(t))

	for _, m := range f.minis {
		m.FastForward(2 * time.Minute)
	}
	code, out = f.post(t, body)
	assert.Equal(t, http.StatusCreated, code, "after the window the key is free again")
	assert.NotEqual(t, first, ids(t, out))
	assert.EqualValues(t, 5, f.ready(t))
}

func TestDedupDisabled(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	body := `{"order_id": 7, "payload": 1, "idempotency_key": "evt-1"}`
	code, out1 := f.post(t, body)
	require.Equal(t, http.StatusCreated, code)
	code, out2 := f.post(t, body)
	require.Equal(t, http.StatusCreated, code, "with -dedup 0 the key is ignored")
	assert.NotEqual(t, ids(t, out1), ids(t, out2))
	assert.EqualValues(t, 2, f.ready(t))
}

func TestStoreError(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.store.err = errors.New("postgres is down")
	code, out := f.do(t, http.MethodGet, "/v1/tasks/abc?order_id=1", "")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, out["error"], "postgres is down")
}

func TestRoutesAndMethods(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	cases := []struct {
		method, path string
		code         int
		allow        string
	}{
		{http.MethodGet, "/v1/tasks", 405, "POST"},
		{http.MethodPut, "/v1/tasks", 405, "POST"},
		{http.MethodDelete, "/v1/tasks/abc", 405, "GET, HEAD"},
		{http.MethodPost, "/v1/tasks/abc", 405, "GET, HEAD"},
		{http.MethodGet, "/v2/nothing", 404, ""},
		{http.MethodGet, "/healthz", 200, ""},
	}
	for _, tc := range cases {
		req, err := http.NewRequest(tc.method, f.ts.URL+tc.path, nil)
		require.NoError(t, err)
		resp, err := f.ts.Client().Do(req)
		require.NoError(t, err)
		var out map[string]any
		assert.NoError(t, json.NewDecoder(resp.Body).Decode(&out), "%s %s", tc.method, tc.path)
		resp.Body.Close()
		assert.Equal(t, tc.code, resp.StatusCode, "%s %s", tc.method, tc.path)
		assert.Equal(t, tc.allow, resp.Header.Get("Allow"), "%s %s", tc.method, tc.path)
		if tc.code != 200 {
			assert.NotEmpty(t, out["error"], "%s %s", tc.method, tc.path)
		} else {
			assert.Equal(t, "ok", out["status"])
		}
	}
}

func TestRedisDown(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{dedup: time.Minute})
	for _, m := range f.minis {
		m.Close()
	}
	code, out := f.post(t, `{"order_id": 1, "payload": 1}`)
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, out["error"], "queue unavailable")

	code, out = f.post(t, `{"order_id": 1, "payload": 1, "idempotency_key": "k"}`)
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, out["error"], "queue unavailable")

	code, out = f.post(t, `[{"order_id": 1, "payload": 1}, {"order_id": 2, "payload": 2}]`)
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, out["error"], "queue unavailable")
	assert.Len(t, out["ids"], 2, "the ids come back as after any server's failure, for the client to look up")

	code, out = f.do(t, http.MethodGet, "/v1/tasks/abc?order_id=1", "")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.NotEmpty(t, out["error"])

	code, out = f.do(t, http.MethodGet, "/healthz", "")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Equal(t, "unavailable", out["status"])
}

func TestPartialFailureReturnsIDs(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	both := `[{"order_id": 0, "payload": 1}, {"order_id": 1, "payload": 2}]` // partitions 0 and 1
	code, _ := f.post(t, both)
	require.Equal(t, http.StatusCreated, code)
	f.minis[1].Close()
	code, out := f.post(t, both)
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, out["error"], "queue unavailable")
	assert.Len(t, out["ids"], 2, "partition 0 took its task: the ids come back so the caller can look them up")
	// The task partition 0 took is found, as queued.
	got := ids(t, out)
	assert.Equal(t, "queued", f.status(t, got[0], 0)["status"])
}

func TestParseFlags(t *testing.T) {
	t.Parallel()
	o, err := parseFlags([]string{"-redis", "redis://a:1/0, redis://b:2/0", "-queues", "3", "-dedup", "0", "-retention", "24h"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, 24*time.Hour, o.retention)
	assert.Equal(t, []string{"redis://a:1/0", "redis://b:2/0"}, o.redis)
	assert.Equal(t, 3, o.queues)
	assert.Zero(t, o.dedup)
	assert.Equal(t, "127.0.0.1:8080", o.listen)

	for _, args := range [][]string{
		{"-redis", " , "},
		{"-max-body", "0"},
		{"-dedup", "-1s"},
		{"-retention", "-1s"},
		{"extra"},
		{"-nope"},
	} {
		_, err := parseFlags(args, io.Discard)
		assert.Error(t, err, "%q", args)
	}
}

// Without -redis, REDIS_URL (when not empty) names the servers; -redis
// wins over it; errors say where the URLs came from, and -h does not
// show REDIS_URL's password.
func TestParseFlagsRedisURL(t *testing.T) {
	t.Setenv("REDIS_URL", "")
	t.Setenv("DATABASE_URL", "")
	o, err := parseFlags(nil, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, []string{"redis://127.0.0.1:6379"}, o.redis)

	t.Setenv("REDIS_URL", "redis://:redis-Secret-2@a:1,redis://b:2")
	o, err = parseFlags(nil, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, []string{"redis://:redis-Secret-2@a:1", "redis://b:2"}, o.redis)
	o, err = parseFlags([]string{"-redis", "redis://c:3"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, []string{"redis://c:3"}, o.redis)
	var out strings.Builder
	_, err = parseFlags([]string{"-h"}, &out)
	assert.ErrorIs(t, err, flag.ErrHelp)
	assert.Contains(t, out.String(), "(default $REDIS_URL, else redis://127.0.0.1:6379)")
	assert.NotContains(t, out.String(), "Secret")

	t.Setenv("REDIS_URL", " , ")
	_, err = parseFlags(nil, io.Discard)
	assert.EqualError(t, err, "$REDIS_URL (no -redis given): no URL given")
	t.Setenv("REDIS_URL", "127.0.0.1:6379")
	o, err = parseFlags(nil, io.Discard)
	require.NoError(t, err)
	_, err = newApp(context.Background(), o, slog.New(slog.DiscardHandler))
	assert.ErrorContains(t, err, "$REDIS_URL (no -redis given): queue: bad config")
}

// Without -pg, DATABASE_URL (when not empty) names the analysers'
// database, as the analyser reads it; -pg wins over it, and an empty
// -pg goes without one. Errors say where the URL came from, and neither
// they nor -h show its password.
func TestParseFlagsDatabaseURL(t *testing.T) {
	t.Setenv("REDIS_URL", "")
	t.Setenv("DATABASE_URL", "")
	o, err := parseFlags(nil, io.Discard)
	require.NoError(t, err)
	assert.Empty(t, o.pg)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	down := l.Addr().String()
	require.NoError(t, l.Close())
	env := "postgres://qugo:pg-Secret-1@" + down + "/qugo?connect_timeout=5"
	t.Setenv("DATABASE_URL", env)
	o, err = parseFlags(nil, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, env, o.pg)
	o, err = parseFlags([]string{"-pg", "postgres://other/db"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "postgres://other/db", o.pg)
	o, err = parseFlags([]string{"-pg", ""}, io.Discard)
	require.NoError(t, err)
	assert.Empty(t, o.pg, "-pg '' goes without Postgres")
	var out strings.Builder
	_, err = parseFlags([]string{"-h"}, &out)
	assert.ErrorIs(t, err, flag.ErrHelp)
	assert.Contains(t, out.String(), "(default $DATABASE_URL)")
	assert.NotContains(t, out.String(), "Secret")

	m := miniredis.RunT(t)
	o, err = parseFlags([]string{"-redis", "redis://" + m.Addr()}, io.Discard)
	require.NoError(t, err)
	_, err = newApp(context.Background(), o, slog.New(slog.DiscardHandler))
	require.Error(t, err)
	assert.True(t, strings.HasPrefix(err.Error(), "$DATABASE_URL (no -pg given): postgres: "), err)
	assert.NotContains(t, err.Error(), "Secret")
}

func TestNewAppRefusesBadConfig(t *testing.T) {
	t.Parallel()
	m := miniredis.RunT(t)
	log := slog.New(slog.DiscardHandler)
	_, err := newApp(context.Background(), options{redis: []string{"http://" + m.Addr()}, maxBody: 1024}, log)
	assert.ErrorContains(t, err, "is not redis://")

	_, err = newApp(context.Background(), options{redis: []string{"redis://" + m.Addr()}, maxBody: 1024, queues: -1}, log)
	assert.ErrorIs(t, err, queue.ErrBadConfig)

	a, err := newApp(context.Background(), options{redis: []string{"redis://" + m.Addr()}, maxBody: 1024, queues: 2, statusTTL: time.Hour}, log)
	require.NoError(t, err)
	a.close()

	// The servers recorded 2 queues: a layout mismatch says what to change.
	q, err := queue.Dial(context.Background(), []string{"redis://" + m.Addr()}, queue.Config{Queues: 2})
	require.NoError(t, err)
	defer q.Close()
	_, err = q.AddTask(context.Background(), 1, []byte("x"))
	require.NoError(t, err)
	_, err = newApp(context.Background(), options{redis: []string{"redis://" + m.Addr()}, maxBody: 1024, queues: 1, prefix: "qugo", statusTTL: time.Hour}, log)
	assert.ErrorIs(t, err, queue.ErrLayoutMismatch)
	assert.EqualError(t, err, `layout mismatch: the -redis URL at place 1 under -prefix "qugo" has recorded 1 Redis server x 2 queues with itself at place 1: `+
		"start with -queues 2 and 1 -redis URL, this one at place 1, as the analysers do (or, to start afresh, another -prefix, the analysers' too)")
}

// not_before schedules a single task: GET says scheduled, with its due
// time, until it falls due and joins its order's queue.
func TestPostNotBefore(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	due := time.Now().Add(time.Hour).UTC().Truncate(time.Millisecond)
	code, out := f.post(t, fmt.Sprintf(`{"order_id": 5, "payload": "later", "not_before": %q}`, due.Format(time.RFC3339Nano)))
	require.Equal(t, http.StatusCreated, code, "%v", out)
	id := ids(t, out)[0]
	assert.Zero(t, f.ready(t))
	st := f.status(t, id, 5)
	assert.Equal(t, "scheduled", st["status"])
	assert.Equal(t, due.Format(time.RFC3339Nano), st["due"])
	f.notFound(t, id, 9) // the same queue, another order

	soon := time.Now().Add(50 * time.Millisecond).Format(time.RFC3339Nano)
	code, out = f.post(t, fmt.Sprintf(`{"order_id": 6, "payload": "soon", "not_before": %q}`, soon))
	require.Equal(t, http.StatusCreated, code, "%v", out)
	id = ids(t, out)[0]
	c := f.consume(t, 6, 0)
	var task queue.Task
	require.Eventually(t, func() bool {
		tasks, err := c.Claim(context.Background(), 1)
		require.NoError(t, err)
		if len(tasks) == 1 {
			task = tasks[0]
		}
		return len(tasks) == 1
	}, 10*time.Second, 10*time.Millisecond, "a claim moves the due task to the ready list")
	assert.Equal(t, id, task.ID)
	assert.Equal(t, "running", f.status(t, id, 6)["status"])

	past := time.Now().Add(-time.Hour).Format(time.RFC3339)
	code, _ = f.post(t, fmt.Sprintf(`{"order_id": 7, "payload": "now", "not_before": %q}`, past))
	require.Equal(t, http.StatusCreated, code)
	assert.EqualValues(t, 1, f.ready(t), "a time past adds the task at once")

	for body, want := range map[string]string{
		`[{"order_id": 1, "payload": 1, "not_before": "2099-01-01T00:00:00Z"}]`:                       "not_before is supported only when posting a single task",
		`{"order_id": 1, "payload": 1, "not_before": "tomorrow"}`:                                     "malformed JSON",
		`{"order_id": 1, "payload": 1, "not_before": "2099-01-01T00:00:00Z", "idempotency_key": "k"}`: "cannot be combined",
	} {
		code, out := f.post(t, body)
		assert.Equal(t, http.StatusBadRequest, code, body)
		assert.Contains(t, out["error"], want, body)
	}
	assert.EqualValues(t, 1, f.ready(t), "refused posts enqueue nothing")
}

// Tasks queued are recorded even when the request's ctx ends meanwhile
// (the client hung up once AddTasks returned).
func TestRecordOutlivesTheRequest(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tasks := []queue.Task{{OrderID: 1, Payload: []byte("a")}, {OrderID: 2, Payload: []byte("b")}}
	ids, err := f.q.AddTasks(context.Background(), tasks)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f.srv.record(ctx, tasks, ids)
	assert.Zero(t, testutil.ToFloat64(f.srv.metrics.recordErrors))
	for i, id := range ids {
		_, found, err := f.srv.issued.Lookup(context.Background(), tasks[i].OrderID, id)
		require.NoError(t, err)
		assert.True(t, found, id)
	}
}
