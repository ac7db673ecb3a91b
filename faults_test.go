package queue

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The fault suite: real redis-server processes, producers and analysers
// as child processes (the harness is in faultenv_test.go), real faults, and
// a checker over the recorded histories (checker_test.go). docs/reliability.md lists
// what each test promises and the figures of the last run.

func TestFaultKillAnalyser(t *testing.T) {
	e := newFaultEnv(t, 1, false)
	const orders, per = 200, 100
	total := int64(orders * per)
	a1 := e.spawn("analyser", e.analyserConfig(0))
	p := e.spawn("producer", produce(orders, per))
	frac := 0.2 + 0.6*rand.Float64()
	e.waitProcessed(int64(frac*float64(total)), 60*time.Second)
	e.kill9(a1)
	pending := e.recordPending()
	a2 := e.spawn("analyser", e.analyserConfig(0))
	e.drain([]*child{p}, []*child{a2}, 60*time.Second)

	r := e.check()
	t.Logf("kill -9 at %.0f%% done, %d pending: %v", 100*frac, pending, r)
	assertKillRecovered(t, r, total, pending)
}

// assertKillRecovered checks what a kill -9 of analysers with pending
// tasks promises: all total tasks added and completed, none dead,
// duplicates only among the tasks pending at the kill, recovery and
// redelivery within the lease and a second.
func assertKillRecovered(t *testing.T, r faultReport, total int64, pending int) {
	t.Helper()
	requireClean(t, r)
	assert.EqualValues(t, total, r.AddedOK)
	assert.EqualValues(t, total, r.Completed)
	assert.Zero(t, r.DupOther, "duplicates of tasks not pending at the kill")
	assert.LessOrEqual(t, r.DupPending, pending)
	assert.Zero(t, r.Dead)
	require.Positive(t, r.Recovery, "no start after the kill")
	assert.LessOrEqual(t, r.Recovery, faultLeaseTTL+time.Second, "recovery")
	if pending > 0 {
		assert.LessOrEqual(t, r.Redelivery, faultLeaseTTL+time.Second, "redelivery")
	}
}

func TestFaultGracefulStop(t *testing.T) {
	e := newFaultEnv(t, 1, false)
	const orders, per = 200, 100
	total := int64(orders * per)
	cfg := e.analyserConfig(0)
	cfg.Work = time.Millisecond // slower than the producer: a backlog, and a full prefetch window
	a1 := e.spawn("analyser", cfg)
	p := e.spawn("producer", produce(orders, per))
	e.waitProcessed(1, 30*time.Second) // a1 holds the lease
	a2 := e.spawn("analyser", cfg)     // a hot standby
	frac := 0.2 + 0.6*rand.Float64()
	e.waitProcessed(int64(frac*float64(total)), 60*time.Second)
	pending := e.recordPending()
	e.terminate(a1)
	e.waitExit(a1, 15*time.Second)
	e.drain([]*child{p}, []*child{a2}, 60*time.Second)

	r := e.check()
	t.Logf("SIGTERM at %.0f%% done, %d pending: %v", 100*frac, pending, r)
	requireClean(t, r)
	assert.EqualValues(t, total, r.AddedOK)
	assert.EqualValues(t, total, r.Completed)
	assert.Zero(t, r.DupPending+r.DupOther, "duplicates after a graceful stop")
	assert.Zero(t, r.Dead)
	require.Positive(t, r.Recovery, "no start after the stop")
	// The standby is woken by the release: no lease expiry to wait for.
	assert.Less(t, r.Recovery, faultLeaseTTL/2, "handover after a graceful stop")
}

func TestFaultKillAllAnalysers(t *testing.T) {
	e := newFaultEnv(t, 2, false) // two queues, two analysers
	const orders, per = 200, 100
	total := int64(orders * per)
	cfg := e.analyserConfig(0)
	cfg.Work = time.Millisecond // slower than the producer: a full prefetch window
	var old []*child
	for a := 0; a < 2; a++ {
		cfg.Analyser = a
		old = append(old, e.spawn("analyser", cfg))
	}
	p := e.spawn("producer", produce(orders, per))
	frac := 0.2 + 0.6*rand.Float64()
	e.waitProcessed(int64(frac*float64(total)), 60*time.Second)
	for _, a := range old {
		e.kill9(a)
	}
	pending := e.recordPending()
	var fresh []*child
	for a := 0; a < 2; a++ {
		cfg.Analyser = a
		fresh = append(fresh, e.spawn("analyser", cfg))
	}
	e.drain([]*child{p}, fresh, 60*time.Second)

	r := e.check()
	t.Logf("kill -9 of both analysers at %.0f%% done, %d pending: %v", 100*frac, pending, r)
	assertKillRecovered(t, r, total, pending)
	var redelivered int64
	for _, s := range e.stats() {
		redelivered += s.Redelivered
	}
	assert.EqualValues(t, pending, redelivered, "every task pending at the kill is put back once")
}

func TestFaultKillProducer(t *testing.T) {
	e := newFaultEnv(t, 1, false)
	const orders, per = 200, 100 // half by AddTask, half by AddTasks
	total := int64(orders * per)
	frac := 0.2 + 0.6*rand.Float64()
	// Each producer stops adding halfway between the kill point and its
	// end: a kill that comes late on a loaded machine still finds both
	// alive and short of their last task (one of them used to finish
	// first, and the kill found it gone).
	hold := int(float64(orders/2*per) * (1 + frac) / 2)
	a := e.spawn("analyser", e.analyserConfig(0))
	single := e.spawn("producer", roleConfig{Orders: orders / 2, PerOrder: per, Goroutines: 4, HoldAfter: hold})
	batched := e.spawn("producer", roleConfig{FirstOrder: orders / 2, Orders: orders / 2, PerOrder: per, Goroutines: 4, Batch: 50, HoldAfter: hold})
	e.waitAdded(int64(frac*float64(total)), 60*time.Second)
	e.kill9(single)
	e.kill9(batched)
	e.drain(nil, []*child{a}, 60*time.Second)

	r := e.check()
	t.Logf("kill -9 of both producers at %.0f%% added: %v", 100*frac, r)
	requireClean(t, r)
	assert.Positive(t, r.AddedOK)
	assert.Less(t, int64(r.Attempted), total, "the producers were killed before the end")
	assert.Equal(t, r.AddedOK, r.Completed-r.UnknownDone, "every ok task completes")
	assert.Zero(t, r.UnknownTwice, "an unknown add completes at most once")
	assert.Zero(t, r.DupPending+r.DupOther, "no analyser fault, no duplicate")
	assert.Zero(t, r.AddErrors)
	assert.Zero(t, r.Dead)
}

func TestFaultZombieAnalyser(t *testing.T) {
	requireFaultSuite(t)
	t.Run("fn honours ctx", func(t *testing.T) { testZombie(t, false) })
	t.Run("fn ignores ctx", func(t *testing.T) { testZombie(t, true) })
	t.Run("consumer API acks late", testZombieConsumer)
}

// testZombieConsumer pauses a process that claimed tasks with the
// low-level API; when it resumes, its acks must be refused.
func testZombieConsumer(t *testing.T) {
	e := newFaultEnv(t, 1, false)
	const orders, per, claim = 200, 5, 50
	total := int64(orders * per)
	p := e.spawn("producer", produce(orders, per))
	e.waitExit(p, 30*time.Second)
	zcfg := roleConfig{LeaseTTL: faultLeaseTTL, Prefetch: claim, Work: 2 * faultLeaseTTL}
	zombie := e.spawn("consumer", zcfg)
	// Stop it once it has claimed and recorded the starts, during its work.
	require.Eventually(t, func() bool { return e.count(zombie, evStart) == claim }, 30*time.Second, time.Millisecond)
	e.stop(zombie)
	stoppedAt := time.Now()
	pending := e.recordPending()
	standby := e.spawn("analyser", e.analyserConfig(0))
	require.Eventually(t, func() bool {
		s := e.stats()[0]
		return s.Ready == 0 && s.Pending == 0 && s.Processed >= total
	}, 30*time.Second, 10*time.Millisecond, "the standby did not drain the queue")
	// Frozen until the standby drained the queue and for 3 leases at
	// least, however long the drain took on a loaded machine.
	time.Sleep(time.Until(stoppedAt.Add(3 * faultLeaseTTL)))
	e.cont(zombie)
	paused := time.Since(stoppedAt)
	e.waitExit(zombie, 10*time.Second)
	e.drain(nil, []*child{standby}, 30*time.Second)

	r := e.check()
	t.Logf("consumer with %d claimed, SIGSTOP for %v: %v", claim, paused.Round(time.Millisecond), r)
	requireClean(t, r)
	assert.EqualValues(t, total, r.Completed)
	assert.Equal(t, claim, pending)
	assert.Equal(t, 1, r.Refused, "the zombie's ack is refused")
	assert.Equal(t, claim, r.DupPending, "the claimed tasks ran on both")
	assert.Zero(t, r.DupOther)
	assert.EqualValues(t, total, e.stats()[0].Processed, "only the standby's acks counted")
}

func testZombie(t *testing.T, ignoreCtx bool) {
	e := newFaultEnv(t, 1, false)
	const orders, per = 200, 20
	total := int64(orders * per)
	p := e.spawn("producer", produce(orders, per))
	e.waitExit(p, 30*time.Second)
	cfg := e.analyserConfig(0)
	cfg.Work = 2 * time.Millisecond // runs in flight at the stop
	cfg.IgnoreCtx = ignoreCtx
	zombie := e.spawn("analyser", cfg)
	e.waitProcessed(1, 30*time.Second)
	standby := e.spawn("analyser", cfg)
	frac := 0.2 + 0.6*rand.Float64()
	e.waitProcessed(int64(frac*float64(total)), 30*time.Second)
	e.stop(zombie)
	stoppedAt := time.Now()
	pending := e.recordPending()
	// The standby takes over after the lease expires and drains the queue
	// while the zombie is frozen.
	require.Eventually(t, func() bool {
		s := e.stats()[0]
		return s.Ready == 0 && s.Pending == 0 && s.Processed >= total
	}, 30*time.Second, 10*time.Millisecond, "the standby did not drain the queue")
	// Frozen until the standby drained the queue and for 3 leases at
	// least, however long the drain took on a loaded machine.
	time.Sleep(time.Until(stoppedAt.Add(3 * faultLeaseTTL)))
	e.cont(zombie)
	paused := time.Since(stoppedAt)
	// Give the zombie time to act on what it holds, then stop everyone.
	time.Sleep(faultLeaseTTL)
	e.drain(nil, []*child{zombie, standby}, 30*time.Second)

	r := e.check()
	t.Logf("SIGSTOP for %v at %.0f%% done, %d pending: %v", paused.Round(time.Millisecond), 100*frac, pending, r)
	requireClean(t, r) // overlap, late acks accepted and stale starts among them
	assert.EqualValues(t, total, r.Completed)
	assert.Zero(t, r.DupOther, "duplicates of tasks not pending at the stop")
	assert.LessOrEqual(t, r.DupPending, pending)
	require.Positive(t, r.Recovery, "no start after the stop")
	assert.LessOrEqual(t, r.Recovery, faultLeaseTTL+time.Second, "takeover")
}

func TestFaultConnectionResets(t *testing.T) {
	e := newFaultEnv(t, 1, false)
	proxy := startProxy(t, e.redis.addr())
	e.url = "redis://" + proxy.Addr()
	const orders, per = 200, 100
	a := e.spawn("analyser", e.analyserConfig(0))
	pcfg := produce(orders, per)
	pcfg.Pause = 2 * time.Millisecond // about 2,000 tasks/s: production spans the fault
	p := e.spawn("producer", pcfg)
	e.waitProcessed(1, 30*time.Second)
	e.event(faultEvent{Ev: evFault})
	end := time.Now().Add(10 * time.Second)
	resets := 0
	for time.Now().Before(end) {
		time.Sleep(200*time.Millisecond + rand.N(500*time.Millisecond))
		resets += proxy.resetAll()
	}
	e.drain([]*child{p}, []*child{a}, 60*time.Second)

	r := e.check()
	t.Logf("%d connections reset over 10s: %v", resets, r)
	requireClean(t, r)
	assert.Positive(t, resets)
	assert.Equal(t, r.AddedOK, r.Completed-r.UnknownDone, "every ok task completes")
	assert.Zero(t, r.UnknownTwice)
	assert.Zero(t, r.Dead)
}

func TestFaultClaimReplyCut(t *testing.T) {
	e := newFaultEnv(t, 1, false)
	proxy := startProxy(t, e.redis.addr())
	// Enough tasks that five cuts, 100ms apart, find a claim to cut: a
	// pool drains about 2,000 of them between two cuts.
	const orders, per, cuts = 200, 100, 5
	total := int64(orders * per)
	p := e.spawn("producer", produce(orders, per)) // straight to Redis
	acfg := e.analyserConfig(0)
	acfg.URL = "redis://" + proxy.Addr()
	acfg.Work = time.Millisecond
	a := e.spawn("analyser", acfg)
	e.waitProcessed(1, 30*time.Second)
	e.event(faultEvent{Ev: evFault})
	for i := 0; i < cuts; i++ {
		// Cut the next reply that carries claimed tasks (an empty claim's
		// is a few bytes, and so is an ack's) after half its bytes, then
		// close the connection: the claim script's, or, for a claim in
		// place, that of the read of its entries. Both name the ready
		// list ("ready").
		proxy.cutReplies("ready", 1, 200)
		require.Eventually(t, func() bool { return proxy.cutsLeft() == 0 }, 30*time.Second, time.Millisecond, "no claim reply to cut")
		time.Sleep(100 * time.Millisecond)
	}
	e.drain([]*child{p}, []*child{a}, 60*time.Second)

	r := e.check()
	t.Logf("%d claim replies cut: %v", proxy.cuts.Load(), r)
	requireClean(t, r)
	assert.EqualValues(t, cuts, proxy.cuts.Load())
	assert.EqualValues(t, total, r.Completed)
	assert.Zero(t, r.DupPending+r.DupOther, "the cut claims' tasks never ran before they were put back")
	assert.Zero(t, r.Dead)
}

func TestFaultRedisKillRestart(t *testing.T) {
	e := newFaultEnv(t, 1, true) // appendonly yes, appendfsync everysec (the default)
	const orders, per = 200, 50
	total := int64(orders * per)
	acfg := e.analyserConfig(0)
	acfg.Work = 5 * time.Millisecond // slower than the producer: tasks pending at the kill
	a := e.spawn("analyser", acfg)
	pcfg := produce(orders, per)
	pcfg.Pause = 2 * time.Millisecond // production spans the outage
	p := e.spawn("producer", pcfg)
	// The kill's point is picked by tasks added, not by tasks run: the
	// analyser runs slower than the producer adds, so a point picked by
	// tasks run could come after the last add, and then no add meets the
	// outage.
	frac := 0.2 + 0.6*rand.Float64()
	e.waitAdded(int64(frac*float64(total)), 60*time.Second)
	pending := e.recordPending() // a moment before the kill
	e.redis.kill()
	e.event(faultEvent{Ev: evFault})
	const down = time.Second
	time.Sleep(down)
	e.redis.start() // same port, same AOF
	restarted := time.Now()
	// Tasks claimed between the read above and the kill are pending too:
	// read them in from the AOF the server loaded, before the analyser,
	// whose lease Redis kept for the rest of its TTL, can put them back.
	// (The test's own pool still holds connections to the dead server:
	// each fails once and is dropped.)
	require.Eventually(t, func() bool { return e.q.Ping(context.Background()) == nil }, 5*time.Second, time.Millisecond)
	pending = max(pending, e.recordPending())
	e.drain([]*child{p}, []*child{a}, 60*time.Second)

	events := e.events()
	r := checkHistory(events)
	consumeAgain := firstAfter(events, restarted, evStart, "")
	produceAgain := firstAfter(events, restarted, evAdded, "ok")
	t.Logf("redis-server kill -9 at %.0f%% added, down %v, %d pending just before: analysers start again %v and producers add again %v after the restart: %v",
		100*frac, down, pending, fmtRecovery(consumeAgain), fmtRecovery(produceAgain), r)
	requireClean(t, r)
	assert.Positive(t, r.AddErrors, "adds failed while the server was down")
	assert.Equal(t, r.AddedOK, r.Completed-r.UnknownDone, "every ok task completes")
	assert.Zero(t, r.UnknownTwice)
	assert.Zero(t, r.Dead)
	require.Positive(t, consumeAgain, "no start after the restart")
	assert.LessOrEqual(t, consumeAgain, faultLeaseTTL+5*time.Second, "reconnect and recovery (capped backoff 5s)")
	require.Positive(t, produceAgain, "no add after the restart")
}

func TestFaultPanicsAndErrors(t *testing.T) {
	e := newFaultEnv(t, 1, false)
	const orders, per, maxAttempts = 200, 100, 3
	total := int64(orders * per)
	acfg := e.analyserConfig(0)
	acfg.PanicRate, acfg.ErrorRate, acfg.MaxAttempts = 0.05, 0.05, maxAttempts
	a := e.spawn("analyser", acfg)
	p := e.spawn("producer", produce(orders, per))
	e.drain([]*child{p}, []*child{a}, 60*time.Second)

	events := e.events()
	r := checkHistory(events)
	panics, leaks := 0, 0
	for _, x := range events {
		switch {
		case x.Ev == evFinish && x.Result == "panic":
			panics++
		case x.Ev == evLeak:
			leaks++
			t.Logf("leak: %s", x.Err)
		}
	}
	bad := checkRetryPolicy(events, maxAttempts)
	t.Logf("5%% panics, 5%% errors, MaxAttempts %d: %d panics, %d dead, %d policy violations: %v",
		maxAttempts, panics, r.Dead, len(bad), r)
	requireClean(t, r)
	assert.Empty(t, bad, "retry policy")
	assert.EqualValues(t, total, r.Completed, "every task acked or dead-lettered")
	assert.Positive(t, panics)
	assert.Zero(t, r.DupPending+r.DupOther)
	assert.Zero(t, leaks, "goroutines left after AnalysePool returned")
	assert.Equal(t, int64(r.Dead), e.stats()[0].Dead)
}

func TestFaultPoisonTask(t *testing.T) {
	e := newFaultEnv(t, 1, false)
	const orders, per, maxAttempts, poisonAt = 200, 50, 3, 10
	total := int64(orders * per)
	acfg := e.analyserConfig(0)
	acfg.Work = time.Millisecond
	acfg.MaxAttempts = maxAttempts
	acfg.Poison, acfg.PoisonAfter = "poison", 200*time.Millisecond
	pcfg := produce(orders, per)
	pcfg.Poison, pcfg.PoisonAt = acfg.Poison, poisonAt
	p := e.spawn("producer", pcfg)
	e.waitExit(p, 30*time.Second)

	crashes := e.superviseUntilDrained(acfg, 60*time.Second)

	events := e.events()
	r := checkHistory(events)
	var poison faultEvent
	poisonStarts := 0
	var firstPoison, deadAt int64
	for _, x := range events {
		if x.Ev == evStart && x.Order == 0 && x.Seq == poisonAt {
			poisonStarts++
			if firstPoison == 0 {
				firstPoison = x.Wall
			}
			poison = x
		}
	}
	dead, err := e.q.Dead(context.Background(), 0)
	require.NoError(t, err)
	require.Len(t, dead, 1, "only the poison task is dead")
	deadAt = dead[0].DiedAt.UnixNano()
	// Tasks of other OrderIDs completed for good while the poison was
	// crashing processes: their last run finished ok in that window.
	last := map[string]faultEvent{}
	for _, x := range events {
		if x.Ev == evFinish && x.Order != 0 {
			last[x.ID] = x
		}
	}
	flowed := 0
	for _, x := range last {
		if x.Result == "ok" && x.Wall > firstPoison && x.Wall < deadAt {
			flowed++
		}
	}
	t.Logf("poison task: %d crashes, %d deliveries, dead after %d attempts (%q); %d tasks of other OrderIDs done meanwhile: %v",
		crashes, poisonStarts, dead[0].Attempts, dead[0].LastError, flowed, r)
	requireClean(t, r)
	assert.Equal(t, poison.ID, dead[0].ID)
	// Its first crash is not counted (nothing recorded that a first
	// delivery started); from its recovered delivery on, every start is
	// recorded first, and every crash counts.
	assert.Equal(t, maxAttempts+1, crashes)
	assert.Equal(t, maxAttempts+1, poisonStarts)
	assert.Equal(t, maxAttempts, dead[0].Attempts)
	assert.EqualValues(t, total, r.Completed)
	assert.Equal(t, 1, r.Dead)
	assert.Positive(t, flowed, "other OrderIDs kept flowing")
}

// Several poison tasks at the heads of their OrderIDs, each killing its
// process at once: after a crash every pending task comes back marked, and
// the next owner's workers recorded their deliveries all at once, so a
// poison that crashed the process first took the healthy tasks recorded
// beside it along; after MaxAttempts crashes they were dead-lettered
// without ever running. The record gate lets one recorded start in at a
// time: only the poison tasks die, each after MaxAttempts recorded
// deliveries, and no other task pays for their crashes. With MaxAttempts
// 1 a task's first redelivery is its last, and a crash beside it took it
// along at once: then every recovered task goes through the gate.
func TestFaultPoisonTasksAtOnce(t *testing.T) {
	for _, maxAttempts := range []int{3, 1} {
		t.Run(fmt.Sprintf("MaxAttempts=%d", maxAttempts), func(t *testing.T) { testPoisonTasksAtOnce(t, maxAttempts) })
	}
}

func testPoisonTasksAtOnce(t *testing.T, maxAttempts int) {
	e := newFaultEnv(t, 1, false)
	const orders, per, poisons = 16, 4, 3
	acfg := e.analyserConfig(0)
	acfg.Workers, acfg.Work, acfg.MaxAttempts = orders, 0, maxAttempts
	acfg.LeaseTTL = 500 * time.Millisecond
	acfg.Poison = "poison"
	pcfg := produce(orders, per)
	pcfg.Poison, pcfg.PoisonOrders = acfg.Poison, poisons
	p := e.spawn("producer", pcfg)
	e.waitExit(p, 30*time.Second)

	crashes := e.superviseUntilDrained(acfg, 90*time.Second)

	events := e.events()
	r := checkHistory(events)
	dead, err := e.q.Dead(context.Background(), 0)
	require.NoError(t, err)
	t.Logf("%d poison tasks: %d crashes, %d dead: %v", poisons, crashes, len(dead), r)
	requireClean(t, r)
	started := map[string]bool{}
	for _, x := range events {
		if x.Ev == evStart {
			started[x.ID] = true
		}
	}
	var deadOrders []uint64
	for _, d := range dead {
		deadOrders = append(deadOrders, d.OrderID)
		assert.True(t, started[d.ID], "task %s of OrderID %d dead without ever running: %s", d.ID, d.OrderID, d.LastError)
		assert.Equal(t, maxAttempts, d.Attempts, "task %s of OrderID %d", d.ID, d.OrderID)
	}
	slices.Sort(deadOrders)
	assert.Equal(t, []uint64{0, 1, 2}, deadOrders, "only the poison tasks are dead")
	assert.EqualValues(t, orders*per, r.Completed)
	assert.LessOrEqual(t, crashes, poisons*(maxAttempts+1))
}

// superviseUntilDrained runs an analyser with acfg as a supervisor would:
// it starts it again whenever a poison task kills it, until analyser 0's
// queue has nothing ready or pending (within timeout), then stops it. It
// returns the number of crashes.
func (e *faultEnv) superviseUntilDrained(acfg roleConfig, timeout time.Duration) (crashes int) {
	t := e.t
	t.Helper()
	a := e.spawn("analyser", acfg)
	require.Eventually(t, func() bool {
		if a.exited() {
			var ee *exec.ExitError
			require.ErrorAs(t, a.err, &ee)
			require.Equal(t, poisonExit, ee.ExitCode(), "the analyser died of something else")
			e.event(faultEvent{Ev: evKill, Pid: a.pid()}) // dead by now
			crashes++
			a = e.spawn("analyser", acfg)
			return false
		}
		s := e.stats()[0]
		return s.Ready == 0 && s.Pending == 0
	}, timeout, 5*time.Millisecond, "the queue did not drain")
	e.drain(nil, []*child{a}, 30*time.Second)
	return crashes
}
