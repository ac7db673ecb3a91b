package queue

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Keys of the wrong type: what a queue does when something other than this
// package wrote one of its keys (fault 10 of the suite, and its regression
// tests).

// corruptKey puts a value of another Redis type (kind: "string", "hash" or
// "list") in key, keeping what was there aside; restore puts it back.
func corruptKey(t testing.TB, s *testServer, key, kind string) (restore func()) {
	t.Helper()
	saved := key + ":saved"
	had, err := redis.Int(s.do(t, "EXISTS", key), nil)
	require.NoError(t, err)
	if had == 1 {
		s.do(t, "RENAME", key, saved)
	}
	switch kind {
	case "string":
		s.do(t, "SET", key, "not a queue value")
	case "hash":
		s.do(t, "HSET", key, "not", "a queue value")
	case "list":
		s.do(t, "RPUSH", key, "not a queue value")
	default:
		t.Fatalf("kind %q", kind)
	}
	return func() {
		t.Helper()
		s.do(t, "DEL", key)
		if had == 1 {
			s.do(t, "RENAME", saved, key)
		}
	}
}

// wrongTypeEnv is the world of one wrong-type case.
type wrongTypeEnv struct {
	q   *Queue
	s   *testServer
	k   queueKeys
	c   *Consumer
	got []Task // what setup claimed
}

// stateOf is the queue's state less the lease and the fence, which a
// failed takeover changes.
func stateOf(t *testing.T, e *wrongTypeEnv) queueState {
	st := snapshot(t, e.s, e.k)
	st.Lease = ""
	delete(st.Meta, "fence")
	return st
}

// Redis does not roll back a script that fails halfway. A claim that
// popped tasks and then met a pending hash or meta hash of the wrong type
// lost them; a requeue or dead-lettering that deleted a pending record and
// then met a ready list or dead hash of the wrong type lost the task; an
// AddTaskOnce that set its dedup key and then met a ready list of the
// wrong type made a retry report the task as already queued. Each script
// now checks its keys' types before its first write: the call fails with
// ErrWrongType, changes nothing, and works once the key is valid again.
func TestWrongTypedKeysChangeNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	claim := func(n int) func(t *testing.T, e *wrongTypeEnv) {
		return func(t *testing.T, e *wrongTypeEnv) {
			var err error
			e.got, err = e.c.Claim(ctx, n)
			require.NoError(t, err)
			require.Len(t, e.got, n)
		}
	}
	tests := []struct {
		name  string
		key   func(queueKeys) string
		kind  string
		cfg   ConsumerConfig
		setup func(t *testing.T, e *wrongTypeEnv)
		op    func(e *wrongTypeEnv) error
	}{
		{"claim: pending is a list", func(k queueKeys) string { return k.pending }, "list", ConsumerConfig{}, nil,
			func(e *wrongTypeEnv) error { _, err := e.c.Claim(ctx, 10); return err }},
		{"claim: meta is a string", func(k queueKeys) string { return k.meta }, "string", ConsumerConfig{}, nil,
			func(e *wrongTypeEnv) error { _, err := e.c.Claim(ctx, 10); return err }},
		{"claim: ready is a hash", func(k queueKeys) string { return k.ready }, "hash", ConsumerConfig{}, nil,
			func(e *wrongTypeEnv) error { _, err := e.c.Claim(ctx, 10); return err }},
		{"ack: meta is a string", func(k queueKeys) string { return k.meta }, "string", ConsumerConfig{}, claim(2),
			func(e *wrongTypeEnv) error { _, err := e.c.Ack(ctx, taskIDs(e.got)...); return err }},
		{"ack: pending is a list", func(k queueKeys) string { return k.pending }, "list", ConsumerConfig{}, claim(2),
			func(e *wrongTypeEnv) error { _, err := e.c.Ack(ctx, taskIDs(e.got)...); return err }},
		{"dead-letter: dead is a string", func(k queueKeys) string { return k.dead }, "string", ConsumerConfig{MaxAttempts: 1}, claim(1),
			func(e *wrongTypeEnv) error { _, err := e.c.Fail(ctx, e.got[0], errors.New("boom")); return err }},
		{"dead-letter: meta is a string", func(k queueKeys) string { return k.meta }, "string", ConsumerConfig{MaxAttempts: 1}, claim(1),
			func(e *wrongTypeEnv) error { _, err := e.c.Fail(ctx, e.got[0], errors.New("boom")); return err }},
		{"requeue: ready is a string", func(k queueKeys) string { return k.ready }, "string", ConsumerConfig{}, claim(2),
			func(e *wrongTypeEnv) error { return e.c.Requeue(ctx, e.got...) }},
		{"requeue: meta is a string", func(k queueKeys) string { return k.meta }, "string", ConsumerConfig{}, claim(2),
			func(e *wrongTypeEnv) error { return e.c.Requeue(ctx, e.got...) }},
		{"recover: ready is a string", func(k queueKeys) string { return k.ready }, "string", ConsumerConfig{},
			func(t *testing.T, e *wrongTypeEnv) { claim(2)(t, e); lapse(t, e.s, e.k.lease) },
			func(e *wrongTypeEnv) error {
				c, err := e.q.Consume(ctx, 0, ConsumerConfig{})
				if err == nil {
					err = c.Release(ctx)
				}
				return err
			}},
		{"replay: ready is a string", func(k queueKeys) string { return k.ready }, "string", ConsumerConfig{MaxAttempts: 1},
			func(t *testing.T, e *wrongTypeEnv) {
				claim(1)(t, e)
				_, err := e.c.Fail(ctx, e.got[0], errors.New("boom"))
				require.NoError(t, err)
			},
			func(e *wrongTypeEnv) error {
				n, err := e.q.Replay(ctx, 0)
				if err == nil && n != 1 {
					err = errors.New("nothing replayed")
				}
				return err
			}},
		{"add once: ready is a string", func(k queueKeys) string { return k.ready }, "string", ConsumerConfig{}, nil,
			func(e *wrongTypeEnv) error {
				_, added, err := e.q.AddTaskOnce(ctx, 0, "k", time.Minute, []byte("once"))
				if err == nil && !added {
					err = errors.New("not added: taken for a duplicate")
				}
				return err
			}},
		{"add: ready is a hash", func(k queueKeys) string { return k.ready }, "hash", ConsumerConfig{}, nil,
			func(e *wrongTypeEnv) error { _, err := e.q.AddTask(ctx, 0, []byte("x")); return err }},
		{"add batch: ready is a hash", func(k queueKeys) string { return k.ready }, "hash", ConsumerConfig{}, nil,
			func(e *wrongTypeEnv) error {
				_, err := e.q.AddTasks(ctx, []Task{{OrderID: 0, Payload: []byte("x")}})
				return err
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q, s, k := testQueue1(t)
			e := &wrongTypeEnv{q: q, s: s, k: k}
			addAll(t, q, orderTasks(2, 3))
			var err error
			e.c, err = q.Consume(ctx, 0, tc.cfg)
			require.NoError(t, err)
			if tc.setup != nil {
				tc.setup(t, e)
			}
			before := stateOf(t, e)
			restore := corruptKey(t, s, tc.key(k), tc.kind)
			err = tc.op(e)
			require.ErrorIs(t, err, ErrWrongType)
			assert.Contains(t, err.Error(), "wrong")
			restore()
			assert.Equal(t, before, stateOf(t, e), "the failed call changed nothing")
			require.NoError(t, tc.op(e), "the call works once the key is valid again")
		})
	}
}

// A lease key with no expiry is not a lease this package wrote: a standby
// waited for it to lapse with a 1ms blocking wait, again and again, for
// ever, and reported nothing. It now reports ErrWrongType and backs off,
// and takes the queue once the key is deleted.
func TestStandbyReportsLeaseWithoutExpiry(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	addAll(t, q, orderTasks(1, 1))
	s.do(t, "SET", k.lease, "not a lease")
	cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
	defer ccancel()
	_, err := q.Consume(cctx, 0, ConsumerConfig{})
	require.ErrorIs(t, err, ErrWrongType)
	assert.Contains(t, err.Error(), k.lease)

	var mu sync.Mutex
	var reports []error
	ran := make(chan struct{}, 1)
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := runPool(pctx, q, PoolConfig{OnError: func(err error) {
		mu.Lock()
		reports = append(reports, err)
		mu.Unlock()
	}}, func(context.Context, Task) error {
		ran <- struct{}{}
		return nil
	})
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(reports) >= 2
	}, 5*time.Second, time.Millisecond)
	time.Sleep(300 * time.Millisecond) // a spinning standby would report, or loop, hundreds of times by now
	mu.Lock()
	n := len(reports)
	for _, r := range reports {
		assert.ErrorIs(t, r, ErrWrongType)
	}
	mu.Unlock()
	assert.Less(t, n, 15, "reports back off")
	s.do(t, "DEL", k.lease)
	receive(t, ran)
	cancel()
	require.NoError(t, receive(t, done))
}

// wrongTypeErrors counts the reports that say a key had the wrong type.
func wrongTypeErrors(errs []string) int {
	n := 0
	for _, e := range errs {
		if strings.Contains(e, ErrWrongType.Error()) {
			n++
		}
	}
	return n
}
