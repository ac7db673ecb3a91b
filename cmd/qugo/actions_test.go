package main

import (
	"context"
	"errors"
	"html"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/qugo/queue"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// act posts action op with form, the session's cookie and CSRF token.
func (d *dashboard) act(t *testing.T, op string, form url.Values, cookie *http.Cookie, csrf string) *httptest.ResponseRecorder {
	t.Helper()
	form.Set("csrf", csrf)
	return d.serve(t, http.MethodPost, "/actions/"+op, form, cookie)
}

// deadTasks gives analyser 0 of a 1x1 queue one dead task per order,
// and returns the fixture and their IDs.
func deadTasks(t *testing.T, orders ...uint64) (*fixture, []string) {
	t.Helper()
	ctx := context.Background()
	f := newFixture(t, 1, 1)
	ids := f.add(t, orders...)
	c := f.consume(t, 0)
	tasks, err := c.Claim(ctx, len(orders))
	require.NoError(t, err)
	for _, task := range tasks {
		_, err := c.Fail(ctx, task, errors.New("no"))
		require.NoError(t, err)
	}
	require.NoError(t, c.Release(ctx))
	return f, ids
}

func stats0(t *testing.T, f *fixture) queue.AnalyserStats {
	t.Helper()
	stats, err := f.q.Stats(context.Background())
	require.NoError(t, err)
	return stats[0]
}

// loggedDashboard is a dashboard with a token, whose log the test reads.
func loggedDashboard(t *testing.T, f *fixture) (*dashboard, *syncBuffer) {
	t.Helper()
	var logs syncBuffer
	return newDashboard(t, f, serverConfig{token: testToken, log: slog.New(slog.NewTextHandler(&logs, nil))}), &logs
}

// Without the token, or without a session and its CSRF token, no action
// changes anything.
func TestActionsRefused(t *testing.T) {
	t.Parallel()
	f, ids := deadTasks(t, 1, 2)
	forms := map[string]url.Values{
		"replay": {"a": {"0"}, "id": {ids[0]}},
		"purge":  {"a": {"0"}, "all": {"1"}, "confirm": {"yes"}},
		"pause":  {"scope": {"all"}},
		"resume": {"scope": {"all"}},
		"cancel": {"order": {"1"}, "id": {ids[0]}, "confirm": {"yes"}},
	}
	readOnly := newDashboard(t, f, serverConfig{})
	forged := readOnly.newSession(time.Now())
	d, logs := loggedDashboard(t, f)
	cookie, csrf := d.signIn(t)
	_, otherCSRF := d.signIn(t)
	for op, form := range forms {
		w := readOnly.act(t, op, form, &http.Cookie{Name: sessionCookie, Value: forged}, readOnly.csrfToken(strings.Split(forged, ".")[0]))
		assert.Equal(t, http.StatusForbidden, w.Code, op)
		assert.Contains(t, w.Body.String(), "read-only", op)
		for name, tc := range map[string]struct {
			cookie *http.Cookie
			csrf   string
		}{
			"no session":            {nil, csrf},
			"session of another":    {&http.Cookie{Name: sessionCookie, Value: forged}, csrf},
			"no CSRF token":         {cookie, ""},
			"wrong CSRF token":      {cookie, "AAAA"},
			"another session's one": {cookie, otherCSRF},
		} {
			form := url.Values{}
			for k, v := range forms[op] {
				form[k] = v
			}
			var cookies []*http.Cookie
			if tc.cookie != nil {
				cookies = append(cookies, tc.cookie)
			}
			form.Set("csrf", tc.csrf)
			w := d.serve(t, http.MethodPost, "/actions/"+op, form, cookies...)
			assert.Equal(t, http.StatusForbidden, w.Code, "%s: %s", op, name)
		}
	}
	st := stats0(t, f)
	assert.EqualValues(t, 2, st.Dead)
	assert.False(t, st.Paused)
	assert.Equal(t, 25, strings.Count(logs.String(), "action refused"), logs.String())
	for _, op := range []string{"replay", "purge", "pause", "cancel"} {
		w := d.serve(t, http.MethodGet, "/actions/"+op, nil, cookie)
		assert.Equal(t, http.StatusMethodNotAllowed, w.Code, op)
		assert.Equal(t, "POST", w.Header().Get("Allow"), op)
	}
}

// A dead task replayed with one click is back in ready; the next page
// says so, once; the log says who did it.
func TestReplayOne(t *testing.T) {
	t.Parallel()
	f, ids := deadTasks(t, 1, 2)
	d, logs := loggedDashboard(t, f)
	cookie, csrf := d.signIn(t)
	page := d.get(t, "/queue/0", cookie).Body.String()
	assert.Contains(t, rowOf(page, `<tr data-id="`+ids[0]+`"`), `<button class="replay" data-op="replay">Replay</button>`)
	w := d.act(t, "replay", url.Values{"a": {"0"}, "id": {ids[0]}}, cookie, csrf)
	require.Equal(t, http.StatusSeeOther, w.Code, w.Body.String())
	assert.Equal(t, "/queue/0", w.Header().Get("Location"))
	st := stats0(t, f)
	assert.EqualValues(t, 1, st.Dead)
	assert.EqualValues(t, 1, st.Ready)
	page = d.get(t, "/queue/0", cookie).Body.String()
	assert.Contains(t, page, `<div class="banner ok" id="flash" role="status">Replayed 1 dead task of queue 0: it is back in its ready list.</div>`)
	assert.NotContains(t, d.get(t, "/queue/0", cookie).Body.String(), `id="flash"`, "shown once")
	assert.Contains(t, logs.String(), `msg=action op=replay scope="analyser 0, 1 task(s): `+ids[0]+`"`)
	assert.Contains(t, logs.String(), "who.remote=127.0.0.1:50000")
	// Again: it is not dead any more.
	w = d.act(t, "replay", url.Values{"a": {"0"}, "id": {ids[0]}}, cookie, csrf)
	require.Equal(t, http.StatusSeeOther, w.Code)
	page = d.get(t, "/", cookie).Body.String()
	assert.Contains(t, page, "Replayed 0 dead tasks of queue 0. 1 was not in the store (replayed or purged meanwhile, or malformed).")
	assert.NotContains(t, page, "they are back")
}

// What cannot be undone asks first, and does nothing until confirmed.
func TestActionsConfirm(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f, ids := deadTasks(t, 1, 2, 3)
	later, err := f.q.AddTaskAt(ctx, 4, time.Now().Add(time.Hour), []byte("later"))
	require.NoError(t, err)
	d, logs := loggedDashboard(t, f)
	cookie, csrf := d.signIn(t)
	for _, tc := range []struct {
		op       string
		form     url.Values
		question string
		location string
		check    func(queue.AnalyserStats)
	}{
		{"purge", url.Values{"a": {"0"}, "id": {ids[0]}}, "Delete 1 dead task(s) of queue 0, for good?", "/queue/0",
			func(st queue.AnalyserStats) { assert.EqualValues(t, 2, st.Dead) }},
		{"replay", url.Values{"a": {"0"}, "all": {"1"}}, "Run every dead task of queue 0 again?", "/queue/0",
			func(st queue.AnalyserStats) { assert.EqualValues(t, [2]int64{0, 2}, [2]int64{st.Dead, st.Ready}) }},
		{"cancel", url.Values{"order": {"4"}, "id": {later}, "from": {"queue"}}, "Cancel task " + later + " of order 4?", "/queue/0",
			func(st queue.AnalyserStats) {
				assert.EqualValues(t, [2]int64{0, 1}, [2]int64{st.Scheduled, st.Cancelled})
			}},
	} {
		before := stats0(t, f)
		w := d.act(t, tc.op, tc.form, cookie, csrf)
		require.Equal(t, http.StatusOK, w.Code, tc.op)
		body := w.Body.String()
		assert.Contains(t, body, `<section class="confirm" id="confirm" data-op="`+tc.op+`">`, tc.op)
		assert.Contains(t, body, tc.question, tc.op)
		assert.Contains(t, body, `<input type="hidden" name="confirm" value="yes">`, tc.op)
		assert.Contains(t, body, `<input type="hidden" name="csrf" value="`+csrf+`">`, tc.op)
		for k, vs := range tc.form {
			assert.Contains(t, body, `<input type="hidden" name="`+k+`" value="`+vs[0]+`">`, tc.op)
		}
		assert.Equal(t, before, stats0(t, f), "%s: nothing done before the confirmation", tc.op)
		tc.form.Set("confirm", "yes")
		w = d.act(t, tc.op, tc.form, cookie, csrf)
		require.Equal(t, http.StatusSeeOther, w.Code, tc.op)
		assert.Equal(t, tc.location, w.Header().Get("Location"), tc.op)
		tc.check(stats0(t, f))
	}
	assert.Equal(t, 3, strings.Count(logs.String(), "msg=action "), logs.String())
	// A purge of every dead task, and of a malformed record stored under a
	// field that is not a task ID.
	hostile := `<script>x</script>`
	_, err = f.do(t, 0, "HSET", "{"+f.prefix+":0.0}:dead", hostile, "junk")
	require.NoError(t, err)
	page := d.get(t, "/queue/0", cookie).Body.String()
	row := rowOf(page, "data-malformed")
	assert.NotContains(t, row, `data-op="replay"`, "a malformed record cannot be replayed")
	assert.Contains(t, row, `<input type="hidden" name="id" value="`+html.EscapeString(hostile)+`">`)
	w := d.act(t, "purge", url.Values{"a": {"0"}, "id": {hostile}}, cookie, csrf)
	assert.NotContains(t, w.Body.String(), hostile)
	w = d.act(t, "purge", url.Values{"a": {"0"}, "id": {hostile}, "confirm": {"yes"}}, cookie, csrf)
	require.Equal(t, http.StatusSeeOther, w.Code)
	assert.EqualValues(t, 0, stats0(t, f).Dead)
}

func TestPauseResumeActions(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 2, 2)
	f.add(t, 1)
	d, logs := loggedDashboard(t, f)
	cookie, csrf := d.signIn(t)
	paused := func() []bool {
		stats, err := f.q.Stats(context.Background())
		require.NoError(t, err)
		out := make([]bool, len(stats))
		for i, st := range stats {
			out[i] = st.Paused
		}
		return out
	}
	for _, tc := range []struct {
		op       string
		form     url.Values
		want     []bool
		location string
	}{
		{"pause", url.Values{"scope": {"analyser"}, "a": {"3"}, "from": {"queue"}}, []bool{false, false, false, true}, "/queue/3"},
		{"pause", url.Values{"scope": {"partition"}, "p": {"0"}}, []bool{true, false, true, true}, "/"},
		{"resume", url.Values{"scope": {"analyser"}, "a": {"2"}, "from": {"overview"}}, []bool{true, false, false, true}, "/"},
		{"pause", url.Values{"scope": {"all"}}, []bool{true, true, true, true}, "/"},
		{"resume", url.Values{"scope": {"all"}}, []bool{false, false, false, false}, "/"},
	} {
		w := d.act(t, tc.op, tc.form, cookie, csrf)
		require.Equal(t, http.StatusSeeOther, w.Code, "%s %v: %s", tc.op, tc.form, w.Body.String())
		assert.Equal(t, tc.location, w.Header().Get("Location"))
		assert.Equal(t, tc.want, paused(), "%s %v", tc.op, tc.form)
	}
	assert.Contains(t, logs.String(), `msg=action op=pause scope="partition 0"`)
	body := d.get(t, "/", cookie).Body.String()
	assert.Contains(t, body, "Resumed all queues.")
	assert.Contains(t, rowOf(body, `<tr data-analyser="0"`), `<button class="pause" data-op="pause" data-scope="analyser">Pause</button>`)
}

// Pausing or cancelling under a prefix nothing has used would record the
// dashboard's layout there: refused, as the commands refuse it.
func TestWriteActionsRefuseUnusedPrefix(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	d, _ := loggedDashboard(t, f)
	cookie, csrf := d.signIn(t)
	for op, form := range map[string]url.Values{
		"pause":  {"scope": {"all"}},
		"cancel": {"order": {"1"}, "id": {"0123456789abcdefghij"}, "confirm": {"yes"}},
	} {
		w := d.act(t, op, form, cookie, csrf)
		assert.Equal(t, http.StatusConflict, w.Code, op)
		assert.Contains(t, w.Body.String(), "refusing to write under it", op)
	}
	keys, err := f.do(t, 0, "KEYS", "*"+f.prefix+"*")
	require.NoError(t, err)
	assert.Empty(t, keys, "nothing written")
}

func TestCancelFromTaskPage(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	ids := f.add(t, 5)
	d, _ := loggedDashboard(t, f)
	cookie, csrf := d.signIn(t)
	page := d.get(t, taskURL("5", ids[0]), cookie).Body.String()
	assert.Contains(t, page, `id="task-actions"`, "a ready task reads as unknown, and can be cancelled")
	w := d.act(t, "cancel", url.Values{"order": {"5"}, "id": {ids[0]}, "from": {"task"}, "confirm": {"yes"}}, cookie, csrf)
	require.Equal(t, http.StatusSeeOther, w.Code, w.Body.String())
	assert.Equal(t, taskURL("5", ids[0]), w.Header().Get("Location"))
	page = d.get(t, w.Header().Get("Location"), cookie).Body.String()
	assert.Contains(t, page, "was found in no record but the ready list")
	assert.Contains(t, page, `data-state="unknown"`, "marked, and still unknown: queued, or finished before, or never was")
	assert.Contains(t, page, `id="cancel-asked"`)
}

// A cancel posted for a task of another OrderID that shares the queue
// (the task page hides its button, a form sent by hand does not) is
// refused, and cancels nothing.
func TestCancelActionRefusesAnotherOrdersTask(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1) // every OrderID shares the one queue
	ctx := context.Background()
	id, err := f.q.AddTaskAfter(ctx, 9, time.Hour, []byte("later"))
	require.NoError(t, err)
	d, _ := loggedDashboard(t, f)
	cookie, csrf := d.signIn(t)
	w := d.act(t, "cancel", url.Values{"order": {"1"}, "id": {id}, "from": {"task"}, "confirm": {"yes"}}, cookie, csrf)
	assert.Equal(t, http.StatusConflict, w.Code)
	assert.Contains(t, w.Body.String(), "belongs to order 9, not to order 1")
	st, err := f.q.Status(ctx, 9, id)
	require.NoError(t, err)
	assert.Equal(t, queue.StateScheduled, st.State, "nothing cancelled")
	assert.False(t, st.CancelAsked)
}

func TestActionBadRequests(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 2, 1)
	f.add(t, 1)
	d, _ := loggedDashboard(t, f)
	cookie, csrf := d.signIn(t)
	for _, tc := range []struct {
		op   string
		form url.Values
		code int
		want string
	}{
		{"explode", url.Values{}, http.StatusNotFound, "no action"},
		{"replay", url.Values{"id": {"x"}}, http.StatusBadRequest, "not an analyser"},
		{"replay", url.Values{"a": {"2"}, "id": {"x"}}, http.StatusBadRequest, "not an analyser (0 to 1)"},
		{"replay", url.Values{"a": {"0"}}, http.StatusBadRequest, "no task ID given"},
		{"purge", url.Values{"a": {"0"}, "all": {"1"}, "id": {"x"}}, http.StatusBadRequest, "not both"},
		{"purge", url.Values{"a": {"0"}, "id": {strings.Repeat("x", 300)}}, http.StatusBadRequest, "task ID of 300 bytes: at most 256"},
		{"pause", url.Values{}, http.StatusBadRequest, "scope"},
		{"pause", url.Values{"scope": {"partition"}, "p": {"2"}}, http.StatusBadRequest, "not a server (0 to 1)"},
		{"resume", url.Values{"scope": {"analyser"}, "a": {"-1"}}, http.StatusBadRequest, "not an analyser"},
		{"cancel", url.Values{"order": {"x"}, "id": {"0123456789abcdefghij"}}, http.StatusBadRequest, "not an OrderID"},
		{"cancel", url.Values{"order": {"1"}, "id": {"<b>"}}, http.StatusBadRequest, "not a task ID"},
		{"pause", url.Values{"scope": {"all"}, "from": {"https://evil.example/"}}, http.StatusBadRequest, "not a page"},
	} {
		w := d.act(t, tc.op, tc.form, cookie, csrf)
		assert.Equal(t, tc.code, w.Code, "%s %v", tc.op, tc.form)
		assert.Contains(t, w.Body.String(), html.EscapeString(tc.want), "%s %v", tc.op, tc.form)
		title := map[int]string{http.StatusNotFound: "Not found", http.StatusBadRequest: "Bad request"}[tc.code]
		assert.Contains(t, w.Body.String(), "<h1>"+title+"</h1>", "%s %v", tc.op, tc.form)
		assert.NotContains(t, w.Body.String(), "<b>")
	}
	ids := make(url.Values)
	for range maxActionIDs + 1 {
		ids.Add("id", "x")
	}
	ids.Set("a", "0")
	assert.Equal(t, http.StatusBadRequest, d.act(t, "replay", ids, cookie, csrf).Code)
	big := url.Values{"a": {"0"}, "id": {strings.Repeat("y", 70<<10)}}
	assert.Equal(t, http.StatusBadRequest, d.act(t, "purge", big, cookie, csrf).Code, "a form over 64 KiB")
}

// An action whose Redis call fails says so, and is logged as failed.
func TestActionRedisDown(t *testing.T) {
	t.Parallel()
	f, ids := deadTasks(t, 1)
	if f.minis == nil {
		t.Skip("stops a miniredis")
	}
	d, logs := loggedDashboard(t, f)
	cookie, csrf := d.signIn(t)
	require.Equal(t, http.StatusOK, d.get(t, "/", cookie).Code)
	f.minis[0].Close()
	w := d.act(t, "replay", url.Values{"a": {"0"}, "id": {ids[0]}}, cookie, csrf)
	assert.Equal(t, http.StatusServiceUnavailable, w.Code)
	assert.Contains(t, w.Body.String(), `id="error"`)
	assert.Contains(t, logs.String(), "action failed")
}

// An action that Redis does not answer fails within the action's bound,
// and the page says which bound ran out: not the pages' -timeout.
func TestActionTimeoutSaysItsBound(t *testing.T) {
	t.Parallel()
	d := dashboardOf(t, envFor(silentURL(t), 1, "silent"),
		serverConfig{token: testToken, timeout: 5 * time.Second, actionTimeout: 300 * time.Millisecond})
	cookie, csrf := d.signIn(t)
	start := time.Now()
	w := d.act(t, "pause", url.Values{"scope": {"all"}}, cookie, csrf)
	assert.Less(t, time.Since(start), 3*time.Second)
	assert.Equal(t, http.StatusServiceUnavailable, w.Code)
	body := html.UnescapeString(w.Body.String())
	assert.Contains(t, body, "did not answer in time (an action waits at most 300ms)")
	assert.NotContains(t, body, "-timeout")
}

// A malformed dead record may sit under any field, the empty one too: its
// row's Purge deletes that record alone, and one under a field longer
// than an action takes gets no button that would be refused.
func TestPurgeOddDeadFields(t *testing.T) {
	t.Parallel()
	f, ids := deadTasks(t, 1)
	long := strings.Repeat("L", maxFieldLen+1)
	for _, field := range []string{"", long} {
		_, err := f.do(t, 0, "HSET", "{"+f.prefix+":0.0}:dead", field, garbage)
		require.NoError(t, err)
	}
	d, _ := loggedDashboard(t, f)
	cookie, csrf := d.signIn(t)
	body := d.get(t, "/queue/0", cookie).Body.String()
	empty := rowOf(tableOf(body, "dead"), `<tr data-id="" `)
	require.NotEmpty(t, empty)
	assert.Contains(t, empty, `data-op="purge"`)
	assert.NotContains(t, empty, `name="all"`, "the row's Purge is not Purge all")
	assert.Contains(t, empty, `<input type="hidden" name="id" value="">`)
	longRow := rowOf(tableOf(body, "dead"), `<tr data-id="`+long+`"`)
	require.NotEmpty(t, longRow)
	assert.NotContains(t, longRow, `data-op="purge"`)
	assert.Contains(t, longRow, "qugo purge")

	w := d.act(t, "purge", url.Values{"a": {"0"}, "id": {""}, "confirm": {"yes"}}, cookie, csrf)
	require.Equal(t, http.StatusSeeOther, w.Code, w.Body.String())
	dead, err := f.q.Dead(context.Background(), 0)
	require.NoError(t, err)
	var left []string
	for _, task := range dead {
		left = append(left, task.ID)
	}
	assert.ElementsMatch(t, []string{ids[0], long}, left)
}
