package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/qugo/queue/examples/analyser/pgtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.srv != nil {
		if err := shared.srv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// shared is the PostgreSQL server of this package's tests, started by the
// first test that needs one and stopped by TestMain.
var shared struct {
	once sync.Once
	srv  *pgtest.Server
	err  error
}

// testDB returns the URL of a fresh database on the shared server, or
// skips t when PostgreSQL cannot run here (or in -short mode).
func testDB(t *testing.T) string {
	t.Helper()
	if os.Getenv("QUEUE_TEST_PG_URL") == "" && testing.Short() {
		t.Skip("needs PostgreSQL: not started in -short mode")
	}
	shared.once.Do(func() {
		if u := os.Getenv("QUEUE_TEST_PG_URL"); u != "" {
			shared.srv = &pgtest.Server{URL: u}
			return
		}
		shared.srv, shared.err = pgtest.Run()
	})
	if errors.Is(shared.err, pgtest.ErrUnavailable) {
		t.Skipf("needs PostgreSQL: %v (apt-get install postgresql)", shared.err)
	}
	require.NoError(t, shared.err)
	return shared.srv.NewDatabase(t)
}

func TestParseFlags(t *testing.T) {
	t.Parallel()
	base := []string{"-pg", "postgres://localhost/x", "-queues", "8"}
	tests := []struct {
		name    string
		args    []string
		ids     []int
		redis   []string
		wantErr string
	}{
		{name: "one id", args: []string{"-id", "3"}, ids: []int{3}},
		{name: "range", args: []string{"-id", "0-3"}, ids: []int{0, 1, 2, 3}},
		{name: "repeated and list", args: []string{"-id", "5", "-id", "1,2", "-id", "2-3"}, ids: []int{1, 2, 3, 5}},
		{name: "redis list", args: []string{"-id", "0", "-redis", "redis://a:1, redis://b:2,"}, ids: []int{0}, redis: []string{"redis://a:1", "redis://b:2"}},
		{name: "no id", args: nil, wantErr: "-id or -group is required"},
		{name: "group", args: []string{"-group", "billing", "-member", "b-1", "-weight", "2"}},
		{name: "id and group", args: []string{"-id", "0", "-group", "billing"}, wantErr: "exclude each other"},
		{name: "member without group", args: []string{"-id", "0", "-member", "x"}, wantErr: "need -group"},
		{name: "weight too big", args: []string{"-group", "g", "-weight", "1001"}, wantErr: "-weight"},
		{name: "worker range", args: []string{"-id", "0", "-worker", "3-4"}, ids: []int{0}},
		{name: "reversed worker range", args: []string{"-id", "0", "-worker", "4-3"}, wantErr: "bad worker count"},
		{name: "bad worker", args: []string{"-id", "0", "-worker", "x"}, wantErr: "bad worker count"},
		{name: "bad id", args: []string{"-id", "x"}, wantErr: "bad analyser id"},
		{name: "negative id", args: []string{"-id", "-1"}, wantErr: "bad analyser id"},
		{name: "reversed range", args: []string{"-id", "3-1"}, wantErr: "bad analyser range"},
		{name: "huge range", args: []string{"-id", "0-99999"}, wantErr: "more than"},
		{name: "zero workers", args: []string{"-id", "0", "-worker", "0"}, wantErr: "bad worker count"},
		{name: "batch too big", args: []string{"-id", "0", "-batch", "20000"}, wantErr: "-batch"},
		{name: "negative linger", args: []string{"-id", "0", "-linger", "-1ms"}, wantErr: "-linger"},
		{name: "empty redis", args: []string{"-id", "0", "-redis", " , "}, wantErr: "-redis: no URL given"},
		{name: "extra args", args: []string{"-id", "0", "more"}, wantErr: "unexpected arguments"},
		{name: "id beyond the layout", args: []string{"-id", "1-2", "-queues", "2"}, wantErr: "-id 2: out of range: -id must be 0..1 (1 Redis server x 2 queues; raise -queues, or give more -redis URLs, as every process of this queue does)"},
		{name: "id beyond one queue", args: []string{"-id", "1", "-queues", "1"}, wantErr: "-id 1: out of range: -id must be 0 (1 Redis server x 1 queue; raise -queues, or give more -redis URLs, as every process of this queue does)"},
		{name: "id beyond two servers", args: []string{"-id", "4", "-queues", "2", "-redis", "redis://a,redis://b"}, wantErr: "-id must be 0..3 (2 Redis servers x 2 queues; raise -queues, or give more -redis URLs, as every process of this queue does)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := parseFlags(append(append([]string(nil), base...), tt.args...), io.Discard)
			if tt.wantErr != "" {
				assert.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, idList(tt.ids), cfg.IDs)
			if tt.redis != nil {
				assert.Equal(t, tt.redis, cfg.Redis)
			}
		})
	}
}

// A bad flag's error is returned, for main to print once; the usage is
// printed only when asked for.
func TestParseFlagsPrintsNoErrors(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	_, err := parseFlags([]string{"-pg", "postgres://localhost/x", "-id", "-1"}, &out)
	assert.ErrorContains(t, err, `bad analyser id "-1"`)
	assert.Empty(t, out.String())
	_, err = parseFlags([]string{"-nope"}, &out)
	assert.ErrorContains(t, err, "flag provided but not defined: -nope")
	assert.Empty(t, out.String())
	_, err = parseFlags([]string{"-h"}, &out)
	assert.ErrorIs(t, err, flag.ErrHelp)
	assert.Contains(t, out.String(), "Usage of analyser:")
	assert.Contains(t, out.String(), "-metrics address")
}

func TestParseFlagsDefaults(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://env/db")
	t.Setenv("REDIS_URL", "") // an empty one counts as unset
	cfg, err := parseFlags([]string{"-id", "0"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "postgres://env/db", cfg.PG)
	assert.Equal(t, []string{"redis://127.0.0.1:6379"}, cfg.Redis)
	assert.Equal(t, workerRange{8, 8}, cfg.Workers)
	cfg, err = parseFlags([]string{"-group", "g", "-worker", "3-4"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, workerRange{3, 4}, cfg.Workers)
	assert.Equal(t, "3-4", cfg.Workers.String())
	assert.Equal(t, 1, cfg.Weight)
	assert.Equal(t, 500, cfg.Batch)
	assert.Zero(t, cfg.Linger, "group commit: no linger")
	assert.Equal(t, "127.0.0.1:9464", cfg.Metrics)
	assert.Equal(t, "qugo", cfg.Prefix)

	t.Setenv("DATABASE_URL", "")
	_, err = parseFlags([]string{"-id", "0"}, io.Discard)
	assert.ErrorContains(t, err, "-pg")
	_, err = parseFlags([]string{"-h"}, io.Discard)
	assert.ErrorIs(t, err, flag.ErrHelp)
}

// Without -redis, REDIS_URL names the servers; -redis wins over it. Its
// errors say where the URLs came from, and -h shows neither its nor
// DATABASE_URL's password.
func TestParseFlagsRedisURL(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://qugo:pg-Secret-1@db/qugo")
	t.Setenv("REDIS_URL", "redis://:redis-Secret-2@a:1, redis://:redis-Secret-2@b:2")
	cfg, err := parseFlags([]string{"-id", "0"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, []string{"redis://:redis-Secret-2@a:1", "redis://:redis-Secret-2@b:2"}, cfg.Redis)
	assert.Equal(t, "$REDIS_URL (no -redis given)", cfg.RedisFrom)
	cfg, err = parseFlags([]string{"-id", "0", "-redis", "redis://c:3"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, []string{"redis://c:3"}, cfg.Redis)
	assert.Equal(t, "-redis", cfg.RedisFrom)

	var out strings.Builder
	_, err = parseFlags([]string{"-h"}, &out)
	assert.ErrorIs(t, err, flag.ErrHelp)
	assert.Contains(t, out.String(), "(default $REDIS_URL, else redis://127.0.0.1:6379)")
	assert.NotContains(t, out.String(), "Secret")

	t.Setenv("REDIS_URL", " , ")
	_, err = parseFlags([]string{"-id", "0"}, io.Discard)
	assert.ErrorContains(t, err, "$REDIS_URL (no -redis given): no URL given")
	t.Setenv("REDIS_URL", "127.0.0.1:6379")
	_, err = parseFlags([]string{"-id", "0"}, io.Discard)
	assert.ErrorContains(t, err, "$REDIS_URL (no -redis given): URL 1 of 1: queue: bad config: URL has no scheme")
	_, err = parseFlags([]string{"-id", "0", "-redis", "redis://a:1,tcp://:redis-Secret-2@b"}, io.Discard)
	assert.ErrorContains(t, err, "-redis: URL 2 of 2: queue: bad config")
	assert.NotContains(t, err.Error(), "Secret")
}
