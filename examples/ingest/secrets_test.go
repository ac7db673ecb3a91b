package main

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestNoPasswordInLogsOrErrors starts the ingest server with -redis URLs
// that hold a sentinel password, in every way it can fail, and greps its
// error, its log and its flag output for the password.
func TestNoPasswordInLogsOrErrors(t *testing.T) {
	t.Parallel()
	const pw = "Sentinel-Pw-7f3a"
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	down := l.Addr().String()
	require.NoError(t, l.Close())
	wrongPw := miniredis.RunT(t)
	wrongPw.RequireAuth("another-password")
	for _, redis := range []string{
		"http://:" + pw + "@" + down,
		"user:" + pw + "@" + down,
		"redis://:" + pw + "%zz@" + down,
		"redis://:" + pw + "@" + down,
		"REDIS://:" + pw + "@" + down,
		"redis://:" + pw + "@" + wrongPw.Addr(),
		"redis://:" + pw + "@" + wrongPw.Addr() + ",",
	} {
		var logs, out bytes.Buffer
		log := slog.New(slog.NewTextHandler(&logs, nil))
		err := run(context.Background(), []string{"-redis", redis, "-listen", "127.0.0.1:0"}, &out, log)
		require.Error(t, err, redis)
		for _, s := range []string{err.Error(), logs.String(), out.String()} {
			assert.False(t, strings.Contains(s, pw) || strings.Contains(s, "7f3a"), "%q shows the password: %s", redis, s)
		}
	}
}
