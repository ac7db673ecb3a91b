package queue

import (
	"context"
	"fmt"
	"testing"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A claim proposes its first seq (seqReply). These tests hold the
// proposal's refusal to what it promises: a claim whose proposal is
// stale goes through, with no error, at the queue's next seq.

func payloadsOf(ts []Task) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = string(t.Payload)
	}
	return out
}

// A claim whose reply was lost took its first seq, but its store still
// proposes that seq: the next claim is refused, names the next one, and is
// sent again, handing out the next tasks with no error.
func TestClaimAfterLostReplyProposesAgain(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	addAll(t, q, orderTasks(1, 5))
	c := consumeFirst(t, q)
	got, err := c.Claim(ctx, 3)
	require.NoError(t, err)
	require.Len(t, got, 3)
	c.st.nextFirst.Store(0) // as if the reply were lost

	got, err = c.Claim(ctx, 2)
	require.NoError(t, err)
	assert.Equal(t, []string{pl(0, 3), pl(0, 4)}, payloadsOf(got))
	assert.Equal(t, int64(5), c.st.nextFirst.Load())
	seq, err := redis.String(s.do(t, "HGET", k.meta, "seq"), nil)
	require.NoError(t, err)
	assert.Equal(t, "5", seq)
	assert.Equal(t, int64(1), s.do(t, "HEXISTS", k.claims, "3"))
}

// Claim lists and done bitmaps left without their records (deleted by
// hand) at the proposed seq and after it cost a refusal each; a claim
// then goes after them, its tasks all handed out, none overwritten.
func TestClaimPastListsWithoutRecords(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	addAll(t, q, orderTasks(1, 2))
	c := consumeFirst(t, q)
	for f := 0; f < 6; f++ {
		s.do(t, "RPUSH", claimListKey(k, fmt.Sprint(f)), "left")
	}
	got, err := c.Claim(ctx, 2)
	require.NoError(t, err)
	assert.Equal(t, []string{pl(0, 0), pl(0, 1)}, payloadsOf(got))
	for f := 0; f < 6; f++ {
		assert.Equal(t, []string{"left"}, listOf(t, s, claimListKey(k, fmt.Sprint(f))))
	}
}

func listOf(t *testing.T, s *testServer, key string) []string {
	t.Helper()
	v, err := redis.Strings(s.do(t, "LRANGE", key, 0, -1), nil)
	require.NoError(t, err)
	return v
}

// A claim count near the largest one a claim reads (written by hand): a
// claim that would count past it wrote a count every later claim refused
// as not one. It is now refused before any write, its tasks left ready.
func TestClaimCountNeverPassesItsBound(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	addAll(t, q, orderTasks(1, 3))
	c := consumeFirst(t, q)
	near := fmt.Sprint(maxClaimSeq - 1)
	s.do(t, "HSET", k.meta, "seq", near)

	_, err := c.Claim(ctx, 2)
	require.ErrorIs(t, err, ErrWrongType)
	assert.Equal(t, int64(3), s.do(t, "LLEN", k.ready))
	seq, err := redis.String(s.do(t, "HGET", k.meta, "seq"), nil)
	require.NoError(t, err)
	assert.Equal(t, near, seq)

	got, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	assert.Equal(t, []string{pl(0, 0)}, payloadsOf(got))
	_, err = c.Claim(ctx, 1)
	require.ErrorIs(t, err, ErrWrongType)
	assert.Equal(t, int64(2), s.do(t, "LLEN", k.ready))
}

// A store's recovery reads the queue's claim count: its first claim
// proposes the next seq, not 0, and is not refused first (a round trip at
// every pool's start). Claims in place left by an earlier owner are opened
// into claim lists, read again, and put back in claim order.
func TestRecoveryLearnsTheNextSeq(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 40))
	c := movingConsumer(t, q)
	c.st.entrySize.Store(64)
	first := claimIDsOf(t, c, 10)
	second := claimIDsOf(t, c, 10)
	require.Equal(t, ids[:20], append(first, second...))
	f, n, err := endFields(s.do(t, "HMGET", k.meta, endFirstField, endSizeField), nil)
	require.NoError(t, err)
	require.Equal(t, [2]int64{0, 20}, [2]int64{f, n}, "both claims in place")

	seq, err := redis.Int64(s.do(t, "HGET", k.meta, "seq"), nil)
	require.NoError(t, err)
	require.Equal(t, int64(20), seq)
	// The recovery's first read stops at the claimed end, its entries not
	// read (they are read once, from the claim lists, after the open).
	p, _, err := q.analyserKeys(0)
	require.NoError(t, err)
	read, err := readPending(ctx, p, k, "read pending of", true)
	require.NoError(t, err)
	assert.Equal(t, pendingRead{endSize: 20, seq: 20}, read)
	read, err = readPending(ctx, p, k, "read pending of", false)
	require.NoError(t, err)
	assert.Len(t, read.recs, 20, "read whole, the claims in place with it")
	s.do(t, "DEL", k.lease)    // its owner gone: its claims stay pending
	next := consumeFirst(t, q) // recovers
	assert.Equal(t, seq, next.st.nextFirst.Load(), "the next claim proposes the queue's next seq")
	f, n, err = endFields(s.do(t, "HMGET", k.meta, endFirstField, endSizeField), nil)
	require.NoError(t, err)
	assert.Zero(t, f+n, "the end was opened")
	got, err := next.Claim(ctx, 40)
	require.NoError(t, err)
	assert.Equal(t, ids, taskIDs(got), "the claims in place went back first, in claim order")
	assert.Equal(t, int64(1), s.do(t, "HEXISTS", k.claims, "20"), "claimed from the seq read")
}
