package main

import (
	"encoding/base64"
	"encoding/binary"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSignIn(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	d := newDashboard(t, newFixture(t, 1, 1), serverConfig{token: testToken, log: slog.New(slog.NewTextHandler(&logs, nil))})
	assert.Equal(t, http.StatusOK, d.get(t, "/login").Code)
	for _, wrong := range []string{"", "nope", testToken + "x", strings.ToUpper(testToken)} {
		w := d.serve(t, http.MethodPost, "/login", url.Values{"token": {wrong}})
		assert.Equal(t, http.StatusForbidden, w.Code, wrong)
		assert.Empty(t, w.Result().Cookies(), wrong)
		assert.Contains(t, w.Body.String(), `<p class="banner error" id="sign-in-error" role="alert">Wrong token.</p>`)
		assert.NotContains(t, w.Body.String(), `id="error"`, "Redis has nothing to do with it")
	}
	assert.Equal(t, 4, strings.Count(logs.String(), "sign-in refused"), logs.String())
	assert.NotContains(t, logs.String(), "nope", "the tokens tried are not logged")

	w := d.serve(t, http.MethodPost, "/login", url.Values{"token": {testToken}})
	require.Equal(t, http.StatusSeeOther, w.Code)
	c := w.Result().Cookies()[0]
	assert.Equal(t, sessionCookie, c.Name)
	assert.True(t, c.HttpOnly)
	assert.Equal(t, http.SameSiteStrictMode, c.SameSite)
	assert.Equal(t, "/", c.Path)
	assert.NotContains(t, c.Value, testToken)
	assert.Contains(t, logs.String(), "signed in")
	assert.NotContains(t, logs.String(), testToken)

	payload, ok := d.session(withCookie(c))
	require.True(t, ok)
	assert.Contains(t, logs.String(), "who.session="+sessionHash(payload), "the sign-in names the session its actions will")
	assert.Equal(t, d.csrfToken(payload), d.csrfToken(payload), "one token per session")
	_, csrf2 := d.signIn(t)
	assert.NotEqual(t, d.csrfToken(payload), csrf2, "another session, another CSRF token")
}

func TestSessionCookieChecks(t *testing.T) {
	t.Parallel()
	d := newDashboard(t, newFixture(t, 1, 1), serverConfig{token: testToken})
	good := d.newSession(time.Now())
	payload, sig, _ := strings.Cut(good, ".")
	other := newDashboard(t, d.f, serverConfig{token: testToken}) // another process: another secret
	expired := d.newSession(time.Now().Add(-sessionTTL - time.Minute))
	raw, _ := base64.RawURLEncoding.DecodeString(payload)
	binary.BigEndian.PutUint64(raw, uint64(time.Now().Add(-sessionTTL-time.Hour).Unix()))
	backdated := base64.RawURLEncoding.EncodeToString(raw) + "." + sig
	for name, tc := range map[string]struct {
		d     *dashboard
		value string
		ok    bool
	}{
		"good":               {d, good, true},
		"other secret":       {other, good, false},
		"expired":            {d, expired, false},
		"backdated, old mac": {d, backdated, false},
		"no mac":             {d, payload, false},
		"mac cut":            {d, good[:len(good)-2], false},
		"empty":              {d, "", false},
		"junk":               {d, "a.b.c", false},
	} {
		_, ok := tc.d.session(withCookie(&http.Cookie{Name: sessionCookie, Value: tc.value}))
		assert.Equal(t, tc.ok, ok, name)
	}
	readOnly := newDashboard(t, d.f, serverConfig{})
	_, ok := readOnly.session(withCookie(&http.Cookie{Name: sessionCookie, Value: readOnly.newSession(time.Now())}))
	assert.False(t, ok, "without a token no session counts")
}

// A read-only dashboard has nothing to sign in to.
func TestSignInReadOnly(t *testing.T) {
	t.Parallel()
	d := newDashboard(t, newFixture(t, 1, 1), serverConfig{})
	assert.Equal(t, http.StatusNotFound, d.get(t, "/login").Code)
	w := d.serve(t, http.MethodPost, "/login", url.Values{"token": {""}})
	assert.Equal(t, http.StatusForbidden, w.Code)
	assert.Empty(t, w.Result().Cookies())
	assert.Contains(t, w.Body.String(), "read-only")
}

func TestSignOut(t *testing.T) {
	t.Parallel()
	d := newDashboard(t, newFixture(t, 1, 1), serverConfig{token: testToken})
	cookie, csrf := d.signIn(t)
	w := d.serve(t, http.MethodPost, "/logout", url.Values{"csrf": {"forged"}}, cookie)
	assert.Equal(t, http.StatusForbidden, w.Code)
	assert.Empty(t, w.Result().Cookies(), "still signed in")
	w = d.serve(t, http.MethodPost, "/logout", url.Values{"csrf": {csrf}}, cookie)
	assert.Equal(t, http.StatusSeeOther, w.Code)
	cleared := w.Result().Cookies()
	require.Len(t, cleared, 1)
	assert.Equal(t, sessionCookie, cleared[0].Name)
	assert.Negative(t, cleared[0].MaxAge)

	// The cookie signed out with is no key any more, should a copy of
	// it be kept (another browser profile, a stolen one).
	assert.NotContains(t, d.get(t, "/", cookie).Body.String(), `id="sign-out"`)
	w = d.serve(t, http.MethodPost, "/actions/pause", url.Values{"csrf": {csrf}, "scope": {"all"}}, cookie)
	assert.Equal(t, http.StatusForbidden, w.Code)
	assert.Contains(t, w.Body.String(), "Sign in first")
	other, _ := d.signIn(t)
	assert.Contains(t, d.get(t, "/", other).Body.String(), `id="sign-out"`, "other sessions stay")
}

// Log lines say who acted without giving their session away.
func TestWho(t *testing.T) {
	t.Parallel()
	d := newDashboard(t, newFixture(t, 1, 1), serverConfig{token: testToken})
	cookie, _ := d.signIn(t)
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.RemoteAddr = "192.0.2.7:4242"
	r.AddCookie(cookie)
	var out syncBuffer
	slog.New(slog.NewTextHandler(&out, nil)).Info("x", d.who(r))
	assert.Contains(t, out.String(), "who.remote=192.0.2.7:4242")
	assert.Contains(t, out.String(), "who.session=")
	payload, _, _ := strings.Cut(cookie.Value, ".")
	assert.NotContains(t, out.String(), payload)
}

// A wrong token holds every sign-in back for a while, so that the token
// cannot be guessed faster than that, however many connections try.
func TestSignInAfterWrongTokenWaits(t *testing.T) {
	t.Parallel()
	d := newDashboard(t, newFixture(t, 1, 1), serverConfig{token: testToken, signInPause: 300 * time.Millisecond})
	w := d.serve(t, http.MethodPost, "/login", url.Values{"token": {"wrong-wrong-wrong"}})
	assert.Equal(t, http.StatusForbidden, w.Code)
	w = d.serve(t, http.MethodPost, "/login", url.Values{"token": {testToken}})
	assert.Equal(t, http.StatusTooManyRequests, w.Code, "the right token too, right after a wrong one")
	assert.Empty(t, w.Result().Cookies())
	assert.Eventually(t, func() bool {
		return d.serve(t, http.MethodPost, "/login", url.Values{"token": {testToken}}).Code == http.StatusSeeOther
	}, 3*time.Second, 50*time.Millisecond)
	w = d.serve(t, http.MethodPost, "/login", url.Values{"token": {testToken}})
	assert.Equal(t, http.StatusSeeOther, w.Code, "a right token holds no one back")
}

// The list of sessions signed out is bounded, and filling it opens no
// door: every session then ends, the ones signed out before with them.
func TestSignOutListFull(t *testing.T) {
	t.Parallel()
	d := newDashboard(t, newFixture(t, 1, 1), serverConfig{token: testToken})
	now := time.Now()
	first := d.newSession(now)
	firstPayload, _, _ := strings.Cut(first, ".")
	d.revoke(firstPayload, now)
	for range maxRevoked - 1 {
		p, _, _ := strings.Cut(d.newSession(now), ".")
		d.revoke(p, now)
	}
	live := d.newSession(now)
	cookie := func(v string) *http.Request {
		return withCookie(&http.Cookie{Name: sessionCookie, Value: v})
	}
	_, ok := d.session(cookie(first))
	require.False(t, ok)
	_, ok = d.session(cookie(live))
	require.True(t, ok, "the list is full, the live session still counts")
	require.Len(t, d.revoked, maxRevoked)

	last, _, _ := strings.Cut(d.newSession(now), ".")
	d.revoke(last, now) // one more than the list holds
	_, ok = d.session(cookie(first))
	assert.False(t, ok, "a session signed out long before stays signed out")
	_, ok = d.session(cookie(live))
	assert.False(t, ok, "every session ends with the new secret")
	assert.Empty(t, d.revoked, "nothing signed out needs keeping")
	_, ok = d.session(cookie(d.newSession(now)))
	assert.True(t, ok, "signing in again works")

	// A request that checked its cookie's MAC just before the list was
	// emptied finds its session no longer listed as signed out: the new
	// secret still ends it.
	secret := d.secret.Load()
	p, _, _ := strings.Cut(d.newSession(now), ".")
	d.revoke(p, now)
	require.False(t, d.standing(secret, p), "signed out")
	for range maxRevoked {
		q, _, _ := strings.Cut(d.newSession(now), ".")
		d.revoke(q, now)
	}
	require.NotContains(t, d.revoked, p, "the list was emptied")
	assert.False(t, d.standing(secret, p), "checked with the old secret: not standing")
}
