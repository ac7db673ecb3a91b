package main

import (
	"context"
	"github.com/gomodule/redigo/redis"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/qugo/queue"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testToken signs in to the test dashboards that have one.
const testToken = "test-token-0123456789abcdef"

// dashboard is a server under test with the fixture's queue.
type dashboard struct {
	*server
	f *fixture
}

// newDashboard builds a dashboard of f's queue; cfg's zero fields take
// the defaults. It is closed at the end of the test.
func newDashboard(t *testing.T, f *fixture, cfg serverConfig) *dashboard {
	t.Helper()
	d := dashboardOf(t, f.env(), cfg)
	d.f = f
	return d
}

// dashboardOf builds a dashboard of the queue e names.
func dashboardOf(t *testing.T, e *env, cfg serverConfig) *dashboard {
	t.Helper()
	cfg.loopback = true
	if cfg.signInPause == 0 {
		cfg.signInPause = time.Nanosecond // tests that sign in after a wrong token ask for the pause
	}
	s, err := newServer(e, cfg)
	require.NoError(t, err)
	t.Cleanup(s.be.close)
	return &dashboard{server: s}
}

// env is what qugo would run with for the fixture's queue.
func (f *fixture) env() *env { return envFor(strings.Join(f.urls, ","), f.queues, f.prefix) }

func envFor(redis string, queues int, prefix string) *env {
	return &env{
		globals: globals{redis: redis, queues: queues, prefix: prefix},
		stdout:  io.Discard, stderr: io.Discard, set: map[string]bool{},
	}
}

// get serves a GET of target.
func (d *dashboard) get(t *testing.T, target string, cookies ...*http.Cookie) *httptest.ResponseRecorder {
	t.Helper()
	return d.serve(t, http.MethodGet, target, nil, cookies...)
}

// serve serves one request, as a browser on this machine sends it: to
// 127.0.0.1, a form when form is not nil.
func (d *dashboard) serve(t *testing.T, method, target string, form url.Values, cookies ...*http.Cookie) *httptest.ResponseRecorder {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	r := httptest.NewRequest(method, target, body)
	r.Host = "127.0.0.1:8081"
	r.RemoteAddr = "127.0.0.1:50000"
	if form != nil {
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for _, c := range cookies {
		r.AddCookie(c)
	}
	w := httptest.NewRecorder()
	d.ServeHTTP(w, r)
	return w
}

// signIn signs in with the token and returns the session cookie and the
// CSRF token its forms carry.
func (d *dashboard) signIn(t *testing.T) (*http.Cookie, string) {
	t.Helper()
	w := d.serve(t, http.MethodPost, "/login", url.Values{"token": {testToken}})
	require.Equal(t, http.StatusSeeOther, w.Code, w.Body.String())
	cookies := w.Result().Cookies()
	require.Len(t, cookies, 1)
	payload, ok := d.session(withCookie(cookies[0]))
	require.True(t, ok)
	return cookies[0], d.csrfToken(payload)
}

func withCookie(c *http.Cookie) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.AddCookie(c)
	return r
}

// cell returns the text of the attribute name="value" on the element
// whose opening tag holds marker, or "" when there is none.
func attrAfter(body, marker, name string) string {
	i := strings.Index(body, marker)
	if i < 0 {
		return ""
	}
	rest := body[i:]
	end := strings.Index(rest, ">")
	j := strings.Index(rest, name+`="`)
	if j < 0 || end >= 0 && j > end {
		return ""
	}
	rest = rest[j+len(name)+2:]
	return rest[:strings.Index(rest, `"`)]
}

// rowOf returns the opening tag and content of the table row whose tag
// holds marker, up to its end.
func rowOf(body, marker string) string {
	i := strings.Index(body, marker)
	if i < 0 {
		return ""
	}
	rest := body[i:]
	if j := strings.Index(rest, "</tr>"); j >= 0 {
		return rest[:j]
	}
	return rest
}

// dataInt returns the number in the attribute data-name of row.
func dataInt(t *testing.T, row, name string) int64 {
	t.Helper()
	marker := "data-" + name + `="`
	i := strings.Index(row, marker)
	require.GreaterOrEqual(t, i, 0, "no %s in %s", marker, row)
	rest := row[i+len(marker):]
	n, err := strconv.ParseInt(rest[:strings.Index(rest, `"`)], 10, 64)
	require.NoError(t, err)
	return n
}

func TestSecurityHeaders(t *testing.T) {
	t.Parallel()
	d := newDashboard(t, newFixture(t, 1, 1), serverConfig{})
	for _, target := range []string{"/", "/nowhere", "/login", "/static/app.js"} {
		w := d.get(t, target)
		h := w.Header()
		assert.Contains(t, h.Get("Content-Security-Policy"), "script-src 'self'", target)
		assert.NotContains(t, h.Get("Content-Security-Policy"), "unsafe-inline", target)
		assert.Contains(t, h.Get("Content-Security-Policy"), "frame-ancestors 'none'", target)
		assert.Equal(t, "nosniff", h.Get("X-Content-Type-Options"), target)
		assert.Equal(t, "DENY", h.Get("X-Frame-Options"), target)
		assert.Equal(t, "no-referrer", h.Get("Referrer-Policy"), target)
	}
	assert.Equal(t, "no-store", d.get(t, "/").Header().Get("Cache-Control"))
}

func TestNoInlineScriptOrStyle(t *testing.T) {
	t.Parallel()
	d := newDashboard(t, newFixture(t, 1, 1), serverConfig{token: testToken})
	cookie, _ := d.signIn(t)
	body := d.get(t, "/", cookie).Body.String()
	assert.Contains(t, body, `<script src="/static/app.js?v=`)
	assert.Equal(t, 1, strings.Count(body, "<script"), "the one script is the static file")
	assert.NotContains(t, body, "<style")
	assert.NotContains(t, body, " style=")
	assert.NotContains(t, body, " onclick=")
}

func TestStaticFiles(t *testing.T) {
	t.Parallel()
	d := newDashboard(t, newFixture(t, 1, 1), serverConfig{})
	for name, ctype := range map[string]string{"app.js": "text/javascript", "style.css": "text/css", "icon.svg": "image/svg+xml"} {
		w := d.get(t, "/static/"+name+"?v="+d.assets[name].version)
		assert.Equal(t, http.StatusOK, w.Code, name)
		assert.True(t, strings.HasPrefix(w.Header().Get("Content-Type"), ctype), name)
		assert.Contains(t, w.Header().Get("Cache-Control"), "immutable", name)
		assert.NotEmpty(t, w.Body.String(), name)
		assert.Equal(t, "no-cache", d.get(t, "/static/"+name).Header().Get("Cache-Control"), "an old version is not kept for good")
	}
	assert.Equal(t, http.StatusNotFound, d.get(t, "/static/nope.js").Code)
	assert.NotEqual(t, http.StatusOK, d.get(t, "/static/../server.go").Code)
}

func TestNotFoundAndMethods(t *testing.T) {
	t.Parallel()
	d := newDashboard(t, newFixture(t, 1, 1), serverConfig{token: testToken})
	w := d.get(t, "/no/such/page")
	assert.Equal(t, http.StatusNotFound, w.Code)
	assert.Contains(t, w.Body.String(), "There is no page at this address.")
	for _, tc := range []struct{ method, target, allow string }{
		{http.MethodPost, "/", "GET, HEAD"},
		{http.MethodDelete, "/", "GET, HEAD"},
		{http.MethodGet, "/logout", "POST"},
		{http.MethodPut, "/login", "GET, HEAD, POST"},
		{http.MethodPost, "/static/app.js", "GET, HEAD"},
	} {
		w := d.serve(t, tc.method, tc.target, url.Values{})
		assert.Equal(t, http.StatusMethodNotAllowed, w.Code, "%s %s", tc.method, tc.target)
		assert.Equal(t, tc.allow, w.Header().Get("Allow"), "%s %s", tc.method, tc.target)
	}
	assert.Equal(t, http.StatusOK, d.serve(t, http.MethodHead, "/", nil).Code)
}

// On a loopback listener, a request for another host name (a page of
// another site rebound to 127.0.0.1) reads nothing.
func TestHostCheck(t *testing.T) {
	t.Parallel()
	d := newDashboard(t, newFixture(t, 1, 1), serverConfig{})
	for host, code := range map[string]int{
		"127.0.0.1:8081": http.StatusOK, "localhost:8081": http.StatusOK, "[::1]:8081": http.StatusOK,
		"127.0.0.2": http.StatusOK, "app.localhost:1": http.StatusOK, "LOCALHOST": http.StatusOK,
		"evil.example:8081": http.StatusMisdirectedRequest, "10.0.0.1:8081": http.StatusMisdirectedRequest,
		"localhost.evil.example": http.StatusMisdirectedRequest, "": http.StatusMisdirectedRequest,
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Host = host
		w := httptest.NewRecorder()
		d.ServeHTTP(w, r)
		assert.Equal(t, code, w.Code, host)
	}
	// Listening beyond loopback, any name is answered.
	d.cfg.loopback = false
	open, err := newServer(d.f.env(), d.cfg)
	require.NoError(t, err)
	t.Cleanup(open.be.close)
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Host = "dashboard.example:8081"
	w := httptest.NewRecorder()
	open.ServeHTTP(w, r)
	assert.Equal(t, http.StatusOK, w.Code)
}

// A post from a page of another site is refused before any handler.
func TestCrossOriginPostRefused(t *testing.T) {
	t.Parallel()
	d := newDashboard(t, newFixture(t, 1, 1), serverConfig{token: testToken})
	r := httptest.NewRequest(http.MethodPost, "/login", strings.NewReader("token="+testToken))
	r.Host = "127.0.0.1:8081"
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Sec-Fetch-Site", "cross-site")
	w := httptest.NewRecorder()
	d.ServeHTTP(w, r)
	assert.Equal(t, http.StatusForbidden, w.Code)
	assert.Empty(t, w.Result().Cookies())
}

// A server that does not answer shows as an error, fast: within the
// timeout, with a banner, as 503; its fragment too.
func TestUnreachableRedisShowsFast(t *testing.T) {
	t.Parallel()
	for name, redis := range map[string]string{"refused": closedURL(t), "silent": silentURL(t)} {
		d := dashboardOf(t, envFor(redis, 1, "unreachable"), serverConfig{timeout: 300 * time.Millisecond})
		for _, target := range []string{"/", "/?fragment=1"} {
			start := time.Now()
			w := d.get(t, target)
			took := time.Since(start)
			assert.Less(t, took, 2*time.Second, "%s %s", name, target)
			assert.Equal(t, http.StatusServiceUnavailable, w.Code, "%s %s", name, target)
			assert.Contains(t, w.Body.String(), `id="error"`, "%s %s", name, target)
		}
		if name == "silent" {
			assert.Contains(t, d.get(t, "/").Body.String(), "did not answer within 300ms")
		}
	}
}

// silentURL returns the redis:// URL of a server that accepts
// connections and never answers; it stops at the end of the test.
func silentURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	})
	return "redis://" + ln.Addr().String()
}

// A dashboard connects when its server comes up, and shows a server that
// goes away as an error, not an empty page.
func TestRedisComesAndGoes(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	if f.minis == nil {
		t.Skip("stops and starts a miniredis")
	}
	f.add(t, 1, 2, 3)
	d := newDashboard(t, f, serverConfig{timeout: 500 * time.Millisecond})
	addr := f.minis[0].Addr()
	f.minis[0].Close()
	w := d.get(t, "/")
	assert.Equal(t, http.StatusServiceUnavailable, w.Code)
	require.NoError(t, f.minis[0].StartAddr(addr))
	w = d.get(t, "/")
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	assert.EqualValues(t, 3, dataInt(t, rowOf(w.Body.String(), `data-analyser="0"`), "ready"))
	f.minis[0].Close()
	w = d.get(t, "/")
	assert.Equal(t, http.StatusServiceUnavailable, w.Code)
	assert.Contains(t, w.Body.String(), `id="error"`)
}

// An error shown on a page never holds a password of -redis.
func TestScrubSecrets(t *testing.T) {
	t.Parallel()
	urls := []string{"redis://user:" + sentinelPassword + "@10.0.0.1:6379", "redis+sentinel://a:1,b:2/main?sentinel_password=" + sentinelPassword + "2"}
	got := scrubSecrets("auth "+sentinelPassword+" and "+sentinelPassword+"2 failed", urls)
	assert.NotContains(t, got, sentinelPassword)
	assert.Contains(t, got, "auth xxxxx and xxxxx failed")

	// A short password is replaced where it stands as a word (in a URL, in
	// quotes, between spaces), and nowhere else: its letters elsewhere are
	// parts of other words.
	short := []string{"redis://u:p@127.0.0.1:6379", "redis+sentinel://a:1/main?sentinel_password=s%26", "redis://:abc@10.0.0.2:6379"}
	msg := "dial redis://u:p@127.0.0.1:6379 for partition 0: WRONGPASS invalid username-password pair; sentinel_password=s%26 sentinel_password=s&; " +
		"ERR unknown command 'AUTH', with args beginning with: 'abc' ; auth abc failed; auth 'u' 'p'; abcd"
	assert.Equal(t, "dial redis://u:xxxxx@127.0.0.1:6379 for partition 0: WRONGPASS invalid username-password pair; sentinel_password=xxxxx sentinel_password=xxxxx; "+
		"ERR unknown command 'AUTH', with args beginning with: 'xxxxx' ; auth xxxxx failed; auth 'u' 'xxxxx'; abcd",
		scrubSecrets(msg, short))

	// A URL that does not parse is quoted whole by its error.
	bad := "redis://u:Pw-0f-a-bad-url@host:port/0"
	_, err := url.Parse(bad)
	require.Error(t, err)
	assert.NotContains(t, scrubSecrets(err.Error(), []string{bad}), "Pw-0f-a-bad-url")
}

// run serves until its ctx ends, then returns having joined the sampler
// and closed the connection (goleak checks the rest at the end).
func TestRunStopsAndJoins(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	d := newDashboard(t, f, serverConfig{sample: 10 * time.Millisecond})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.run(ctx, ln) }()
	resp, err := http.Get("http://" + ln.Addr().String() + "/")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Eventually(t, func() bool { return len(d.hist.samples()) >= 3 }, 5*time.Second, 10*time.Millisecond)
	cancel()
	select {
	case err := <-done:
		assert.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return")
	}
	_, err = d.be.get(context.Background())
	assert.Error(t, err, "closed")
}

// No page shows a password of -redis: not the servers' list, not an
// error of a server that refuses it.
func TestNoPasswordInPages(t *testing.T) {
	t.Parallel()
	pw := sentinelPassword
	good := miniredisWithPassword(t, pw)
	wrong := miniredisWithPassword(t, "another-password")
	for name, redis := range map[string]string{
		"good":        "redis://:" + pw + "@" + good,
		"wrong":       "redis://:" + pw + "@" + wrong,
		"unreachable": "redis://user:" + pw + "@" + strings.TrimPrefix(closedURL(t), "redis://"),
	} {
		d := dashboardOf(t, envFor(redis, 1, "pw"), serverConfig{timeout: 500 * time.Millisecond, token: testToken})
		cookie, _ := d.signIn(t)
		home := d.get(t, "/", cookie).Body.String()
		assert.Contains(t, home, "<code>"+queue.RedactURL(redis)+"</code>", name)
		if name != "good" {
			assert.Contains(t, home, `id="error"`, name)
		}
		for _, target := range []string{"/", "/queue/0", "/groups?name=g", "/task?order=1&id=0123456789abcdefghij", "/login"} {
			body := d.get(t, target, cookie).Body.String()
			assert.NotContains(t, body, pw, "%s %s", name, target)
			assert.NotContains(t, body, "7f3a", "%s %s", name, target)
		}
	}
}

// miniredisWithPassword starts a miniredis that requires pw, and returns
// its address.
func miniredisWithPassword(t *testing.T, pw string) string {
	t.Helper()
	m := miniredis.RunT(t)
	m.RequireAuth(pw)
	return m.Addr()
}

// A refusal whose own message ends in a period gets the hint after one
// period, not two.
func TestExplainJoinsTheHintOnce(t *testing.T) {
	d := newDashboard(t, newFixture(t, 1, 1), serverConfig{})
	msg := d.explain(redis.Error("WRONGPASS invalid username-password pair or user is disabled."))
	assert.Contains(t, msg, "disabled. Redis refused the credentials")
	assert.NotContains(t, msg, "..")
}
