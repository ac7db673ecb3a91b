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
// "list") in key, keeping what was there aside; restore puts it back. Both
// are atomic, so that a producer or pool running meanwhile cannot write in
// between and have its write overwritten by the harness.
func corruptKey(t testing.TB, s *testServer, key, kind string) (restore func()) {
	t.Helper()
	saved := key + ":saved"
	c := s.pool.Get()
	defer c.Close()
	_, err := corruptScript.Do(c, key, saved, kind)
	require.NoError(t, err)
	return func() {
		t.Helper()
		c := s.pool.Get()
		defer c.Close()
		_, err := restoreScript.Do(c, key, saved)
		require.NoError(t, err)
	}
}

// corruptScript moves KEYS[1] to KEYS[2] and puts a value of type ARGV[1]
// in its place.
var corruptScript = redis.NewScript(2, `
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('RENAME', KEYS[1], KEYS[2]) end
if ARGV[1] == 'string' then redis.call('SET', KEYS[1], 'not a queue value')
elseif ARGV[1] == 'hash' then redis.call('HSET', KEYS[1], 'not', 'a queue value')
elseif ARGV[1] == 'list' then redis.call('RPUSH', KEYS[1], 'not a queue value')
else return redis.error_reply('kind ' .. ARGV[1]) end
return 1
`)

// restoreScript undoes corruptScript.
var restoreScript = redis.NewScript(2, `
redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[1]) end
return 1
`)

// wrongTypeEnv is the world of one wrong-type case.
type wrongTypeEnv struct {
	q   *Queue
	s   *testServer
	k   queueKeys
	c   *Consumer
	got []Task // what setup claimed
}

// stateOf is the queue's state less the lease, the fence and the lease count, which a
// failed takeover changes.
func stateOf(t *testing.T, e *wrongTypeEnv) queueState {
	st := snapshot(t, e.s, e.k)
	st.Lease = ""
	delete(st.Meta, "fence")
	delete(st.Meta, "leases")
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
		{"claim: order is a list", func(k queueKeys) string { return k.claims }, "list", ConsumerConfig{}, nil,
			func(e *wrongTypeEnv) error { _, err := e.c.Claim(ctx, 10); return err }},
		{"ack: meta is a string", func(k queueKeys) string { return k.meta }, "string", ConsumerConfig{}, claim(2),
			func(e *wrongTypeEnv) error { _, err := e.c.Ack(ctx, taskIDs(e.got)...); return err }},
		{"ack: retries is a list", func(k queueKeys) string { return k.retries }, "list", ConsumerConfig{}, claim(2),
			func(e *wrongTypeEnv) error { _, err := e.c.Ack(ctx, taskIDs(e.got)...); return err }},
		{"ack: done bitmap is a list", func(k queueKeys) string { return claimDoneKey(k, "0") }, "list", ConsumerConfig{}, claim(2),
			func(e *wrongTypeEnv) error { _, err := e.c.Ack(ctx, taskIDs(e.got)...); return err }},
		{"ack: order is a list", func(k queueKeys) string { return k.claims }, "list", ConsumerConfig{}, claim(2),
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
			if !strings.HasPrefix(tc.name, "claim:") { // a claim leaves its tasks, and its order record, pending
				// The failed call kept its claim accounts: the one that
				// worked finished the claim and dropped its order record.
				assert.Zero(t, s.do(t, "EXISTS", k.claims), "no order record is left")
			}
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

// malformedPending returns pending records that do not decode, by field:
// no body, no or a bad claim seq, a body that is not a task, a body that
// is another task.
func malformedPending() map[string][]byte {
	other := encodeTask(Task{ID: "zzz00000000000000000", OrderID: 1, AddedAt: time.UnixMilli(1), Payload: []byte("p")}, 0)
	return map[string][]byte{
		"bad:1":                []byte(""),
		"bad:2":                []byte("+"),
		"bad:3":                []byte("no task at all"),
		"bad:4":                append([]byte("++"), other...),
		"bad:5":                append([]byte("7:"), other...), // a claim seq in front
		"bad:6":                []byte("\x01garbage"),
		"ccc00000000000000000": other, // field and ID disagree
	}
}

// malformedDead returns dead records that do not decode, by field.
func malformedDead() map[string][]byte {
	return map[string][]byte{
		"junk:1": []byte("garbage"),
		"junk:2": {},
		"junk:3": {deadVersion},
		"junk:4": {deadVersion, 1, 1, 0x7f, 'a'}, // the message runs past the end
	}
}

func TestFaultMalformedData(t *testing.T) {
	e := newFaultEnv(t, 1, false)
	const orders, per = 100, 100
	total := orders * per
	k := newQueueKeys(e.prefix, 0, 0)
	srv := &testServer{pool: e.pool}
	acfg := e.analyserConfig(0)
	a1 := e.spawn("analyser", acfg)
	pcfg := produce(orders, per)
	pcfg.Pause = 2 * time.Millisecond // production spans the faults
	pcfg.RetryRefused = true          // an add refused for a key of the wrong type wrote nothing
	p := e.spawn("producer", pcfg)
	e.waitProcessed(1, 30*time.Second)
	e.event(faultEvent{Ev: evFault})

	// Garbage in the ready list, between real tasks.
	var want []string // the raw bytes of every record to be quarantined
	for _, g := range garbageEntries() {
		srv.do(t, "LPUSH", k.ready, g)
		want = append(want, string(g))
	}
	// Keys of the wrong type, each for a moment: the pool and the
	// producer must carry on once the key is valid again.
	// Resumed means 100 tasks acknowledged beyond a full prefetch window
	// (256 tasks, whose acks may have waited for the key).
	const moment, window = 300 * time.Millisecond, 256
	var resumed []time.Duration
	for _, c := range []struct{ key, kind string }{
		{k.ready, "string"}, {k.ready, "hash"}, {k.pending, "list"}, {k.claims, "list"}, {k.meta, "string"},
	} {
		restore := corruptKey(t, srv, c.key, c.kind)
		time.Sleep(moment)
		restore()
		at, n := time.Now(), e.processed()
		e.waitProcessed(n+window+100, 30*time.Second)
		resumed = append(resumed, time.Since(at).Round(time.Millisecond))
	}
	// Records that do not decode in the pending hash and the dead-letter
	// store. Pending records are read by the next owner: hand over.
	for f, v := range malformedPending() {
		srv.do(t, "HSET", k.pending, f, v)
		want = append(want, string(v))
	}
	for f, v := range malformedDead() {
		srv.do(t, "HSET", k.dead, f, v)
		want = append(want, string(v))
	}
	a2 := e.spawn("analyser", acfg)
	e.terminate(a1)
	e.waitExit(a1, 15*time.Second) // exit status 0: no panic
	e.drain([]*child{p}, []*child{a2}, 60*time.Second)

	events := e.events()
	r := checkHistory(events)
	var refusedAdds, otherAddErrs int
	reports := map[string]int{}
	for _, x := range events {
		switch {
		case (x.Ev == evAdded || x.Ev == evBatch) && x.Result == "error" && x.Kind == "wrongtype":
			refusedAdds++
		case (x.Ev == evAdded || x.Ev == evBatch) && x.Result == "error":
			otherAddErrs++
		case x.Ev == evPoolErr:
			reports[x.Kind]++
		}
	}
	dead, err := e.q.Dead(context.Background(), 0)
	require.NoError(t, err)
	var got []string
	where := map[string]int{}
	for _, d := range dead {
		require.NotNil(t, d.Raw, "only malformed records are dead: %s %q", d.ID, d.LastError)
		got = append(got, string(d.Raw))
		prefix, _, _ := strings.Cut(d.LastError, ":")
		where[prefix]++
	}
	t.Logf("%d garbage ready entries, 4 keys of the wrong type for %v each (resumed %v after each), %d bad pending and %d bad dead records: %d quarantined %v; %d adds refused and retried, %d other add errors; the pool reported %v: %v",
		len(garbageEntries()), moment, resumed, len(malformedPending()), len(malformedDead()), r.Quarantined, where, refusedAdds, otherAddErrs, reports, r)
	assert.Equal(t, len(want), r.Quarantined)
	assert.ElementsMatch(t, want, got, "every malformed record in the dead-letter store with its raw bytes")
	clean := r
	clean.Quarantined = 0
	requireClean(t, clean)
	assert.Equal(t, total, r.AddedOK, "every task added in the end")
	assert.Equal(t, total, r.Completed)
	assert.Zero(t, r.DupPending+r.DupOther, "no duplicates: no crash")
	assert.Positive(t, refusedAdds, "adds refused while the ready list had the wrong type")
	assert.Zero(t, otherAddErrs)
	assert.Positive(t, reports["wrongtype"], "the pool reported the keys of the wrong type")
	assert.Less(t, reports["wrongtype"]+reports["other"], 200, "reports back off rather than spin")
	// The store stays usable: Replay leaves malformed records, Purge drops them.
	n, err := e.q.Replay(context.Background(), 0)
	require.NoError(t, err)
	assert.Zero(t, n, "malformed records are not replayed")
	n, err = e.q.Purge(context.Background(), 0)
	require.NoError(t, err)
	assert.Equal(t, len(want), n)
}

// A malformed record is quarantined under its field. One written under the
// field of a record already in the dead-letter store replaced it: garbage
// in a pending hash under a dead task's ID erased that task's dead letter
// (the fault suite's garbage under "bad:N" replaced a ready entry
// quarantined under the same name). A quarantined record (one with no
// delivery) now takes the next free field, "<field>#2", "#3", ..., and a
// task that dies moves what was under its ID there.
func TestQuarantineReplacesNoDeadRecord(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 1))
	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 1})
	require.NoError(t, err)
	got, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	dead, err := c.Fail(ctx, got[0], errors.New("boom"))
	require.NoError(t, err)
	require.True(t, dead)
	require.NoError(t, c.Release(ctx))
	s.do(t, "HSET", k.dead, "bad:1", "quarantined before")
	s.do(t, "HSET", k.pending, ids[0], "9:garbage under a dead task's ID", "bad:1", "7:")

	c, err = q.Consume(ctx, 0, ConsumerConfig{}) // recovers the pending hash
	require.NoError(t, err)
	require.NoError(t, c.Release(ctx))
	list, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	byID := map[string]DeadTask{}
	for _, d := range list {
		byID[d.ID] = d
	}
	require.Len(t, byID, 4, "%v", list)
	assert.Nil(t, byID[ids[0]].Raw, "the dead task keeps its record")
	assert.Equal(t, pl(0, 0), string(byID[ids[0]].Payload))
	assert.Equal(t, "9:garbage under a dead task's ID", string(byID[ids[0]+"#2"].Raw))
	assert.Equal(t, "quarantined before", string(byID["bad:1"].Raw))
	assert.Equal(t, "7:", string(byID["bad:1#2"].Raw))

	// A task that dies where a quarantined record sits moves it aside.
	next := addAll(t, q, orderTasks(1, 1))
	c, err = q.Consume(bounded(t), 0, ConsumerConfig{MaxAttempts: 1})
	require.NoError(t, err)
	s.do(t, "HSET", k.dead, next[0], "garbage")
	got, err = c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Len(t, got, 1)
	_, err = c.Fail(ctx, got[0], errors.New("boom"))
	require.NoError(t, err)
	list, err = q.Dead(ctx, 0)
	require.NoError(t, err)
	byID = map[string]DeadTask{}
	for _, d := range list {
		byID[d.ID] = d
	}
	require.Len(t, byID, 6)
	assert.Nil(t, byID[next[0]].Raw)
	assert.Equal(t, "garbage", string(byID[next[0]+"#2"].Raw))
	n, err := q.Replay(ctx, 0, next[0])
	require.NoError(t, err)
	assert.Equal(t, 1, n, "the task replays by its ID")
	require.NoError(t, c.Release(ctx))
}
