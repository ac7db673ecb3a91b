package queue

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
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

// memHistory collects the events of a run in memory.
type memHistory struct {
	mu sync.Mutex
	ev []faultEvent
}

func (h *memHistory) log(e faultEvent) { h.logAt(e, time.Now()) }

func (h *memHistory) logAt(e faultEvent, at time.Time) {
	e.Wall = at.UnixNano()
	h.mu.Lock()
	h.ev = append(h.ev, e)
	h.mu.Unlock()
}

func (h *memHistory) events() []faultEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]faultEvent(nil), h.ev...)
}

// has reports whether an event matches f.
func (h *memHistory) has(f func(faultEvent) bool) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range h.ev {
		if f(e) {
			return true
		}
	}
	return false
}

// callRun is one run of a workload.
type callRun struct {
	t      *testing.T
	plan   *callPlan
	hist   *memHistory
	srv    *testServer
	prefix string
	keys   queueKeys

	mu    sync.Mutex
	props map[string][]string // property broken -> details
}

func newCallRun(t *testing.T, plan *callPlan) *callRun {
	r := &callRun{t: t, plan: plan, hist: &memHistory{}, srv: newTestServers(t, 1)[0], prefix: testPrefix(t),
		props: map[string][]string{}}
	r.keys = newQueueKeys(r.prefix, 0, 0)
	preloadScripts(t, r.srv.pool)
	// miniredis expires keys only when told: keep its clock with the real
	// one, so that a lease nobody releases lapses.
	keepMiniClock(t, r.srv.mini)
	plan.onFire = func(s callSite) {
		r.snapshotPending()
		r.hist.log(faultEvent{Ev: evFault, Err: s.String()})
	}
	return r
}

// fail records that the run broke prop.
func (r *callRun) fail(prop, format string, args ...any) {
	r.mu.Lock()
	r.props[prop] = append(r.props[prop], fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

// snapshotPending logs every task pending now: a duplicate of one of
// them is allowed (at least once).
func (r *callRun) snapshotPending() {
	c := r.srv.pool.Get()
	defer c.Close()
	ids, err := redis.Strings(c.Do("HKEYS", r.keys.pending))
	if err != nil {
		r.fail("harness", "read pending: %v", err)
		return
	}
	for _, id := range ids {
		r.hist.log(faultEvent{Ev: evPending, ID: id})
	}
}

// faultPool returns the pool of actor, whose lease grants and acks go to
// the history under pid.
func (r *callRun) faultPool(actor string, pid int) *faultPool {
	fp := newFaultPool(r.t, r.plan, actor, r.srv.url)
	fp.observe = func(name string, args []any, sent time.Time, reply any, err error) {
		switch name {
		case "acquire":
			if v, verr := redis.Values(reply, err); verr == nil && len(v) == 2 {
				if n, _ := redis.Int(v[0], nil); n == 1 {
					r.hist.log(faultEvent{Ev: evLease, Pid: pid, Token: leaseToken(v[1])})
				}
			}
		case "ack":
			// EVALSHA sha 4 pending lease meta order leaseValue ttl k ids... orders...
			ev := faultEvent{Ev: evAck, Pid: pid, Result: "ok"}
			if len(args) > 6 {
				ev.Token = leaseToken(args[6])
			}
			switch {
			case err == nil:
				ev.N, _ = redis.Int(reply, nil)
			case strings.Contains(err.Error(), staleReply):
				ev.Result = "refused"
			default:
				ev.Result, ev.Err = "error", err.Error()
			}
			r.hist.logAt(ev, sent)
		}
	}
	return fp
}

// queue returns a Queue of the run over pool.
func (r *callRun) queue(pool *redis.Pool) *Queue {
	q, err := New([]*redis.Pool{pool}, Config{Prefix: r.prefix})
	require.NoError(r.t, err)
	r.t.Cleanup(func() { q.Close() })
	return q
}

// onError returns a pool's OnError for pid: a lost lease is logged, with
// the tasks pending then (the next owner may run them again).
func (r *callRun) onError(pid int) func(error) {
	return func(err error) {
		if errors.Is(err, ErrLeaseLost) {
			r.hist.log(faultEvent{Ev: evLost, Pid: pid, Err: err.Error()})
			r.snapshotPending()
		}
	}
}

// analyse returns the AnalyseFunc of pid: it logs each run, and fails the
// first run of a task whose seq is failSeq.
func (r *callRun) analyse(pid int, failSeq int, failed *sync.Map, hook func(ctx context.Context, order uint64, seq int) error) AnalyseFunc {
	return func(ctx context.Context, t Task) error {
		order, seq, _, err := parsePayload(t.Payload)
		if err != nil {
			r.fail("unexpected", "payload %q: %v", t.Payload, err)
			return nil
		}
		ev := faultEvent{ID: t.ID, Order: order, Seq: seq, Attempt: t.Attempt, Pid: pid}
		ev.Ev = evStart
		r.hist.log(ev)
		ev.Ev, ev.Result = evFinish, "ok"
		if hook != nil {
			err = hook(ctx, order, seq)
		}
		if _, again := failed.LoadOrStore(t.ID, true); err == nil && seq == failSeq && !again {
			err = errors.New("fails once")
		}
		if err != nil {
			ev.Result = "error"
		}
		r.hist.log(ev)
		return err
	}
}

// addTasks adds orders x per tasks, interleaved, in one AddTasks call on q
// (a Queue without faults unless the run is about adds), logging them.
func (r *callRun) addTasks(q *Queue, orders, per int) {
	var ts []Task
	for seq := 0; seq < per; seq++ {
		for o := 0; o < orders; o++ {
			ts = append(ts, Task{OrderID: uint64(o), Payload: taskPayload(uint64(o), seq, "x")})
			r.hist.log(faultEvent{Ev: evAdd, Pid: 3, Order: uint64(o), Seq: seq, Batch: 1})
		}
	}
	_, err := q.AddTasks(context.Background(), ts)
	require.NoError(r.t, err)
	r.hist.log(faultEvent{Ev: evBatch, Pid: 3, Batch: 1, Result: "ok", N: len(ts)})
}

// sweep drains the queue with a pool that meets no fault (pid 9).
func (r *callRun) sweep(why string) {
	sq := r.queue(r.faultPool("S", 9).pool)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var failed sync.Map
	err := sq.AnalysePool(ctx, 0, PoolConfig{Workers: 2, LeaseTTL: time.Second, ExitOnEmpty: true, Owner: "sweeper",
		OnError: r.onError(9), Backoff: func(int) time.Duration { return 5 * time.Millisecond }},
		r.analyse(9, -1, &failed, nil))
	if err != nil || ctx.Err() != nil {
		r.fail("hang", "the pool draining the queue (%s) did not finish: %v", why, errors.Join(err, ctx.Err()))
	}
}

// finish waits for delayed commands, checks that nothing is left in
// Redis, drains what is with a pool that meets no fault, and checks the
// history.
func (r *callRun) finish(w callWorkload) {
	r.plan.waitLate(r.t)
	r.plan.lateMu.Lock()
	for _, err := range r.plan.lateEr {
		r.fail("harness", "delayed command: %v", err)
	}
	r.plan.lateMu.Unlock()
	c := r.srv.pool.Get()
	ready, err1 := redis.Int(c.Do("LLEN", r.keys.ready))
	pending, err2 := redis.Int(c.Do("HLEN", r.keys.pending))
	c.Close()
	require.NoError(r.t, errors.Join(err1, err2))
	if ready+pending > 0 {
		r.fail("left", "%d ready and %d pending once the workload was done", ready, pending)
		r.snapshotPending()
		r.sweep("left behind")
	}
	dq := r.queue(r.srv.pool)
	dead, err := dq.Dead(context.Background(), 0)
	require.NoError(r.t, err)
	for _, d := range dead {
		e := faultEvent{Ev: evDeadRec, ID: d.ID}
		if d.Raw == nil {
			e.Order, e.Seq, _, _ = parsePayload(d.Payload)
		}
		r.hist.log(e)
	}
	events := r.hist.events()
	if w.uncertainAdds {
		events = r.settleUncertain(events)
	}
	rep := checkHistory(events)
	for _, c := range []struct {
		prop string
		n    int
	}{
		{"lost", rep.Lost}, {"unexpected", rep.Unexpected}, {"reordered", rep.Reordered},
		{"early", rep.EarlyStarts}, {"overlap", rep.Overlap}, {"lateack", rep.LateAcks},
		{"stale", rep.StaleStarts}, {"dup", rep.DupOther},
	} {
		if c.n > 0 {
			r.fail(c.prop, "%d (%v)", c.n, rep)
		}
	}
	if !w.expectDead && rep.Dead > 0 {
		r.fail("dead", "%d tasks dead-lettered", rep.Dead)
	}
}

// settleUncertain checks the tasks whose add returned an error, and
// returns the events without them: such a task may be in Redis or not,
// and, accepted later than the call, may run after later tasks of its
// OrderID. It must run at most once, and not at all when its call never
// reached Redis.
func (r *callRun) settleUncertain(events []faultEvent) []faultEvent {
	uncertain := map[taskKey]bool{}
	batchErr := map[int]bool{}
	for _, e := range events {
		switch {
		case e.Ev == evAdded && e.Result == "error":
			uncertain[taskKey{e.Order, e.Seq}] = true
		case e.Ev == evBatch && e.Result == "error":
			batchErr[e.Batch] = true
		}
	}
	for _, e := range events {
		if e.Ev == evAdd && e.Batch != 0 && batchErr[e.Batch] {
			uncertain[taskKey{e.Order, e.Seq}] = true
		}
	}
	okRuns := map[taskKey]int{}
	out := events[:0:0]
	for _, e := range events {
		k := taskKey{e.Order, e.Seq}
		switch e.Ev {
		case evAdd, evAdded, evStart, evFinish, evDeadRec:
			if uncertain[k] {
				if e.Ev == evFinish && e.Result == "ok" {
					okRuns[k]++
				}
				continue
			}
		}
		out = append(out, e)
	}
	for k, n := range okRuns {
		if n > 1 {
			r.fail("dup", "task %v, whose add failed, ran %d times", k, n)
		}
		if r.plan.kind == faultRefused {
			r.fail("phantom", "task %v ran, but its add failed without reaching Redis", k)
		}
	}
	return out
}

// brokenProps returns the properties the run broke, sorted.
func (r *callRun) brokenProps() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.props))
	for p := range r.props {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// callWorkload is a scripted workload for driveCalls.
type callWorkload struct {
	driver        string
	expectDead    bool
	uncertainAdds bool // the producer meets the faults (settleUncertain)
	run           func(r *callRun)
}

type callCase struct {
	site callSite
	kind faultKind
}

// driveCalls runs w once without a fault, then once per chosen call and
// fault kind, and judges each run.
func driveCalls(t *testing.T, w callWorkload) {
	var sites []callSite
	t.Run("dry", func(t *testing.T) {
		r := newCallRun(t, newCallPlan(callSite{}, faultNone))
		w.run(r)
		r.finish(w)
		for _, p := range r.brokenProps() {
			t.Errorf("without a fault: %s: %v", p, r.props[p])
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
