package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Headers through a task's whole life: every way in, the Consumer and the
// pool, a retry, a crash, the dead-letter store and a replay.

// testHeaders returns task i's own headers.
func testHeaders(i int) map[string]string {
	return map[string]string{
		"traceparent": fmt.Sprintf("00-%032x-%016x-01", i+1, i+1),
		"tenant":      fmt.Sprint("t", i),
	}
}

// addEveryWay adds tasks with and without headers through AddTask,
// AddTasks and AddTaskOnce (under a key of round's), and returns the
// headers each task ID must come back with (nil for none).
func addEveryWay(t *testing.T, q *Queue, round int) map[string]map[string]string {
	t.Helper()
	ctx := context.Background()
	want := map[string]map[string]string{}
	id, err := q.AddTask(ctx, 1, []byte("add"), WithHeaders(testHeaders(0)))
	require.NoError(t, err)
	want[id] = testHeaders(0)
	id, err = q.AddTask(ctx, 1, []byte("add plain"))
	require.NoError(t, err)
	want[id] = nil
	ids, err := q.AddTasks(ctx, []Task{
		{OrderID: 2, Payload: []byte("batch"), Headers: testHeaders(1)},
		{OrderID: 2, Payload: []byte("batch plain")},
		{OrderID: 3, Payload: []byte("batch empty"), Headers: map[string]string{}},
	})
	require.NoError(t, err)
	want[ids[0]], want[ids[1]], want[ids[2]] = testHeaders(1), nil, nil
	id, added, err := q.AddTaskOnce(ctx, 4, fmt.Sprint("key", round), time.Minute, []byte("once"), WithHeaders(testHeaders(2)))
	require.NoError(t, err)
	require.True(t, added)
	want[id] = testHeaders(2)
	// Options add up, the later value winning.
	id, err = q.AddTask(ctx, 5, []byte("two options"), WithHeaders(map[string]string{"a": "1", "b": "1"}), nil, WithHeaders(map[string]string{"b": "2"}))
	require.NoError(t, err)
	want[id] = map[string]string{"a": "1", "b": "2"}
	return want
}

func TestHeadersRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := bounded(t)
	q, _, _ := testQueue1(t)

	want := addEveryWay(t, q, 0)
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	got, err := c.Claim(ctx, 100)
	require.NoError(t, err)
	require.Len(t, got, len(want))
	pending, err := q.Pending(ctx, 0)
	require.NoError(t, err)
	require.Len(t, pending, len(want))
	for i, task := range got {
		assert.Equal(t, want[task.ID], task.Headers, "Consumer: task %s (%s)", task.ID, task.Payload)
		assert.Equal(t, want[pending[i].ID], pending[i].Headers, "Pending: task %s", pending[i].ID)
	}
	_, err = c.Ack(ctx, taskIDs(got)...)
	require.NoError(t, err)
	require.NoError(t, c.Release(ctx))

	want = addEveryWay(t, q, 1)
	var mu sync.Mutex
	seen := map[string]map[string]string{}
	require.NoError(t, q.AnalysePool(ctx, 0, PoolConfig{ExitOnEmpty: true}, func(_ context.Context, task Task) error {
		mu.Lock()
		defer mu.Unlock()
		seen[task.ID] = task.Headers
		return nil
	}))
	assert.Equal(t, want, seen, "AnalyseFunc")
}

func TestHeadersRefused(t *testing.T) {
	t.Parallel()
	ctx := bounded(t)
	q, s, k := testQueue1(t)
	bad := map[string]string{"": "empty key"}
	_, err := q.AddTask(ctx, 1, []byte("x"), WithHeaders(bad))
	assert.ErrorIs(t, err, ErrBadHeaders)
	_, err = q.AddTask(ctx, 1, []byte("x"), WithHeaders(map[string]string{"k": string(make([]byte, maxHeaderBytes))}))
	assert.ErrorIs(t, err, ErrBadHeaders)
	_, _, err = q.AddTaskOnce(ctx, 1, "key", time.Minute, []byte("x"), WithHeaders(bad))
	assert.ErrorIs(t, err, ErrBadHeaders)
	_, err = q.AddTasks(ctx, []Task{{OrderID: 1, Payload: []byte("fine")}, {OrderID: 1, Payload: []byte("x"), Headers: bad}})
	assert.ErrorIs(t, err, ErrBadHeaders)
	assert.ErrorContains(t, err, "task 1:")
	// The payload's own limits come first, and still apply.
	_, err = q.AddTask(ctx, 1, nil, WithHeaders(testHeaders(0)))
	assert.ErrorIs(t, err, ErrEmptyPayload)
	assert.Zero(t, s.do(t, "EXISTS", k.ready, k.dedup(1, "key")), "nothing written")
}

// A task's headers survive a crash before it started (recovery marks it),
// a failure and a crash after it (the pending record counts them), the
// dead-letter store and a replay.
func TestHeadersThroughCrashDeadAndReplay(t *testing.T) {
	t.Parallel()
	ctx := bounded(t)
	q, s, k := testQueue1(t)
	h := testHeaders(7)
	id, err := q.AddTask(ctx, 1, []byte("x"), WithHeaders(h))
	require.NoError(t, err)
	cfg := ConsumerConfig{MaxAttempts: 3}
	claimOne := func(c *Consumer, attempt int) Task {
		t.Helper()
		got, err := c.Claim(ctx, 1)
		require.NoError(t, err)
		require.Len(t, got, 1)
		assert.Equal(t, id, got[0].ID)
		assert.Equal(t, attempt, got[0].Attempt)
		assert.Equal(t, h, got[0].Headers)
		return got[0]
	}
	firstByte := func(cmd string, args ...any) byte {
		t.Helper()
		b, err := redis.Bytes(s.do(t, cmd, args...), nil)
		require.NoError(t, err)
		return b[0]
	}

	a, err := q.Consume(ctx, 0, cfg)
	require.NoError(t, err)
	claimOne(a, 1)
	lapse(t, s, k.lease) // its owner dies before it starts
	b, err := q.Consume(ctx, 0, cfg)
	require.NoError(t, err)
	assert.Equal(t, byte(entryTask|entryRecovered|entryHeaders), firstByte("LINDEX", k.ready, -1), "put back marked, headers kept")
	task := claimOne(b, 1)
	assert.Equal(t, byte(accountedMark), pendingOf(t, s, k)[id][0], "its delivery recorded before it starts")
	dead, err := b.Fail(ctx, task, errors.New("first"))
	require.NoError(t, err)
	require.False(t, dead)
	lapse(t, s, k.lease) // its owner dies during the retry
	c, err := q.Consume(ctx, 0, cfg)
	require.NoError(t, err)
	assert.Equal(t, byte(entryTask|entryRecovered|entryHeaders), firstByte("LINDEX", k.ready, -1), "charged for the crash: a suspect")
	task = claimOne(c, 3)
	dead, err = c.Fail(ctx, task, errors.New("last"))
	require.NoError(t, err)
	require.True(t, dead)

	list, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, list, 1)
	assert.Equal(t, h, list[0].Headers)
	assert.Equal(t, 3, list[0].Attempts)
	n, err := q.Replay(ctx, 0, id)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	assert.Equal(t, byte(entryTask|entryHeaders), firstByte("LINDEX", k.ready, -1))
	task = claimOne(c, 1)
	_, err = c.Ack(ctx, task.ID)
	require.NoError(t, err)
	require.NoError(t, c.Release(ctx))
}

// A pool retries a failed task in place with its headers.
func TestHeadersThroughPoolRetry(t *testing.T) {
	t.Parallel()
	ctx := bounded(t)
	q, _, _ := testQueue1(t)
	id, err := q.AddTask(ctx, 1, []byte("x"), WithHeaders(testHeaders(3)))
	require.NoError(t, err)
	var mu sync.Mutex
	var seen []map[string]string
	cfg := PoolConfig{ExitOnEmpty: true, Backoff: func(int) time.Duration { return time.Millisecond }}
	require.NoError(t, q.AnalysePool(ctx, 0, cfg, func(_ context.Context, task Task) error {
		mu.Lock()
		defer mu.Unlock()
		assert.Equal(t, id, task.ID)
		seen = append(seen, task.Headers)
		if task.Attempt == 1 {
			return errors.New("not yet")
		}
		return nil
	}))
	assert.Equal(t, []map[string]string{testHeaders(3), testHeaders(3)}, seen)
}

// Entries written by the release before headers, byte by byte, in a ready
// list: a plain one and one recovery marked. Both are delivered, without
// headers; the marked one has its delivery recorded before it starts.
func TestOldEntriesDelivered(t *testing.T) {
	t.Parallel()
	ctx := bounded(t)
	q, s, k := testQueue1(t)
	const plain, marked = "00000000000000000001", "00000000000000000002"
	addedAt := uint64(time.Now().UnixMilli())
	s.do(t, "LPUSH", k.ready, oldEntry(0x01, plain, 1, addedAt, 0, "plain"), oldEntry(0x03, marked, 2, addedAt, 0, "marked"))
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	got, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	require.Len(t, got, 2)
	for i, want := range []struct{ id, payload string }{{plain, "plain"}, {marked, "marked"}} {
		assert.Equal(t, want.id, got[i].ID)
		assert.Equal(t, want.payload, string(got[i].Payload))
		assert.Equal(t, 1, got[i].Attempt)
		assert.Nil(t, got[i].Headers)
		assert.Equal(t, int64(addedAt), got[i].AddedAt.UnixMilli())
	}
	pending := pendingOf(t, s, k)
	assert.Equal(t, string(oldEntry(0x01, plain, 1, addedAt, 0, "plain")), pending[plain], "pending as claimed")
	assert.Equal(t, string(append([]byte{accountedMark}, oldEntry(0x01, marked, 2, addedAt, 1, "marked")...)), pending[marked], "its delivery recorded")
	_, err = c.Ack(ctx, plain, marked)
	require.NoError(t, err)
	require.NoError(t, c.Release(ctx))

	s.do(t, "LPUSH", k.ready, oldEntry(0x01, plain, 1, addedAt, 0, "plain"), oldEntry(0x03, marked, 2, addedAt, 0, "marked"))
	r := newRecorder()
	require.NoError(t, q.AnalysePool(ctx, 0, PoolConfig{ExitOnEmpty: true}, r.fn(nil)))
	assert.Equal(t, []string{"plain"}, r.order(1))
	assert.Equal(t, []string{"marked"}, r.order(2))
}
