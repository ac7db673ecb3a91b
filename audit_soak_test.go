package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A soak audit: what a deployment that runs for weeks leaves behind, in
// Redis and in the process, after many cycles of what it does every day.

// soakFn analyses the soak tests' tasks by their payload: "ok" succeeds,
// "once" fails its first delivery, "dead" always fails, "slow" runs until
// until its ctx ends or 20ms pass (it is in flight when the pool stops).
func soakFn(ctx context.Context, t Task) error {
	switch string(t.Payload) {
	case "once":
		if t.Attempt == 1 {
			return errors.New("fails once")
		}
	case "dead":
		return errors.New("always fails")
	case "slow":
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// soakKeysLeft asserts that the queue of k on s holds only the keys that
// stay once it is drained, its dead letters purged and its lease
// released: the layout, the meta hash with its fixed fields, and the
// standby's wake-up list, expiring.
func soakKeysLeft(t *testing.T, q *Queue, s *testServer, k queueKeys) {
	t.Helper()
	want := []string{q.layoutKeyOf(q.parts[0]), k.meta, k.wake}
	sort.Strings(want)
	got := scanKeys(t, s, q.cfg.Prefix)
	assert.Subset(t, want, got, "only fixed keys remain")
	assert.Subset(t, got, []string{q.layoutKeyOf(q.parts[0]), k.meta}, "the layout and meta remain")
	if slices.Contains(got, k.wake) {
		ttl, err := redis.Int64(s.do(t, "PTTL", k.wake), nil)
		require.NoError(t, err)
		assert.Positive(t, ttl, "the wake list expires")
		n, err := redis.Int(s.do(t, "LLEN", k.wake), nil)
		require.NoError(t, err)
		assert.LessOrEqual(t, n, 1)
	}
	fields, err := redis.Strings(s.do(t, "HKEYS", k.meta), nil)
	require.NoError(t, err)
	fixed := []string{"fence", "seq", "processed", "failed", "redelivered", "cancelled", "leases", "workers", "paused", "retention", "pending", markTakenField, markBoundField, lastDeathField}
	for _, f := range fields {
		assert.Contains(t, fixed, f, "meta field %q", f)
	}
	inClaims, _ := redis.Int64(s.do(t, "HGET", k.meta, "pending"), nil)
	assert.Zero(t, inClaims, "the count of tasks in claim records drifted")
}

// TestSoakLifecycleLeavesFixedKeys runs many days of a queue's life in
// cycles: tasks that succeed, fail once, die or are in flight at a
// stop; pools that stop gracefully and owners that crash mid-claim;
// scheduled tasks due soon and scheduled ones cancelled; cancels of
// queued tasks and of tasks that finished first; dead letters replayed
// and purged. Once drained and purged, the queue holds nothing per task,
// per claim, per cancel or per owner.
func TestSoakLifecycleLeavesFixedKeys(t *testing.T) {
	t.Parallel()
	cycles := 100
	if testing.Short() {
		cycles = 30
	}
	ctx := context.Background()
	q, s, k := testQueue1(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := PoolConfig{
		Workers: 3, MaxAttempts: 2, LeaseTTL: 2 * time.Second, ShutdownTimeout: time.Millisecond,
		Backoff: func(int) time.Duration { return time.Millisecond }, Logger: quiet, OnError: func(error) {},
	}
	var finished []string // IDs of tasks acknowledged, for late cancels
	for c := 0; c < cycles; c++ {
		o := uint64(c % 7)
		ids := addAll(t, q, []Task{
			{OrderID: o, Payload: []byte("ok")},
			{OrderID: o + 1, Payload: []byte("once")},
			{OrderID: o + 2, Payload: []byte("dead")},
			{OrderID: o + 3, Payload: []byte("slow")},
			{OrderID: o, Payload: []byte("ok")},
			{OrderID: o + 4, Payload: []byte("ok")},
		})
		_, err := q.AddTaskAfter(ctx, o, time.Millisecond, []byte("ok"))
		require.NoError(t, err)
		later, err := q.AddTaskAfter(ctx, o, time.Hour, []byte("ok"))
		require.NoError(t, err)
		st, err := q.Cancel(ctx, o, later)
		require.NoError(t, err)
		require.Equal(t, StateScheduled, st)
		_, err = q.Cancel(ctx, o+4, ids[5]) // queued: finished as cancelled when claimed
		require.NoError(t, err)
		if len(finished) > 0 { // finished first: the cancel comes too late
			_, err = q.Cancel(ctx, 0, finished[len(finished)-1])
			require.NoError(t, err)
		}

		if c%3 == 2 {
			// An owner that crashes mid-claim: it claims, acks one,
			// records a failure of another, and vanishes; its lease
			// lapses and the next pool takes over.
			// Bounded: a lease left behind (a pool that lost it) lapses
			// within its TTL, and a wait past that is a failure.
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			cons, err := q.Consume(cctx, 0, ConsumerConfig{LeaseTTL: 2 * time.Second, MaxAttempts: 2})
			cancel()
			require.NoError(t, err)
			ts, err := cons.Claim(ctx, 4)
			require.NoError(t, err)
			if len(ts) > 1 {
				_, err = cons.Ack(ctx, ts[0].ID)
				require.NoError(t, err)
				finished = append(finished, ts[0].ID)
				_, err = cons.Fail(ctx, ts[1], errors.New("crashed after this"))
				require.NoError(t, err)
			}
			lapse(t, s, k.lease)
		}

		// A pool that runs a while and stops with tasks in flight.
		runCtx, stop := context.WithCancel(bounded(t))
		counters := &Counters{}
		pc := cfg
		pc.Counters = counters
		errc := runPool(runCtx, q, pc, soakFn)
		require.Eventually(t, func() bool {
			var n int64
			for _, p := range counters.Processed() {
				n += p
			}
			return n >= 2
		}, 10*time.Second, time.Millisecond, "cycle %d", c)
		stop()
		require.NoError(t, receive(t, errc))

		if c%10 == 9 {
			dead, err := q.Dead(ctx, 0)
			require.NoError(t, err)
			var replay, purge []string
			for i, d := range dead {
				if i%2 == 0 {
					replay = append(replay, d.ID)
				} else {
					purge = append(purge, d.ID)
				}
			}
			_, err = q.Replay(ctx, 0, replay...)
			require.NoError(t, err)
			_, err = q.Purge(ctx, 0, purge...)
			require.NoError(t, err)
		}
	}

	// Drain: every task left succeeds now, the scheduled ones too.
	for {
		require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{ExitOnEmpty: true, Logger: quiet, OnError: func(error) {}},
			func(context.Context, Task) error { return nil }))
		st := stats0(t, q)
		if st.Ready == 0 && st.Scheduled == 0 && st.Pending == 0 {
			break
		}
		time.Sleep(2 * time.Millisecond) // a scheduled task still ahead of its time
	}
	_, err := q.Purge(ctx, 0)
	require.NoError(t, err)
	soakKeysLeft(t, q, s, k)
	keys := strings.Join(scanKeys(t, s, q.cfg.Prefix), "\n")
	t.Logf("keys left after %d cycles:\n%s", cycles, keys)
}

// packageGoroutines counts the goroutines running code of this package
// (not its tests): what a pool, a waiter or a group leaves running.
func packageGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, line := range strings.Split(g, "\n") {
			if strings.HasPrefix(line, "github.com/qugo/queue.") && !strings.Contains(line, "Test") && !strings.Contains(line, "runPool") {
				count++
				break
			}
		}
	}
	return count
}

// TestSoakLeaseLossCycles: one AnalysePool whose lease is lost again and
// again (a stalled process, a Redis failover) goes back to standby and
// takes the queue again each time; after a hundred tenures it runs the
// same goroutines and holds the same connections as after the first few.
// Not parallel: it counts the process's goroutines.
func TestSoakLeaseLossCycles(t *testing.T) {
	cycles := 50
	if testing.Short() {
		cycles = 15
	}
	q, s, k := testQueue1(t)
	ctx, stop := context.WithCancel(bounded(t))
	defer stop()
	var lost atomic.Int64
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	counters := &Counters{}
	errc := runPool(ctx, q, PoolConfig{
		MinWorkers: 2, MaxWorkers: 4, ScaleDownAfter: 50 * time.Millisecond, LeaseTTL: 2 * time.Second, Rate: 1e5,
		Counters: counters, Logger: quiet,
		Backoff: func(int) time.Duration { return time.Millisecond },
		OnError: func(err error) {
			if errors.Is(err, ErrLeaseLost) {
				lost.Add(1)
			}
		},
	}, soakFn)
	processed := func() (n int64) {
		for _, p := range counters.Processed() {
			n += p
		}
		return n
	}
	var baseG, baseConns int
	for c := 0; c < cycles; c++ {
		before := processed()
		addAll(t, q, []Task{
			{OrderID: uint64(c), Payload: []byte("ok")},
			{OrderID: uint64(c + 1), Payload: []byte("once")},
			{OrderID: uint64(c + 2), Payload: []byte("slow")},
		})
		require.Eventually(t, func() bool { return processed() >= before+2 }, 10*time.Second, time.Millisecond, "cycle %d", c)
		n := lost.Load()
		s.do(t, "DEL", k.lease) // as if it had lapsed while the process stalled
		require.Eventually(t, func() bool { return lost.Load() > n }, 10*time.Second, time.Millisecond, "cycle %d: lease lost", c)
		if c != 4 && c != cycles-1 {
			continue
		}
		// Settled: the pool holds the lease again and is idle.
		require.Eventually(t, func() bool {
			st := stats0(t, q)
			return st.Owner != "" && st.Ready == 0 && st.Pending == 0
		}, 10*time.Second, time.Millisecond, "cycle %d: taken again", c)
		inUse := func() int {
			ps := s.pool.Stats()
			return ps.ActiveCount - ps.IdleCount
		}
		if c == 4 {
			time.Sleep(300 * time.Millisecond) // let its idle wait begin
			baseG, baseConns = packageGoroutines(), inUse()
			continue
		}
		// What a tenure starts ends with it: a count above the one after
		// five tenures comes down within a few seconds, or leaked.
		assert.Eventually(t, func() bool { return packageGoroutines() <= baseG && inUse() <= baseConns }, 5*time.Second, 10*time.Millisecond,
			"after %d tenures: %d goroutines (%d after 5), %d connections in use (%d after 5)", c+1, packageGoroutines(), baseG, inUse(), baseConns)
	}
	stop()
	require.NoError(t, receive(t, errc))
}

// TestSoakGroupMembersComeAndGo: a group whose members are replaced again
// and again (each restart a new member name), some leaving gracefully,
// some vanishing without a word, keeps no record of the members gone:
// once the last member leaves, only the group's meta hash remains, and
// nudge lists expire.
func TestSoakGroupMembersComeAndGo(t *testing.T) {
	t.Parallel()
	cycles := 30
	if testing.Short() {
		cycles = 10
	}
	q, servers := newTestQueue(t, 1, Config{Queues: 4})
	s := servers[0]
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	const group = "soak"
	gk := newGroupKeys(q.cfg.Prefix, group)
	gs, err := q.newGroupStore(group, time.Second)
	require.NoError(t, err)
	join := func(ctx context.Context, member string) <-chan error {
		errc := make(chan error, 1)
		go func() {
			errc <- q.JoinGroup(ctx, group, GroupConfig{Member: member, SessionTTL: time.Second,
				Pool: PoolConfig{Workers: 1, Logger: quiet, OnError: func(error) {}}}, soakFn)
		}()
		return errc
	}
	steadyCtx, stopSteady := context.WithCancel(bounded(t))
	steady := join(steadyCtx, "steady")
	for c := 0; c < cycles; c++ {
		// A member that vanishes: it joined, and never beats again.
		_, err := gs.beat(ctx, fmt.Sprintf("vanished-%d", c), 1, "beat", 0)
		require.NoError(t, err)
		// A member that runs a while and leaves.
		runCtx, stop := context.WithCancel(bounded(t))
		errc := join(runCtx, fmt.Sprintf("pod-%d", c))
		addAll(t, q, orderTasks(8, 1))
		require.Eventually(t, func() bool {
			st, err := q.GroupStatus(ctx, group)
			require.NoError(t, err)
			return slices.ContainsFunc(st.Members, func(m GroupMember) bool { return m.Name == fmt.Sprintf("pod-%d", c) })
		}, 10*time.Second, time.Millisecond, "cycle %d", c)
		stop()
		require.NoError(t, receive(t, errc))
	}
	// The vanished members' sessions run out; the steady member's beats
	// drop them.
	if s.mini != nil {
		s.mini.FastForward(2 * time.Second)
	}
	require.Eventually(t, func() bool {
		n, err := redis.Int(s.do(t, "ZCARD", gk.members), nil)
		require.NoError(t, err)
		return n == 1
	}, 15*time.Second, 10*time.Millisecond, "only the steady member is left")
	info, err := redis.StringMap(s.do(t, "HGETALL", gk.info), nil)
	require.NoError(t, err)
	assert.Len(t, info, 1, "member records: %v", info)
	stopSteady()
	require.NoError(t, receive(t, steady))

	var left []string
	for _, key := range scanKeys(t, s, q.cfg.Prefix) {
		if !strings.Contains(key, ":group:") {
			continue
		}
		ttl, err := redis.Int64(s.do(t, "PTTL", key), nil)
		require.NoError(t, err)
		if ttl == -1 {
			left = append(left, key)
		} else {
			assert.True(t, strings.HasPrefix(key, gk.nudge), "%s expires", key)
		}
	}
	assert.Equal(t, []string{gk.meta}, left, "group keys left")
}
