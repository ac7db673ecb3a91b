package queue

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// sessionEnd says why a lease tenure ended.
type sessionEnd int

const (
	endStopped sessionEnd = iota // ctx ended: graceful stop done, lease released
	endEmpty                     // ExitOnEmpty and the queue drained; lease released
	endLost                      // the lease was lost; in-memory work dropped
	endFailed                    // recovery failed; lease released (unless lost), retry after a backoff
	endMoved                     // the queue's slot moved to another primary: everything left pending, lease released, taken again at once
)

// session is one tenure of a pool as the queue's owner. It only
// orchestrates: a fetcher (the goroutine that called run) claims tasks and
// hands them to workers by OrderID (dispatch.go, lineset.go); workers run
// them (worker.go) and hand acknowledgements to the acker (acker.go); a
// renewer keeps the lease; an elastic pool's scaler resizes it
// (scaler.go); run follows the stop order. Every Redis write goes through
// the store.
type session struct {
	st      *store
	cfg     PoolConfig
	fn      AnalyseFunc
	acks    *acker
	elastic bool     // MinWorkers < MaxWorkers: a scaler runs
	shared  *lineSet // DispatchFree: the one set every worker takes from
	limit   *limiter // the pool's rate limit, or nil (PoolConfig.Rate 0)
	gate    *gate    // the record gate (recordgate.go): its Queue's

	// mapMu orders dispatch (the fetcher) and resizes (the scaler); the
	// scaler is the only writer of workers, n and the workers' count.
	mapMu   sync.Mutex
	workers []*worker // every slot started so far; a retired worker keeps its slot
	n       int       // the worker count: slots [0, n) take new OrderIDs
	// DispatchByOrder, after a resize: OrderIDs in hand on a worker other
	// than their hash's under n stay there (pinned) while they have tasks
	// (see repin). pinnedLines counts their lines, under their sets' locks.
	pinned      map[uint64]int
	pinnedLines atomic.Int64
	sizer       sizer          // an elastic pool's idle workers
	workWG      sync.WaitGroup // the worker goroutines
	live        atomic.Int64   // worker goroutines running
	resized     chan struct{}  // signalled when live changes, for the renewer to record it
	recorded    string         // the worker count last recorded in Redis, with its lease value (renewer only)

	held      atomic.Int64  // tasks claimed and not finished
	heldBytes atomic.Int64  // their size (claimed.size)
	lines     atomic.Int64  // OrderIDs with held tasks: Prefetch bounds these
	freed     chan struct{} // signalled when the fetcher may claim again, or an ack is confirmed
	lowWater  int64         // the fetcher claims again once this many OrderIDs' slots are free
	per       [][]claimed   // dispatch's buffers, one per worker slot (fetcher only)
	away      [][]claimed   // the same, for pinned OrderIDs (fetcher only)
	rejected  []claimed     // the same, for OrderIDs no longer in hand (fetcher only)
	chain     []int32       // dispatchChained's: the index of the next task for the same worker, -1: none (fetcher only)
	heads     []int32       // dispatchChained's: each worker slot's first task and last (fetcher only)
	tails     []int32
	// resyncOwed: a claim failed, and Redis may have made it; its tasks,
	// pending and unseen, must go back before anything is claimed or
	// handed back (fetcher only).
	resyncOwed bool
	// watch is what the tenure knew of its queue's primary (its slot's
	// on a cluster, Sentinel's) when it began: a claim round that finds
	// that another primary served it since ends the tenure (see
	// clustermoves.go; fetcher only).
	watch slotWatch
	// pausedSeen: a claim found the queue paused, and none claimed a task
	// since (logged as it changes; the fetcher's only).
	pausedSeen bool
	claimBuf   []claimed                           // the claim buffer, reused once dispatched (fetcher only)
	marks      atomic.Pointer[map[string]struct{}] // the queue's cancel marks, as last read (nil: none)

	halt     chan struct{} // closed when the session starts no more tasks: a stop began, or the lease was lost
	idle     chan struct{} // closed once no worker runs any more (the cancel watcher ends then)
	haltOnce sync.Once
	lost     atomic.Bool // the lease was lost: in-memory work is dropped

	born     time.Time     // when the session began (monotonic clock)
	deadline atomic.Int64  // when the lease must be taken as lost unless renewed, as time since born
	stopBy   time.Duration // when the pool's ctx reaches its deadline, as time since born (0: it has none)

	log    *poolLog      // the pool's story
	waited time.Duration // how long the pool was without a lease before this tenure
	plain  bool          // the pool's first tenure, taken without waiting for another holder

	tasks       *ctxParent // parent of every task's ctx; ends with the lease or a stop's timeout
	cancelTask  context.CancelFunc
	leaseCtx    context.Context // Redis calls of the tenure; ends with the lease or the session
	cancelLease context.CancelFunc

	// retryCtx bounds the retries of the writes of finished tasks'
	// outcomes (acks, dead letters, cancels; see retry): it ends with
	// leaseCtx, or when a stop gives them up (retryFor after it began).
	retryCtx   context.Context
	giveUp     context.CancelFunc
	givenUp    atomic.Int64          // the tasks whose outcome was given up
	lastRefuse atomic.Pointer[error] // the last refusal of such a write
}

// newSession makes a tenure's session. Its tasks' ctx carries the values
// of ctx (AnalysePool's), not its end: a stop lets running tasks finish.
func newSession(ctx context.Context, st *store, cfg PoolConfig, fn AnalyseFunc) *session {
	s := &session{
		st: st, cfg: cfg, fn: fn,
		gate:     new(gate), // AnalysePool's is its Queue's
		freed:    make(chan struct{}, 1),
		lowWater: int64(max(1, cfg.Prefetch/4)),
		halt:     make(chan struct{}),
		idle:     make(chan struct{}),
	}
	s.acks = newAcker(s)
	s.watch = st.watchSlot() // before recovery: a move during it is seen too
	s.log = newPoolLog(cfg.Logger, cfg.OnError, -1)
	s.born = time.Now()
	if d, ok := ctx.Deadline(); ok {
		s.stopBy = max(d.Sub(s.born), 1)
	}
	// As renew computes it, from when the lease was asked for: Redis's
	// TTL ran from then at the latest, however late the answer came.
	s.setDeadline(st.acquired.Add(leaseHeld(cfg.LeaseTTL)))
	taskCtx, cancelTask := context.WithCancel(context.WithoutCancel(ctx))
	s.tasks, s.cancelTask = newCtxParent(taskCtx), cancelTask
	s.leaseCtx, s.cancelLease = context.WithCancel(context.Background())
	s.retryCtx, s.giveUp = context.WithCancel(s.leaseCtx)
	s.resized = make(chan struct{}, 1)
	s.elastic = cfg.MinWorkers < cfg.MaxWorkers
	s.sizer.allBusy = make(chan struct{}, 1)
	if c := cfg.Counters; c != nil && s.elastic {
		c.sizer.Store(&s.sizer)
	}
	if cfg.Dispatch == DispatchFree {
		s.shared = newLineSet(s, true)
	}
	s.n = cfg.MinWorkers
	for i := range s.n {
		s.addSlot(i)
	}
	return s
}

// stopStarting closes halt: workers start no more tasks.
func (s *session) stopStarting() { s.haltOnce.Do(func() { close(s.halt) }) }

// halted reports whether halt is closed. (A receive from one channel with
// a default costs an atomic load or two: workers ask once per task.)
func (s *session) halted() bool {
	select {
	case <-s.halt:
		return true
	default:
		return false
	}
}

// loseLease stops everything the tenure does: no task starts, running
// tasks have their ctx cancelled, Redis calls of the tenure end.
func (s *session) loseLease() {
	if s.lost.Swap(true) {
		return
	}
	s.stopStarting()
	s.cancelTask()
	s.cancelLease()
}

func (s *session) isLost() bool { return s.lost.Load() }

// setDeadline records when the lease must be taken as lost unless renewed.
func (s *session) setDeadline(t time.Time) { s.deadline.Store(int64(t.Sub(s.born))) }

// leaseDeadline returns when the lease must be taken as lost unless
// renewed.
func (s *session) leaseDeadline() time.Time { return s.born.Add(time.Duration(s.deadline.Load())) }

// leaseValid reports whether the lease's deadline has not passed. The
// renewer declares the lease lost at the deadline, but a process that was
// paused (SIGSTOP, a long GC, a starved VM) wakes up with every goroutine
// runnable at once, and a worker may come before the renewer: workers ask
// this, with the time they read, before they start a task.
func (s *session) leaseValid(now time.Time) bool {
	return now.Sub(s.born) < time.Duration(s.deadline.Load())
}

// pastStop reports whether the pool's ctx has reached its deadline by
// now: workers start nothing more, even before the fetcher, which may be
// in a Redis round trip, notices and stops the session.
func (s *session) pastStop(now time.Time) bool {
	return s.stopBy > 0 && now.Sub(s.born) >= s.stopBy
}

// recover puts back what an earlier owner left pending, and reports
// whether the tenure can go on.
func (s *session) recover(ctx context.Context) bool {
	start := time.Now()
	n, lost, err := s.st.recover(ctx)
	if lost > 0 {
		s.cfg.OnError(seqLostError(s.st, lost))
	}
	if err != nil {
		if errors.Is(err, ErrLeaseLost) {
			s.loseLease()
		}
		s.cfg.OnError(err)
		return false
	}
	token, _ := parseLease(s.st.value())
	level := slog.LevelInfo
	if n == 0 && s.plain {
		level = slog.LevelDebug // a plain start: nothing to tell
	}
	s.cfg.Logger.Log(ctx, level, "queue: took the lease", "analyser", s.log.analyser, "token", token,
		"waited", s.waited.Round(time.Millisecond), "recovered", n, "recovery", time.Since(start).Round(time.Millisecond))
	return true
}

func (s *session) run(ctx context.Context) sessionEnd {
	defer s.cancelTask()
	defer s.cancelLease()
	leaseCtx := s.leaseCtx
	var renewWG, ackWG, scaleWG, cancelWG sync.WaitGroup
	// The renewer stops before the release: a renewal racing it would find
	// the lease gone, take it as lost and cancel the release under way.
	renewCtx, stopRenew := context.WithCancel(leaseCtx)
	defer stopRenew()
	renewWG.Add(1)
	go func() { defer renewWG.Done(); s.renew(renewCtx) }()
	// Recovery runs with the lease renewed: putting back what an earlier
	// owner left pending may take a while.
	if !s.recover(leaseCtx) {
		stopRenew()
		renewWG.Wait()
		if s.isLost() {
			return endLost
		}
		s.st.release(context.WithoutCancel(ctx))
		return endFailed
	}
	ackWG.Add(1)
	go func() { defer ackWG.Done(); s.acks.loop() }()
	for _, w := range s.workers {
		w.set.mu.Lock()
		s.start(w, false)
		w.set.mu.Unlock()
	}
	if s.elastic {
		scaleWG.Add(1)
		go func() { defer scaleWG.Done(); s.scale() }()
	}
	// The watcher outlives halt: a task that runs on through a graceful
	// stop still has its ctx ended when it is cancelled.
	cancelWG.Add(1)
	go func() { defer cancelWG.Done(); s.watchCancels(leaseCtx) }()
	var idleOnce sync.Once
	workersGone := func() { idleOnce.Do(func() { close(s.idle) }) }
	defer cancelWG.Wait()
	defer workersGone()

	end := s.fetch(ctx, leaseCtx)

	// No task starts from here on, and the worker slots stay as they are.
	s.stopStarting()
	scaleWG.Wait()
	if end != endLost {
		// Graceful stop: hand back what has not started, at once, in claim
		// order, then give running tasks ShutdownTimeout. Tasks that fail or
		// are interrupted meanwhile are handed back after them, so they come
		// before their OrderID's later tasks. Nothing is handed back when a
		// claim's reply was lost (its tasks are pending, unseen) or when the
		// first hand-back failed: tasks in the ready list ahead of later
		// tasks of their OrderID left pending would be claimed before them
		// once recovery put those back. Left pending, they all go back in
		// claim order with the rest.
		ok := !s.resyncOwed
		var handed, left int
		handBack := func(ts []claimed) {
			if ok {
				ok = s.handBack(leaseCtx, ts) // releases ts either way
				if ok {
					handed += len(ts)
				} else {
					left += len(ts)
				}
				return
			}
			left += len(ts)
			s.release(ts...) // left pending for the next owner
		}
		handBack(s.takeUnstarted())
		if end == endStopped {
			// What is still held runs, or ran in a worker's streak and is
			// not settled yet: a worker may hold more than one task.
			s.cfg.Logger.Info("queue: stopping", "analyser", s.log.analyser, "handed_back", handed,
				"held", s.held.Load())
		}
		timer := time.AfterFunc(s.cfg.ShutdownTimeout, s.cancelTask)
		// Writes that Redis keeps refusing (a key of the wrong type, an
		// ACL) are given up retryFor after the stop began: their tasks
		// stay pending, and the next owner runs them again, rather than
		// the stop never ending.
		giveUp := time.AfterFunc(retryFor(s.cfg.ShutdownTimeout), s.giveUp)
		defer giveUp.Stop()
		s.workWG.Wait()
		timer.Stop()
		workersGone()
		handBack(s.takeUnstarted())
		defer func() {
			if end == endStopped {
				s.cfg.Logger.Info("queue: stopped", "analyser", s.log.analyser, "handed_back", handed,
					"left_pending", left)
			}
		}()
	} else {
		s.workWG.Wait()
		workersGone()
	}
	s.acks.close()
	ackWG.Wait()
	s.reportGivenUp()
	if !s.isLost() {
		// Finished claims in place leave the ready list, and any left
		// pending go to lists of their own (claimend.go): the queue is
		// left as a claim that copied would leave it.
		if err := s.st.listsFirst(leaseCtx); err != nil {
			s.cfg.OnError(err)
		}
	}
	s.gate.forget(s.sets()) // its suspects set aside, if any, went back
	stopRenew()
	renewWG.Wait()
	if s.isLost() {
		end = endLost
	} else if err := s.st.release(leaseCtx); err != nil {
		s.cfg.OnError(err)
	}
	s.cancelLease()
	return end
}

// fetch claims tasks and dispatches them until ctx ends, the lease is lost,
// or (ExitOnEmpty) the queue is drained. Claims run under leaseCtx, so that
// a stop never cuts one off after Redis made it; only waits end with ctx.
func (s *session) fetch(ctx, leaseCtx context.Context) sessionEnd {
	// waitCtx ends a blocking wait when ctx ends or the lease is lost.
	waitCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.halt:
			cancel()
		case <-waitCtx.Done():
		}
	}()
	lowWater := s.lowWater
	block := min(s.cfg.LeaseTTL/2, time.Second)
	var b backoff
	for {
		if waitCtx.Err() != nil {
			if s.isLost() {
				return endLost
			}
			return endStopped
		}
		if s.resyncOwed {
			// Claim nothing more until the tasks of that claim, if it
			// happened, are back in the ready list: they come before
			// anything claimed later. Once nothing is in flight and every
			// ack is confirmed, whatever is pending is theirs.
			if s.held.Load() > 0 || s.acks.unconfirmed() > 0 {
				select {
				case <-s.freed:
				case <-waitCtx.Done():
				}
				continue
			}
			n, lost, err := s.resync(leaseCtx)
			if lost > 0 {
				s.cfg.OnError(seqLostError(s.st, lost))
			}
			if err != nil {
				if errors.Is(err, ErrLeaseLost) {
					s.loseLease()
					return endLost
				}
				if waitCtx.Err() == nil && !s.isLost() { // not the lost lease's cancelled calls
					s.cfg.OnError(err)
					b.wait(waitCtx)
				}
				continue
			}
			s.resyncOwed = false
			if n > 0 {
				s.cfg.Logger.Info("queue: put back tasks of a claim whose reply was lost", "tasks", n)
			}
		}
		// Wait for room, and while acks Redis has not taken pile up (Redis
		// refuses them, say): claims stop there, as pending grows. With
		// nothing held, one task is claimed whatever its size.
		held, free := s.held.Load(), s.room()
		if free < lowWater && held > 0 || s.acks.unconfirmed() > int64(s.cfg.Prefetch) {
			select {
			case <-s.freed:
			case <-waitCtx.Done():
			}
			continue
		}
		sent := time.Now()
		// With tasks held, a claim takes only what fits the bytes left;
		// with none, one task however large.
		// A claim that a failed connection cut short (its reply, most
		// often: long replies are the likeliest cut) caps the next ones
		// at half what it asked for; each claim that comes back raises
		// the cap by a quarter, until it is none. On a link that cuts
		// long exchanges, claims shrink until theirs get through.
		want := int(max(free, 1))
		if c := s.st.claimCap.Load(); c > 0 {
			want = int(min(int64(want), c))
		}
		tasks, err := s.st.claim(leaseCtx, want, s.cfg.MaxHeldBytes-s.heldBytes.Load(), held > 0, s.claimBuf)
		shrunk := false
		if asked := s.st.asked.Load(); err != nil && cutMidway(err) && asked > 1 {
			// The next claim, half as large, is another try rather than
			// the same one again: it waits the backoff's first step.
			s.st.claimCap.Store(asked / 2)
			shrunk = true
		}
		if s.watch.moved() && !errors.Is(err, ErrLeaseLost) {
			s.slotMoved(tasks)
			return endMoved
		}
		if errors.Is(err, errNoRoom) {
			s.log.ok(sent)
			select {
			case <-s.freed:
			case <-waitCtx.Done():
			}
			continue
		}
		if err != nil {
			if errors.Is(err, ErrLeaseLost) {
				s.loseLease()
				return endLost
			}
			s.resyncOwed = true
			if waitCtx.Err() == nil && !s.isLost() {
				s.cfg.OnError(err)
				if shrunk {
					b.reset()
				}
				b.wait(waitCtx)
			}
			if len(tasks) == 0 {
				continue
			}
		}
		b.reset()
		s.log.ok(sent)
		if c := s.st.claimCap.Load(); c > 0 && len(tasks) > 0 {
			if c += max(1, c/4); c >= maxMoved {
				c = 0
			}
			s.st.claimCap.Store(c)
		}
		switch {
		case s.st.paused.Load() && !s.pausedSeen:
			s.pausedSeen = true
			s.cfg.Logger.Info("queue: paused; claiming nothing until resumed", "analyser", s.log.analyser)
		case s.pausedSeen && len(tasks) > 0:
			// Claims again (a paused queue with nothing ready reads as
			// empty, not as resumed).
			s.pausedSeen = false
			s.cfg.Logger.Info("queue: resumed", "analyser", s.log.analyser)
		}
		if len(tasks) == 0 {
			if s.st.paused.Load() {
				// Paused: claim nothing until resumed; what runs goes on.
				sleep(waitCtx, pauseRecheck) // an end of waitCtx is seen at the loop's top
				continue
			}
			if s.cfg.ExitOnEmpty {
				if s.held.Load() == 0 {
					return endEmpty
				}
				// Nothing ready: wait for what is in flight, then look again.
				select {
				case <-s.freed:
				case <-waitCtx.Done():
				}
				continue
			}
			if _, err := s.st.wait(waitCtx, block); err != nil && waitCtx.Err() == nil {
				s.cfg.OnError(err)
				b.wait(waitCtx)
			}
			continue
		}
		s.hold(tasks)
		s.dispatch(tasks) // copies them
		clear(tasks)      // let go of the reply they point into
		s.claimBuf = tasks[:0]
	}
}

// resync puts every pending task back at the consuming end, in claim
// order, without counting a delivery, and returns how many. The fetcher
// calls it when nothing is in flight and every ack is confirmed, after a
// claim whose reply was lost (Redis moved the tasks, this process never
// saw them): then every pending task is one of those. It first gives the
// lease a new fencing token: a claim that timed out here may still be on
// its way to Redis, and would otherwise take tasks after the resync read
// what was pending, tasks that nobody would run before later ones.
func (s *session) resync(ctx context.Context) (back, seqLost int, err error) {
	if err := s.st.refence(ctx); err != nil {
		return 0, 0, err
	}
	return s.st.putBack(ctx, "resync", false, nil)
}
