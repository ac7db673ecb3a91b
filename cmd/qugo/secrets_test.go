package main

import (
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/stretchr/testify/assert"
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

// TestNoPasswordInHelp sets QUEUE_REDIS to a URL with a password and
// checks that no help text shows it as the default of -redis.
func TestNoPasswordInHelp(t *testing.T) {
	t.Setenv("QUEUE_REDIS", "redis://:"+sentinelPassword+"@127.0.0.1:1")
	for _, args := range [][]string{{"-h"}, {"help"}, {"stats", "-h"}, {"dead", "-h"}, {"-nosuchflag"}, {"stats", "-nosuchflag"}} {
		_, out, errOut := qugo(t, args...)
		assert.NotContains(t, out+errOut, sentinelPassword, args)
	}
}
