package queue

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// A fault at every call. Each driver runs a short scripted workload once
// without a fault, to list the Redis round trips it makes, then runs it
// again with one fault at one of those calls, for each kind of fault
// (faultconn_test.go), and checks each run with the history checker:
// nothing lost or made up, order kept, no overlap, no stale start or late
// ack, duplicates only among tasks pending at the fault or at a lost
// lease, nothing left behind.
//
// QUEUE_FAULTCALL=all runs every call with every fault; otherwise a seeded
// sample (QUEUE_FAULTCALL_SEED, default 1) of at most faultCallBudget runs
// per driver (faultCallShort with -short). QUEUE_FAULTCALL_SITE=<substring>
// runs only the sites whose name contains it.

const (
	faultCallBudget = 48
	faultCallShort  = 6
)

// callWorkload is a scripted workload for driveCalls.
type callWorkload struct {
	driver        string
	expectDead    bool
	uncertainAdds bool // the producer meets the faults (settleUncertain)
	run           func(r *callRun)
	// dry, when set, checks the report of the run without a fault, that
	// the workload did what it is there for.
	dry func(t *testing.T, rep faultReport)
}

type callCase struct {
	site callSite
	kind faultKind
}

// driveCalls runs w once without a fault, then once per chosen call and
// fault kind, and judges each run.
func driveCalls(t *testing.T, w callWorkload) {
	skipOnCluster(t, "the driver dials one server's URL for the connections it fails call by call")
	var sites []callSite
	t.Run("dry", func(t *testing.T) {
		r := newCallRun(t, newCallPlan(callSite{}, faultNone))
		w.run(r)
		r.finish(w)
		for _, p := range r.brokenProps() {
			t.Errorf("without a fault: %s: %v", p, r.props[p])
		}
		if w.dry != nil {
			w.dry(t, r.rep)
		}
		sites = r.plan.sites()
		t.Logf("calls: %v", sites)
	})
	if t.Failed() {
		return
	}
	cases := chooseCases(t, sites)
	var mu sync.Mutex
	fired, known := 0, map[int]int{}
	t.Run("faults", func(t *testing.T) {
		for _, c := range cases {
			t.Run(c.site.String()+"/"+c.kind.String(), func(t *testing.T) {
				t.Parallel()
				r := newCallRun(t, newCallPlan(c.site, c.kind))
				w.run(r)
				r.finish(w)
				if !r.plan.didFire() {
					t.Skipf("the run made no call %s (timing): nothing injected", c.site)
				}
				mu.Lock()
				fired++
				mu.Unlock()
				judge(t, w.driver, c, r, known, &mu)
			})
		}
	})
	t.Logf("%d calls in the dry run, %d distinct; %d runs, %d with the fault injected; known holes hit: %v",
		len(sites), len(distinctSites(sites)), len(cases), fired, known)
	if fired < len(cases)*3/4 {
		t.Errorf("only %d of %d runs reached their call: the workload's calls drift", fired, len(cases))
	}
}

// judge fails t for every property a run broke that no known hole
// explains, and skips it when known holes explain all of them.
func judge(t *testing.T, driver string, c callCase, r *callRun, known map[int]int, mu *sync.Mutex) {
	props := r.brokenProps()
	if len(props) == 0 {
		return
	}
	var holes, news []string
	items := map[int]bool{}
	for _, p := range props {
		if h, ok := holeFor(holeCase{driver, c.site, c.kind, r.plan}, p); ok {
			holes = append(holes, fmt.Sprintf("%s: issue 10 item %d (%s)", p, h.item, h.why))
			items[h.item] = true
			continue
		}
		news = append(news, p)
	}
	if len(news) == 0 {
		mu.Lock()
		for i := range items {
			known[i]++
		}
		mu.Unlock()
		t.Skipf("known hole: fault %s at %s broke %s", c.kind, c.site, strings.Join(holes, "; "))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "fault %s at call %s broke:", c.kind, c.site)
	for _, p := range props {
		fmt.Fprintf(&b, "\n  %s: %s", p, strings.Join(r.props[p], "; "))
	}
	fmt.Fprintf(&b, "\n  calls: %v", r.plan.sites())
	fmt.Fprintf(&b, "\n  runs by OrderID (pid:seq/attempt:result):%s", timeline(r.hist.events()))
	t.Error(b.String())
}

func distinctSites(sites []callSite) map[callSite]bool {
	out := map[callSite]bool{}
	for _, s := range sites {
		out[s] = true
	}
	return out
}

// chooseCases picks the runs: every call with every fault, or a seeded
// sample that first covers each kind of call (actor and name) once with
// each fault, at its first occurrence.
func chooseCases(t *testing.T, sites []callSite) []callCase {
	filter := os.Getenv("QUEUE_FAULTCALL_SITE")
	var all, firsts []callCase
	seenWhat := map[string]bool{}
	for s := range distinctSites(sites) {
		if filter != "" && !strings.Contains(s.String(), filter) {
			continue
		}
		for _, k := range faultKinds {
			all = append(all, callCase{s, k})
		}
	}
	sort.Slice(all, func(i, j int) bool {
		a, b := all[i], all[j]
		if a.site.what() != b.site.what() {
			return a.site.what() < b.site.what()
		}
		if a.site.N != b.site.N {
			return a.site.N < b.site.N
		}
		return a.kind < b.kind
	})
	if os.Getenv("QUEUE_FAULTCALL") == "all" {
		return all
	}
	budget := faultCallBudget
	if testing.Short() {
		budget = faultCallShort
	}
	seed := uint64(1)
	if s := os.Getenv("QUEUE_FAULTCALL_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err)
		seed = n
	}
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	var rest []callCase
	for _, c := range all {
		key := c.site.what() + "/" + c.kind.String()
		if !seenWhat[key] {
			seenWhat[key] = true
			firsts = append(firsts, c)
			continue
		}
		rest = append(rest, c)
	}
	rng.Shuffle(len(firsts), func(i, j int) { firsts[i], firsts[j] = firsts[j], firsts[i] })
	rng.Shuffle(len(rest), func(i, j int) { rest[i], rest[j] = rest[j], rest[i] })
	out := append(firsts, rest...)
	if len(out) > budget {
		out = out[:budget]
	}
	t.Logf("seed %d: %d of %d runs (QUEUE_FAULTCALL=all runs them all)", seed, len(out), len(all))
	return out
}

// timeline renders the runs of each OrderID in start order.
func timeline(events []faultEvent) string {
	sort.SliceStable(events, func(i, j int) bool { return events[i].Wall < events[j].Wall })
	by := map[uint64][]string{}
	var orders []uint64
	for _, e := range events {
		if e.Ev != evFinish {
			continue
		}
		if _, ok := by[e.Order]; !ok {
			orders = append(orders, e.Order)
		}
		by[e.Order] = append(by[e.Order], fmt.Sprintf("%d:%d/%d:%s", e.Pid, e.Seq, e.Attempt, e.Result))
	}
	slices.Sort(orders)
	var b strings.Builder
	for _, o := range orders {
		fmt.Fprintf(&b, "\n    %d: %s", o, strings.Join(by[o], " "))
	}
	return b.String()
}
