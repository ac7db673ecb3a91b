package pgtest

import (
	"context"
	"os"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestStartNewDatabaseStop(t *testing.T) {
	if os.Getenv("QUEUE_TEST_PG_URL") != "" {
		t.Skip("QUEUE_TEST_PG_URL names an external server: nothing to start")
	}
	if testing.Short() {
		t.Skip("starts PostgreSQL: not in -short mode")
	}
	s, err := Run()
	if err != nil {
		t.Skipf("needs PostgreSQL: %v", err)
	}
	dir := s.dir
	ctx := context.Background()
	t.Run("database", func(t *testing.T) {
		url := s.NewDatabase(t)
		conn, err := pgx.Connect(ctx, url)
		require.NoError(t, err)
		defer conn.Close(ctx)
		var name, user string
		require.NoError(t, conn.QueryRow(ctx, "SELECT current_database(), current_user").Scan(&name, &user))
		assert.Contains(t, url, "/"+name+"?")
		assert.Equal(t, "postgres", user)
	})
	require.NoError(t, s.Stop())
	assert.ErrorIs(t, syscall.Kill(s.Pid, 0), syscall.ESRCH, "the postmaster is gone")
	_, err = os.Stat(dir)
	assert.True(t, os.IsNotExist(err), "its directory is removed")
	assert.NoError(t, s.Stop(), "a second Stop does nothing")
}
