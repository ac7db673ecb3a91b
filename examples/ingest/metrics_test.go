package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/gomodule/redigo/redis"
	"github.com/qugo/queue"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// scrape returns the /metrics text of the fixture's server.
func (f *fixture) scrape(t *testing.T) string {
	t.Helper()
	resp, err := f.ts.Client().Get(f.ts.URL + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{maxBody: 64})
	code, out := f.post(t, `{"order_id": 1, "payload": 1}`)
	require.Equal(t, http.StatusCreated, code)
	f.status(t, ids(t, out)[0], 1)
	f.notFound(t, "ID", 1)
	f.notFound(t, "ID", 2)
	code, _ = f.post(t, `{"order_id": 1}`)
	require.Equal(t, http.StatusBadRequest, code)
	code, _ = f.do(t, http.MethodGet, "/no/such/path", "")
	require.Equal(t, http.StatusNotFound, code)

	text := f.scrape(t)
	for _, want := range []string{
		`qugo_ingest_requests_total{code="201",route="POST /v1/tasks"} 1`,
		`qugo_ingest_requests_total{code="400",route="POST /v1/tasks"} 1`,
		`qugo_ingest_requests_total{code="200",route="GET /v1/tasks/{id}"} 1`,
		`qugo_ingest_requests_total{code="404",route="GET /v1/tasks/{id}"} 2`,
		`qugo_ingest_requests_total{code="404",route="other"} 1`,
		`qugo_ingest_request_duration_seconds_count{code="404",route="GET /v1/tasks/{id}"} 2`,
		`qugo_ingest_enqueue_errors_total{reason="unavailable"} 0`,
		`qugo_ingest_issued_record_errors_total 0`,
	} {
		assert.Contains(t, text, want+"\n")
	}

	for _, m := range f.minis {
		m.Close()
	}
	code, _ = f.post(t, `{"order_id": 1, "payload": 1}`)
	require.Equal(t, http.StatusServiceUnavailable, code)
	code, _ = f.post(t, `[{"order_id": 1, "payload": 1}, {"order_id": 2, "payload": 2}]`)
	require.Equal(t, http.StatusServiceUnavailable, code)
	text = f.scrape(t)
	assert.Contains(t, text, `qugo_ingest_enqueue_errors_total{reason="unavailable"} 2`+"\n")
	assert.Contains(t, text, `qugo_ingest_requests_total{code="503",route="POST /v1/tasks"} 2`+"\n")
}

func TestEnqueueErrorReasons(t *testing.T) {
	t.Parallel()
	s := &server{metrics: newMetrics()}
	for _, tc := range []struct {
		err    error
		code   int
		reason string
	}{
		{queue.ErrPayloadTooLarge, http.StatusRequestEntityTooLarge, "too_large"},
		{queue.ErrEmptyPayload, http.StatusBadRequest, "bad_request"},
		{&queue.LayoutError{}, http.StatusInternalServerError, "layout"},
		{io.EOF, http.StatusServiceUnavailable, "unavailable"},
	} {
		code, _ := s.enqueueError(tc.err)
		assert.Equal(t, tc.code, code, tc.reason)
	}
	text := scrapeRegistry(t, s.metrics)
	for _, r := range []string{"too_large", "bad_request", "layout", "unavailable"} {
		assert.Contains(t, text, fmt.Sprintf("qugo_ingest_enqueue_errors_total{reason=%q} 1\n", r))
	}
}

func scrapeRegistry(t *testing.T, m *metrics) string {
	t.Helper()
	rec := &strings.Builder{}
	req, err := http.NewRequest(http.MethodGet, "/metrics", nil)
	require.NoError(t, err)
	w := &recorder{header: http.Header{}, body: rec}
	m.handler().ServeHTTP(w, req)
	return rec.String()
}

// recorder is a minimal http.ResponseWriter.
type recorder struct {
	header http.Header
	body   *strings.Builder
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(b []byte) (int, error) { return r.body.Write(b) }
func (r *recorder) WriteHeader(int)             {}

// Records of issued ids expire with the ttl, hour by hour.
func TestIssuedExpires(t *testing.T) {
	t.Parallel()
	m := miniredis.RunT(t)
	q, err := queue.Dial(context.Background(), []string{"redis://" + m.Addr()}, queue.Config{Prefix: "p"})
	require.NoError(t, err)
	defer q.Close()
	pools := []*redis.Pool{q.Pool(0)}
	now := time.Date(2025, 1, 2, 10, 30, 0, 0, time.UTC)
	r := &issued{pools: pools, route: func(uint64) (int, int) { return 0, 0 }, prefix: "p", ttl: 3 * time.Hour,
		now: func() time.Time { return now }}
	ctx := context.Background()
	m.SetTime(now)
	require.NoError(t, r.Record(ctx, []queue.Task{{OrderID: 7}, {OrderID: 8}}, []string{"a", "b"}))
	key := fmt.Sprintf("p:ingest:issued:%d", now.Truncate(time.Hour).Unix())
	assert.Equal(t, 3*time.Hour+30*time.Minute, m.TTL(key), "expires ttl after the end of its hour")
	start := now
	for _, tc := range []struct {
		after time.Duration
		found bool
	}{{0, true}, {2 * time.Hour, true}, {3*time.Hour + 29*time.Minute, true}, {3*time.Hour + 31*time.Minute, false}} {
		m.FastForward(start.Add(tc.after).Sub(now))
		now = start.Add(tc.after)
		order, ok, err := r.Lookup(ctx, 8, "b")
		require.NoError(t, err)
		assert.Equal(t, tc.found, ok, "after %v", tc.after)
		if ok {
			assert.EqualValues(t, 8, order)
		}
	}
	_, ok, err := r.Lookup(ctx, 8, "zz")
	require.NoError(t, err)
	assert.False(t, ok)
}
