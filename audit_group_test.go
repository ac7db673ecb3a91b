package queue

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// groupMember is one JoinGroup call of an audit test.
type groupMember struct {
	name string
	stop context.CancelFunc
	done chan error
}

func joinMember(q *Queue, group, name string, cfg GroupConfig, fn AnalyseFunc) *groupMember {
	ctx, cancel := context.WithCancel(context.Background())
	cfg.Member = name
	m := &groupMember{name: name, stop: cancel, done: make(chan error, 1)}
	go func() { m.done <- q.JoinGroup(ctx, group, cfg, fn) }()
	return m
}

func (m *groupMember) leave(t *testing.T) {
	t.Helper()
	m.stop()
	select {
	case err := <-m.done:
		require.NoError(t, err, "member %s", m.name)
	case <-time.After(30 * time.Second):
		t.Fatalf("member %s did not return 30s after its stop", m.name)
	}
}

// orderedAdder adds tasks "<order>:<seq>" over orders OrderIDs until
// stopped, and remembers how many it added of each.
type orderedAdder struct {
	mu    sync.Mutex
	added map[uint64]int
	stop  chan struct{}
	once  sync.Once
	done  chan struct{}
}

func startAdding(t *testing.T, q *Queue, orders int, pause time.Duration) *orderedAdder {
	a := &orderedAdder{added: map[uint64]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(func() { a.finish() }) // a test that failed first
	go func() {
		defer close(a.done)
		for i := 0; ; i++ {
			select {
			case <-a.stop:
				return
			default:
			}
			o := uint64(i % orders)
			a.mu.Lock()
			seq := a.added[o]
			a.mu.Unlock()
			if _, err := q.AddTask(context.Background(), o, []byte(fmt.Sprintf("%d:%d", o, seq))); err != nil {
				select {
				case <-a.stop: // the test is over
				default:
					t.Errorf("add: %v", err)
				}
				return
			}
			a.mu.Lock()
			a.added[o]++
			a.mu.Unlock()
			if pause > 0 && i%10 == 0 {
				time.Sleep(pause)
			}
		}
	}()
	return a
}

// finish stops adding and returns the counts added and their total.
func (a *orderedAdder) finish() (map[uint64]int, int64) {
	a.once.Do(func() { close(a.stop) })
	<-a.done
	var n int64
	for _, c := range a.added {
		n += int64(c)
	}
	return a.added, n
}

// TestAuditGroupFastJoinLeaveReleasesEveryLease has members join and
// leave fast, stopped at random moments after they joined (before their
// first assignment, while their pools acquire, recover or run), with a
// lease far longer than the test: every lease a leaving member took must
// be released, so that the member that stays runs every queue again
// without waiting for one to lapse, and every task runs once, in order.
func TestAuditGroupFastJoinLeaveReleasesEveryLease(t *testing.T) {
	q, _ := newTestQueue(t, 2, Config{Queues: 4}) // 8 analysers
	l := newGroupLog()
	cfg := GroupConfig{SessionTTL: time.Minute,
		Pool: PoolConfig{Workers: 2, LeaseTTL: 10 * time.Minute, ShutdownTimeout: time.Minute}}
	add := startAdding(t, q, 40, time.Millisecond)
	a := joinMember(q, "g", "a", cfg, l.fn("a"))
	require.Eventually(t, func() bool { return settled(t, q, "g", "a") }, 10*time.Second, 5*time.Millisecond)
	for i := range 25 {
		name := fmt.Sprintf("b%d", i%3)
		b := joinMember(q, "g", name, cfg, l.fn(name))
		time.Sleep(time.Duration(rand.IntN(60)) * time.Millisecond)
		b.leave(t)
		require.Eventually(t, func() bool { return settled(t, q, "g", "a") }, 20*time.Second, 5*time.Millisecond,
			"round %d: a does not hold every queue after %s left", i, name)
	}
	added, want := add.finish()
	require.Eventually(t, func() bool { return l.total.Load() >= want }, 30*time.Second, 5*time.Millisecond)
	a.leave(t)
	l.check(t, added)
}

// checkAtLeastOnce asserts that every task added ran, that no two runs
// of an OrderID overlapped, and that an OrderID never ran a task before
// every earlier one had run (a redelivery goes back, and goes on in order).
func (l *groupLog) checkAtLeastOnce(t *testing.T, added map[uint64]int) (dups int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	require.Empty(t, l.overlap)
	for o, n := range added {
		runs := l.runs[o]
		seen := make([]bool, n)
		last := -1
		for i, r := range runs {
			require.Less(t, r.seq, n, "order %d run %d: %v", o, i, runs)
			require.LessOrEqual(t, r.seq, last+1, "order %d run %d skipped ahead: %v", o, i, runs)
			if seen[r.seq] {
				dups++
			}
			seen[r.seq] = true
			last = r.seq
		}
		require.Equal(t, n-1, last, "order %d: runs end at %d of %d: %v", o, last, n, runs)
	}
	return dups
}

// TestAuditGroupMemberCutOrStalledAndBack cuts (or stalls) the network of
// one of two members for longer than its session and its lease, under a
// flow of tasks, then mends it: the other takes its queues, the member
// comes back and the group settles over both, and every task runs, in
// order, one at a time per OrderID.
func TestAuditGroupMemberCutOrStalledAndBack(t *testing.T) {
	for _, mode := range []string{"cut", "stall"} {
		t.Run(mode, func(t *testing.T) {
			q, servers := newTestQueue(t, 2, Config{Queues: 3}) // 6 analysers
			qb, link := linkedQueue(t, q, servers)
			l := newGroupLog()
			cfg := GroupConfig{SessionTTL: 500 * time.Millisecond,
				Pool: PoolConfig{Workers: 2, LeaseTTL: 500 * time.Millisecond, ShutdownTimeout: 10 * time.Second,
					OnError: func(error) {}}}
			add := startAdding(t, q, 30, time.Millisecond)
			a := joinMember(q, "g", "a", cfg, l.fn("a"))
			b := joinMember(qb, "g", "b", cfg, l.fn("b"))
			for range 2 {
				require.Eventually(t, func() bool { return settled(t, q, "g", "a", "b") }, 10*time.Second, 5*time.Millisecond)
				n := l.total.Load()
				require.Eventually(t, func() bool { return l.total.Load() > n+50 }, 10*time.Second, time.Millisecond)
				if mode == "cut" {
					link.setCut(true)
				} else {
					link.stall()
				}
				require.Eventually(t, func() bool { return settled(t, q, "g", "a") }, 10*time.Second, 5*time.Millisecond,
					"a did not take b's queues")
				n = l.total.Load()
				require.Eventually(t, func() bool { return l.total.Load() > n+50 }, 10*time.Second, time.Millisecond)
				if mode == "cut" {
					link.setCut(false)
				} else {
					link.resume()
				}
			}
			require.Eventually(t, func() bool { return settled(t, q, "g", "a", "b") }, 10*time.Second, 5*time.Millisecond)
			added, want := add.finish()
			_ = want
			waitDrained(t, q)
			a.leave(t)
			b.leave(t)
			dups := l.checkAtLeastOnce(t, added)
			t.Logf("duplicates: %d of %d", dups, want)
		})
	}
}

// forgetAll deletes every key of prefix on s, as a server that restarted
// without persistence has none.
func forgetAll(t *testing.T, s *testServer, prefix string) {
	t.Helper()
	c := s.pool.Get()
	defer c.Close()
	for cursor := "0"; ; {
		r, err := redis.Values(c.Do("SCAN", cursor, "MATCH", "*"+prefix+"*", "COUNT", 1000))
		require.NoError(t, err)
		cursor, _ = redis.String(r[0], nil)
		keys, _ := redis.Strings(r[1], nil)
		for _, k := range keys {
			_, err := c.Do("DEL", k)
			require.NoError(t, err)
		}
		if cursor == "0" {
			return
		}
	}
}

// TestAuditGroupServerLosesItsData has the group's server lose every key
// of the queue and the group, with every connection of the members, as
// a restart without persistence does, while three members run under a
// flow of tasks: they must form the group again, each with its share and
// each lease held by the member assigned, and run every task added after
// the loss, in order, one at a time per OrderID.
func TestAuditGroupServerLosesItsData(t *testing.T) {
	q, servers := newTestQueue(t, 1, Config{Queues: 6})
	qm, link := linkedQueue(t, q, servers)
	l := newGroupLog()
	var evMu sync.Mutex
	var events []string
	ev := func(format string, args ...any) {
		evMu.Lock()
		events = append(events, time.Now().Format("05.000")+" "+fmt.Sprintf(format, args...))
		evMu.Unlock()
	}
	defer func() {
		if t.Failed() {
			evMu.Lock()
			for _, e := range events {
				t.Log(e)
			}
			evMu.Unlock()
		}
	}()
	var ms []*groupMember
	for _, name := range []string{"a", "b", "c"} {
		cfg := GroupConfig{SessionTTL: 2 * time.Second, OnAssign: func(a []int) { ev("%s assign %v", name, a) },
			Pool: PoolConfig{Workers: 2, LeaseTTL: 2 * time.Second, OnError: func(err error) { ev("%s err %v", name, err) },
				Logger: slog.New(slog.NewTextHandler(evWriter(func(s string) { ev("%s %s", name, s) }), nil))}}
		ms = append(ms, joinMember(qm, "g", name, cfg, l.fn(name)))
	}
	require.Eventually(t, func() bool { return settled(t, q, "g", "a", "b", "c") }, 10*time.Second, 5*time.Millisecond)
	add := startAdding(t, q, 30, time.Millisecond)
	for range 3 {
		n := l.total.Load()
		require.Eventually(t, func() bool { return l.total.Load() > n+50 }, 10*time.Second, time.Millisecond)
		link.setCut(true)
		forgetAll(t, servers[0], q.cfg.Prefix)
		link.setCut(false)
		require.Eventually(t, func() bool { return settled(t, q, "g", "a", "b", "c") }, 15*time.Second, 5*time.Millisecond,
			"the group did not form again")
	}
	// What was added before the last loss may be lost: count from here,
	// once what is left of it ran.
	add.finish()
	waitDrained(t, q)
	ev("cleared")
	l.mu.Lock()
	clear(l.runs)
	l.mu.Unlock()
	add = startAdding(t, q, 30, time.Millisecond)
	n := l.total.Load()
	require.Eventually(t, func() bool { return l.total.Load() > n+300 }, 10*time.Second, time.Millisecond)
	added, want := add.finish()
	require.Eventually(t, func() bool { return l.total.Load() >= n+want }, 20*time.Second, 5*time.Millisecond)
	for _, m := range ms {
		m.leave(t)
	}
	// A lease lost to a stalled machine (2s, under the race detector)
	// runs what was pending again.
	l.checkAtLeastOnce(t, added)
}

// waitDrained waits until no task of q is ready or pending.
func waitDrained(t *testing.T, q *Queue) {
	t.Helper()
	require.Eventually(t, func() bool {
		st, err := q.Stats(context.Background())
		if err != nil {
			return false
		}
		for _, s := range st {
			if s.Ready+s.Pending > 0 {
				return false
			}
		}
		return true
	}, 30*time.Second, 10*time.Millisecond, "not drained")
}

// evWriter is an io.Writer that hands each write to f.
type evWriter func(string)

func (w evWriter) Write(p []byte) (int, error) {
	w(strings.TrimSpace(string(p)))
	return len(p), nil
}

// TestAuditGroupManyQueuesManyMembers shares out the most queues a
// server may have (on a real server) among up to 40 members of three
// weights joining and leaving, by the heartbeat script alone (no
// pools): after every change each queue has one live member (none when
// the last one left), and what each member was told it holds is what
// GroupStatus shows.
func TestAuditGroupManyQueuesManyMembers(t *testing.T) {
	queues := maxQueues
	if testRedisURL == "" {
		// miniredis's Lua (gopher-lua) overflows its registry joining
		// some thousands of strings, where Redis's does not.
		queues = 512
	}
	q, _ := newTestQueue(t, 1, Config{Queues: queues})
	ctx := bounded(t)
	stores := map[string]*groupStore{}
	gens := map[string]int64{}
	held := map[string][]int{}
	live := func() []string {
		var out []string
		for m := range stores {
			out = append(out, m)
		}
		return out
	}
	var slowest time.Duration
	beat := func(m, op string) {
		start := time.Now()
		b, err := stores[m].beat(ctx, m, 1+len(m)%3, op, gens[m])
		require.NoError(t, err)
		slowest = max(slowest, time.Since(start))
		if op == "leave" {
			delete(stores, m)
			delete(held, m)
			return
		}
		if !b.same {
			gens[m] = b.gen
			held[m] = b.analysers
		}
	}
	for i := range 60 {
		m := fmt.Sprintf("m%02d", rand.IntN(40))
		if i == 30 {
			// Everyone leaves once: the group empties and fills again.
			for _, o := range live() {
				beat(o, "leave")
			}
		} else if _, in := stores[m]; in && rand.IntN(3) == 0 {
			beat(m, "leave")
		} else {
			if !in {
				g, err := q.newGroupStore("g", time.Hour)
				require.NoError(t, err)
				stores[m] = g
				gens[m] = 0
			}
			beat(m, "beat")
		}
		for _, o := range live() {
			beat(o, "beat")
		}
		st, err := q.GroupStatus(ctx, "g")
		require.NoError(t, err)
		require.Len(t, st.Members, len(stores), "round %d", i)
		total := 0
		for _, mm := range st.Members {
			require.Equal(t, held[mm.Name], mm.Analysers, "round %d: %s holds other queues than it was told", i, mm.Name)
			total += len(mm.Analysers)
		}
		if len(stores) == 0 {
			// The last member left: every queue waits for the next.
			require.Len(t, st.Unassigned, queues, "round %d: a group with no member", i)
			continue
		}
		require.Empty(t, st.Unassigned, "round %d", i)
		require.Equal(t, queues, total, "round %d", i)
	}
	t.Logf("slowest heartbeat: %v", slowest)
}

// TestAuditGroupMembersOfDifferentSessions runs a member of a short
// session (300ms) beside one of a long one (60s, a heartbeat every 12s):
// when the short one is cut off, the long one must take its queues once
// its session and leases have run out, not at its own next heartbeat;
// when it comes back, the long one must give its share up when nudged,
// though the nudge lasts the short session only.
func TestAuditGroupMembersOfDifferentSessions(t *testing.T) {
	q, servers := newTestQueue(t, 1, Config{Queues: 4})
	qa, link := linkedQueue(t, q, servers)
	l := newGroupLog()
	add := startAdding(t, q, 20, time.Millisecond)
	a := joinMember(qa, "g", "a", GroupConfig{SessionTTL: 300 * time.Millisecond,
		Pool: PoolConfig{Workers: 2, LeaseTTL: 300 * time.Millisecond, OnError: func(error) {}}}, l.fn("a"))
	b := joinMember(q, "g", "b", GroupConfig{SessionTTL: time.Minute,
		Pool: PoolConfig{Workers: 2, LeaseTTL: time.Minute}}, l.fn("b"))
	for range 2 {
		requireSettled(t, q, 8*time.Second, "g", "a", "b")
		link.setCut(true)
		requireSettled(t, q, 8*time.Second, "g", "b")
		link.setCut(false)
	}
	requireSettled(t, q, 8*time.Second, "g", "a", "b")
	added, _ := add.finish()
	waitDrained(t, q)
	a.leave(t)
	b.leave(t)
	l.checkAtLeastOnce(t, added)
}

// TestAuditGroupTwoProcessesOneMemberName runs two members of one name
// (a process restarted with its name while the old one still runs, as a
// replaced pod that hung), beside a third: the two share the name's
// queues through the queues' leases, one at a time; when either stops,
// its leave takes the name out of the group while the other still runs,
// and the group must settle again with the one left, every task run in
// order, one at a time per OrderID.
func TestAuditGroupTwoProcessesOneMemberName(t *testing.T) {
	q, _ := newTestQueue(t, 2, Config{Queues: 2})
	l := newGroupLog()
	cfg := GroupConfig{SessionTTL: 2 * time.Second, Pool: PoolConfig{Workers: 2, LeaseTTL: 2 * time.Second}}
	add := startAdding(t, q, 20, time.Millisecond)
	a := joinMember(q, "g", "a", cfg, l.fn("a"))
	m1 := joinMember(q, "g", "m", cfg, l.fn("m1"))
	require.Eventually(t, func() bool { return settled(t, q, "g", "a", "m") }, 10*time.Second, 5*time.Millisecond)
	m2 := joinMember(q, "g", "m", cfg, l.fn("m2"))
	n := l.total.Load()
	require.Eventually(t, func() bool { return l.total.Load() > n+100 }, 10*time.Second, time.Millisecond)
	m1.leave(t)
	require.Eventually(t, func() bool { return settled(t, q, "g", "a", "m") }, 10*time.Second, 5*time.Millisecond)
	n = l.total.Load()
	require.Eventually(t, func() bool { return l.total.Load() > n+100 }, 10*time.Second, time.Millisecond)
	added, _ := add.finish()
	waitDrained(t, q)
	a.leave(t)
	m2.leave(t)
	l.check(t, added)
}

// requireSettled waits until settled, and says what it saw when it
// gives up.
func requireSettled(t *testing.T, q *Queue, within time.Duration, group string, members ...string) {
	t.Helper()
	if assert.Eventually(t, func() bool { return settled(t, q, group, members...) }, within, 5*time.Millisecond,
		"the group did not settle over %v", members) {
		return
	}
	st, err := q.GroupStatus(context.Background(), group)
	t.Logf("group: %+v (%v)", st, err)
	stats, err := q.Stats(context.Background())
	for _, s := range stats {
		t.Logf("analyser %d: owner %q (%v)", s.Analyser, s.Owner, err)
	}
	t.FailNow()
}

// TestAuditGroupJoinerNudgesAMemberItDidNotKnow has a member join whose
// read of the members came before another's join, and whose heartbeat
// came after: the other, which held every queue, must be told at once
// to give the joiner its share, not at its own next heartbeat (12
// minutes away, with a session of an hour). Before, the heartbeat
// nudged only the members its caller had read.
func TestAuditGroupJoinerNudgesAMemberItDidNotKnow(t *testing.T) {
	q, _ := newTestQueue(t, 1, Config{Queues: 4})
	joiner, err := q.newGroupStore("g", time.Hour)
	require.NoError(t, err)
	joiner.members = []string{} // it read the members: none yet
	assigned := make(chan []int, 16)
	b := joinMember(q, "g", "b", GroupConfig{SessionTTL: time.Hour, Pool: PoolConfig{Workers: 1},
		OnAssign: func(a []int) { assigned <- a }}, func(context.Context, Task) error { return nil })
	defer b.leave(t)
	require.Equal(t, []int{0, 1, 2, 3}, <-assigned)

	beat, err := joiner.beat(bounded(t), "a", 1, "beat", 0)
	require.NoError(t, err)
	require.Len(t, beat.analysers, 2)
	select {
	case got := <-assigned:
		require.Len(t, got, 2)
	case <-time.After(5 * time.Second): // its wait ends sooner only with its connection's read timeout (10s)
		t.Fatal("b was not told to give up the joiner's share")
	}
}
