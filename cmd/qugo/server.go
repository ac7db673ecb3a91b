package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qugo/queue"
)

// The dashboard's templates, stylesheet and script, built into the binary:
// it needs no CDN and works air-gapped.
//
//go:embed web
var webFS embed.FS

// serverConfig is how qugo serve runs the dashboard.
type serverConfig struct {
	token   string        // signs in to act; "" makes the dashboard read-only
	timeout time.Duration // bounds the Redis calls of a page (and of a sample)
	// actionTimeout bounds the Redis calls of one action: a replay or
	// purge of a large dead-letter store takes many round trips.
	actionTimeout time.Duration
	// signInPause is how long a wrong token holds back every sign-in.
	signInPause time.Duration
	sample      time.Duration // how often the sampler reads Stats
	window      time.Duration // what the rate charts show
	groups      []string      // consumer groups the Groups page shows
	loopback    bool          // the listener is on loopback: Host must name it
	log         *slog.Logger  // actions, sign-ins and failures
}

// Defaults of serverConfig, the flags' defaults too.
const (
	defaultListen        = "127.0.0.1:8081"
	defaultTimeout       = 2 * time.Second
	defaultSample        = 5 * time.Second
	defaultWindow        = 10 * time.Minute
	defaultActionTimeout = 30 * time.Second
	// refreshSeconds is how often a page refreshes itself.
	refreshSeconds = 5
	// maxSamples bounds the ring of samples, whatever -window / -sample.
	maxSamples = 2000
)

// server is the dashboard: an http.Handler, and a sampler goroutine that
// run starts and joins.
type server struct {
	e       *env
	cfg     serverConfig
	be      *backend
	hist    *history
	secret  atomic.Pointer[[]byte] // the sessions' key; drawn anew when the signed-out list fills
	pages   map[string]*template.Template
	assets  map[string]asset
	handler http.Handler

	sampleFailing atomic.Bool // the last sample failed (its failure was logged)

	flashMu sync.Mutex
	flashes map[string]string // session payload -> what its last action did, shown once

	signInMu    sync.Mutex
	signInAfter time.Time // no sign-in is tried before: a wrong token was given

	revokedMu sync.Mutex
	revoked   map[string]time.Time // session payload -> when it expires: signed out before that
}

// asset is one embedded static file.
type asset struct {
	body    []byte
	ctype   string
	version string // a hash of body, for the URL: it may be cached for good
}

// pageNames are the templates under web/, each rendered inside layout.html.
var pageNames = []string{"overview", "groups", "queue", "task", "login", "confirm", "message"}

// newServer builds the dashboard for the queue e names. It starts no
// goroutine and connects to nothing: run does.
func newServer(e *env, cfg serverConfig) (*server, error) {
	if cfg.timeout <= 0 {
		cfg.timeout = defaultTimeout
	}
	if cfg.actionTimeout <= 0 {
		cfg.actionTimeout = defaultActionTimeout
	}
	if cfg.signInPause <= 0 {
		cfg.signInPause = defaultSignInPause
	}
	if cfg.sample <= 0 {
		cfg.sample = defaultSample
	}
	if cfg.window <= 0 {
		cfg.window = defaultWindow
	}
	if cfg.log == nil {
		cfg.log = slog.New(slog.DiscardHandler)
	}
	s := &server{
		e: e, cfg: cfg, be: newBackend(e),
		hist:   newHistory(min(int(cfg.window/cfg.sample)+1, maxSamples)),
		pages:  map[string]*template.Template{},
		assets: map[string]asset{}, flashes: map[string]string{}, revoked: map[string]time.Time{},
	}
	s.secret.Store(newSecret())
	if err := s.loadAssets(); err != nil {
		return nil, err
	}
	base, err := template.New("").Funcs(s.funcs()).ParseFS(webFS, "web/layout.html")
	if err != nil {
		return nil, err
	}
	for _, name := range pageNames {
		t, err := base.Clone()
		if err == nil {
			t, err = t.ParseFS(webFS, "web/"+name+".html")
		}
		if err != nil {
			return nil, err
		}
		s.pages[name] = t
	}
	mux := http.NewServeMux()
	handle := func(pattern string, methods []string, h http.HandlerFunc) { mux.Handle(pattern, allow(methods, h)) }
	get, post := []string{http.MethodGet, http.MethodHead}, []string{http.MethodPost}
	handle("/{$}", get, s.overview)
	handle("/groups", get, s.groupsPage)
	handle("/queue/{a}", get, s.queuePage)
	handle("/task", get, s.taskPage)
	handle("/login", append(get, http.MethodPost), func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			s.login(w, r)
		} else {
			s.loginPage(w, r)
		}
	})
	handle("/logout", post, s.logout)
	handle("/actions/{op}", post, s.action)
	handle("/static/{name}", get, s.static)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.message(w, r, http.StatusNotFound, "Not found", "There is no page at this address.")
	})
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.cfg.log.Warn("cross-origin request refused", "method", r.Method, "path", r.URL.Path, s.who(r))
		s.message(w, r, http.StatusForbidden, "Refused", "A request from another site may not act on this dashboard.")
	}))
	s.handler = securityHeaders(s.hostCheck(cop.Handler(mux)))
	return s, nil
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

// run serves on ln and samples Stats until ctx ends, then stops taking
// requests, lets those under way finish (for at most 5s), and returns
// once the sampler has returned and the connection to Redis is closed.
func (s *server) run(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      s.cfg.actionTimeout + 10*time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.cfg.log.Handler(), slog.LevelWarn),
	}
	sctx, stop := context.WithCancel(ctx)
	defer s.be.close()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()
	wg.Go(func() { s.sampleLoop(sctx) })
	served := make(chan error, 1)
	wg.Go(func() { served <- hs.Serve(ln) })
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	sh, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sh); err != nil {
		hs.Close()
	}
	return nil
}

// allow serves h for the methods given, and 405 for the others.
func allow(methods []string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !slices.Contains(methods, r.Method) {
			w.Header().Set("Allow", strings.Join(methods, ", "))
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h(w, r)
	})
}

// contentSecurityPolicy allows scripts, styles and fetches from the
// dashboard itself only, and no inline script or style; forms post only
// to it, and no page may frame it.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		h.Set("Cache-Control", "no-store") // pages show task data; static files override it
		next.ServeHTTP(w, r)
	})
}

// hostCheck, on a loopback listener, answers only requests whose Host
// names a loopback address or localhost: a page of another site whose
// name an attacker points at 127.0.0.1 (DNS rebinding) is refused, and
// cannot read the dashboard.
func (s *server) hostCheck(next http.Handler) http.Handler {
	if !s.cfg.loopback {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.TrimSuffix(strings.Trim(host, "[]"), ".")
		ip := net.ParseIP(host)
		if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") || ip != nil && ip.IsLoopback() {
			next.ServeHTTP(w, r)
			return
		}
		http.Error(w, "qugo serve listens on a loopback address and answers to localhost, 127.0.0.1 or [::1] only", http.StatusMisdirectedRequest)
	})
}

func (s *server) loadAssets() error {
	return fs.WalkDir(webFS, "web/static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := webFS.ReadFile(p)
		if err != nil {
			return err
		}
		ctype := map[string]string{
			".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml",
		}[path.Ext(p)]
		if ctype == "" {
			return fmt.Errorf("web/static: no content type for %s", p)
		}
		sum := sha256.Sum256(body)
		s.assets[path.Base(p)] = asset{body: body, ctype: ctype, version: hex.EncodeToString(sum[:6])}
		return nil
	})
}

func (s *server) static(w http.ResponseWriter, r *http.Request) {
	a, ok := s.assets[r.PathValue("name")]
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", a.ctype)
	if r.URL.Query().Get("v") == a.version {
		w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		w.Header().Set("Cache-Control", "no-cache")
	}
	w.Write(a.body)
}

// view is what every page's template gets: the layout's fields, and the
// page's own in Data.
type view struct {
	Title    string
	Nav      string // the navigation entry to mark current
	Prefix   string
	Servers  []string // the -redis URLs, without passwords
	Layout   queue.Layout
	Auth     authView
	Error    string // a banner: Redis failed or did not answer
	Warn     string // a banner: something looks wrong
	Flash    string // a banner: what the last action did
	Refresh  int    // seconds between refreshes; 0: the page does not refresh
	Fragment string // where the script fetches the refreshed content
	Now      time.Time
	Data     any
}

func (s *server) newView(r *http.Request, title, nav string) *view {
	v := &view{Title: title, Nav: nav, Prefix: s.e.prefix, Layout: s.e.layout(), Auth: s.authOf(r), Now: time.Now()}
	v.Servers = redacted(s.e)
	if payload, ok := s.session(r); ok && !isFragment(r) {
		v.Flash = s.takeFlash(payload)
	}
	return v
}

// refreshing makes v refresh itself every refreshSeconds: the script
// fetches the page's fragment and swaps it in; without JavaScript, a meta
// refresh reloads the page.
func (v *view) refreshing(r *http.Request) {
	v.Refresh = refreshSeconds
	q := r.URL.Query()
	q.Set("fragment", "1")
	v.Fragment = r.URL.Path + "?" + q.Encode()
}

// isFragment reports whether r asks for a page's content only.
func isFragment(r *http.Request) bool { return r.URL.Query().Get("fragment") == "1" }

// render writes the page name with v (and data in v.Data), or with
// ?fragment=1 only its content, with status.
func (s *server) render(w http.ResponseWriter, r *http.Request, status int, name string, v *view, data any) {
	v.Data = data
	if v.Warn == "" && v.Error == "" && s.be.knownUnused() {
		v.Warn = fmt.Sprintf("No producer or analyser has used prefix %q on these servers yet: "+
			"check -prefix (and -redis) if you expected tasks.", s.e.prefix)
	}
	var buf bytes.Buffer
	tmpl := "page"
	if isFragment(r) {
		tmpl = "main"
	}
	if err := s.pages[name].ExecuteTemplate(&buf, tmpl, v); err != nil {
		s.cfg.log.Error("render page", "page", name, "err", err)
		http.Error(w, "internal error rendering the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// message renders a page that says one thing.
func (s *server) message(w http.ResponseWriter, r *http.Request, status int, title, text string) {
	v := s.newView(r, title, "")
	s.render(w, r, status, "message", v, text)
}

// redisContext bounds the Redis calls of a page.
func (s *server) redisContext(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), s.cfg.timeout)
}

// failure sets v's error banner for err, a failed Redis call, and returns
// the status the page is served with: 503.
func (s *server) failure(v *view, err error) int {
	v.Error = s.explain(err)
	return http.StatusServiceUnavailable
}

// explain says what went wrong with a Redis call of a page: a layout
// mismatch with the flag to change, a timeout as such, and never a
// password.
func (s *server) explain(err error) string {
	return s.explainBound(err, fmt.Sprintf("within %v (-timeout)", s.cfg.timeout), "-timeout")
}

// explainBound is explain for Redis calls bounded as bound says: a
// timeout reads "Redis did not answer <bound>"; flag is the flag that
// sets the bound, "" if none does. A refusal of the credentials and a
// timeout get a hint (redisHint).
func (s *server) explainBound(err error, bound, flag string) string {
	msg := err.Error()
	urls, _ := s.e.urls()
	if le, ok := errors.AsType[*queue.LayoutError](err); ok {
		msg = strings.TrimSuffix(msg, ".") + ". " + layoutAdvice(le, urls)
	}
	if ne, ok := errors.AsType[net.Error](err); errors.Is(err, context.DeadlineExceeded) || ok && ne.Timeout() {
		msg = fmt.Sprintf("Redis did not answer %s: %s", bound, msg)
	}
	if hint := redisHint(err, flag); hint != "" {
		msg = strings.TrimSuffix(msg, ".") + ". " + strings.ToUpper(hint[:1]) + hint[1:] + "."
	}
	return scrubSecrets(msg, urls)
}

// scrubSecrets replaces the passwords of urls in msg. Errors name servers
// by index or by host, never by URL, but what a server or a network error
// says is not ours to vouch for (a server that does not know AUTH quotes
// its arguments). A password is replaced wherever it appears, as written
// or escaped, once it is long enough (minSecretLen) not to be taken for
// parts of other words; a shorter one where it stands as a word of its
// own (in a URL, in quotes, between spaces): replaced inside other words,
// it would garble the message and show where its letters are.
func scrubSecrets(msg string, urls []string) string {
	var secrets []string
	for _, raw := range urls {
		for _, one := range strings.Split(raw, ",") {
			if !strings.Contains(one, "://") {
				one = "redis://" + one
			}
			u, err := url.Parse(one)
			if err != nil {
				// Its parse error quotes it whole: its password is what
				// stands between the user's colon and the host's @.
				if pw := rawPassword(one); pw != "" {
					secrets = append(secrets, pw)
				}
				continue
			}
			if pw := u.Query().Get("sentinel_password"); pw != "" {
				secrets = append(secrets, pw)
			}
			if pw, ok := u.User.Password(); ok && pw != "" {
				secrets = append(secrets, pw)
			}
		}
	}
	// The longest first: a password that holds another is replaced whole.
	slices.SortFunc(secrets, func(a, b string) int { return len(b) - len(a) })
	for _, pw := range secrets {
		for _, form := range []string{pw, url.QueryEscape(pw), url.PathEscape(pw)} {
			if len(form) >= minSecretLen {
				msg = strings.ReplaceAll(msg, form, "xxxxx")
			} else {
				msg = replaceWord(msg, form, "xxxxx")
			}
		}
	}
	return msg
}

// rawPassword returns the password of a URL that does not parse, as
// written: from the first colon of the part before the last '@' of its
// authority (which ends at the first '/' after "://").
func rawPassword(u string) string {
	_, rest, _ := strings.Cut(u, "://")
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		rest = rest[:i]
	}
	at := strings.LastIndexByte(rest, '@')
	if at < 0 {
		return ""
	}
	_, pw, _ := strings.Cut(rest[:at], ":")
	return pw
}

// minSecretLen is the length from which a password is replaced wherever
// it appears in a message, not only as a word of its own.
const minSecretLen = 6

// replaceWord replaces w in s where neither the byte before it nor the
// one after it is a letter or a digit.
func replaceWord(s, w, with string) string {
	var b strings.Builder
	for {
		i := strings.Index(s, w)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		end := i + len(w)
		if (i == 0 || !isWordByte(s[i-1])) && (end == len(s) || !isWordByte(s[end])) {
			b.WriteString(s[:i])
			b.WriteString(with)
		} else {
			b.WriteString(s[:end])
		}
		s = s[end:]
	}
}

func isWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c >= 0x80
}

// parseForm reads a posted form of at most 64 KiB, and answers 400 when
// it cannot.
func (s *server) parseForm(w http.ResponseWriter, r *http.Request) bool {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		s.message(w, r, http.StatusBadRequest, "Bad request", "The form could not be read: "+err.Error())
		return false
	}
	return true
}

// maxFlashes bounds the flash messages kept for sessions that have not
// loaded a page since their action.
const maxFlashes = 1000

// setFlash keeps what an action did, for the next page the session
// loads: a message of the server's own, never text from a request.
func (s *server) setFlash(payload, msg string) {
	s.flashMu.Lock()
	defer s.flashMu.Unlock()
	if len(s.flashes) >= maxFlashes {
		clear(s.flashes)
	}
	s.flashes[payload] = msg
}

// takeFlash returns, once, the message setFlash kept for the session.
func (s *server) takeFlash(payload string) string {
	s.flashMu.Lock()
	defer s.flashMu.Unlock()
	msg := s.flashes[payload]
	delete(s.flashes, payload)
	return msg
}
