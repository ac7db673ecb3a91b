package queue

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Fault 14: consumer groups. Members of one group (analyser processes
// running JoinGroup) join, leave gracefully, die, restart with the same
// name and pause past their session while a producer adds tasks
// throughout; after each change the group must settle to a balanced
// assignment whose leases the assigned members hold, and the checker
// judges the whole run.

const faultGroup = "g"

// defaultLease is the library's default LeaseTTL, which the members use.
var defaultLease, _, _, _ = leaseDefaults(0, 0, "")

// groupTakeoverBound is how soon a dead or paused member's queues must run
// again on the others with the library's default session (5s) and lease
// (5s): both run out at most their TTL after the member's last heartbeat
// or renewal (or claim, which extends the lease too) before the fault,
// together, and the others react at once.
var groupTakeoverBound = max(defaultSessionTTL, defaultLease) + time.Second

// assertTakeover checks the takeover of a member's queues after a fault,
// with pending tasks pending at it: each queue's lease granted elsewhere
// within groupTakeoverBound (the handover), and each queue's first start
// within recoveryAllowance of its grant (its new owner puts every pending
// task back first, which takes longer with more of them, and longer on
// a loaded machine: the bound on the whole once failed by 0.3-0.5 s,
// 2,195 tasks pending, with a handover in time).
func assertTakeover(t *testing.T, f groupFigures, pending int, format string, args ...any) {
	t.Helper()
	what := fmt.Sprintf(format, args...)
	if assert.Positive(t, f.handover, "%s: leases", what) {
		assert.LessOrEqual(t, f.handover, groupTakeoverBound, "%s: handover", what)
		assert.LessOrEqual(t, f.restart, recoveryAllowance(pending), "%s: from the lease to the first start", what)
	}
}

// groupChange is one change of a group's membership and what it cost.
type groupChange struct {
	what    string
	at      time.Time
	member  string   // the member changed
	pid     int      // its process at the change (the one killed or paused)
	fault   bool     // a kill or pause: its pending tasks may run twice
	pending []string // tasks pending on its analysers at the fault
	members []string // the members the group settles over, in name order

	settle        time.Duration  // from the change to balanced, every lease held by its assigned member
	before, after map[int]string // assignment: analyser -> member
	genBefore     int64
	genAfter      int64
	end           time.Time // when the group had settled
}

// groupFaults drives the members of a group through changes.
type groupFaults struct {
	e       *faultEnv
	live    map[string]*child // by member name, paused ones included
	paused  map[string]bool
	changes []*groupChange
	assign  map[int]string // as last settled
	gen     int64
}

// memberConfig is the suite's usual analyser as a member of the group,
// with the library's default lease and session (5s each).
func (e *faultEnv) memberConfig(name string) roleConfig {
	cfg := e.analyserConfig(0)
	cfg.Group, cfg.Member, cfg.LeaseTTL = faultGroup, name, 0
	return cfg
}

func (g *groupFaults) spawn(name string) {
	g.live[name] = g.e.spawn("analyser", g.e.memberConfig(name))
}

// analysersOf returns the analysers assigned to member as last settled.
func (g *groupFaults) analysersOf(member string) []int {
	var as []int
	for a, m := range g.assign {
		if m == member {
			as = append(as, a)
		}
	}
	slices.Sort(as)
	return as
}

// hit records, right after a kill or pause of member, the tasks pending
// on its analysers and the fencing tokens of the leases it held: the
// group has settled only once none of those leases is left.
func (g *groupFaults) hit(c *groupChange) map[int64]bool {
	as := g.analysersOf(c.member)
	c.pending = g.e.recordPendingOf(as...)
	stale := map[int64]bool{}
	for _, s := range g.e.stats() {
		if s.Owner == c.member && slices.Contains(as, s.Analyser) {
			stale[s.Token] = true
		}
	}
	return stale
}

// settle waits until the group has settled after change c and records
// what it cost. Then it waits for some progress.
func (g *groupFaults) settle(c *groupChange, stale map[int64]bool) {
	e := g.e
	e.t.Helper()
	for m := range g.live {
		if !g.paused[m] {
			c.members = append(c.members, m)
		}
	}
	slices.Sort(c.members)
	c.before, c.genBefore = g.assign, g.gen
	for {
		if settled(e.t, e.q, faultGroup, c.members...) && !g.staleLease(stale) {
			c.end = time.Now()
			c.settle = c.end.Sub(c.at)
			break
		}
		if time.Since(c.at) > 30*time.Second {
			st, _ := e.q.GroupStatus(context.Background(), faultGroup)
			e.t.Fatalf("%s: the group did not settle over %v in 30s: %+v, leases %+v", c.what, c.members, st, e.stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	var st GroupStatus
	st, c.after = groupOf(e.t, e.q, faultGroup)
	c.genAfter = st.Generation
	g.assign, g.gen = c.after, st.Generation
	if c.fault {
		// Every queue of the member runs again on its new owner (acks
		// tasks: the member is dead or stopped) before the next change,
		// which may give it back to a paused member.
		base := map[int]int64{}
		for _, s := range e.stats() {
			base[s.Analyser] = s.Processed
		}
		require.Eventually(e.t, func() bool {
			for _, s := range e.stats() {
				if c.before[s.Analyser] == c.member && s.Processed <= base[s.Analyser] {
					return false
				}
			}
			return true
		}, 30*time.Second, 5*time.Millisecond, "%s: its queues did not run again", c.what)
	}
	e.waitProcessed(e.processed()+200, 30*time.Second)
	g.changes = append(g.changes, c)
}

// staleLease reports whether a lease still carries a token in stale.
func (g *groupFaults) staleLease(stale map[int64]bool) bool {
	for _, s := range g.e.stats() {
		if stale[s.Token] {
			return true
		}
	}
	return false
}

func (g *groupFaults) join(name string) {
	c := &groupChange{what: "join " + name, member: name, at: time.Now()}
	g.spawn(name)
	g.settle(c, nil)
}

// leave stops member with SIGTERM: it leaves the group and hands its
// queues over.
func (g *groupFaults) leave(name string) {
	m := g.live[name]
	c := &groupChange{what: "SIGTERM " + name, member: name, pid: m.pid(), at: time.Now()}
	g.e.terminate(m)
	delete(g.live, name)
	g.settle(c, nil)
	g.e.waitExit(m, 15*time.Second)
}

// kill kills member with SIGKILL, and with restart starts it again at
// once under the same name (static membership).
func (g *groupFaults) kill(name string, restart bool) {
	m := g.live[name]
	c := &groupChange{what: "kill -9 " + name, member: name, pid: m.pid(), fault: true, at: time.Now()}
	g.e.kill9(m)
	delete(g.live, name)
	stale := g.hit(c)
	if restart {
		c.what += ", restarted as " + name
		g.spawn(name)
	}
	g.settle(c, stale)
}

// pause stops member with SIGSTOP until the group has settled without it,
// past its session; resume continues it.
func (g *groupFaults) pause(name string) {
	m := g.live[name]
	c := &groupChange{what: "SIGSTOP " + name, member: name, pid: m.pid(), fault: true, at: time.Now()}
	g.e.stop(m)
	g.paused[name] = true
	stale := g.hit(c)
	g.settle(c, stale)
}

func (g *groupFaults) resume(name string) {
	c := &groupChange{what: "SIGCONT " + name, member: name, pid: g.live[name].pid(), at: time.Now()}
	g.e.cont(g.live[name])
	delete(g.paused, name)
	g.settle(c, nil)
}

// groupFigures is what the events say of one change.
type groupFigures struct {
	dups     int           // starts of a task after its first one that this change caused
	strange  []string      // of those, tasks not pending at it: starts again in its window of no task pending at a fault
	takeover time.Duration // fault to the last of the member's queues running again elsewhere (-1: none)
	handover time.Duration // fault to the last of its queues' leases granted elsewhere (-1: not all)
	restart  time.Duration // the longest from such a grant to its queue's first start (-1: not all)
	grants   []int         // analysers of other members granted a lease while it settled
	detail   string        // per queue of the member: when its lease was granted elsewhere, when it ran again
}

// groupFiguresOf counts the duplicate starts each change caused: a task
// that starts again after a kill or pause whose pending tasks it was among
// counts for the last such; any other starts again count for the change
// in whose window (from it to the next) they came, as strange. For a kill
// or pause, it measures the time until every queue of the member ran again
// (a start by another process), and lists the leases granted on other
// members' analysers until it settled.
func groupFiguresOf(changes []*groupChange, events []faultEvent) []groupFigures {
	sort.SliceStable(events, func(i, j int) bool { return events[i].Wall < events[j].Wall })
	window := func(wall int64) int {
		w := -1
		for i, c := range changes {
			if stamp(c.at) <= wall {
				w = i
			}
		}
		return w
	}
	out := make([]groupFigures, len(changes))
	pending := make([]map[string]bool, len(changes))
	for i, c := range changes {
		pending[i] = map[string]bool{}
		for _, id := range c.pending {
			pending[i][id] = true
		}
		out[i].takeover, out[i].handover, out[i].restart = -1, -1, -1
	}
	seen := map[string]bool{}
	for _, x := range events {
		if x.Ev != evStart {
			continue
		}
		if seen[x.ID] {
			w := window(x.Wall)
			for w >= 0 && !pending[w][x.ID] {
				w--
			}
			if w >= 0 {
				out[w].dups++
			} else if w = window(x.Wall); w >= 0 {
				out[w].dups++
				out[w].strange = append(out[w].strange, x.ID)
			}
		}
		seen[x.ID] = true
	}
	for i, c := range changes {
		if !c.fault {
			continue
		}
		first := map[int]int64{}   // the member's analyser -> first start elsewhere after the fault
		granted := map[int]int64{} // -> first lease granted elsewhere after the fault
		mine := map[int]bool{}
		for a, m := range c.before {
			if m == c.member {
				mine[a] = true
			}
		}
		for _, x := range events {
			switch {
			case x.Ev == evStart && mine[x.Analyser] && x.Pid != c.pid && x.Wall > stamp(c.at):
				if _, ok := first[x.Analyser]; !ok {
					first[x.Analyser] = x.Wall
				}
			case x.Ev == evLease && mine[x.Analyser] && x.Pid != c.pid && x.Wall > stamp(c.at):
				if _, ok := granted[x.Analyser]; !ok {
					granted[x.Analyser] = x.Wall
				}
			case x.Ev == evLease && !mine[x.Analyser] && x.Wall > stamp(c.at) && x.Wall <= stamp(c.end):
				out[i].grants = append(out[i].grants, x.Analyser)
			}
		}
		var detail []string
		for _, a := range slices.Sorted(maps.Keys(mine)) {
			since := func(w int64, ok bool) string {
				if !ok {
					return "none"
				}
				return time.Duration(w - stamp(c.at)).Round(time.Millisecond).String()
			}
			g, gok := granted[a]
			f, fok := first[a]
			detail = append(detail, fmt.Sprintf("%d: lease %s, start %s", a, since(g, gok), since(f, fok)))
		}
		out[i].detail = strings.Join(detail, "; ")
		if len(first) == len(mine) {
			last := int64(0)
			for _, w := range first {
				last = max(last, w)
			}
			out[i].takeover = time.Duration(last - stamp(c.at))
		}
		if len(granted) == len(mine) && len(first) == len(mine) {
			for a, g := range granted {
				out[i].handover = max(out[i].handover, time.Duration(g-stamp(c.at)))
				out[i].restart = max(out[i].restart, time.Duration(first[a]-g))
			}
		}
	}
	return out
}

// TestFaultGroup runs a group of members over 12 queues through every
// kind of change while a producer adds 100,000 tasks of 1,000 OrderIDs:
// one member; a second and a third join; one is killed and restarted at
// once under its name (static membership); it leaves with SIGTERM;
// another is killed; it comes back under its name, its session long
// gone; it is paused past its session and continued. Leases and sessions
// are the library's defaults (5s).
func TestFaultGroup(t *testing.T) {
	e := newFaultEnv(t, 12, false)
	const orders, per = 1000, 100
	total := int64(orders * per)
	pcfg := produce(orders, per)
	// 1,500 tasks/s from 16 goroutines (which can add more) until the last
	// change, then as fast as they can: tasks flow through every change.
	pcfg.Goroutines, pcfg.Rate = 16, 1500
	p := e.spawn("producer", pcfg)
	g := &groupFaults{e: e, live: map[string]*child{}, paused: map[string]bool{}, assign: map[int]string{}}

	g.join("m1")
	g.join("m2")
	g.join("m3")
	g.kill("m3", true)
	g.leave("m3")
	g.kill("m2", false)
	g.join("m2")
	g.pause("m2")
	g.resume("m2")
	e.unpace(p) // fails if the producer added every task before the last change
	changed := time.Since(g.changes[0].at)
	e.drain([]*child{p}, slices.Collect(maps.Values(g.live)), 120*time.Second)
	drained := time.Since(g.changes[0].at)

	events := e.events()
	r := checkHistory(events)
	figs := groupFiguresOf(g.changes, events)
	n := e.q.Analysers()
	var table strings.Builder
	for i, c := range g.changes {
		f := figs[i]
		fmt.Fprintf(&table, "\n  %-28s settled in %6v over %v, %2d queues moved, %3d duplicates (%d pending at it)",
			c.what, c.settle.Round(time.Millisecond), c.members, moved(c.before, c.after), f.dups, len(c.pending))
		if c.fault {
			fmt.Fprintf(&table, ", its queues running again after %v", fmtRecovery(f.takeover))
		}
	}
	t.Logf("group of members over %d queues, %d tasks: the changes took %v, adding and draining %v:%s\n%v",
		n, total, changed.Round(time.Millisecond), drained.Round(time.Millisecond), table.String(), r)

	requireClean(t, r)
	assert.EqualValues(t, total, r.AddedOK)
	assert.EqualValues(t, total, r.Completed)
	assert.Zero(t, r.FailedRuns)
	assert.Zero(t, r.DupOther, "duplicates of tasks not pending at a kill or pause")
	assert.Zero(t, r.Dead)
	// A call running when m2 was paused went on when it continued, until
	// it saw its ctx cancelled, which its pool does at once.
	for _, c := range g.changes {
		if strings.HasPrefix(c.what, "SIGSTOP") {
			assert.LessOrEqual(t, r.ZombieTails, len(c.pending), "calls of the paused member going on after it continued")
		}
	}
	assert.Less(t, r.ZombieTailMax, time.Second, "the longest call of the paused member going on after it continued")
	for i, c := range g.changes {
		f := figs[i]
		assert.Empty(t, f.strange, "%s: duplicates of tasks not pending at it", c.what)
		if !c.fault {
			// A planned change waits for no lease to run out: each queue
			// that moves is released, and its new owner woken.
			assert.Less(t, c.settle, defaultLease/2, "%s: time to settle", c.what)
		}
		switch {
		case strings.HasPrefix(c.what, "join"), strings.HasPrefix(c.what, "SIGCONT"):
			// Joining takes a share from the members that have the most.
			want := n / len(c.members)
			if len(c.members) == 1 {
				want = n
			}
			assert.Equal(t, want, moved(c.before, c.after), "%s: queues moved", c.what)
		case strings.HasPrefix(c.what, "SIGTERM"):
			assert.Equal(t, n/(len(c.members)+1), moved(c.before, c.after), "%s: queues moved", c.what)
		case strings.Contains(c.what, "restarted"):
			// Static membership: its own queues back, nothing else moved.
			assert.Equal(t, c.before, c.after, "%s: the assignment", c.what)
			assert.Equal(t, c.genBefore, c.genAfter, "%s: the assignment changed meanwhile", c.what)
			assert.Empty(t, f.grants, "%s: other members' queues changed hands", c.what)
			assert.Positive(t, f.takeover, "%s: its queues did not run again", c.what)
			assertTakeover(t, f, len(c.pending), "%s: its queues running again: %s", c.what, f.detail)
		default: // a kill or pause: its queues go to the others
			assert.Equal(t, n/(len(c.members)+1), moved(c.before, c.after), "%s: queues moved", c.what)
			assert.Positive(t, f.takeover, "%s: its queues did not run again", c.what)
			assertTakeover(t, f, len(c.pending), "%s: its queues running again on the others: %s", c.what, f.detail)
		}
	}
}
