package queue

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// When Redis loses writes (a restart without persistence, a failover to a
// replica that missed them), the fence counter goes back. Two processes
// with the same Owner string then held equal lease values, "<token>:<owner>",
// and both claimed and acked. Every lease value is unique now, and the
// token does not go back with the counter.
func TestLeaseValuesUniqueAfterRollback(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 2))
	a, err := q.Consume(ctx, 0, ConsumerConfig{Owner: "app:1"})
	require.NoError(t, err)
	held, err := a.RemoveTask(ctx)
	require.NoError(t, err)
	require.Equal(t, ids[0], held.ID)

	// Redis forgets the lease and the fence counter.
	s.do(t, "DEL", k.lease)
	s.do(t, "HDEL", k.meta, "fence")
	b, err := q.Consume(ctx, 0, ConsumerConfig{Owner: "app:1"}) // same host name, same pid
	require.NoError(t, err)
	assert.GreaterOrEqual(t, b.Token(), a.Token(), "the token does not go back with the counter")
	assert.NotEqual(t, a.st.value(), b.st.value())

	_, err = a.Ack(ctx, held.ID)
	assert.ErrorIs(t, err, ErrLeaseLost, "the old holder is refused")
	_, err = a.Claim(ctx, 1)
	assert.ErrorIs(t, err, ErrLeaseLost)
	got, err := b.Claim(ctx, 10)
	require.NoError(t, err)
	assert.Equal(t, ids, taskIDs(got), "B has everything, in order")
	assert.Equal(t, "app:1", stats0(t, q).Owner, "Stats shows the owner without the nonce")
}

// Tokens grow across acquisitions, and a fence that is not a count (set
// by hand) does not stop an owner from taking the lease.
func TestLeaseTokensGrow(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	var last int64
	for i := range 5 {
		if i == 2 {
			s.do(t, "HSET", k.meta, "fence", "garbage")
		}
		c, err := q.Consume(ctx, 0, ConsumerConfig{})
		require.NoError(t, err)
		assert.Greater(t, c.Token(), last)
		last = c.Token()
		require.NoError(t, c.Release(ctx))
	}
	v, err := redis.String(s.do(t, "HGET", k.meta, "fence"), nil)
	require.NoError(t, err)
	assert.Equal(t, last, mustParseInt(t, v))
}

// refence gives the holder a new value; calls still carrying the old one
// are refused, and renew follows the new one.
func TestRefenceRefusesOlderCalls(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx := context.Background()
	addAll(t, q, orderTasks(1, 1))
	c, err := q.Consume(ctx, 0, ConsumerConfig{Owner: "me"})
	require.NoError(t, err)
	old := c.st.value()
	require.NoError(t, c.st.refence(ctx))
	assert.NotEqual(t, old, c.st.value())
	assert.True(t, strings.HasSuffix(c.st.value(), ":me"))
	k := c.st.keys
	_, err = redis.Values(c.st.script(ctx, "claim from", claimScript, 10,
		k.ready, k.pending, k.lease, k.meta, k.claims, k.sched, k.later, k.cancels, claimListKey(k, "0"), claimDoneKey(k, "0"),
		old, c.st.ttlMS, 1, 1<<20, 1, 0, time.Now().UnixMilli(), "0"))
	assert.ErrorIs(t, err, ErrLeaseLost, "a claim made with the old value")
	require.NoError(t, c.Renew(ctx))
	got, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	assert.Len(t, got, 1)
}

func TestParseLease(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		v     string
		token int64
		owner string
	}{
		{"1795972356924000.2btxeevuamj1:host:42", 1795972356924000, "host:42"},
		{"17:host:42", 17, "host:42"}, // as older releases wrote it
		{"not a lease", 0, `(not a lease of this package: "not a lease")`},
		{"x:host:42", 0, `(not a lease of this package: "x:host:42")`},
		{strings.Repeat("g", 100), 0, `(not a lease of this package: "` + strings.Repeat("g", 17) + ` [... 100 bytes in all]")`},
		{"", 0, ""},
	} {
		token, owner := parseLease(tc.v)
		assert.Equal(t, tc.token, token, tc.v)
		assert.Equal(t, tc.owner, owner, tc.v)
	}
}

func mustParseInt(t *testing.T, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	require.NoError(t, err)
	return n
}
