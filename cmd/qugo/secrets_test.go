package main

import (
	"bytes"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sentinelPassword must never appear in qugo's output.
const sentinelPassword = "Sentinel-Pw-7f3a"

// TestNoPasswordInOutput runs qugo with URLs that hold a sentinel password
// in every way it can fail, and greps both outputs for it.
func TestNoPasswordInOutput(t *testing.T) {
	t.Parallel()
	pw := sentinelPassword
	down := strings.TrimPrefix(closedURL(t), "redis://")
	wrongPw := miniredis.RunT(t)
	wrongPw.RequireAuth("another-password")
	good := miniredis.RunT(t)
	good.RequireAuth(pw)
	for _, tc := range []struct {
		name  string
		redis string
		code  int
	}{
		{"trailing comma", "redis://:" + pw + "@" + down + ",", exitUsage},
		{"empty in the middle", "redis://:" + pw + "@" + down + ",,redis://" + down, exitUsage},
		{"other scheme", "tcp://:" + pw + "@" + down, exitUsage},
		{"no scheme", "user:" + pw + "@" + down, exitUsage},
		{"bad escape", "redis://:" + pw + "%zz@" + down, exitUsage},
		{"unreachable", "redis://:" + pw + "@" + down, exitRuntime},
		{"unreachable, upper-case scheme", "REDIS://:" + pw + "@" + down, exitRuntime},
		{"wrong password", "redis://:" + pw + "@" + wrongPw.Addr(), exitRuntime},
		{"second of two unreachable", "redis://:" + pw + "@" + good.Addr() + ",redis://:" + pw + "@" + down, exitRuntime},
		{"a server that repeats the AUTH", "redis://:" + pw + "@" + echoingServer(t), exitRuntime},
	} {
		for _, args := range [][]string{{"stats"}, {"dead", "-a", "0"}, {"replay", "-a", "0"}, {"purge", "-a", "0", "-all"}} {
			code, out, errOut := qugo(t, append([]string{"-redis", tc.redis}, args...)...)
			assert.Equal(t, tc.code, code, "%s %v: %s", tc.name, args, errOut)
			for _, piece := range []string{pw, "Sentinel", "7f3a"} {
				assert.NotContains(t, out, piece, "%s %v", tc.name, args)
				assert.NotContains(t, errOut, piece, "%s %v", tc.name, args)
			}
		}
	}
	// An upper-case scheme is a redis:// URL.
	code, _, errOut := qugo(t, "-redis", "REDIS://:"+pw+"@"+good.Addr(), "stats")
	assert.Equal(t, exitOK, code, errOut)
}

// TestNoPasswordInHelp sets QUEUE_REDIS, then REDIS_URL alone, to a URL
// with a password and checks that no help text shows it as the default
// of -redis.
func TestNoPasswordInHelp(t *testing.T) {
	for _, env := range [][2]string{{"QUEUE_REDIS", "REDIS_URL"}, {"REDIS_URL", "QUEUE_REDIS"}} {
		t.Setenv(env[0], "redis://:"+sentinelPassword+"@127.0.0.1:1")
		t.Setenv(env[1], "")
		for _, args := range [][]string{{"-h"}, {"help"}, {"stats", "-h"}, {"dead", "-h"}, {"-nosuchflag"}, {"stats", "-nosuchflag"}} {
			_, out, errOut := qugo(t, args...)
			assert.NotContains(t, out+errOut, sentinelPassword, env[0], args)
		}
	}
}

// echoingServer listens on loopback and answers every command with an
// error that repeats it, as a proxy or a server of another kind may: the
// password of an AUTH comes back in the error qugo gets. It returns the
// address, and stops at the end of the test.
func echoingServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					line := bytes.ReplaceAll(buf[:n], []byte("\r\n"), []byte(" "))
					if _, err := c.Write(append(append([]byte("-ERR invalid password: "), line...), "\r\n"...)); err != nil {
						return
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l.Addr().String()
}

// The dashboard logs what fails (a sample, an action) to standard error:
// a server's error that repeats the password is scrubbed there too.
func TestNoPasswordInServeLog(t *testing.T) {
	t.Parallel()
	redis := "redis://:" + sentinelPassword + "@" + echoingServer(t)
	_, _, errOut := startServe(t, "-redis", redis, "serve", "-listen", "127.0.0.1:0", "-sample", "1s", "-window", "2s")
	assert.Eventually(t, func() bool { return strings.Contains(errOut.String(), "statistics sample failed") },
		5*time.Second, 10*time.Millisecond, errOut.String())
	for _, piece := range []string{sentinelPassword, "7f3a"} {
		assert.NotContains(t, errOut.String(), piece)
	}
}
