package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/qugo/queue"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The overview shows, in data attributes and in text, the counts Stats
// reports, per queue, per server and in all.
func TestOverviewShowsStats(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := statsScenario(t)
	_, err := f.q.AddTaskAt(ctx, 2, time.Now().Add(time.Hour), []byte("later"))
	require.NoError(t, err)
	require.NoError(t, f.q.Pause(ctx, queue.QueueOf(3)))
	d := newDashboard(t, f, serverConfig{})
	w := d.get(t, "/")
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	body := w.Body.String()
	stats, err := f.q.Stats(ctx)
	require.NoError(t, err)
	var total [7]int64
	for _, st := range stats {
		row := rowOf(body, fmt.Sprintf(`<tr data-analyser="%d"`, st.Analyser))
		require.NotEmpty(t, row, st.Analyser)
		assert.EqualValues(t, st.Partition, dataInt(t, row, "partition"))
		assert.EqualValues(t, st.Queue, dataInt(t, row, "queue"))
		want := [7]int64{st.Ready, st.Scheduled, st.Pending, st.Dead, st.Processed, st.Failed, st.Cancelled}
		got := [7]int64{dataInt(t, row, "ready"), dataInt(t, row, "scheduled"), dataInt(t, row, "pending"), dataInt(t, row, "dead"),
			dataInt(t, row, "processed"), dataInt(t, row, "failed"), dataInt(t, row, "cancelled")}
		assert.Equal(t, want, got, "analyser %d", st.Analyser)
		for i := range total {
			total[i] += want[i]
		}
		assert.Contains(t, row, fmt.Sprintf(`data-paused="%t"`, st.Paused))
		assert.Contains(t, row, `href="/queue/`+fmt.Sprint(st.Analyser)+`"`)
	}
	assert.Equal(t, [7]int64{4, 1, 1, 1, 1, 1, 0}, total, "the scenario's tasks")
	owned := rowOf(body, `<tr data-analyser="1"`)
	assert.Contains(t, owned, `data-owner="cli-test"`)
	assert.Contains(t, owned, "left")
	assert.Contains(t, rowOf(body, `<tr data-analyser="3"`), "paused")
	all := rowOf(body, "<tr data-total")
	assert.EqualValues(t, total[0], dataInt(t, all, "ready"))
	assert.EqualValues(t, total[3], dataInt(t, all, "dead"))
	assert.EqualValues(t, 1, dataInt(t, all, "paused"))
	assert.EqualValues(t, 4, dataInt(t, all, "queues"))
	for p := range 2 {
		var ready int64
		for _, st := range stats {
			if st.Partition == p {
				ready += st.Ready
			}
		}
		assert.EqualValues(t, ready, dataInt(t, rowOf(body, fmt.Sprintf(`<tr data-partition="%d"`, p)), "ready"), "server %d", p)
	}
	assert.NotContains(t, body, `id="error"`)
	assert.NotContains(t, body, `id="warning"`)
}

// Task data and names of processes reach the page escaped.
func TestOverviewEscapesOwner(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	hostile := `<script>alert("owner")</script>`
	c, err := f.q.Consume(context.Background(), 0, queue.ConsumerConfig{Owner: hostile, LeaseTTL: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { c.Release(context.Background()) })
	d := newDashboard(t, f, serverConfig{})
	body := d.get(t, "/").Body.String()
	assert.NotContains(t, body, hostile)
	assert.NotContains(t, body, `<script>alert`)
	assert.Contains(t, body, `&lt;script&gt;alert(&#34;owner&#34;)&lt;/script&gt;`)
}

// The fragment the script fetches is the page's content alone.
func TestOverviewFragment(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	f.add(t, 1)
	d := newDashboard(t, f, serverConfig{})
	page := d.get(t, "/").Body.String()
	assert.Contains(t, page, `data-fragment="/?fragment=1"`)
	assert.Contains(t, page, `<noscript><meta http-equiv="refresh" content="5"></noscript>`, "refreshes without JavaScript")
	w := d.get(t, "/?fragment=1")
	require.Equal(t, http.StatusOK, w.Code)
	frag := w.Body.String()
	assert.NotContains(t, frag, "<html")
	assert.NotContains(t, frag, "<header")
	assert.Contains(t, frag, `<table id="overview"`)
	assert.EqualValues(t, 1, dataInt(t, rowOf(frag, `<tr data-analyser="0"`), "ready"))
}

// Rates come from the history: the sparklines and their figures.
func TestOverviewRates(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 2)
	d := newDashboard(t, f, serverConfig{})
	now := time.Now()
	at := func(s time.Duration) time.Time { return now.Add(-time.Minute + s*time.Second) }
	// Analyser 0 processes 10 tasks a second; analyser 1 gets 4 a second added.
	d.hist.add(sample{at: at(0), processed: []int64{0, 0}, accounted: []int64{100, 0}})
	d.hist.add(sample{at: at(5), processed: []int64{50, 0}, accounted: []int64{100, 20}})
	d.hist.add(sample{at: at(10), processed: []int64{100, 0}, accounted: []int64{100, 40}})
	body := d.get(t, "/").Body.String()
	zero := rowOf(body, `<tr data-analyser="0"`)
	assert.Contains(t, zero, "<polyline")
	assert.Contains(t, zero, `data-rate="10"`)
	assert.Contains(t, zero, "10.0/s")
	one := rowOf(body, `<tr data-analyser="1"`)
	assert.Contains(t, one, `data-rate="4"`)
	all := rowOf(body, "<tr data-total")
	assert.Contains(t, all, "10.0/s")
	assert.Contains(t, all, "4.0/s")
}

// Without a token no page shows a button that acts; with one, only a
// signed-in viewer sees them.
func TestOverviewButtons(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 2, 1)
	f.add(t, 1)
	readOnly := newDashboard(t, f, serverConfig{})
	body := readOnly.get(t, "/").Body.String()
	assert.Contains(t, body, `id="read-only"`)
	assert.NotContains(t, body, `action="/actions/`)
	assert.NotContains(t, body, `id="sign-in"`)

	d := newDashboard(t, f, serverConfig{token: testToken})
	body = d.get(t, "/").Body.String()
	assert.Contains(t, body, `id="sign-in"`)
	assert.NotContains(t, body, `action="/actions/`)
	assert.NotContains(t, body, `name="csrf"`)

	cookie, csrf := d.signIn(t)
	body = d.get(t, "/", cookie).Body.String()
	assert.Contains(t, body, `id="sign-out"`)
	row := rowOf(body, `<tr data-analyser="1"`)
	assert.Contains(t, row, `action="/actions/pause"`)
	assert.Contains(t, row, `name="csrf" value="`+csrf+`"`)
	assert.Contains(t, rowOf(body, `<tr data-partition="1"`), `name="p" value="1"`)
	assert.Contains(t, rowOf(body, "<tr data-total"), `name="scope" value="all"`)
}

// A prefix nothing has used shows a warning, as the commands print one.
func TestOverviewUnusedPrefix(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	d := newDashboard(t, f, serverConfig{})
	body := d.get(t, "/").Body.String()
	assert.Contains(t, body, `id="warning"`)
	assert.Contains(t, body, "No producer or analyser has used prefix")
	f.add(t, 1)
	require.NoError(t, d.sampleOnce(context.Background()))
	body = d.get(t, "/").Body.String()
	assert.NotContains(t, body, `id="warning"`, "the sampler looked again")
	assert.True(t, strings.Contains(body, `data-ready="1"`))
}

// A layout recorded after the dashboard connected, by a producer of
// another layout, is found on the next page: its pages and actions say
// which flag to change, rather than show the flags' queues (one of them a
// phantom) under a stale "unused" banner, or refuse an action for a false
// reason.
func TestLayoutRecordedAfterTheDashboardConnected(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 2)
	d, _ := loggedDashboard(t, f)
	cookie, csrf := d.signIn(t)
	body := d.get(t, "/").Body.String()
	require.Contains(t, body, "No producer or analyser has used prefix", "connected, nothing recorded")
	other, err := queue.Dial(context.Background(), f.urls, queue.Config{Prefix: f.prefix, Queues: 1})
	require.NoError(t, err)
	defer other.Close()
	_, err = other.AddTask(context.Background(), 7, []byte("x"))
	require.NoError(t, err)
	w := d.act(t, "pause", url.Values{"scope": {"all"}}, cookie, csrf) // an action checks before it writes
	assert.Equal(t, http.StatusConflict, w.Code)
	assert.Contains(t, w.Body.String(), "-queues 1")
	assert.NotContains(t, w.Body.String(), "refusing to write under it")
	assert.Error(t, d.sampleOnce(context.Background()), "the sampler looks again every -sample")
	w = d.get(t, "/")
	assert.Equal(t, http.StatusServiceUnavailable, w.Code)
	assert.Contains(t, w.Body.String(), "-queues 1")
	assert.NotContains(t, w.Body.String(), "No producer or analyser has used prefix")
}

// A server with no layout recorded that is down fails no page that does
// not read it: the layout is checked again by the sampler and before
// actions, not by every page.
func TestPagesWhileAnUnrecordedServerIsDown(t *testing.T) {
	t.Parallel()
	if testRedisURL != "" {
		t.Skip("stops a miniredis server")
	}
	f := newFixture(t, 2, 1)
	d := newDashboard(t, f, serverConfig{})
	require.Equal(t, http.StatusOK, d.get(t, "/").Code)
	f.minis[1].Close()
	id, err := f.q.AddTask(context.Background(), 0, []byte("x")) // records the layout on partition 0 only
	require.NoError(t, err)
	d.sampleOnce(context.Background()) // its Stats fails on partition 1; its layout check does not count it
	w := d.get(t, taskURL("0", id))
	assert.Equal(t, http.StatusOK, w.Code, w.Body.String())
	assert.Contains(t, w.Body.String(), `id="task-state"`)
}
