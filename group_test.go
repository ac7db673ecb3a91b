package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// groupLog records every analyse call of a group test.
type groupLog struct {
	mu      sync.Mutex
	runs    map[uint64][]groupRunRec // by OrderID, in start order
	running map[uint64]string        // OrderIDs running now -> member
	overlap []string
	total   atomic.Int64
}

type groupRunRec struct {
	seq    int
	member string
}

func newGroupLog() *groupLog {
	return &groupLog{runs: map[uint64][]groupRunRec{}, running: map[uint64]string{}}
}

// fn returns member's AnalyseFunc: payloads are "<order>:<seq>".
func (l *groupLog) fn(member string) AnalyseFunc {
	return func(ctx context.Context, t Task) error {
		seq, _ := strconv.Atoi(string(t.Payload[strings.IndexByte(string(t.Payload), ':')+1:]))
		l.mu.Lock()
		if other, ok := l.running[t.OrderID]; ok {
			l.overlap = append(l.overlap, fmt.Sprintf("order %d seq %d on %s while running on %s", t.OrderID, seq, member, other))
		}
		l.running[t.OrderID] = member
		l.runs[t.OrderID] = append(l.runs[t.OrderID], groupRunRec{seq, member})
		l.mu.Unlock()
		time.Sleep(time.Duration(t.OrderID%3) * 100 * time.Microsecond)
		l.mu.Lock()
		delete(l.running, t.OrderID)
		l.mu.Unlock()
		l.total.Add(1)
		return nil
	}
}

// check asserts that every task added ran exactly once, in order.
func (l *groupLog) check(t *testing.T, added map[uint64]int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	require.Empty(t, l.overlap)
	for o, n := range added {
		runs := l.runs[o]
		require.Len(t, runs, n, "order %d: runs %v", o, runs)
		for i, r := range runs {
			require.Equal(t, i, r.seq, "order %d: runs %v", o, runs)
		}
	}
}

// settled reports whether the group's assignment is balanced over the
// members named and every analyser's lease is held by its assigned member.
func settled(t *testing.T, q *Queue, group string, members ...string) bool {
	st, err := q.GroupStatus(context.Background(), group)
	if err != nil || len(st.Members) != len(members) || len(st.Unassigned) > 0 {
		return false
	}
	n := q.Analysers()
	owner := map[int]string{}
	for i, m := range st.Members {
		if m.Name != members[i] || len(m.Analysers) < n/len(members) || len(m.Analysers) > (n+len(members)-1)/len(members) {
			return false
		}
		for _, a := range m.Analysers {
			owner[a] = m.Name
		}
	}
	stats, err := q.Stats(context.Background())
	if err != nil {
		return false
	}
	for _, s := range stats {
		if s.Owner != owner[s.Analyser] {
			return false
		}
	}
	return true
}

// TestJoinGroupMovesQueuesGracefully runs members joining and leaving a
// group under a steady flow of tasks: every task runs once, in order, on
// one member at a time, and the group settles after each change.
func TestJoinGroupMovesQueuesGracefully(t *testing.T) {
	q, _ := newTestQueue(t, 2, Config{Queues: 3}) // 6 analysers
	l := newGroupLog()
	const orders = 60
	added := map[uint64]int{}
	var addMu sync.Mutex
	stopAdding := make(chan struct{})
	addDone := make(chan struct{})
	go func() {
		defer close(addDone)
		for i := 0; ; i++ {
			select {
			case <-stopAdding:
				return
			default:
			}
			o := uint64(i % orders)
			addMu.Lock()
			seq := added[o]
			addMu.Unlock()
			if _, err := q.AddTask(context.Background(), o, []byte(fmt.Sprintf("%d:%d", o, seq))); err != nil {
				t.Errorf("add: %v", err)
				return
			}
			addMu.Lock()
			added[o]++
			addMu.Unlock()
			if i%20 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()

	type member struct {
		stop context.CancelFunc
		done chan error
	}
	join := func(name string) member {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		cfg := GroupConfig{Member: name, SessionTTL: 2 * time.Second,
			Pool: PoolConfig{Workers: 2, LeaseTTL: 2 * time.Second, ShutdownTimeout: 5 * time.Second}}
		go func() { done <- q.JoinGroup(ctx, "g", cfg, l.fn(name)) }()
		return member{cancel, done}
	}
	waitSettled := func(members ...string) {
		t.Helper()
		require.Eventually(t, func() bool { return settled(t, q, "g", members...) }, 10*time.Second, 10*time.Millisecond,
			"group did not settle over %v", members)
		n := l.total.Load()
		require.Eventually(t, func() bool { return l.total.Load() > n+20 }, 10*time.Second, time.Millisecond, "no progress")
	}

	a := join("a")
	waitSettled("a")
	b := join("b")
	waitSettled("a", "b")
	c := join("c")
	waitSettled("a", "b", "c")
	b.stop()
	require.NoError(t, <-b.done)
	waitSettled("a", "c")

	close(stopAdding)
	<-addDone
	want := int64(0)
	for _, n := range added {
		want += int64(n)
	}
	require.Eventually(t, func() bool { return l.total.Load() >= want }, 20*time.Second, 5*time.Millisecond)
	a.stop()
	c.stop()
	require.NoError(t, <-a.done)
	require.NoError(t, <-c.done)
	l.check(t, added)
	st, err := q.GroupStatus(context.Background(), "g")
	require.NoError(t, err)
	require.Empty(t, st.Members, "members left")
}

// TestJoinGroupAnalyserTwiceInAssignment writes an assignment by hand
// that names one analyser twice ("1" and "01"): the member starting is
// given the assignment computed anew, each analyser once, and stops when
// told with no pool left running.
func TestJoinGroupAnalyserTwiceInAssignment(t *testing.T) {
	q, servers := newTestQueue(t, 1, Config{Queues: 4})
	g, err := q.newGroupStore("g", time.Minute)
	require.NoError(t, err)
	_, err = g.beat(context.Background(), "m", 1, "beat", 0)
	require.NoError(t, err)
	servers[0].do(t, "HSET", newGroupKeys(q.cfg.Prefix, "g").assign, "01", "m")

	told := make(chan any, 100) // errors reported, or assignments
	tell := func(v any) {
		select {
		case told <- v:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- q.JoinGroup(ctx, "g", GroupConfig{Member: "m", OnAssign: func(a []int) { tell(a) },
			Pool: PoolConfig{Workers: 1, OnError: func(err error) { tell(err) }}},
			func(context.Context, Task) error { return nil })
	}()
	var first any
	select {
	case first = <-told:
	case <-time.After(5 * time.Second):
		t.Fatal("the member neither reported an error nor took an assignment")
	}
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("JoinGroup did not return: a pool was left running")
	}
	require.Equal(t, []int{0, 1, 2, 3}, first)
}

// TestJoinGroupEndsWithCause ends JoinGroup's ctx with a cause of the
// caller's: that is a stop like any other, and JoinGroup returns nil.
func TestJoinGroupEndsWithCause(t *testing.T) {
	q, _ := newTestQueue(t, 1, Config{Queues: 2})
	ctx, cancel := context.WithCancelCause(context.Background())
	assigned := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		done <- q.JoinGroup(ctx, "g", GroupConfig{Member: "m", Pool: PoolConfig{Workers: 1},
			OnAssign: func([]int) {
				notify(assigned)
			}}, func(context.Context, Task) error { return nil })
	}()
	<-assigned
	cancel(errors.New("shutting down"))
	require.NoError(t, <-done)
}

// TestJoinGroupLayoutMismatch starts a member whose layout disagrees with
// the group's (two queues, where the others have one): it must fail at
// once and change nothing, not share out its own count of analysers at
// every heartbeat while it is given none to run.
func TestJoinGroupLayoutMismatch(t *testing.T) {
	q, servers := newTestQueue(t, 1, Config{Queues: 1})
	other, err := New([]*redis.Pool{servers[0].pool}, Config{Queues: 2, Prefix: q.cfg.Prefix})
	require.NoError(t, err)
	defer other.Close()
	fn := func(context.Context, Task) error { return nil }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	for _, m := range []string{"a", "b"} {
		go func() { done <- q.JoinGroup(ctx, "g", GroupConfig{Member: m, Pool: PoolConfig{Workers: 1}}, fn) }()
	}
	defer func() {
		cancel()
		require.NoError(t, <-done)
		require.NoError(t, <-done)
	}()
	require.Eventually(t, func() bool { return settled(t, q, "g", "a", "b") }, 5*time.Second, 5*time.Millisecond)
	before, err := q.GroupStatus(context.Background(), "g")
	require.NoError(t, err)

	zctx, zcancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer zcancel()
	err = other.JoinGroup(zctx, "g", GroupConfig{Member: "z", Pool: PoolConfig{Workers: 1}}, fn)
	require.ErrorIs(t, err, ErrLayoutMismatch)
	after, err := q.GroupStatus(context.Background(), "g")
	require.NoError(t, err)
	require.Equal(t, before.Generation, after.Generation, "the group was assigned anew")
}

// TestJoinGroupNudgeKeyBroken overwrites the member's nudge list with a
// string: its waits fail at once, and the member must back off between
// them, not beat and report an error many times a second.
func TestJoinGroupNudgeKeyBroken(t *testing.T) {
	q, servers := newTestQueue(t, 1, Config{Queues: 2})
	servers[0].do(t, "SET", newGroupKeys(q.cfg.Prefix, "g").nudge+"m", "x")
	var errs atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- q.JoinGroup(ctx, "g", GroupConfig{Member: "m", Pool: PoolConfig{Workers: 1,
			OnError: func(error) { errs.Add(1) }}}, func(context.Context, Task) error { return nil })
	}()
	require.Eventually(t, func() bool { return errs.Load() > 0 }, 5*time.Second, time.Millisecond)
	time.Sleep(2 * time.Second) // the window whose errors are counted
	cancel()
	require.NoError(t, <-done)
	// Backing off from 50ms to a heartbeat's period (1s) makes about 7.
	require.LessOrEqual(t, errs.Load(), int64(12), "errors reported in 2s")
}

// leaseHolders returns the member holding each queue's lease of a
// one-partition queue ("" when free).
func leaseHolders(t *testing.T, q *Queue, s *testServer) []string {
	out := make([]string, q.Analysers())
	for a := range out {
		v, err := redis.String(try(s, "GET", newQueueKeys(q.cfg.Prefix, 0, a).lease))
		if err != nil && err != redis.ErrNil {
			t.Errorf("read lease %d: %v", a, err)
		}
		_, out[a] = parseLease(v)
	}
	return out
}

// TestJoinGroupPlannedMoveSettles has a member join one that runs every
// queue under a flow of tasks: each queue that moves is taken by its new
// owner within 1s of its release.
func TestJoinGroupPlannedMoveSettles(t *testing.T) {
	q, servers := newTestQueue(t, 1, Config{Queues: 4})
	fn := func(context.Context, Task) error { time.Sleep(time.Millisecond); return nil }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 3)
	defer func() {
		cancel()
		for range 3 {
			require.NoError(t, <-done)
		}
	}()
	go func() {
		for i := 0; ctx.Err() == nil; i++ {
			_, _ = q.AddTask(ctx, uint64(i%40), []byte("x"))
			time.Sleep(100 * time.Microsecond)
		}
		done <- nil
	}()
	join := func(m string) {
		go func() { done <- q.JoinGroup(ctx, "g", GroupConfig{Member: m, Pool: PoolConfig{Workers: 2}}, fn) }()
	}
	join("a")
	require.Eventually(t, func() bool { return settled(t, q, "g", "a") }, 5*time.Second, time.Millisecond)

	join("b")
	freed := map[int]time.Time{} // analysers released by a, when first seen free
	taken := map[int]bool{}      // analysers b holds
	for deadline := time.Now().Add(5 * time.Second); len(taken) < 2; time.Sleep(200 * time.Microsecond) {
		require.True(t, time.Now().Before(deadline), "b took %d of 2 queues", len(taken))
		for a, h := range leaseHolders(t, q, servers[0]) {
			if _, ok := freed[a]; h == "" && !ok {
				freed[a] = time.Now()
			}
			if h == "b" && !taken[a] {
				taken[a] = true
				if at, ok := freed[a]; ok {
					require.Less(t, time.Since(at), time.Second, "analyser %d: taken after its release", a)
				}
			}
		}
	}
	require.Eventually(t, func() bool { return settled(t, q, "g", "a", "b") }, 5*time.Second, time.Millisecond)
}

// TestJoinGroupPausedMemberReplaced stops the heartbeats of a member (as
// a process paused would): the others take its queues when its session
// runs out, not at their next heartbeat; and when it beats again it is
// given a new share, not told that its old one stands.
func TestJoinGroupPausedMemberReplaced(t *testing.T) {
	q, servers := newTestQueue(t, 1, Config{Queues: 4})
	paused, err := q.newGroupStore("g", 300*time.Millisecond)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	go func() {
		// Heartbeats every 2s: its next one after p's session ends would
		// come up to 2s late.
		done <- q.JoinGroup(ctx, "g", GroupConfig{Member: "a", SessionTTL: 10 * time.Second, Pool: PoolConfig{Workers: 1}},
			func(context.Context, Task) error { return nil })
	}()
	require.Eventually(t, func() bool { return settled(t, q, "g", "a") }, 5*time.Second, time.Millisecond)
	b, err := paused.beat(context.Background(), "p", 1, "beat", 0)
	require.NoError(t, err)
	require.Len(t, b.analysers, 2)
	last := time.Now()
	holders := func(want ...string) func() bool {
		return func() bool {
			got := leaseHolders(t, q, servers[0])
			for _, a := range b.analysers {
				got[a] = "p:" + got[a]
			}
			return slices.Equal(got, want)
		}
	}
	// a was nudged and gave p's share up; p takes nothing (it runs no
	// pools), and once its session ends a takes the share back.
	require.Eventually(t, holders("a", "a", "p:", "p:"), 5*time.Second, time.Millisecond)
	require.Eventually(t, holders("a", "a", "p:a", "p:a"), 5*time.Second, time.Millisecond)
	require.Less(t, time.Since(last), 1500*time.Millisecond, "a took p's queues %v after p's last heartbeat", time.Since(last))

	again, err := paused.beat(context.Background(), "p", 1, "beat", b.gen)
	require.NoError(t, err)
	require.False(t, again.same, "a member whose session ran out is told its old assignment stands")
	require.Len(t, again.analysers, 2)
}

// A group's server restarted empty, and a process of another layout
// recorded its own first: every member returns the *LayoutError, the
// member that runs no pool (two members, one analyser) from its
// heartbeat, rather than report it at every heartbeat for ever.
func TestJoinGroupStopsAtAnotherLayoutAfterRestart(t *testing.T) {
	t.Parallel()
	m, q, prefix := dialMiniredis(t)
	ctx := bounded(t)
	var errs errLog
	assigned := make(chan []int, 10)
	done := make(chan error, 2)
	for _, member := range []string{"a", "b"} {
		go func() {
			done <- q.JoinGroup(ctx, "g", GroupConfig{Member: member, SessionTTL: time.Second,
				OnAssign: func(a []int) { assigned <- a },
				Pool:     PoolConfig{Workers: 1, OnError: errs.add}}, func(context.Context, Task) error { return nil })
		}()
	}
	// Both joined: one runs analyser 0, the other none.
	got := map[int]bool{}
	require.Eventually(t, func() bool {
		for {
			select {
			case a := <-assigned:
				got[len(a)] = true
			default:
				return got[0] && got[1]
			}
		}
	}, 10*time.Second, 5*time.Millisecond, "the two members did not both take their share")

	restartEmpty(t, m, prefix, 2)
	for range 2 {
		select {
		case err := <-done:
			var le *LayoutError
			require.ErrorAs(t, err, &le)
			assert.Contains(t, le.Got, "queues=2")
		case <-time.After(10 * time.Second):
			t.Fatalf("a member still runs 10s after the restart; %d errors reported", len(errs.all()))
		}
	}
}
