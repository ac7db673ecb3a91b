package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// GroupConfig holds the settings of JoinGroup. The zero value works.
type GroupConfig struct {
	// Member names this process in the group, and is the Owner of its
	// queues' leases unless Pool.Owner is set. A process that restarts
	// with the same name within SessionTTL gets its queues back without
	// moving any other: 1 to 200 bytes, no braces or control characters
	// (see CheckGroupName). If empty, "host:pid" is used.
	Member string
	// Weight is this member's capacity relative to the others': members
	// get shares of the queues in proportion. If zero, 1 is used; at most
	// 1000.
	Weight int
	// SessionTTL is how long the member stays in the group without a
	// heartbeat: the time from a crash to its queues being given to the
	// others (who then take each one when its lease runs out, LeaseTTL
	// after the crash at the latest). Heartbeats go every fifth of it.
	// If zero, 5s is used; at least 10ms, at most 1h.
	SessionTTL time.Duration
	// Pool configures the pool run on each queue the member is given.
	// ExitOnEmpty and Counters do not apply to a group and are refused.
	Pool PoolConfig
	// OnAssign, when set, is called with the member's analysers each time
	// they change (and first when the member joins). It is called from
	// the group's goroutine and must not block.
	OnAssign func(analysers []int)
}

const (
	maxGroupWeight    = 1000
	defaultSessionTTL = 5 * time.Second
	maxSessionTTL     = time.Hour
)

func (c GroupConfig) withDefaults() (GroupConfig, error) {
	if c.Member == "" {
		c.Member = defaultOwner()
	}
	if err := checkGroupName("member", c.Member); err != nil {
		return c, err
	}
	if c.Weight == 0 {
		c.Weight = 1
	}
	if c.Weight < 0 || c.Weight > maxGroupWeight {
		return c, fmt.Errorf("%w: Weight %d not in [1, %d]", ErrBadConfig, c.Weight, maxGroupWeight)
	}
	if c.SessionTTL == 0 {
		c.SessionTTL = defaultSessionTTL
	}
	if c.SessionTTL < 10*time.Millisecond || c.SessionTTL > maxSessionTTL {
		return c, fmt.Errorf("%w: SessionTTL %v not in [10ms, %v]", ErrBadConfig, c.SessionTTL, maxSessionTTL)
	}
	if c.Pool.ExitOnEmpty || c.Pool.Counters != nil {
		return c, fmt.Errorf("%w: Pool.ExitOnEmpty and Pool.Counters do not apply to a group", ErrBadConfig)
	}
	if c.Pool.Owner == "" {
		c.Pool.Owner = c.Member
	}
	if _, err := c.Pool.withDefaults(); err != nil {
		return c, err
	}
	return c, nil
}

// JoinGroup makes this process a member of group until ctx ends: the
// group's live members share all of the queue's analysers (every queue of
// every partition), each in proportion to its Weight, and the member runs
// a pool (AnalysePool, with cfg.Pool) on each analyser it is given. When a
// member joins, leaves or dies, only the queues that must move do: a queue
// taken from a member is stopped there with the pool's graceful stop
// (unstarted tasks handed back in order, running ones given
// ShutdownTimeout, the lease released), and its new owner, waiting on the
// lease, starts it at once. A dead member's queues go to the others once
// its session has run out, and each starts when its lease does. Every
// other queue keeps running.
//
// The assignment only says who tries to run a queue: the queue's fenced
// lease still decides who does, so no assignment, however stale, runs one
// queue twice, and per-OrderID order and at-least-once hold through every
// change.
//
// When ctx ends, the member leaves the group (its queues go to the others
// at once), stops its pools gracefully and returns nil. It returns an
// error for invalid arguments, a layout mismatch or a closed Queue. Redis
// errors are reported through cfg.Pool.OnError (or logged) and retried;
// while the group's partition cannot be reached, the member keeps running
// the queues it has.
func (q *Queue) JoinGroup(ctx context.Context, group string, cfg GroupConfig, fn AnalyseFunc) error {
	if fn == nil {
		return ErrNilFunc
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	g, err := q.newGroupStore(group, cfg.SessionTTL)
	if err != nil {
		return err
	}
	g.run = newNonce()
	log := cfg.Pool.Logger
	if log == nil {
		log = slog.Default()
	}
	report := func(err error) { log.Error("queue: group error", "group", group, "member", cfg.Member, "err", err) }
	if onError := cfg.Pool.OnError; onError != nil {
		report = func(err error) { callHook(func() { onError(err) }) }
	}
	r := &groupRun{q: q, g: g, cfg: cfg, fn: fn, log: log, report: report, pools: map[int]*groupPool{}}
	ctx, done := q.whileOpen(ctx) // a Close stops the member as ctx's end does
	defer done()
	return q.closedErr(r.run(ctx))
}

// groupRun is one member's life in a group.
type groupRun struct {
	q      *Queue
	g      *groupStore
	cfg    GroupConfig
	fn     AnalyseFunc
	log    *slog.Logger
	report func(error)

	pools map[int]*groupPool // by analyser: the last pool started on it
	mine  []int              // the analysers assigned, as last told
	gen   int64              // the generation they are of (0 before the first heartbeat)
	wg    sync.WaitGroup
}

// groupPool is a pool the member runs on one analyser.
type groupPool struct {
	stop context.CancelFunc
	done chan struct{} // closed when AnalysePool returned
}

func (r *groupRun) run(ctx context.Context) error {
	runCtx, fail := context.WithCancelCause(ctx)
	defer fail(nil)
	every := r.cfg.SessionTTL / 5
	var b backoff
	// A process of another layout would share out another count of
	// analysers, and assign the group anew at every heartbeat while it
	// ran none (so learnt nothing): check the group's server first.
	for err := r.q.checkLayout(runCtx, r.g.part); err != nil; err = r.q.checkLayout(runCtx, r.g.part) {
		if layoutRefused(err) {
			return err
		}
		if runCtx.Err() != nil {
			return nil
		}
		r.report(err)
		sleep(runCtx, min(b.next(), every))
	}
	b.reset()
	var nb backoff
	joined := false // a heartbeat was answered
	sent := false   // one was sent: its reply lost, the member may be in all the same
	for runCtx.Err() == nil {
		sent = true
		// A heartbeat is not cut short when ctx ends: its command may be
		// on its way all the same, and one that reached Redis after the
		// leave below would join the member again for a whole session,
		// its queues idle until it ran out. SessionTTL bounds the wait.
		// While ctx lives, a reply that has not come in half a session (a
		// connection gone half-open) is given up on, and the heartbeat
		// sent again, in time to keep the session. The one given up on
		// may still reach Redis after the leave: it joins nothing then
		// (see groupStore.run).
		bctx, cancel := context.WithTimeout(context.WithoutCancel(runCtx), r.cfg.SessionTTL)
		bctx, giveUp := context.WithCancelCause(bctx)
		lateErr := fmt.Errorf("no reply in %v, half the session", r.cfg.SessionTTL/2)
		late := time.AfterFunc(r.cfg.SessionTTL/2, func() {
			if runCtx.Err() == nil {
				giveUp(lateErr)
			}
		})
		beat, err := r.g.beat(bctx, r.cfg.Member, r.cfg.Weight, "beat", r.gen)
		late.Stop()
		if err != nil && context.Cause(bctx) == lateErr {
			err = fmt.Errorf("%w: %w", err, lateErr)
		}
		giveUp(nil)
		cancel()
		if err != nil {
			if runCtx.Err() != nil {
				break
			}
			if layoutRefused(err) {
				// The server was laid out anew by a process of another
				// layout (it restarted empty): retries cannot mend that.
				// A member running pools learns it from them; one
				// running none, from its heartbeat.
				fail(err)
				break
			}
			r.report(err)
			sleep(runCtx, min(b.next(), every))
			continue
		}
		b.reset()
		if !joined {
			joined = true
			r.log.Info("queue: joined group", "group", r.g.name, "member", r.cfg.Member,
				"analysers", len(beat.analysers), "generation", beat.gen)
		}
		r.assign(runCtx, fail, beat)
		wait := every
		if beat.nextEnd >= 0 {
			// Be there when the next member's session runs out: its
			// queues move at the first heartbeat after that.
			wait = min(wait, beat.nextEnd+5*time.Millisecond)
		}
		// A wait that keeps failing (its key overwritten) while beats work
		// backs off by itself: b starts over with every beat.
		if _, err := r.g.waitNudge(runCtx, r.cfg.Member, wait); err != nil && runCtx.Err() == nil {
			if layoutRefused(err) {
				fail(err)
				break
			}
			r.report(err)
			sleep(runCtx, min(nb.next(), every))
		} else {
			nb.reset()
		}
	}
	// Leave first, so that the others start waiting on the queues' leases
	// and take each one the moment its pool here releases it.
	if sent {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.SessionTTL)
		if _, err := r.g.beat(lctx, r.cfg.Member, r.cfg.Weight, "leave", 0); err != nil {
			r.report(err) // the session runs out by itself
		}
		cancel()
	}
	for _, p := range r.pools {
		p.stop()
	}
	r.wg.Wait()
	if joined {
		r.log.Info("queue: left group", "group", r.g.name, "member", r.cfg.Member)
	}
	// runCtx's cause is a pool's error, or ctx's own cause when ctx ended
	// first (which may be any error the caller chose).
	if err := context.Cause(runCtx); err != nil && !errors.Is(err, context.Cause(ctx)) {
		return err
	}
	return nil
}

// assign starts pools on the analysers newly given, and stops (gracefully)
// those taken away.
func (r *groupRun) assign(ctx context.Context, fail context.CancelCauseFunc, beat groupBeat) {
	if beat.same {
		return
	}
	first := r.gen == 0
	r.gen = beat.gen
	if slices.Equal(beat.analysers, r.mine) && !first {
		return
	}
	// Both lists are sorted (parseAnalysers sorts).
	var added, removed []int
	for _, a := range r.mine {
		if _, in := slices.BinarySearch(beat.analysers, a); !in {
			removed = append(removed, a)
			r.pools[a].stop()
		}
	}
	for _, a := range beat.analysers {
		if _, in := slices.BinarySearch(r.mine, a); !in {
			added = append(added, a)
			r.start(ctx, fail, a)
		}
	}
	r.mine = slices.Clone(beat.analysers)
	if len(added)+len(removed) > 0 {
		r.log.Info("queue: group assignment changed", "group", r.g.name, "member", r.cfg.Member,
			"generation", beat.gen, "analysers", len(r.mine), "added", added, "removed", removed)
	}
	if r.cfg.OnAssign != nil {
		mine := slices.Clone(r.mine)
		callHook(func() { r.cfg.OnAssign(mine) })
	}
}

// start runs a pool on analyser a, once the pool that ran on it before
// (being stopped) has returned.
func (r *groupRun) start(ctx context.Context, fail context.CancelCauseFunc, a int) {
	prev := r.pools[a]
	pctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	p := &groupPool{stop: stop, done: make(chan struct{})}
	r.pools[a] = p
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer close(p.done)
		defer stop()
		if prev != nil {
			// Even when stopped before it started, it waits: its done,
			// which the next pool on a waits for, must not close before
			// prev's (prev was stopped first, so the wait ends with its
			// graceful stop).
			<-prev.done
			if pctx.Err() != nil {
				return
			}
		}
		if err := r.q.AnalysePool(pctx, a, r.cfg.Pool, r.fn); err != nil {
			fail(fmt.Errorf("queue: group %q analyser %d: %w", r.g.name, a, err))
		}
	}()
}
