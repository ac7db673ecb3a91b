package queue

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/require"
)

// groupOf returns who holds each analyser, as GroupStatus reads it.
func groupOf(t *testing.T, q *Queue, group string) (GroupStatus, map[int]string) {
	t.Helper()
	st, err := q.GroupStatus(context.Background(), group)
	require.NoError(t, err)
	owner := map[int]string{}
	for _, m := range st.Members {
		for _, a := range m.Analysers {
			owner[a] = m.Name
		}
	}
	return st, owner
}

// requireBalanced checks that every analyser is assigned and that each
// member holds its weight's share, rounded down or up.
func requireBalanced(t *testing.T, st GroupStatus, n int) {
	t.Helper()
	require.Empty(t, st.Unassigned, "unassigned analysers")
	total, got := 0, 0
	for _, m := range st.Members {
		total += m.Weight
		got += len(m.Analysers)
	}
	require.Equal(t, n, got)
	for _, m := range st.Members {
		lo := n * m.Weight / total
		hi := lo
		if n*m.Weight%total != 0 {
			hi++
		}
		require.True(t, len(m.Analysers) >= lo && len(m.Analysers) <= hi,
			"member %s (weight %d of %d) holds %d analysers, want %d..%d", m.Name, m.Weight, total, len(m.Analysers), lo, hi)
	}
}

func TestGroupAssignmentStickyAndBalanced(t *testing.T) {
	q, _ := newTestQueue(t, 2, Config{Queues: 6}) // 12 analysers
	ctx := context.Background()
	g, err := q.newGroupStore("g", time.Minute)
	require.NoError(t, err)
	beat := func(m string, w int, op string) groupBeat {
		b, err := g.beat(ctx, m, w, op, 0)
		require.NoError(t, err)
		return b
	}
	n := q.Analysers()

	b := beat("a", 1, "beat")
	require.Equal(t, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, b.analysers)
	require.Equal(t, time.Duration(-1), b.nextEnd, "no other member")
	gen := b.gen
	require.Equal(t, gen, beat("a", 1, "beat").gen, "a heartbeat alone changes nothing")
	known, err := g.beat(ctx, "a", 1, "beat", gen)
	require.NoError(t, err)
	require.True(t, known.same, "a member that knows the generation is not sent the assignment")
	require.Nil(t, known.analysers)

	_, before := groupOf(t, q, "g")
	beat("b", 1, "beat")
	st, after := groupOf(t, q, "g")
	requireBalanced(t, st, n)
	require.Equal(t, 6, moved(before, after), "a join takes its share and no more")

	before = after
	beat("c", 1, "beat")
	st, after = groupOf(t, q, "g")
	requireBalanced(t, st, n)
	require.Equal(t, 4, moved(before, after))
	for a, m := range after {
		if m != "c" {
			require.Equal(t, before[a], m, "analyser %d moved between members that stay", a)
		}
	}

	// A leave hands the member's queues to the others, and only those.
	before = after
	beat("b", 1, "leave")
	st, after = groupOf(t, q, "g")
	requireBalanced(t, st, n)
	require.Equal(t, 4, moved(before, after))
	require.Len(t, st.Members, 2)

	// A weight: d with 2 gets twice the share of a and of c.
	before = after
	beat("d", 2, "beat")
	st, after = groupOf(t, q, "g")
	requireBalanced(t, st, n)
	require.Equal(t, 6, moved(before, after))
	for _, m := range st.Members {
		if m.Name == "d" {
			require.Len(t, m.Analysers, 6)
			require.Equal(t, 2, m.Weight)
		}
	}

	// A heartbeat of a member already in, with the same weight, moves
	// nothing; a restart within the session (static membership) neither.
	g2 := beat("a", 1, "beat").gen
	require.Equal(t, g2, beat("c", 1, "beat").gen)
	_, again := groupOf(t, q, "g")
	require.Equal(t, after, again)
}

// moved counts the analysers whose owner changed.
func moved(before, after map[int]string) int {
	n := 0
	for a, m := range after {
		if before[a] != m {
			n++
		}
	}
	return n
}

// TestGroupAssignmentRandom runs random joins, leaves and weight changes
// and checks after each that the group is balanced and that exactly the
// queues that had to move did: those of members gone, and those a member
// held over its new share.
func TestGroupAssignmentRandom(t *testing.T) {
	q, _ := newTestQueue(t, 1, Config{Queues: 37})
	ctx := context.Background()
	g, err := q.newGroupStore("r", time.Minute)
	require.NoError(t, err)
	n := q.Analysers()
	rng := rand.New(rand.NewPCG(1, 2))
	live := map[string]int{} // member -> weight
	for step := range 200 {
		m := fmt.Sprintf("m%d", rng.IntN(9))
		w, in := live[m]
		op := "beat"
		switch {
		case in && rng.IntN(3) == 0:
			op = "leave"
		case in && rng.IntN(3) == 0:
			w = 1 + rng.IntN(4)
		case !in:
			w = 1 + rng.IntN(4)
		}
		_, before := groupOf(t, q, "r")
		held := map[string]int{}
		for _, o := range before {
			held[o]++
		}
		_, err := g.beat(ctx, m, w, op, 0)
		require.NoError(t, err)
		if op == "leave" {
			delete(live, m)
		} else {
			live[m] = w
		}
		st, after := groupOf(t, q, "r")
		if len(live) == 0 {
			require.Len(t, st.Unassigned, n)
			continue
		}
		requireBalanced(t, st, n)
		must := 0
		for _, o := range before {
			if _, ok := live[o]; !ok {
				must++
			}
		}
		must += n - len(before) // unassigned before
		for _, mem := range st.Members {
			if h := held[mem.Name]; h > len(mem.Analysers) {
				must += h - len(mem.Analysers)
			}
		}
		require.Equal(t, must, moved(before, after), "step %d: %s %s weight %d", step, op, m, w)
	}
}

func TestGroupSessionRunsOut(t *testing.T) {
	q, _ := newTestQueue(t, 1, Config{Queues: 4})
	ctx := context.Background()
	short, err := q.newGroupStore("s", 300*time.Millisecond)
	require.NoError(t, err)
	long, err := q.newGroupStore("s", time.Minute)
	require.NoError(t, err)
	_, err = long.beat(ctx, "stays", 1, "beat", 0)
	require.NoError(t, err)
	b, err := short.beat(ctx, "dies", 1, "beat", 0)
	require.NoError(t, err)
	require.Len(t, b.analysers, 2)
	b, err = long.beat(ctx, "stays", 1, "beat", 0)
	require.NoError(t, err)
	require.Len(t, b.analysers, 2)
	require.True(t, b.nextEnd >= 0 && b.nextEnd <= 300*time.Millisecond, "next end %v", b.nextEnd)
	st, _ := groupOf(t, q, "s")
	require.Len(t, st.Members, 2)

	time.Sleep(b.nextEnd + 20*time.Millisecond)
	st, _ = groupOf(t, q, "s")
	require.Len(t, st.Members, 1, "a member whose session ran out is not shown")
	b, err = long.beat(ctx, "stays", 1, "beat", 0)
	require.NoError(t, err)
	require.Equal(t, []int{0, 1, 2, 3}, b.analysers)
	require.Equal(t, time.Duration(-1), b.nextEnd)
}

func TestGroupNudgesMembersWhoseQueuesChange(t *testing.T) {
	q, _ := newTestQueue(t, 1, Config{Queues: 4})
	ctx := context.Background()
	g, err := q.newGroupStore("n", time.Minute)
	require.NoError(t, err)
	_, err = g.beat(ctx, "a", 1, "beat", 0)
	require.NoError(t, err)
	nudged, err := g.waitNudge(ctx, "a", 10*time.Millisecond)
	require.NoError(t, err)
	require.False(t, nudged, "a member is not nudged for its own change")
	// b, a process of its own, knows of a from its first heartbeat on.
	gb, err := q.newGroupStore("n", time.Minute)
	require.NoError(t, err)
	_, err = gb.beat(ctx, "b", 1, "beat", 0)
	require.NoError(t, err)
	nudged, err = g.waitNudge(ctx, "a", time.Second)
	require.NoError(t, err)
	require.True(t, nudged, "a lost queues to b")
	_, err = gb.beat(ctx, "b", 1, "beat", 0)
	require.NoError(t, err)
	nudged, err = g.waitNudge(ctx, "a", 10*time.Millisecond)
	require.NoError(t, err)
	require.False(t, nudged, "a heartbeat that changes nothing nudges nobody")
}

func TestGroupNamesChecked(t *testing.T) {
	q, _ := newTestQueue(t, 1, Config{})
	for _, bad := range []string{"", "a{b", "a}b", "a\nb", string(make([]byte, 201)),
		"a\u0085b", "a\u009fb", "a\x7fb"} { // C1 controls, DEL
		_, err := q.GroupStatus(context.Background(), bad)
		require.ErrorIs(t, err, ErrBadConfig, "%q", bad)
		if bad != "" { // an empty member name means host:pid
			err = q.JoinGroup(context.Background(), "ok", GroupConfig{Member: bad}, func(context.Context, Task) error { return nil })
			require.ErrorIs(t, err, ErrBadConfig, "%q", bad)
		}
	}
	for _, good := range []string{"billing", "b-1 host:42", strings.Repeat("é", 100), "€", "a\xffb", "a\u00a0b"} {
		require.NoError(t, CheckGroupName(good), "%q", good)
	}
	fn := func(context.Context, Task) error { return nil }
	for _, cfg := range []GroupConfig{{Weight: -1}, {Weight: 1001}, {SessionTTL: time.Millisecond},
		{Pool: PoolConfig{ExitOnEmpty: true}}, {Pool: PoolConfig{Counters: &Counters{}}}, {Pool: PoolConfig{Workers: -1}}} {
		require.ErrorIs(t, q.JoinGroup(context.Background(), "g", cfg, fn), ErrBadConfig, "%+v", cfg)
	}
	require.ErrorIs(t, q.JoinGroup(context.Background(), "g", GroupConfig{}, nil), ErrNilFunc)
}

// TestGroupStateWrittenByHand writes group state that no member writes
// and checks that the next beat recomputes around it: every analyser
// assigned, nothing frozen.
func TestGroupStateWrittenByHand(t *testing.T) {
	ctx := context.Background()
	setup := func(t *testing.T) (*testServer, groupKeys, *groupStore, *Queue) {
		q, servers := newTestQueue(t, 1, Config{Queues: 8})
		g, err := q.newGroupStore("g", time.Minute)
		require.NoError(t, err)
		return servers[0], newGroupKeys(q.cfg.Prefix, "g"), g, q
	}
	t.Run("weight too large", func(t *testing.T) {
		// 400 digits read as infinity: shares of infinity are NaN, and
		// every analyser went unassigned. It counts as the largest weight.
		s, k, g, q := setup(t)
		for _, m := range []string{"a", "b", "c"} {
			_, err := g.beat(ctx, m, 1, "beat", 0)
			require.NoError(t, err)
		}
		s.do(t, "HSET", k.info, "b", strings.Repeat("9", 400)+":1:1", "c", "3:1:1")
		_, err := g.beat(ctx, "a", 1, "leave", 0)
		require.NoError(t, err)
		_, owner := groupOf(t, q, "g")
		for a := range 8 {
			require.Equal(t, "b", owner[a], "analyser %d: b weighs %d, c 3", a, maxGroupWeight)
		}
	})
	t.Run("session without end", func(t *testing.T) {
		// No SessionTTL reaches that far: such a member would hold its
		// share for ever.
		s, k, g, q := setup(t)
		s.do(t, "ZADD", k.members, "+inf", "ghost", 1e15, "far")
		b, err := g.beat(ctx, "a", 1, "beat", 0)
		require.NoError(t, err)
		require.Equal(t, []int{0, 1, 2, 3, 4, 5, 6, 7}, b.analysers)
		require.Equal(t, time.Duration(-1), b.nextEnd)
		st, _ := groupOf(t, q, "g")
		require.Len(t, st.Members, 1)
	})
	// An assignment edited by hand is computed anew before a member that
	// does not know the generation is sent its analysers: each edit
	// below would have sent one an analyser out of range or twice, or
	// left one to no member.
	for _, edit := range [][]any{{"HSET", "01", "a"}, {"HSET", "-1", "a"}, {"HSET", "8", "a"}, {"HSET", "x", "a"},
		{"HSET", "1.0", "a"}, {"HDEL", "3"}, {"HSET", "5", "nobody"}} {
		t.Run(fmt.Sprint("assignment ", edit), func(t *testing.T) {
			s, k, g, q := setup(t)
			for _, m := range []string{"a", "b"} {
				_, err := g.beat(ctx, m, 1, "beat", 0)
				require.NoError(t, err)
			}
			s.do(t, edit[0].(string), append([]any{k.assign}, edit[1:]...)...)
			b, err := g.beat(ctx, "a", 1, "beat", 0)
			require.NoError(t, err)
			require.Len(t, b.analysers, 4)
			st, _ := groupOf(t, q, "g")
			requireBalanced(t, st, 8)
			fields, err := redis.Strings(s.do(t, "HKEYS", k.assign), nil)
			require.NoError(t, err)
			require.Len(t, fields, 8)
		})
	}
	t.Run("generation too large", func(t *testing.T) {
		// 2^53 plus one is 2^53 in Lua's numbers: the generation stopped
		// changing, and members that knew it learnt of no change again.
		s, k, g, _ := setup(t)
		_, err := g.beat(ctx, "a", 1, "beat", 0)
		require.NoError(t, err)
		s.do(t, "HSET", k.meta, "gen", "9007199254740992")
		b, err := g.beat(ctx, "a", 1, "beat", 9007199254740992)
		require.NoError(t, err)
		require.True(t, b.same)
		_, err = g.beat(ctx, "b", 1, "beat", 0)
		require.NoError(t, err)
		b, err = g.beat(ctx, "a", 1, "beat", 9007199254740992)
		require.NoError(t, err)
		require.False(t, b.same, "a change kept the generation")
		require.Len(t, b.analysers, 4)
	})
}

func TestParseAnalysers(t *testing.T) {
	for _, c := range []struct {
		list string
		want []int
		bad  bool
	}{
		{"", nil, false},
		{"3,0,2", []int{0, 2, 3}, false},
		{"1,01", nil, true}, // two pools on one analyser, one lost track of
		{"4", nil, true},
		{"-1", nil, true},
		{"a", nil, true},
	} {
		got, err := parseAnalysers(c.list, 4)
		if c.bad {
			require.ErrorIs(t, err, ErrMalformed, "%q", c.list)
			continue
		}
		require.NoError(t, err, "%q", c.list)
		require.Equal(t, c.want, got, "%q", c.list)
	}
}

// TestGroupLeaveKeptForItsRun checks the record a leave keeps: a
// heartbeat of the run that left (one given up on, reaching Redis late)
// joins nothing; one of another run of the member joins and drops the
// record; a leave drops the records that ended, and malformed ones.
func TestGroupLeaveKeptForItsRun(t *testing.T) {
	ctx := context.Background()
	q, servers := newTestQueue(t, 1, Config{Queues: 4})
	k := newGroupKeys(q.cfg.Prefix, "g")
	store := func(run string) *groupStore {
		g, err := q.newGroupStore("g", time.Minute)
		require.NoError(t, err)
		g.run = run
		return g
	}
	first, second := store("r1"), store("r2")
	beat := func(g *groupStore, op string) groupBeat {
		t.Helper()
		b, err := g.beat(ctx, "a", 1, op, 0)
		require.NoError(t, err)
		return b
	}
	meta := func() map[string]string {
		m, err := redis.StringMap(servers[0].do(t, "HGETALL", k.meta), nil)
		require.NoError(t, err)
		return m
	}

	require.Equal(t, []int{0, 1, 2, 3}, beat(first, "beat").analysers)
	beat(first, "leave")
	left := meta()["left:a"]
	require.True(t, strings.HasPrefix(left, "r1:"), "the leave's record: %q", left)
	gen := meta()["gen"]

	late := beat(first, "beat")
	require.True(t, late.same, "a late heartbeat of the run that left is answered as a settled group's")
	require.Empty(t, late.analysers)
	st, _ := groupOf(t, q, "g")
	require.Empty(t, st.Members, "a late heartbeat of the run that left joined it again")
	require.Equal(t, gen, meta()["gen"], "a late heartbeat changed the assignment")
	require.Equal(t, left, meta()["left:a"])

	require.Equal(t, []int{0, 1, 2, 3}, beat(second, "beat").analysers, "another run of the member joins")
	require.NotContains(t, meta(), "left:a", "the joining run keeps the record of the last")

	servers[0].do(t, "HSET", k.meta, "left:x", "r9:1", "left:y", "no end", "left:z", "r9:99999999999999")
	beat(second, "leave")
	m := meta()
	require.NotContains(t, m, "left:x", "an ended record is dropped")
	require.NotContains(t, m, "left:y", "a malformed record is dropped")
	require.Contains(t, m, "left:z", "a record that has not ended is kept")
	require.True(t, strings.HasPrefix(m["left:a"], "r2:"))

	// A store of no run neither keeps a leave nor reads one.
	none := store("")
	beat(none, "beat")
	beat(none, "leave")
	require.Equal(t, m["left:a"], meta()["left:a"])
	beat(none, "beat")
	st, _ = groupOf(t, q, "g")
	require.Len(t, st.Members, 1)
}
