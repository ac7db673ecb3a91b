package queue

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/require"
)

// One run of a fault-at-every-call driver (faultcall_test.go): its
// in-memory history, its pools with the fault plan (faultconn_test.go), the
// analyse function that records each call, and the final sweep and check.

// memHistory collects the events of a run in memory.
type memHistory struct {
	mu sync.Mutex
	ev []faultEvent
}

func (h *memHistory) log(e faultEvent) { h.logAt(e, time.Now()) }

func (h *memHistory) logAt(e faultEvent, at time.Time) {
	e.Wall = stamp(at)
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
	rep   faultReport         // the checker's report, once finished
}

func newCallRun(t *testing.T, plan *callPlan) *callRun {
	r := &callRun{t: t, plan: plan, hist: &memHistory{}, srv: newTestServers(t, 1)[0], prefix: testPrefix(t),
		props: map[string][]string{}}
	r.keys = newQueueKeys(r.prefix, 0, 0)
	preloadScripts(t, r.srv.pool) // a miniredis keeps the real clock (newTestServers): a lease nobody releases lapses
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
	m, err := pendingRecords(c.Do, r.keys)
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
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
			if v, verr := redis.Values(reply, err); verr == nil && len(v) == 3 {
				if n, _ := redis.Int(v[0], nil); n == 1 {
					r.hist.log(faultEvent{Ev: evLease, Pid: pid, Token: leaseToken(v[1])})
				}
			}
		case "finish-cancelled":
			for _, id := range cancelFinIDs(args) {
				r.hist.logAt(faultEvent{Ev: evCancelFin, Pid: pid, ID: id}, sent)
			}
		case "ack":
			ev := faultEvent{Ev: evAck, Pid: pid, Result: "ok", Token: ackToken(args)}
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
		switch {
		case errors.Is(err, errCut):
			ev.Result = "cancelled"
		case err != nil:
			ev.Result = "error"
		}
		r.hist.log(ev)
		return err
	}
}

// errCut is returned by a hook whose call its ctx cut short, for the
// history to record the call as cancelled.
var errCut = errors.New("cut short")

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
	err := sq.AnalysePool(ctx, 0, PoolConfig{Workers: 2, LeaseTTL: faultLeaseTTL, ExitOnEmpty: true, Owner: "sweeper",
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
	ready, m, sched, err := r.snapshot()
	require.NoError(r.t, err)
	pending := len(m)
	if ready+pending+sched > 0 {
		r.fail("left", "%d ready, %d pending and %d scheduled once the workload was done", ready, pending, sched)
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
	r.rep = rep
	for _, c := range []struct {
		prop string
		n    int
	}{
		{"lost", rep.Lost}, {"unexpected", rep.Unexpected}, {"reordered", rep.Reordered},
		{"early", rep.EarlyStarts}, {"overlap", rep.Overlap}, {"lateack", rep.LateAcks},
		{"stale", rep.StaleStarts}, {"dup", rep.DupOther},
		{"cancelran", rep.RunAfterCancel}, {"unasked", rep.UnaskedCancels},
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

// snapshotScript reads, in one step, what snapshot needs: the ready
// list's and the schedule's lengths, the pending hash, the claim records,
// and each claim record's list and done bitmap. Read in several round
// trips, a recovery between them (entries put back on the ready list
// after its length was read, their claim record dropped before it was)
// showed a queue with a task in it as empty.
var snapshotScript = redis.NewScript(5, `
local out = {redis.call('LLEN', KEYS[1]), redis.call('ZCARD', KEYS[2]),
	redis.call('HGETALL', KEYS[3]), redis.call('HGETALL', KEYS[4]),
	redis.call('HMGET', KEYS[5], ARGV[2], ARGV[3])}
local size = tonumber(out[5][2] or '0') or 0
if size > 0 then out[6] = redis.call('LRANGE', KEYS[1], -size, -1) else out[6] = {} end
local claims = out[4]
for i = 1, #claims, 2 do
	local list = ARGV[1] .. claims[i]
	out[#out + 1] = redis.call('LRANGE', list, 0, -1)
	out[#out + 1] = redis.call('GET', list .. ':done') or ''
end
return out`)

// snapshot returns, read at one instant, the number of ready tasks, the
// pending ones (as pendingRecords returns them) and the number scheduled.
func (r *callRun) snapshot() (ready int, pending map[string]string, sched int, err error) {
	c := r.srv.pool.Get()
	defer c.Close()
	v, err := redis.Values(snapshotScript.Do(c, r.keys.ready, r.keys.sched, r.keys.pending, r.keys.claims, r.keys.meta,
		claimListKey(r.keys, ""), endFirstField, endSizeField))
	if err != nil {
		return 0, nil, 0, err
	}
	if len(v) < 6 {
		return 0, nil, 0, fmt.Errorf("snapshot: %d values", len(v))
	}
	ready, err1 := redis.Int(v[0], nil)
	sched, err2 := redis.Int(v[1], nil)
	claims, err3 := redis.StringMap(v[3], nil)
	endMeta, err4 := redis.Values(v[4], nil)
	end, err5 := redis.Values(v[5], nil)
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
		return 0, nil, 0, err
	}
	// The end of the ready list claimed in place is not ready.
	ready -= len(end)
	// The claim records' lists and bitmaps follow in HGETALL's order: the
	// same replies, served to pendingRecords as the commands it sends.
	fields, err := redis.Strings(v[3], nil)
	if err != nil {
		return 0, nil, 0, err
	}
	lists := map[string]any{}
	for i := 0; i+1 < len(fields); i += 2 {
		at := 6 + i
		if at+1 >= len(v) {
			return 0, nil, 0, fmt.Errorf("snapshot: %d values for %d claim records", len(v), len(claims))
		}
		lists[claimListKey(r.keys, fields[i])] = v[at]
		lists[claimDoneKey(r.keys, fields[i])] = v[at+1]
	}
	served := func(cmd string, args ...any) (any, error) {
		switch {
		case cmd == "HGETALL" && args[0] == r.keys.pending:
			return v[2], nil
		case cmd == "HGETALL" && args[0] == r.keys.claims:
			return v[3], nil
		case cmd == "HMGET" && args[0] == r.keys.meta:
			return endMeta, nil
		case cmd == "LRANGE" && args[0] == r.keys.ready:
			// Within the end read: -(off+n) .. -(off+1).
			from, _ := args[1].(int64)
			to, _ := args[2].(int64)
			e := int64(len(end))
			if from < 0 && to < 0 && -from <= e && from <= to {
				return end[e+from : e+to+1], nil
			}
		case cmd == "LRANGE" || cmd == "GET":
			if x, ok := lists[args[0].(string)]; ok {
				if b, _ := x.([]byte); cmd == "GET" && len(b) == 0 {
					return nil, nil
				}
				return x, nil
			}
		}
		return nil, fmt.Errorf("snapshot: %s %v not read", cmd, args)
	}
	pending, err = pendingRecords(served, r.keys)
	return ready, pending, sched, err
}
