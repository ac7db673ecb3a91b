// Package browsertest drives the dashboard of qugo serve in a real
// headless Chromium, with chromedp, against a real redis-server: what the
// handler tests of cmd/qugo cannot see (the page a browser renders, its
// forms and cookies, the script that refreshes it, the page without
// JavaScript) is checked here.
//
// It is a module of its own so that the library and the qugo command
// gain no dependency on chromedp. It has only tests:
//
//	cd cmd/qugo/browsertest && go test -race .
//
// Each test builds the qugo binary from the checkout (once per run),
// starts its own redis-server on a free loopback port, seeds it with the
// library, runs "qugo serve -listen 127.0.0.1:0" and a Chromium of its
// own (a fresh profile), and stops all three by pid when it ends. They
// need redis-server and a Chromium ("chromium", "chromium-browser",
// "google-chrome" or "headless-shell" on the PATH, or $QUGO_CHROMIUM) and
// skip, saying which is missing, without them; with
// QUGO_BROWSER_TESTS=required (as CI sets it) they fail instead.
//
// The tests start their own server, so they need no QUEUE_TEST_REDIS_URL;
// CI runs every module's tests once without it and again with it, and
// these tests run only in the pass without it (they skip when it is set)
// rather than twice alike.
//
// With QUGO_SCREENSHOTS=1, TestScreenshots writes the pictures of the
// dashboard that the READMEs show (docs/dashboard-*.png at the top of the
// repository); without it, it skips, so no test run rewrites them.
package browsertest
