package main

import (
	"context"
	"errors"
	"fmt"
	"html"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/qugo/queue"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tableOf returns the table with id, from its tag to its end.
func tableOf(body, id string) string {
	i := strings.Index(body, `<table id="`+id+`"`)
	if i < 0 {
		return ""
	}
	rest := body[i:]
	return rest[:strings.Index(rest, "</table>")]
}

func TestQueuePageLists(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 1, 1)
	deadIDs := f.add(t, 7, 8)
	_, err := f.do(t, 0, "LPUSH", "{"+f.prefix+":0.0}:ready", garbage)
	require.NoError(t, err)
	c := f.consume(t, 0)
	tasks, err := c.Claim(ctx, 10) // buries the malformed record
	require.NoError(t, err)
	require.Len(t, tasks, 2)
	for i, cause := range []string{"bad\nthing", "worse\x01"} {
		dead, err := c.Fail(ctx, tasks[i], errors.New(cause))
		require.NoError(t, err)
		require.True(t, dead)
	}
	pendingIDs := f.add(t, 3, 4)
	claimed, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	require.Len(t, claimed, 2)
	later, err := f.q.AddTaskAt(ctx, 5, time.Now().Add(time.Hour), []byte("later"))
	require.NoError(t, err)
	d := newDashboard(t, f, serverConfig{})
	w := d.get(t, "/queue/0")
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	body := w.Body.String()
	assert.Contains(t, body, `<section id="queue" data-analyser="0"`)
	stats := rowOf(tableOf(body, "queue-stats"), `<tr data-analyser="0"`)
	assert.EqualValues(t, 2, dataInt(t, stats, "pending"))
	assert.EqualValues(t, 3, dataInt(t, stats, "dead"))
	assert.EqualValues(t, 1, dataInt(t, stats, "scheduled"))
	assert.Contains(t, stats, `data-owner="cli-test"`)

	pending := tableOf(body, "pending")
	for i, id := range pendingIDs {
		row := rowOf(pending, `<tr data-id="`+id+`"`)
		require.NotEmpty(t, row, id)
		assert.EqualValues(t, 3+i, dataInt(t, row, "order"))
		assert.EqualValues(t, 1, dataInt(t, row, "attempt"))
		assert.GreaterOrEqual(t, dataInt(t, row, "age-ms"), int64(0))
		assert.Contains(t, row, fmt.Sprintf("<code>task-%d</code>", 3+i))
		assert.Contains(t, row, fmt.Sprintf(`href="/task?order=%d&id=%s"`, 3+i, id))
	}
	scheduled := rowOf(tableOf(body, "scheduled"), `<tr data-id="`+later+`"`)
	assert.Contains(t, scheduled, "<code>later</code>")
	assert.Greater(t, dataInt(t, scheduled, "due-in-ms"), int64(59*60*1000))

	dead := tableOf(body, "dead")
	row := rowOf(dead, `<tr data-id="`+deadIDs[0]+`"`)
	assert.EqualValues(t, 7, dataInt(t, row, "order"))
	assert.EqualValues(t, 1, dataInt(t, row, "attempts"))
	assert.Contains(t, row, "bad\nthing")
	assert.Contains(t, row, "<code>task-7</code>")
	assert.Contains(t, row, "<dt>order</dt><dd>7</dd>", "headers")
	row = rowOf(dead, `<tr data-id="`+deadIDs[1]+`"`)
	assert.Contains(t, row, `&#34;worse\x01&#34;`, "a control character is shown, Go-quoted")
	assert.NotContains(t, row, "\x01")
	bad := rowOf(dead, "data-malformed")
	assert.Contains(t, bad, "malformed")
	assert.Contains(t, bad, "<code>00ff6a75 6e6b</code>", "a malformed record's bytes in hex")
	assert.Contains(t, body, "3, 1 malformed")
}

// Task data reaches the page escaped, wherever it shows: payloads,
// errors, headers, IDs of malformed records.
func TestQueuePageEscapesHostileData(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 1, 1)
	script := `<script>alert("x")</script>`
	img := `<img src=x onerror=alert(1)>`
	_, err := f.q.AddTask(ctx, 1, []byte(script), queue.WithHeaders(map[string]string{script: img}))
	require.NoError(t, err)
	_, err = f.q.AddTask(ctx, 2, []byte(img+strings.Repeat("é", 200)))
	require.NoError(t, err)
	_, err = f.q.AddTaskAt(ctx, 3, time.Now().Add(time.Hour), []byte(script))
	require.NoError(t, err)
	c := f.consume(t, 0)
	tasks, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	_, err = c.Fail(ctx, tasks[0], errors.New(img+" and "+script))
	require.NoError(t, err)
	_, err = c.Claim(ctx, 1) // the second stays pending
	require.NoError(t, err)
	// A malformed record stored under a hostile field.
	_, err = f.do(t, 0, "HSET", "{"+f.prefix+":0.0}:dead", script, "\x00junk")
	require.NoError(t, err)
	d := newDashboard(t, f, serverConfig{})
	w := d.get(t, "/queue/0")
	require.Equal(t, http.StatusOK, w.Code)
	body := w.Body.String()
	for _, raw := range []string{script, img, "<script>alert", "<img src"} {
		assert.NotContains(t, body, raw)
	}
	assert.Contains(t, body, html.EscapeString(script))
	assert.Contains(t, body, html.EscapeString(img))
	assert.Equal(t, 1, strings.Count(body, "<script"), "only the dashboard's own script")
}

func TestQueuePagination(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 1, 1)
	ids := f.add(t, 1, 2, 3, 4, 5, 6, 7)
	c := f.consume(t, 0)
	tasks, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	// They die in the order they were added; the store lists by death,
	// then by ID, which grows with each add.
	for _, task := range tasks {
		_, err := c.Fail(ctx, task, errors.New("no"))
		require.NoError(t, err)
	}
	for i := range 5 {
		_, err := f.q.AddTaskAt(ctx, uint64(i), time.Now().Add(time.Duration(i+1)*time.Hour), []byte("s"))
		require.NoError(t, err)
	}
	d := newDashboard(t, f, serverConfig{})
	shown := func(body, table string) []string {
		var out []string
		for _, part := range strings.Split(tableOf(body, table), `<tr data-id="`)[1:] {
			out = append(out, part[:strings.Index(part, `"`)])
		}
		return out
	}
	body := d.get(t, "/queue/0?limit=3").Body.String()
	assert.Equal(t, ids[:3], shown(body, "dead"))
	assert.Contains(t, body, `href="/queue/0?dead_offset=3&amp;limit=3"`)
	assert.Contains(t, body, "1–3 of 7")
	body = d.get(t, "/queue/0?limit=3&dead_offset=3").Body.String()
	assert.Equal(t, ids[3:6], shown(body, "dead"))
	assert.Contains(t, body, `href="/queue/0?limit=3"`, "back to the first page")
	body = d.get(t, "/queue/0?limit=3&dead_offset=6").Body.String()
	assert.Equal(t, ids[6:], shown(body, "dead"))
	assert.Contains(t, body, "7–7 of 7")
	body = d.get(t, "/queue/0?limit=3&dead_offset=100").Body.String()
	assert.Empty(t, shown(body, "dead"))
	assert.Contains(t, body, "none of 7")
	assert.Contains(t, body, `href="/queue/0?dead_offset=4&amp;limit=3"`, "back to the last page")

	body = d.get(t, "/queue/0?limit=2&scheduled_offset=2").Body.String()
	assert.Len(t, shown(body, "scheduled"), 2)
	assert.Contains(t, body, `href="/queue/0?limit=2&amp;scheduled_offset=4"`)
	assert.Contains(t, body, "3–4 of 5")
	assert.Len(t, shown(body, "dead"), 2, "each list keeps its own offset")

	for _, bad := range []string{"limit=0", "limit=1001", "limit=x", "dead_offset=-1", "pending_offset=1e3", "scheduled_offset=%20"} {
		w := d.get(t, "/queue/0?"+bad)
		assert.Equal(t, http.StatusBadRequest, w.Code, bad)
		assert.Contains(t, w.Body.String(), "must be a number", bad)
	}
}

func TestQueuePageNotFound(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 2, 1)
	d := newDashboard(t, f, serverConfig{})
	assert.Equal(t, http.StatusOK, d.get(t, "/queue/1").Code)
	for _, a := range []string{"2", "-1", "x", "01", "1.0", "99999999999999999999"} {
		w := d.get(t, "/queue/"+a)
		assert.Equal(t, http.StatusNotFound, w.Code, a)
		assert.Contains(t, w.Body.String(), "Analysers are 0 to 1", a)
	}
}

// A server that fails while the page is read shows the error with what
// was read.
func TestQueuePageRedisDown(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	if f.minis == nil {
		t.Skip("stops a miniredis")
	}
	f.add(t, 1)
	d := newDashboard(t, f, serverConfig{timeout: 300 * time.Millisecond})
	require.Equal(t, http.StatusOK, d.get(t, "/queue/0").Code)
	f.minis[0].Close()
	start := time.Now()
	w := d.get(t, "/queue/0")
	assert.Less(t, time.Since(start), 2*time.Second)
	assert.Equal(t, http.StatusServiceUnavailable, w.Code)
	assert.Contains(t, w.Body.String(), `id="error"`)
	assert.NotContains(t, w.Body.String(), `<table id="dead"`)
}

// A key of the wrong type, in this queue or another, keeps the page from
// showing what it holds, not the rest: the error shows above the lists
// that could be read.
func TestQueuePageShowsWhatItCanRead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 1, 2)
	ids := f.add(t, 0)
	c := f.consume(t, 0)
	claimKilling(t, c, 1, 0)
	require.NoError(t, c.Release(ctx))
	// Queue 1's dead-letter store breaks Stats; queue 0's pending hash
	// breaks its own list.
	for _, key := range []string{"{" + f.prefix + ":0.1}:dead", "{" + f.prefix + ":0.0}:pending"} {
		_, err := f.do(t, 0, "SET", key, "not a hash")
		require.NoError(t, err)
	}
	d := newDashboard(t, f, serverConfig{})
	w := d.get(t, "/queue/0")
	body := w.Body.String()
	assert.Equal(t, http.StatusServiceUnavailable, w.Code)
	assert.Contains(t, body, `id="error"`)
	assert.Contains(t, body, "wrong type")
	assert.NotContains(t, body, `<table id="queue-stats"`)
	assert.NotContains(t, body, `id="pending-heading"`)
	assert.Contains(t, body, `id="scheduled-empty"`)
	assert.NotEmpty(t, rowOf(tableOf(body, "dead"), `<tr data-id="`+ids[0]+`"`), "queue 0's dead letter is shown")
}

// A second dead record of one task ("<id>#2", which bury keeps) links
// to its task's page, by the task's ID.
func TestDeadTableLinksASecondRecordToItsTask(t *testing.T) {
	f := newFixture(t, 1, 1)
	ctx := context.Background()
	ids := f.add(t, 7)
	c := f.consume(t, 0)
	tasks, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	require.Len(t, tasks, 1)
	dead, err := c.Fail(ctx, tasks[0], errors.New("boom"))
	require.NoError(t, err)
	require.True(t, dead)
	key := "{" + f.prefix + ":0.0}:dead"
	rec, err := redis.Bytes(f.do(t, 0, "HGET", key, ids[0]))
	require.NoError(t, err)
	// What buryScript leaves when a record of this ID meets another one.
	_, err = f.do(t, 0, "HSET", key, ids[0]+"#2", rec)
	require.NoError(t, err)

	list, err := f.q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, list, 2)
	for _, d := range list {
		st, err := f.q.Status(ctx, d.OrderID, d.TaskID())
		require.NoError(t, err)
		assert.Equal(t, queue.StateDead, st.State, "Status of the task of %s", d.ID)
	}

	d := newDashboard(t, f, serverConfig{})
	body := d.get(t, "/queue/0").Body.String()
	links := regexp.MustCompile(`href="(/task\?[^"]*)"`).FindAllStringSubmatch(body, -1)
	require.Len(t, links, 2)
	for _, l := range links {
		target := html.UnescapeString(l[1])
		w := d.get(t, target)
		assert.Equal(t, http.StatusOK, w.Code, "the dead table's link %s", target)
	}
}

// A dead-letter store too large to read within -timeout, Redis having
// answered Stats in time, is said to be so, with the command that pages
// through it, not blamed on Redis.
func TestQueuePageDeadStoreTooLarge(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	d := newDashboard(t, f, serverConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // as if the read had taken all of -timeout
	data := &queueData{Analyser: 0, Read: true}
	data.Stats.Dead = 30005
	r := httptest.NewRequest(http.MethodGet, "/queue/0", nil)
	err := d.readDead(ctx, r, f.q, data, queueParams{limit: 50})
	require.ErrorIs(t, err, errStoreTooLarge)
	msg := d.explain(err)
	assert.Contains(t, msg, "the dead-letter store of queue 0 (30005 tasks) could not be read whole within")
	assert.Contains(t, msg, "qugo dead -a 0 -json")
	assert.NotContains(t, msg, "Redis did not answer")
	data.Stats.Dead = 3 // a small store that did not come back: Redis's doing
	assert.NotErrorIs(t, d.readDead(ctx, r, f.q, data, queueParams{limit: 50}), errStoreTooLarge)
}
