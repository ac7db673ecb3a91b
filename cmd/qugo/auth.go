package main

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// Signing in: a browser posts the -token to /login and gets a session
// cookie, "<payload>.<mac>": payload is the time it was issued and 16
// random bytes (base64url), mac an HMAC-SHA256 of it under a secret drawn
// when the process starts, so the server keeps no session table and a
// restart signs everyone out. The cookie is HttpOnly and SameSite=Strict
// and lasts sessionTTL. Signing out revokes the session: the server keeps
// the payloads signed out with until they would have expired, so that a
// copy of the cookie kept elsewhere stops working too. Every form that acts carries a CSRF token, the
// HMAC of the session's payload under the same secret: a page of another
// site can neither read it nor post without it. (Cross-origin posts are
// refused earlier too, by http.CrossOriginProtection.)

const (
	sessionCookie = "qugo_session"
	sessionTTL    = 12 * time.Hour
	// minTokenLen is the shortest -token accepted: it is all that stands
	// between whoever reaches the port and a purge.
	minTokenLen = 16
	// maxRevoked bounds the sessions kept as signed out. Only a holder of
	// the token can sign in and out; should one fill the list, the secret
	// is drawn anew and the list emptied, which signs every session out.
	maxRevoked = 10000
	// defaultSignInPause is how long a wrong token holds back every
	// sign-in, the right token's too: the token is guessed no faster than
	// one try a second, however many connections try.
	defaultSignInPause = time.Second
)

func newSecret() *[]byte {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand)
	return &b
}

func (s *server) mac(kind, payload string) []byte {
	return macWith(s.secret.Load(), kind, payload)
}

func macWith(secret *[]byte, kind, payload string) []byte {
	m := hmac.New(sha256.New, *secret)
	m.Write([]byte(kind + ":" + payload))
	return m.Sum(nil)
}

// newSession returns a new session cookie's value.
func (s *server) newSession(now time.Time) string {
	b := make([]byte, 8, 24)
	binary.BigEndian.PutUint64(b, uint64(now.Unix()))
	b = append(b, make([]byte, 16)...)
	rand.Read(b[8:])
	payload := base64.RawURLEncoding.EncodeToString(b)
	return payload + "." + base64.RawURLEncoding.EncodeToString(s.mac("session", payload))
}

// session returns the payload of r's session cookie when it is one this
// process issued within sessionTTL, and the dashboard has a token.
func (s *server) session(r *http.Request) (string, bool) {
	if s.cfg.token == "" {
		return "", false
	}
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return "", false
	}
	payload, sig, ok := strings.Cut(c.Value, ".")
	got, err := base64.RawURLEncoding.DecodeString(sig)
	secret := s.secret.Load() // checked again with the signed-out list: revoke may draw another
	if !ok || err != nil || !hmac.Equal(got, macWith(secret, "session", payload)) {
		return "", false
	}
	raw, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil || len(raw) != 24 {
		return "", false
	}
	issued := time.Unix(int64(binary.BigEndian.Uint64(raw)), 0)
	if age := time.Since(issued); age < -time.Minute || age > sessionTTL {
		return "", false
	}
	if !s.standing(secret, payload) {
		return "", false
	}
	return payload, true
}

// standing reports whether the session of payload, whose MAC was checked
// with secret, is neither signed out nor signed out with every session
// (revoke drew a new secret meanwhile: the list no longer names it).
func (s *server) standing(secret *[]byte, payload string) bool {
	s.revokedMu.Lock()
	defer s.revokedMu.Unlock()
	_, revoked := s.revoked[payload]
	return !revoked && s.secret.Load() == secret
}

// revoke signs the session of payload out for good, and forgets the
// sessions signed out that have expired meanwhile. Should maxRevoked be
// reached all the same, every session is signed out: a new secret makes
// each cookie issued so far worthless, so none needs keeping.
func (s *server) revoke(payload string, now time.Time) {
	raw, _ := base64.RawURLEncoding.DecodeString(payload) // session checked it
	expires := time.Unix(int64(binary.BigEndian.Uint64(raw)), 0).Add(sessionTTL)
	s.revokedMu.Lock()
	defer s.revokedMu.Unlock()
	for p, at := range s.revoked {
		if now.After(at) {
			delete(s.revoked, p)
		}
	}
	if len(s.revoked) >= maxRevoked {
		s.secret.Store(newSecret())
		clear(s.revoked)
		return
	}
	s.revoked[payload] = expires
}

// csrfToken is the CSRF token of the session payload.
func (s *server) csrfToken(payload string) string {
	return base64.RawURLEncoding.EncodeToString(s.mac("csrf", payload))
}

// validCSRF reports whether r's form carries the CSRF token of session
// payload. Call it after the form is parsed.
func (s *server) validCSRF(r *http.Request, payload string) bool {
	got, err := base64.RawURLEncoding.DecodeString(r.PostForm.Get("csrf"))
	return err == nil && hmac.Equal(got, s.mac("csrf", payload))
}

// authView is what a page needs to know of its viewer.
type authView struct {
	ReadOnly bool   // the dashboard has no token: no one can act
	SignedIn bool   // this viewer may act
	CSRF     string // the token its forms carry, when signed in
}

func (s *server) authOf(r *http.Request) authView {
	if s.cfg.token == "" {
		return authView{ReadOnly: true}
	}
	payload, ok := s.session(r)
	if !ok {
		return authView{}
	}
	return authView{SignedIn: true, CSRF: s.csrfToken(payload)}
}

// who is what a log line says of the person behind r: the remote address
// and, when signed in, a short hash of the session (never the cookie).
func (s *server) who(r *http.Request) slog.Attr {
	attrs := []any{slog.String("remote", r.RemoteAddr)}
	if payload, ok := s.session(r); ok {
		attrs = append(attrs, slog.String("session", sessionHash(payload)))
	}
	return slog.Group("who", attrs...)
}

// sessionHash is the short hash of a session's payload that log lines
// name it by.
func sessionHash(payload string) string {
	h := sha256.Sum256([]byte(payload))
	return hex.EncodeToString(h[:4])
}

// tokenMatches compares in time that does not depend on where the two
// differ, or on their lengths.
func (s *server) tokenMatches(given string) bool {
	a, b := sha256.Sum256([]byte(given)), sha256.Sum256([]byte(s.cfg.token))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// trySignIn compares given with the token, unless a wrong one was given
// less than signInPause ago (tried is then false). The comparisons are
// made one at a time, so that no try starts before the pause a wrong one
// sets.
func (s *server) trySignIn(given string, now time.Time) (ok, tried bool) {
	s.signInMu.Lock()
	defer s.signInMu.Unlock()
	if now.Before(s.signInAfter) {
		return false, false
	}
	if !s.tokenMatches(given) {
		s.signInAfter = now.Add(s.cfg.signInPause)
		return false, true
	}
	return true, true
}

func (s *server) loginPage(w http.ResponseWriter, r *http.Request) {
	if s.cfg.token == "" {
		s.message(w, r, http.StatusNotFound, "Read-only", "This dashboard is read-only: start qugo serve with -token (or $QUGO_TOKEN) to act on the queues.")
		return
	}
	s.render(w, r, http.StatusOK, "login", s.newView(r, "Sign in", ""), nil)
}

func (s *server) login(w http.ResponseWriter, r *http.Request) {
	if s.cfg.token == "" {
		s.message(w, r, http.StatusForbidden, "Read-only", "This dashboard is read-only: start qugo serve with -token (or $QUGO_TOKEN) to act on the queues.")
		return
	}
	if !s.parseForm(w, r) {
		return
	}
	ok, tried := s.trySignIn(r.PostForm.Get("token"), time.Now())
	if !tried {
		s.cfg.log.Warn("sign-in refused: too soon after a wrong token", s.who(r))
		s.render(w, r, http.StatusTooManyRequests, "login", s.newView(r, "Sign in", ""),
			"A wrong token was given a moment ago: wait a second and try again.")
		return
	}
	if !ok {
		s.cfg.log.Warn("sign-in refused: wrong token", s.who(r))
		s.render(w, r, http.StatusForbidden, "login", s.newView(r, "Sign in", ""), "Wrong token.")
		return
	}
	value := s.newSession(time.Now())
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: value, Path: "/", MaxAge: int(sessionTTL.Seconds()),
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	})
	payload, _, _ := strings.Cut(value, ".")
	s.cfg.log.Info("signed in", slog.Group("who", slog.String("remote", r.RemoteAddr), slog.String("session", sessionHash(payload))))
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *server) logout(w http.ResponseWriter, r *http.Request) {
	payload, ok := s.session(r)
	if !ok {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	if !s.parseForm(w, r) {
		return
	}
	if !s.validCSRF(r, payload) {
		s.message(w, r, http.StatusForbidden, "Refused", "The form's CSRF token is missing or wrong: reload the page and try again.")
		return
	}
	s.cfg.log.Info("signed out", s.who(r))
	s.revoke(payload, time.Now())
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}
