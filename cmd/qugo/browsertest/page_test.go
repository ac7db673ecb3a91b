package browsertest

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
)

// page is a browser tab on a dashboard, read through the DOM.
type page struct {
	t    *testing.T
	ctx  context.Context
	base string // the dashboard's URL, ending in "/"
}

// open starts a browser on dashboard d.
func (s *setup) open(d *dashboard) *page {
	s.t.Helper()
	return &page{t: s.t, ctx: s.browser(), base: d.url}
}

// do runs actions in the tab and fails the test on an error.
func (p *page) do(actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	require.NoError(p.t, chromedp.Do(p.ctx, actions...))
}

// visit loads the dashboard's page at path ("queue/0", "" for the
// overview) and returns its response.
func (p *page) visit(path string) *network.Response {
	p.t.Helper()
	resp, err := chromedp.Run(p.ctx, chromedp.NavigateResponse(p.base+strings.TrimPrefix(path, "/")))
	require.NoError(p.t, err, "load /%s", path)
	return resp
}

// click clicks the element sel names, which loads a page (a form's
// button, a link), and returns the response that page came with.
func (p *page) click(sel string) *network.Response {
	p.t.Helper()
	resp, err := chromedp.RunResponse(p.ctx, chromedp.Click(chromedp.CSS(sel)))
	require.NoError(p.t, err, "click %s", sel)
	return resp
}

// eval evaluates a JavaScript expression in the page: DevTools can, even
// with the page's scripts disabled.
func eval[T any](p *page, expr string) T {
	p.t.Helper()
	v, err := chromedp.Run(p.ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	require.NoError(p.t, err, "evaluate %s", expr)
	return v
}

// js quotes s as a JavaScript string.
func js(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// count is how many elements sel matches.
func (p *page) count(sel string) int {
	p.t.Helper()
	return eval[int](p, `document.querySelectorAll(`+js(sel)+`).length`)
}

// has reports whether sel matches an element.
func (p *page) has(sel string) bool {
	p.t.Helper()
	return p.count(sel) > 0
}

// text is the text of the first element sel matches, spaces collapsed;
// the test fails when there is none.
func (p *page) text(sel string) string {
	p.t.Helper()
	require.True(p.t, p.has(sel), "no %s on %s", sel, p.location())
	return eval[string](p, `document.querySelector(`+js(sel)+`).textContent.replace(/\s+/g, ' ').trim()`)
}

// location is the tab's URL.
func (p *page) location() string {
	p.t.Helper()
	loc, err := chromedp.Run(p.ctx, chromedp.Location())
	require.NoError(p.t, err)
	return loc
}

// rows returns, for each element sel matches (table rows), its data-*
// attributes together with those of its cells, as the DOM has them
// (names without "data-", camel-cased: data-lease-left-ms is leaseLeftMs).
func (p *page) rows(sel string) []map[string]string {
	p.t.Helper()
	return eval[[]map[string]string](p, `Array.from(document.querySelectorAll(`+js(sel)+`)).map(function (tr) {
		var o = Object.assign({}, tr.dataset);
		tr.querySelectorAll('td').forEach(function (td) { Object.assign(o, td.dataset); });
		return o;
	})`)
}

// ids returns the data-id of each element sel matches, in order.
func (p *page) ids(sel string) []string {
	p.t.Helper()
	return eval[[]string](p, `Array.from(document.querySelectorAll(`+js(sel)+`)).map(function (e) { return e.dataset.id; })`)
}

// signIn signs the browser in with the token, through the login form.
func (p *page) signIn(token string) {
	p.t.Helper()
	p.visit("login")
	p.do(chromedp.SendKeys(chromedp.CSS(`input[name=token]`), token))
	resp := p.click("#sign-in-button")
	require.Equal(p.t, 200, int(resp.Status), "the page after signing in")
	require.True(p.t, p.has("#sign-out"), "signed in: the page offers to sign out")
}

// waitFor waits until the JavaScript expression is true in the page,
// polled from here (so that it works with the page's scripts disabled,
// and across reloads).
func (p *page) waitFor(expr string, within time.Duration, what string) {
	p.t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, err := chromedp.Run(p.ctx, chromedp.Evaluate[bool](`!!(`+expr+`)`))
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s: not within %v (%s; last error: %v)", what, within, expr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
