package queue

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// LimitedPoolForTest creates the ACL user user (password "pw") on the
// server of url with rules (after "on >pw ~* &* +@all"), through admin,
// deletes it when the test ends, and returns a pool of connections that
// user opens to url's database. The contract tests (package queue_test)
// use it too.
func LimitedPoolForTest(t *testing.T, admin *redis.Pool, url, user string, rules ...string) *redis.Pool {
	t.Helper()
	c := admin.Get()
	defer c.Close()
	args := append([]any{"SETUSER", user, "on", ">pw", "~*", "&*", "+@all"}, anySlice(rules)...)
	_, err := c.Do("ACL", args...)
	require.NoError(t, err)
	t.Cleanup(func() {
		c := admin.Get()
		defer c.Close()
		_, err := c.Do("ACL", "DELUSER", user)
		assert.NoError(t, err, "delete the test's ACL user")
	})
	db, _ := strconv.Atoi(url[strings.LastIndexByte(url, '/')+1:])
	addr := strings.TrimPrefix(url[:strings.LastIndexByte(url, '/')], "redis://")
	addr = addr[strings.LastIndexByte(addr, '@')+1:]
	p := &redis.Pool{MaxIdle: 8, DialContext: func(ctx context.Context) (redis.Conn, error) {
		return redis.DialContext(ctx, "tcp", addr, redis.DialUsername(user), redis.DialPassword("pw"), redis.DialDatabase(db))
	}}
	t.Cleanup(func() { p.Close() })
	return p
}

func anySlice(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}
