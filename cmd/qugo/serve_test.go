package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startServe runs "qugo serve" with args until the test ends, and returns
// the URL it printed first and its outputs. When the test ends, it stops
// the server as SIGINT does and checks that it says so.
func startServe(t *testing.T, args ...string) (string, *syncBuffer, *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, args, &out, &errOut) }()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			assert.Equal(t, exitOK, code, errOut.String())
			assert.Contains(t, errOut.String(), `level=INFO msg="stopped serving" url=http://`)
		case <-time.After(10 * time.Second):
			t.Error("qugo serve did not stop")
		}
	})
	var url string
	require.Eventually(t, func() bool {
		first, _, ok := strings.Cut(out.String(), "\n")
		url = first
		return ok
	}, 10*time.Second, 10*time.Millisecond, "no URL printed: %s", errOut.String())
	return url, &out, &errOut
}

func TestServeCommand(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	f.add(t, 1, 2)
	url, out, errOut := startServe(t, f.args("serve", "-listen", "127.0.0.1:0", "-group", "g", "-group", "g")...)
	assert.Regexp(t, `^http://127\.0\.0\.1:[0-9]+/$`, url)
	assert.Equal(t, url+"\n", out.String(), "the URL is all of standard output")
	resp, err := http.Get(url)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, string(body), `data-ready="2"`)
	assert.Contains(t, string(body), `id="read-only"`)
	assert.Contains(t, errOut.String(), "msg=serving")
	assert.Contains(t, errOut.String(), "read_only=true")
	resp, err = http.Get(url + "groups")
	require.NoError(t, err)
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, 1, strings.Count(string(body), `data-group="g"`), "a group given twice is shown once")
}

// The token may come from the environment, where the process list does
// not show it.
func TestServeTokenFromEnv(t *testing.T) {
	f := newFixture(t, 1, 1)
	f.add(t, 1)
	t.Setenv(tokenEnv, testToken)
	url, _, errOut := startServe(t, f.args("serve", "-listen", "127.0.0.1:0")...)
	assert.Contains(t, errOut.String(), "read_only=false")
	assert.NotContains(t, errOut.String(), testToken)
	resp, err := http.PostForm(url+"login", map[string][]string{"token": {testToken}})
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode, "signed in and sent on to the overview")
	assert.Equal(t, "/", resp.Request.URL.Path)
}

// A dashboard started before its server answers comes up, says so, and
// serves pages that say so.
func TestServeBeforeRedis(t *testing.T) {
	t.Parallel()
	url, _, errOut := startServe(t, "-redis", closedURL(t), "serve", "-listen", "127.0.0.1:0", "-timeout", "200ms")
	assert.Contains(t, errOut.String(), "Redis does not answer yet")
	resp, err := http.Get(url)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
}

// Listening beyond loopback is allowed, and warned about loudly.
func TestServeWarnsBeyondLoopback(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	url, _, errOut := startServe(t, f.args("serve", "-listen", "0.0.0.0:0")...)
	assert.True(t, strings.HasPrefix(url, "http://127.0.0.1:"), url)
	assert.Contains(t, errOut.String(), "LISTENING BEYOND THIS MACHINE")
}

func TestServeUsageErrors(t *testing.T) {
	t.Parallel()
	redisFlag := []string{"-redis", closedURL(t)}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "x"}, "serve takes no arguments"},
		{[]string{"serve", "-token", "short"}, "at least 16 characters"},
		{[]string{"serve", "-timeout", "0s"}, "-timeout 0s"},
		{[]string{"serve", "-sample", "10ms"}, "-sample 10ms"},
		{[]string{"serve", "-sample", "10s", "-window", "15s"}, "-window 15s"},
		{[]string{"serve", "-group", "a{b}"}, `name "a{b}"`},
	} {
		code, out, errOut := qugo(t, append(append([]string(nil), redisFlag...), tc.args...)...)
		assert.Equal(t, exitUsage, code, tc.args)
		assert.Empty(t, out, tc.args)
		assert.Contains(t, errOut, tc.want, tc.args)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	code, out, errOut := qugo(t, append(redisFlag, "serve", "-listen", ln.Addr().String())...)
	assert.Equal(t, exitRuntime, code, "the address is taken")
	assert.Empty(t, out)
	assert.Contains(t, errOut, "address already in use")
}

// Flags that disagree with the layout the servers recorded stop the
// dashboard before it serves, as they stop every command.
func TestServeLayoutMismatch(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 2)
	f.add(t, 1)
	code, out, errOut := qugo(t, "-redis", f.urls[0], "-queues", "1", "-prefix", f.prefix, "serve", "-listen", "127.0.0.1:0")
	assert.Equal(t, exitRuntime, code)
	assert.Empty(t, out, "no URL: nothing is served")
	assert.Contains(t, errOut, "use -queues 2")
}
