package queue

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestHistoryRecordRoundTrip(t *testing.T) {
	start := time.Now().UnixMilli() / 1000 * 1000
	added := time.UnixMilli(start - 90_000)
	for _, r := range []historyRecord{
		{state: StateDone, added: added, started: time.UnixMilli(start + 10), finished: time.UnixMilli(start + 250), attempts: 2},
		{state: StateCancelled, added: added, finished: time.UnixMilli(start + 999), attempts: 0},
		{state: StateDone, added: added, started: time.UnixMilli(start - 40), finished: time.UnixMilli(start - 3), attempts: 1}, // finished before its bucket began
	} {
		enc := r.encode(start)
		assert.LessOrEqual(t, len(enc), 12, "a record fits a 16-byte allocation")
		got, err := decodeHistory(enc, start)
		require.NoError(t, err)
		assert.Equal(t, r.state, got.state)
		assert.Equal(t, r.attempts, got.attempts)
		assert.Equal(t, r.added.UnixMilli(), got.added.UnixMilli())
		assert.Equal(t, r.started.IsZero(), got.started.IsZero())
		if !r.started.IsZero() {
			assert.Equal(t, r.started.UnixMilli(), got.started.UnixMilli())
		}
		assert.Equal(t, r.finished.UnixMilli(), got.finished.UnixMilli())
	}
	for _, bad := range []string{"", "\x80", "\x02\x02\x02", "\x02\x02\x02\x02\x02"} {
		_, err := decodeHistory(bad, start)
		assert.ErrorIs(t, err, ErrMalformed, "%q", bad)
	}
}

func TestPackIDIsUniqueAndShort(t *testing.T) {
	var ids idSource
	seen := map[string]string{}
	for _, id := range append(ids.nextN(1000), "vvvvvvvvvvvvvvvvvvvv", "00000000000000000000", "10000000000000000000") {
		p := packID(id)
		assert.Len(t, p, 13)
		if other, dup := seen[p]; dup {
			t.Fatalf("%s and %s pack alike", id, other)
		}
		seen[p] = id
	}
}

// A history bucket that holds another type (written by hand, say) costs
// the history its records, never the acks or the cancels: the pool
// finishes its tasks, and the key is left as it was.
func TestHistoryBucketOfAnotherTypeCostsNoAck(t *testing.T) {
	t.Parallel()
	q, srvs := newTestQueue(t, 1, Config{Retention: time.Hour})
	srv, k := srvs[0], newQueueKeys(q.cfg.Prefix, 0, 0)
	w := historyWidth(time.Hour).Milliseconds()
	b := time.Now().UnixMilli() / w
	for i := range int64(2) { // this bucket and the next, should the test cross into it
		srv.do(t, "SET", k.historyKey(b+i), "not a hash")
	}
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	const n = 20
	for i := range n {
		_, err := q.AddTask(ctx, uint64(i), []byte("x"))
		require.NoError(t, err)
	}
	marked, err := q.AddTask(ctx, 99, []byte("cancelled"))
	require.NoError(t, err)
	where, err := q.Cancel(ctx, 99, marked) // it reads the history first
	require.NoError(t, err)
	require.Equal(t, StateUnknown, where)
	later, err := q.AddTaskAfter(ctx, 98, time.Hour, []byte("scheduled"))
	require.NoError(t, err)
	where, err = q.Cancel(ctx, 98, later) // its status record goes to the history at once
	require.NoError(t, err)
	require.Equal(t, StateScheduled, where)
	var ran atomic.Int32
	errc := runPool(ctx, q, PoolConfig{Workers: 4, OnError: func(error) {}}, func(context.Context, Task) error {
		ran.Add(1)
		return nil
	})
	assert.Eventually(t, func() bool {
		s := stats0(t, q)
		return s.Processed == n && s.Cancelled == 2 && s.Pending == 0
	}, 5*time.Second, 10*time.Millisecond, "tasks left unfinished")
	cancel()
	require.NoError(t, <-errc)
	assert.Equal(t, int32(n), ran.Load())
	for i := range int64(2) {
		v, err := redis.String(srv.do(t, "GET", k.historyKey(b+i)), nil)
		require.NoError(t, err)
		assert.Equal(t, "not a hash", v)
	}
	st, err := q.Status(bounded(t), 99, marked)
	require.NoError(t, err)
	assert.Equal(t, StateUnknown, st.State, "its record had no bucket to go to")
}

// A string that is not a task ID reads as unknown: the history keys tasks
// by packed IDs, in which some such strings read as a finished task's.
func TestStatusOfAStringThatIsNoTaskID(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 1, Config{Retention: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	id, err := q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	require.NoError(t, q.AnalysePool(ctx, 0, PoolConfig{Workers: 1, ExitOnEmpty: true}, func(context.Context, Task) error { return nil }))
	st, err := q.Status(ctx, 1, id)
	require.NoError(t, err)
	require.Equal(t, StateDone, st.State)

	require.Equal(t, packID(id), packID("0"+id), "the alias this guards against")
	for _, bogus := range []string{"0" + id, strings.ToUpper(id), id[:19], id + "x", ""} {
		require.False(t, ValidTaskID(bogus), bogus)
		st, err := q.Status(ctx, 1, bogus)
		require.NoError(t, err, bogus)
		assert.Equal(t, TaskStatus{ID: bogus, State: StateUnknown}, st, bogus)
		state, err := q.State(ctx, 1, bogus)
		require.NoError(t, err, bogus)
		assert.Equal(t, StateUnknown, state, bogus)
	}
}
