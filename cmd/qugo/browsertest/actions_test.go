package browsertest

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A signed-in operator replays one dead task with one click: it is back
// in the ready list, and the pages say so.
func TestReplayOneDeadTask(t *testing.T) {
	s := newSetup(t, 1, 1)
	ids := s.deadLetters(0, 3, "no such customer")
	d := s.serve(token)
	p := s.open(d)
	p.signIn(token)
	p.visit("queue/0")
	require.Equal(t, ids, p.ids("table#dead tbody tr"), "the dead letters, oldest death first")

	resp := p.click(fmt.Sprintf(`table#dead tr[data-id=%q] button[data-op="replay"]`, ids[1]))
	assert.Equal(t, 200, int(resp.Status))
	assert.Contains(t, p.location(), "/queue/0", "back on the queue's page")
	assert.Contains(t, p.text("#flash"), "Replayed 1 dead task of queue 0: it is back in its ready list.")

	st := s.stats()[0]
	assert.Equal(t, int64(1), st.Ready, "the replayed task is ready again")
	assert.Equal(t, int64(2), st.Dead)
	dead, err := s.q.Dead(s.ctx, 0)
	require.NoError(t, err)
	require.Len(t, dead, 2)
	assert.Equal(t, []string{ids[0], ids[2]}, []string{dead[0].ID, dead[1].ID}, "the other two stay dead")

	// The page, loaded again, shows the same; the message was for once.
	p.visit("queue/0")
	assert.False(t, p.has("#flash"), "the flash shows once")
	assert.Equal(t, []string{ids[0], ids[2]}, p.ids("table#dead tbody tr"))
	stats := p.rows("table#queue-stats tbody tr")
	require.Len(t, stats, 1)
	assert.Equal(t, "1", stats[0]["ready"])
	assert.Equal(t, "2", stats[0]["dead"])
	p.visit("")
	assert.Equal(t, "1", p.text(`tr[data-analyser="0"] td[data-ready]`))
	assert.Equal(t, "2", p.text(`tr[data-analyser="0"] td[data-dead]`))
}

// postForm posts form to the dashboard from the page, with fetch (same
// origin, the browser's cookies), and returns the status of the last
// response (fetch follows the redirect after an action).
func postForm(p *page, path string, form url.Values) int {
	p.t.Helper()
	return eval[int](p, `fetch(`+js(path)+`, {method: 'POST', credentials: 'same-origin', redirect: 'follow',
		headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: `+js(form.Encode())+`}).then(function (r) { return r.status; })`)
}

// Without the token the dashboard shows no button, and an action posted
// anyway is refused.
func TestReadOnlyDashboardRefusesActions(t *testing.T) {
	s := newSetup(t, 1, 1)
	ids := s.deadLetters(0, 2, "timeout")
	s.add(s.orderOf(0, 5), "ready")
	d := s.serve("") // no -token: read-only
	p := s.open(d)

	for _, path := range []string{"", "queue/0", fmt.Sprintf("task?order=%d&id=%s", s.orderOf(0, 0), ids[0])} {
		p.visit(path)
		assert.True(t, p.has("#read-only"), "/%s says it is read-only", path)
		assert.False(t, p.has("#sign-in"), "/%s: there is no signing in", path)
		assert.Zero(t, p.count("button[data-op], form[action^='/actions/']"), "/%s shows no action", path)
	}
	p.visit("queue/0")
	require.Len(t, p.ids("table#dead tbody tr"), 2, "the dead letters are listed")

	for _, f := range []url.Values{
		{"a": {"0"}, "id": {ids[0]}},
		{"a": {"0"}, "all": {"1"}, "confirm": {"yes"}},
	} {
		assert.Equal(t, 403, postForm(p, "/actions/replay", f), "replay %v", f)
		assert.Equal(t, 403, postForm(p, "/actions/purge", f), "purge %v", f)
	}
	assert.Equal(t, 403, postForm(p, "/actions/pause", url.Values{"scope": {"all"}}))
	assert.Equal(t, 403, postForm(p, "/login", url.Values{"token": {""}}), "no token signs in")
	st := s.stats()[0]
	assert.Equal(t, int64(2), st.Dead, "nothing replayed or purged")
	assert.Equal(t, int64(1), st.Ready)
	assert.False(t, st.Paused)
}

// With a token, an action needs a signed-in browser and the CSRF token
// of its session, and comes from the dashboard's own pages: a post
// without either, or from another site, is refused.
func TestForgedActionsAreRefused(t *testing.T) {
	s := newSetup(t, 1, 1)
	ids := s.deadLetters(0, 3, "bad input")
	d := s.serve(token)
	p := s.open(d)
	replayOne := url.Values{"a": {"0"}, "id": {ids[0]}}

	// Not signed in: no buttons, and a post is refused.
	p.visit("queue/0")
	assert.True(t, p.has("#sign-in"))
	assert.Zero(t, p.count("button[data-op]"), "no buttons before signing in")
	assert.Equal(t, 403, postForm(p, "/actions/replay", replayOne))

	// A wrong token does not sign in.
	p.visit("login")
	p.do(chromedp.SendKeys(chromedp.CSS(`input[name=token]`), "not-the-token-at-all"))
	resp := p.click("#sign-in-button")
	assert.Equal(t, 403, int(resp.Status))
	assert.False(t, p.has("#sign-out"))
	// It holds every sign-in back for a second (429), the right token's
	// too.
	for deadline := time.Now().Add(10 * time.Second); postForm(p, "/login", url.Values{"token": {token}}) == 429; {
		require.True(t, time.Now().Before(deadline), "sign-ins still held back")
		time.Sleep(100 * time.Millisecond)
	}

	// Signed in, the session's CSRF token is needed.
	p.signIn(token)
	p.visit("queue/0")
	assert.NotZero(t, p.count(`table#dead button[data-op="replay"]`), "signed in: buttons")
	csrf := eval[string](p, `document.querySelector('input[name=csrf]').value`)
	require.NotEmpty(t, csrf)
	assert.Equal(t, 403, postForm(p, "/actions/replay", replayOne), "no CSRF token")
	wrong := url.Values{"a": {"0"}, "id": {ids[0]}, "csrf": {strings.Repeat("A", len(csrf))}}
	assert.Equal(t, 403, postForm(p, "/actions/replay", wrong), "a wrong CSRF token")
	assert.Equal(t, int64(3), s.stats()[0].Dead, "nothing replayed")

	// From a page of another origin (a blank page here), a form that
	// posts to the dashboard, even with the session's CSRF token copied
	// into it, is refused: the browser says where it comes from, and
	// does not send the SameSite=Strict cookie.
	p.do(chromedp.Navigate("about:blank"))
	resp, err := chromedp.RunResponse(p.ctx, chromedp.Evaluate[chromedp.Void](`(function () {
		var f = document.createElement('form');
		f.method = 'POST';
		f.action = `+js(d.url+"actions/purge")+`;
		var fields = {a: '0', all: '1', confirm: 'yes', csrf: `+js(csrf)+`};
		for (var k in fields) {
			var i = document.createElement('input');
			i.type = 'hidden'; i.name = k; i.value = fields[k];
			f.appendChild(i);
		}
		document.body.appendChild(f);
		f.submit();
	})()`))
	require.NoError(t, err)
	assert.Equal(t, 403, int(resp.Status), "a cross-site post")
	assert.Contains(t, p.text("main"), "another site")
	assert.Equal(t, int64(3), s.stats()[0].Dead, "nothing purged")

	// The same post from the dashboard's page, with the token, works: the
	// refusals above were the checks, not a broken action.
	p.visit("queue/0")
	assert.Equal(t, 200, postForm(p, "/actions/replay", url.Values{"a": {"0"}, "id": {ids[0]}, "csrf": {csrf}}))
	st := s.stats()[0]
	assert.Equal(t, int64(2), st.Dead)
	assert.Equal(t, int64(1), st.Ready)
}

// With JavaScript off, signing in and acting work: Replay all asks for a
// confirmation on a page of its own, and then replays.
func TestActionsWithoutJavaScript(t *testing.T) {
	s := newSetup(t, 1, 1)
	s.deadLetters(0, 3, "gone")
	d := s.serve(token)
	p := s.open(d)
	_, err := chromedp.Call(p.ctx, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true})
	require.NoError(t, err)
	p.signIn(token)
	p.visit("queue/0")
	require.True(t, p.has(`noscript > meta[http-equiv="refresh"]`), "scripts are off in the page")

	resp := p.click(`#dead-actions button[data-op="replay"][data-all]`)
	assert.Equal(t, 200, int(resp.Status))
	require.True(t, p.has(`section#confirm[data-op="replay"]`), "a confirmation page")
	assert.Contains(t, p.text("#question"), "Run every dead task of queue 0 again?")
	assert.Equal(t, int64(3), s.stats()[0].Dead, "nothing done before Yes")

	resp = p.click("#confirm-button")
	assert.Equal(t, 200, int(resp.Status))
	assert.Contains(t, p.text("#flash"), "Replayed 3")
	st := s.stats()[0]
	assert.Equal(t, int64(0), st.Dead)
	assert.Equal(t, int64(3), st.Ready)
	assert.True(t, p.has("#dead-empty"), "the page shows the store empty")
}
