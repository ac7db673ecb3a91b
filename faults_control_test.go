package queue

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Faults 17 and 18: scheduled tasks, cancels, pause and resume, across
// owners killed and replaced.

// TestFaultControlsAcrossKills kills the owner twice with kill -9 while a
// producer adds tasks, a fifth of them scheduled up to 300ms ahead, and
// cancels some: 5 % of them up to 50ms after their add, and every slow
// task (0.3 % of them, a call of up to 2s) up to 300ms after it was
// claimed, so that most of those meet their task running. A hot standby takes over each time. Nothing is
// lost (a cancelled task is finished as cancelled), no task reported
// scheduled or queued by its Cancel runs after, duplicates are among the
// tasks pending at the kills, and order holds.
func TestFaultControlsAcrossKills(t *testing.T) {
	e := newFaultEnv(t, 1, false)
	const orders, per = 200, 50
	total := int64(orders * per)
	cfg := e.analyserConfig(0)
	cfg.Work, cfg.SlowWork = time.Millisecond, time.Second
	owner := e.spawn("analyser", cfg)
	pcfg := produce(orders, per)
	pcfg.Rate = 1500 // production spans both kills
	pcfg.ScheduleShare, pcfg.ScheduleMax = 0.2, 300*time.Millisecond
	pcfg.CancelShare, pcfg.CancelMax = 0.05, 50*time.Millisecond
	pcfg.SlowShare, pcfg.SlowCancel = 0.003, 300*time.Millisecond
	p := e.spawn("producer", pcfg)
	e.waitProcessed(1, 30*time.Second)
	standby := e.spawn("analyser", cfg)
	pending := 0
	var recovery []time.Duration
	for round := range 2 {
		frac := (float64(round) + 0.2 + 0.6*rand.Float64()) / 2.5
		e.waitProcessed(int64(frac*float64(total)), 60*time.Second)
		e.kill9(owner)
		killedAt := time.Now()
		pending += len(e.recordPendingOf(0))
		owner, standby = standby, nil
		require.Eventually(t, func() bool { return e.holder([]*child{owner}) != nil }, 2*faultLeaseTTL+5*time.Second,
			5*time.Millisecond, "round %d: the standby did not take over", round+1)
		recovery = append(recovery, time.Since(killedAt))
		standby = e.spawn("analyser", cfg)
	}
	e.drain([]*child{p}, []*child{owner, standby}, 60*time.Second)

	r := e.check()
	var cancelled int64
	for _, s := range e.stats() {
		cancelled += s.Cancelled
	}
	t.Logf("2 kills -9 with scheduled tasks and cancels, %d pending at the kills, takeovers seen after %v, Stats.Cancelled %d: %v",
		pending, recovery, cancelled, r)
	requireClean(t, r)
	assert.EqualValues(t, total, r.AddedOK)
	assert.EqualValues(t, total, r.Completed+r.Cancelled, "every task completed or cancelled")
	assert.Zero(t, r.DupOther, "duplicates of tasks not pending at a kill")
	assert.LessOrEqual(t, r.DupPending, pending)
	assert.Zero(t, r.Dead)
	assert.Positive(t, r.Scheduled)
	assert.Positive(t, r.CancelledUnrun, "cancels that kept a task from running")
	assert.Positive(t, r.CutByCancel, "cancels that cut a run short")
	// A task its owner holds starts once more at most a read of the
	// cancel marks (every cancelPoll) after its Cancel reported it pending.
	assert.Less(t, r.LateCancelMax, cancelPoll+time.Second, "start after a Cancel reported the task pending")
	assert.GreaterOrEqual(t, cancelled, int64(r.Cancelled), "Stats counts every task finished as cancelled")
	require.Positive(t, r.Recovery, "no start after the first kill")
	assert.LessOrEqual(t, r.Recovery, faultLeaseTTL+time.Second, "recovery")
}

// TestFaultPauseAcrossKill kills the owner of a queue with kill -9 while
// tasks flow, pauses the queue, and starts a replacement: it takes the
// lease over when the dead owner's runs out, puts the pending tasks back,
// and starts nothing until Resume. Then the
// queue is paused again and its owner stopped with SIGTERM, a standby
// waiting: the standby takes over and starts nothing until Resume. A
// tenth of the adds are scheduled, up to 300ms ahead. Nothing is lost or
// reordered; duplicates are among the tasks pending at the kill.
func TestFaultPauseAcrossKill(t *testing.T) {
	e := newFaultEnv(t, 1, false)
	ctx := context.Background()
	const orders, per = 200, 50
	total := int64(orders * per)
	cfg := e.analyserConfig(0)
	cfg.Work = 3 * time.Millisecond // busy: tasks pending at the kill
	a1 := e.spawn("analyser", cfg)
	pcfg := produce(orders, per)
	pcfg.Rate = 2000 // near what the analyser can take, and production spans both pauses
	pcfg.ScheduleShare, pcfg.ScheduleMax = 0.1, 300*time.Millisecond
	p := e.spawn("producer", pcfg)
	e.waitProcessed(int64(0.15*float64(total)), 60*time.Second)

	// pausedFor keeps the queue, paused at pausedAt, paused until owner
	// holds its lease and nothing is pending (the tasks pending at the
	// fault are back), and a second more, in which owner claims every
	// pauseRecheck; it asserts that owner started nothing, resumes the
	// queue, and returns how long the takeover took and when it resumed.
	pausedFor := func(what string, owner *child, pausedAt time.Time) (held time.Duration, resumed time.Time) {
		t.Helper()
		require.Eventually(t, func() bool {
			s := e.stats()[0]
			return e.holder([]*child{owner}) != nil && s.Pending == 0
		}, 2*faultLeaseTTL+5*time.Second, 5*time.Millisecond, "%s: the new owner did not take the queue over", what)
		held = time.Since(pausedAt)
		time.Sleep(time.Second)
		s := e.stats()[0]
		assert.True(t, s.Paused, "%s: Stats.Paused", what)
		assert.Positive(t, s.Ready, "%s: tasks wait", what)
		assert.Zero(t, e.count(owner, evStart), "%s: the new owner started tasks while the queue was paused", what)
		resumed = time.Now()
		require.NoError(t, e.q.Resume(ctx, QueueOf(0)))
		assert.False(t, e.stats()[0].Paused, "%s: Stats.Paused after Resume", what)
		return held, resumed
	}

	e.kill9(a1)
	pending := len(e.recordPendingOf(0))
	require.NoError(t, e.q.Pause(ctx, QueueOf(0))) // while the dead owner's lease runs out
	pausedAt := time.Now()
	a2 := e.spawn("analyser", cfg)
	held1, resumed1 := pausedFor("kill -9", a2, pausedAt)
	e.waitProcessed(e.processed()+500, 60*time.Second)

	a3 := e.spawn("analyser", cfg) // a hot standby
	require.NoError(t, e.q.Pause(ctx, QueueOf(0)))
	pausedAt = time.Now()
	e.terminate(a2)
	e.waitExit(a2, 15*time.Second)
	held2, resumed2 := pausedFor("SIGTERM", a3, pausedAt)
	e.drain([]*child{p}, []*child{a3}, 60*time.Second)

	events := e.events()
	r := checkHistory(events)
	again1 := firstAfter(events, resumed1, evStart, "")
	again2 := firstAfter(events, resumed2, evStart, "")
	t.Logf("paused, kill -9 with %d pending: taken over after %v, first start %v after Resume; paused, SIGTERM: taken over after %v, first start %v after Resume: %v",
		pending, held1.Round(time.Millisecond), fmtRecovery(again1), held2.Round(time.Millisecond), fmtRecovery(again2), r)
	requireClean(t, r)
	assert.EqualValues(t, total, r.AddedOK)
	assert.EqualValues(t, total, r.Completed)
	assert.Zero(t, r.DupOther, "duplicates of tasks not pending at the kill")
	assert.LessOrEqual(t, r.DupPending, pending)
	assert.Zero(t, r.Dead)
	assert.Positive(t, r.Scheduled)
	for i, d := range []time.Duration{again1, again2} {
		require.Positive(t, d, "no start after Resume %d", i+1)
		assert.Less(t, d, time.Second, "Resume %d: the owner claims again within a pause recheck and a claim", i+1)
	}
}
