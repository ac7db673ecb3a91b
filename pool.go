package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
)

// AnalyseFunc analyses one task. Returning nil acknowledges it; an error or
// a panic fails the delivery, which is retried in place until MaxAttempts
// (an error whose Error method panics, such as a typed nil, too).
// ctx ends at the task's timeout, when the pool loses its lease, or when a
// graceful stop runs out of time; it carries the values of AnalysePool's
// ctx (a logger, a tenant, a trace), but not its end or deadline.
// t.Payload is the task's own to read and keep; a small one shares its
// buffer (at most 8 KiB) with others of its claim, so a function that
// keeps many payloads long after it returns copies them.
type AnalyseFunc func(ctx context.Context, t Task) error

// PoolConfig holds the settings of AnalysePool. The zero value works.
type PoolConfig struct {
	// Workers is the number of worker goroutines of a pool of fixed size:
	// Workers N is MinWorkers N and MaxWorkers N. Setting it together with
	// a MinWorkers or MaxWorkers other than N is an error. If zero (and
	// MinWorkers and MaxWorkers are zero too), 8 is used.
	Workers int
	// MinWorkers and MaxWorkers make the pool elastic: it starts with
	// MinWorkers worker goroutines, adds one (up to MaxWorkers) each time
	// tasks have waited for a worker for 10ms while every worker was busy
	// (and none waited for the Rate limit), and retires workers that
	// stayed idle for ScaleDownAfter, down to MinWorkers. A resize never moves an OrderID with tasks in hand: see
	// "Workers and dispatch" in the package documentation. If MinWorkers
	// is zero, 1 is used when MaxWorkers is set; if MaxWorkers is zero,
	// MinWorkers is used (a fixed pool). At most 4096.
	MinWorkers, MaxWorkers int
	// ScaleDownAfter is how long workers of an elastic pool must have
	// stayed idle before they are retired: every ScaleDownAfter, the pool
	// retires as many workers (down to MinWorkers) as were idle all that
	// time. If zero, 5s is used; at most 24h.
	ScaleDownAfter time.Duration
	// Dispatch says how OrderIDs are given to workers: DispatchByOrder
	// (each OrderID on a worker of its own hash, the default) or
	// DispatchFree (each task on whichever worker is free first). Either
	// way the tasks of one OrderID run one at a time, in claim order.
	Dispatch DispatchMode
	// Prefetch bounds the OrderIDs whose tasks the pool claims (and holds
	// until they finish) with a task running or about to run, and so it
	// bounds what one claim takes. An OrderID whose task waits out a
	// retry's backoff does not count while it waits, nor do tasks that
	// wait behind an earlier task of their OrderID (one retrying, or
	// slow), so they never hold back other OrderIDs; MaxHeldTasks and
	// MaxHeldBytes bound them. So after many failures at once (a
	// downstream outage) the pool may hold up to MaxHeldTasks OrderIDs,
	// and when their backoffs end, more than Prefetch of them have a task
	// about to run: it claims nothing more until it is back under
	// Prefetch.
	// If zero, 64 per worker (at least 1024, at most 65536, and at most
	// MaxHeldTasks when that is set) is used: a claim takes up to about
	// Prefetch tasks, and the larger the claims the less each task costs
	// (see docs/performance.md). At most 65536, and at most MaxHeldTasks.
	Prefetch int
	// MaxHeldTasks bounds all the tasks the pool holds, those waiting
	// behind an earlier task of their OrderID included. If zero, 16 times
	// Prefetch is used.
	MaxHeldTasks int
	// MaxHeldBytes bounds the size of the tasks the pool holds (payloads
	// and about 30 bytes each), and so what one claim takes: claims stop
	// while it is reached. A task larger than it is still claimed, alone.
	// If zero, 64 MiB is used. The memory the held tasks keep is at most
	// about twice it: a claim's small payloads are read into shared
	// buffers of at most MaxHeldBytes / MaxHeldTasks bytes (and 8 KiB),
	// and a held task keeps its buffer.
	MaxHeldBytes int64
	// Rate limits the pool's task starts to Rate a second, across all its
	// workers. Every start counts, retries and redeliveries too; a task
	// moved to the dead-letter store without running does not. A worker
	// waits for the limit holding the task it is to start, the next of
	// its OrderID, so order is kept; the lease is renewed meanwhile,
	// however slow the rate, and a stop or a lost lease ends the wait at
	// once (the task does not start). The limit is this pool's, in this
	// process: a limit across processes would need a limiter shared in
	// Redis, which this package does not have. Claims are not slowed: a
	// rate-limited pool still holds tasks of up to Prefetch OrderIDs (more
	// when some wait out a retry's backoff: see Prefetch)
	// (pending in Redis) while it drains them slowly, so a lower Prefetch
	// keeps fewer waiting. If zero, starts are not limited; else at least
	// one a day (1.0/86400) and at most 1,000,000.
	Rate float64
	// Burst is how many starts may pile up while the pool starts fewer
	// than Rate, to be made at once: a token bucket of Burst tokens that
	// fills at Rate a second, one token a start, so in any span of T
	// seconds the pool gets at most Burst + T*Rate tokens. A start never
	// comes before its token; after a stall (a GC pause, a busy machine)
	// the starts whose tokens came due meanwhile come at once. Burst 1
	// spaces the tokens 1/Rate apart; a larger one lets the pool make up
	// for longer stalls, and for late timers at high rates. Setting it
	// without Rate is an error. If zero, 1 is used; at most 1,000,000.
	Burst int
	// TaskTimeout bounds one delivery; the task's ctx ends then, and the
	// delivery fails with an error that is a context.DeadlineExceeded.
	// Go cannot stop a function that does not watch its ctx: one that
	// returns nil after its TaskTimeout fails all the same (it is retried,
	// and reported as timed out), and its worker waits for it meanwhile,
	// with the OrderIDs it serves. If zero, 1 minute is used; if negative,
	// none; at most 24h.
	TaskTimeout time.Duration
	// MaxAttempts is how many deliveries a task gets before it moves to
	// the dead-letter store. A delivery that crashes its owner counts once
	// it was recorded as started, which every delivery but a first one is:
	// a task that crashes its process every time is dead-lettered after at
	// most MaxAttempts+1 crashes. With 1, the tasks a crash left pending
	// start one at a time after it (each once the one before is settled,
	// or has run 5s), so that a task crashing the process again takes no
	// other along: a slower restart for a pool that asks for no retry.
	// If zero, 5 is used; at most 1000.
	MaxAttempts int
	// Backoff returns the wait before delivery attempt+1 of a task whose
	// delivery number attempt failed. Only the task's OrderID waits. The
	// wait is the pool's own: a task handed back by a graceful stop, or
	// put back by a new owner's recovery, runs when the next owner claims
	// it. If nil, or for a call that calls runtime.Goexit, 50ms doubling
	// per attempt up to 10s is used.
	Backoff func(attempt int) time.Duration
	// LeaseTTL is how long the queue's lease lasts without renewal: the time
	// from a crash to a standby's takeover. It is renewed every third of it,
	// so a short one is lost to a pause of the process (GC, a busy machine)
	// that a longer one rides out: the pool then stops and waits as a
	// standby. If zero, 5s is used; at least 10ms, at most 1h.
	LeaseTTL time.Duration
	// ShutdownTimeout is how long running tasks may go on after ctx ends
	// before their ctx is cancelled. Writes of finished tasks' outcomes
	// (acks, dead letters, cancels) that Redis keeps refusing through a
	// stop are retried until ShutdownTimeout plus the longer of
	// ShutdownTimeout and 5s after it began (each is tried once, however
	// late), then given up: those tasks stay pending and run again under
	// the queue's next owner, and the pool reports how many through
	// OnError. A write on its way at that time is waited for: over a
	// Redis that stops answering, up to the connection's read timeout
	// (Config.ReadTimeout with Dial). If zero, 10s is used; at most
	// 24h, and not negative.
	ShutdownTimeout time.Duration
	// ExitOnEmpty makes AnalysePool return nil once the queue is empty and
	// nothing is in flight; scheduled tasks not due yet do not count. A
	// paused queue with tasks ready or due is not empty (the pool waits
	// for Resume). If false, it waits for work until ctx ends.
	ExitOnEmpty bool
	// OnError receives background errors: failed deliveries (*TaskError),
	// Redis errors being retried, a lost lease, pending tasks moved to the
	// dead-letter store because their claim-sequence record was lost
	// (ErrMalformed). A layout mismatch is not one of them: AnalysePool
	// returns it. The pool waits for each call, and it must not
	// block. A call that calls runtime.Goexit (t.FailNow in a test) ends
	// that call only; a panic is not recovered. If nil, they are logged:
	// a failed delivery that will be retried at Warn, the rest at Error,
	// but for a Redis that stops answering: that is logged once at Warn
	// ("lost redis; retrying with backoff"), and once at Info when it
	// answers again ("redis is back"), and a lease lost meanwhile only
	// by the lease line that follows (running tasks were cancelled, and
	// run again).
	OnError func(error)
	// Logger receives the pool's log lines. If nil, slog.Default() is used.
	Logger *slog.Logger
	// Owner names this process in the lease (shown by Stats).
	// If empty, "host:pid" is used.
	Owner string
	// Counters, when set, counts each worker's processed and failed tasks,
	// and the pool's live workers, while the pool runs.
	Counters *Counters
	// OnDone, when set, is called after every delivery with the time the
	// AnalyseFunc took and what it returned (for metrics). It is called from
	// the worker goroutine and must be quick; a call of runtime.Goexit in it
	// leaves the delivery settled as the AnalyseFunc's result says, and the
	// worker goes on; a panic is not recovered. If nil, nothing is called.
	OnDone func(t Task, took time.Duration, err error)
}

func (c PoolConfig) withDefaults() (PoolConfig, error) {
	if err := c.workerDefaults(); err != nil {
		return c, err
	}
	if err := c.rateDefaults(); err != nil {
		return c, err
	}
	if c.Prefetch == 0 {
		c.Prefetch = min(max(64*c.MaxWorkers, 1024), maxPrefetch)
		if c.MaxHeldTasks > 0 {
			c.Prefetch = min(c.Prefetch, c.MaxHeldTasks)
		}
	}
	if c.Prefetch < 0 || c.Prefetch > maxPrefetch {
		return c, fmt.Errorf("%w: Prefetch %d not in [1, %d]", ErrBadConfig, c.Prefetch, maxPrefetch)
	}
	if c.MaxHeldTasks == 0 {
		c.MaxHeldTasks = 16 * c.Prefetch
	}
	if c.MaxHeldTasks < c.Prefetch {
		return c, fmt.Errorf("%w: MaxHeldTasks %d is under Prefetch %d", ErrBadConfig, c.MaxHeldTasks, c.Prefetch)
	}
	if c.MaxHeldBytes == 0 {
		c.MaxHeldBytes = 64 << 20
	}
	if c.MaxHeldBytes < 0 {
		return c, fmt.Errorf("%w: MaxHeldBytes %d is negative", ErrBadConfig, c.MaxHeldBytes)
	}
	if c.TaskTimeout == 0 {
		c.TaskTimeout = time.Minute
	}
	if c.TaskTimeout > 24*time.Hour || c.ShutdownTimeout > 24*time.Hour || c.ShutdownTimeout < 0 {
		return c, fmt.Errorf("%w: TaskTimeout %v or ShutdownTimeout %v over 24h (or ShutdownTimeout negative)", ErrBadConfig, c.TaskTimeout, c.ShutdownTimeout)
	}
	if c.Backoff == nil {
		c.Backoff = defaultBackoff
	} else {
		c.Backoff = hookBackoff(c.Backoff)
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
	var err error
	if c.LeaseTTL, c.MaxAttempts, c.Owner, err = leaseDefaults(c.LeaseTTL, c.MaxAttempts, c.Owner); err != nil {
		return c, err
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.OnError == nil {
		log := c.Logger
		c.OnError = func(err error) { logError(log, err) }
	}
	return c, nil
}

// workerDefaults fills in and checks Workers, MinWorkers, MaxWorkers,
// ScaleDownAfter and Dispatch.
func (c *PoolConfig) workerDefaults() error {
	switch {
	case c.Workers != 0:
		if c.MinWorkers != 0 && c.MinWorkers != c.Workers || c.MaxWorkers != 0 && c.MaxWorkers != c.Workers {
			return fmt.Errorf("%w: Workers %d set with MinWorkers %d and MaxWorkers %d; set Workers for a fixed pool, MinWorkers and MaxWorkers for an elastic one",
				ErrBadConfig, c.Workers, c.MinWorkers, c.MaxWorkers)
		}
		c.MinWorkers, c.MaxWorkers = c.Workers, c.Workers
	case c.MinWorkers == 0 && c.MaxWorkers == 0:
		c.MinWorkers, c.MaxWorkers = 8, 8
	case c.MinWorkers == 0:
		c.MinWorkers = 1
	case c.MaxWorkers == 0:
		c.MaxWorkers = c.MinWorkers
	}
	switch {
	case c.MinWorkers == c.MaxWorkers && (c.MinWorkers < 1 || c.MaxWorkers > maxWorkers):
		return fmt.Errorf("%w: Workers %d not within [1, %d]", ErrBadConfig, c.MinWorkers, maxWorkers)
	case c.MinWorkers < 1 || c.MaxWorkers > maxWorkers || c.MinWorkers > c.MaxWorkers:
		return fmt.Errorf("%w: MinWorkers %d and MaxWorkers %d: want 1 <= MinWorkers <= MaxWorkers <= %d",
			ErrBadConfig, c.MinWorkers, c.MaxWorkers, maxWorkers)
	}
	if c.ScaleDownAfter == 0 {
		c.ScaleDownAfter = 5 * time.Second
	}
	if c.ScaleDownAfter < 0 || c.ScaleDownAfter > 24*time.Hour {
		return fmt.Errorf("%w: ScaleDownAfter %v not in (0, 24h]", ErrBadConfig, c.ScaleDownAfter)
	}
	if c.Dispatch != DispatchByOrder && c.Dispatch != DispatchFree {
		return fmt.Errorf("%w: unknown Dispatch %d", ErrBadConfig, c.Dispatch)
	}
	return nil
}

// rateDefaults fills in and checks Rate and Burst.
func (c *PoolConfig) rateDefaults() error {
	switch {
	case !(c.Rate == 0 || c.Rate >= minRate && c.Rate <= maxRate): // NaN too
		return fmt.Errorf("%w: Rate %v not 0 (no limit) nor in [%v, %v]", ErrBadConfig, c.Rate, minRate, float64(maxRate))
	case c.Burst < 0 || c.Burst > maxBurst:
		return fmt.Errorf("%w: Burst %d not in [0, %d]", ErrBadConfig, c.Burst, maxBurst)
	case c.Rate == 0 && c.Burst != 0:
		return fmt.Errorf("%w: Burst %d set without a Rate", ErrBadConfig, c.Burst)
	case c.Rate > 0 && c.Burst == 0:
		c.Burst = 1
	}
	return nil
}

// Bounds of PoolConfig's sizes: a mistyped value gets ErrBadConfig, not
// a pool that allocates without end.
const (
	maxWorkers  = 4096
	maxPrefetch = 65536
)

func defaultBackoff(attempt int) time.Duration {
	return min(50*time.Millisecond<<min(max(attempt-1, 0), 16), 10*time.Second)
}

// Counters counts what each worker of a pool did, by worker slot: an
// elastic pool's slots go up to MaxWorkers, and a slot's counts go on when
// a retired worker's slot is used again. Its methods are safe for
// concurrent use while the pool runs.
type Counters struct {
	processed, failed atomic.Pointer[[]atomic.Int64]
	workers           atomic.Int64
	sizer             atomic.Pointer[sizer] // an elastic pool's, for tests to read its idle workers
}

func (c *Counters) init(slots int) {
	p, f := make([]atomic.Int64, slots), make([]atomic.Int64, slots)
	c.processed.Store(&p)
	c.failed.Store(&f)
}

func load(p *atomic.Pointer[[]atomic.Int64]) []int64 {
	s := p.Load()
	if s == nil {
		return nil
	}
	out := make([]int64, len(*s))
	for i := range *s {
		out[i] = (*s)[i].Load()
	}
	return out
}

// Processed returns the tasks each worker acknowledged, by worker slot
// (MaxWorkers of them).
func (c *Counters) Processed() []int64 { return load(&c.processed) }

// Failed returns the tasks each worker moved to the dead-letter store, by
// worker slot.
func (c *Counters) Failed() []int64 { return load(&c.failed) }

// Workers returns the pool's live worker goroutines: between MinWorkers
// and MaxWorkers while it holds the lease (a retiring worker counts until
// it has finished its OrderIDs), 0 while it waits as a standby.
func (c *Counters) Workers() int { return int(c.workers.Load()) }

// AnalysePool runs analyser's queue until ctx ends: it takes the queue's
// lease (waiting as a hot standby while another process holds it), puts
// tasks left pending by an earlier owner back first, then claims tasks in
// batches and runs fn on its workers (see PoolConfig.Dispatch), the tasks
// of one OrderID one at a time, in order. When ctx ends it stops claiming,
// starts no more tasks (none past ctx's deadline, even while a Redis call
// delays the stop), hands unstarted tasks back at once (after a Redis error, it leaves them
// pending for the next owner to put back), gives running tasks
// ShutdownTimeout, acknowledges what finished, releases the lease and
// returns nil. If it loses the lease it cancels its tasks, reports
// ErrLeaseLost through OnError and waits as a standby again. It returns an
// error only for invalid arguments, a layout mismatch or a closed Queue
// (a Close while it runs stops it as ctx's end does; see Close). A layout
// mismatch met while it runs (its server restarted empty and a process
// with another layout recorded its own first) stops it as ctx's end does
// too, without retrying the writes Redis refuses for it, and it returns
// the *LayoutError rather than report it.
// It joins every goroutine it starts before returning.
func (q *Queue) AnalysePool(ctx context.Context, analyser int, cfg PoolConfig, fn AnalyseFunc) error {
	ctx, done := q.whileOpen(ctx)
	defer done()
	return q.closedErr(q.analysePool(ctx, analyser, cfg, fn))
}

func (q *Queue) analysePool(ctx context.Context, analyser int, cfg PoolConfig, fn AnalyseFunc) (err error) {
	if fn == nil {
		return ErrNilFunc
	}
	userOnError := cfg.OnError
	cfg, err = cfg.withDefaults()
	if err != nil {
		return err
	}
	log := newPoolLog(cfg.Logger, userOnError, analyser)
	// A layout mismatch met while the pool runs (every new connection of
	// a Dial'd queue checks the layout: a server that restarted empty and
	// was laid out by a process with another layout refuses them all)
	// cannot be fixed by retrying: the pool stops as when ctx ends, and
	// returns it, as it does one met before it starts. It is not reported.
	ctx, refuse := context.WithCancelCause(ctx)
	defer refuse(nil)
	var refusal atomic.Pointer[error]
	cfg.OnError = func(err error) {
		if _, failed := errors.AsType[*TaskError](err); !failed && layoutRefused(err) {
			if refusal.CompareAndSwap(nil, &err) {
				refuse(err)
			}
			return
		}
		log.error(err)
	}
	defer func() {
		if p := refusal.Load(); p != nil && err == nil {
			err = *p
		}
	}()
	var b backoff
	sent := time.Now()
	st, err := q.newStore(ctx, analyser, cfg.LeaseTTL, cfg.MaxAttempts, cfg.Owner)
	for err != nil {
		// The layout check needs Redis: wait for an unreachable server as
		// the pool does once running, and return only invalid arguments.
		if errors.Is(err, ErrLayoutMismatch) || errors.Is(err, ErrAnalyserRange) ||
			errors.Is(err, ErrBadConfig) || errors.Is(err, ErrClosed) {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
		cfg.OnError(err)
		if b.wait(ctx) != nil {
			return nil
		}
		sent = time.Now()
		st, err = q.newStore(ctx, analyser, cfg.LeaseTTL, cfg.MaxAttempts, cfg.Owner)
	}
	log.ok(sent)
	b.reset()
	st.idsLater = true                    // its acker writes its claims' task IDs
	st.native.Store(true)                 // and it claims in place
	st.tapChunk = heldChunk(cfg)          // reading claims into chunks its held tasks may keep
	st.waiter = q.waiters[st.pi].retain() // idle waits share the partition's connections
	defer st.waiter.release()
	if cfg.Counters != nil {
		cfg.Counters.init(cfg.MaxWorkers)
	}
	warnEviction(ctx, st.part, st.keys.lease, cfg.Logger)
	seen := "" // the holder last told of
	onLook := func(sent time.Time, holder string, left time.Duration) {
		log.ok(sent)
		if holder == "" || holder == seen { // taken, or told already
			return
		}
		seen = holder
		_, owner := parseLease(holder)
		cfg.Logger.Info("queue: waiting as a standby", "analyser", analyser, "holder", owner,
			"lease_left", left.Round(time.Millisecond))
	}
	var limit *limiter // kept across tenures: a retaken lease brings no new burst
	if cfg.Rate > 0 {
		limit = newLimiter(cfg.Rate, cfg.Burst, time.Now())
	}
	waitFrom := time.Now() // since when this pool has had no lease
	tenures := 0
	for {
		if err := st.acquire(ctx, cfg.OnError, onLook); err != nil {
			return nil // ctx ended while waiting; nothing is held
		}
		plain := seen == "" && tenures == 0 // the first tenure, with no holder met on the way
		// The server may have lost the layout since it was checked (a
		// restart without persistence): check again with every tenure,
		// before anything is claimed, and say so when it is gone.
		gone, err := q.recheckLayout(ctx, st.part)
		if err != nil {
			st.release(context.WithoutCancel(ctx))
			if layoutRefused(err) {
				return err
			}
			if ctx.Err() != nil {
				return nil // stopped during the check: nothing to report
			}
			cfg.OnError(err)
			if b.wait(ctx) != nil {
				return nil
			}
			continue
		}
		if gone && tenures > 0 {
			cfg.Logger.Warn("queue: the layout record was gone from Redis, and is recorded again: did Redis lose its data (a restart without persistence)? The tasks it held then are lost",
				"analyser", analyser, "partition", st.part.index)
		}
		seen = ""
		tenures++
		s := newSession(ctx, st, cfg, fn)
		s.gate = &q.gate
		s.log, s.waited, s.plain = log, time.Since(waitFrom), plain
		if limit != nil {
			limit.forget(time.Now()) // the last tenure's workers are gone
			s.limit = limit
		}
		end := s.run(ctx)
		waitFrom = time.Now()
		switch end {
		case endStopped, endEmpty:
			return nil
		case endLost:
			cfg.OnError(fmt.Errorf("queue: analyser %d: %w; waiting as a standby", analyser, ErrLeaseLost))
			b.reset()
		case endFailed:
			if b.wait(ctx) != nil {
				return nil
			}
		}
	}
}

// warnEviction logs a warning when the server that holds key may evict
// keys, which would lose tasks. It asks CONFIG, and where CONFIG is
// refused (managed services, an ACL) INFO memory; a server that refuses
// both is logged at debug level.
func warnEviction(ctx context.Context, p *partition, key string, log *slog.Logger) {
	read := func(c redis.Conn) (string, error) {
		r, err := redis.Strings(doContext(c, ctx, "CONFIG", "GET", "maxmemory-policy"))
		if err == nil {
			if len(r) == 2 {
				return r[1], nil
			}
			return "", nil
		}
		if _, refused := errors.AsType[redis.Error](err); !refused {
			// Not an answer (ctx ended, the connection failed): the call
			// may still be on its way on c, which takes no other.
			return "", err
		}
		info, ierr := redis.String(doContext(c, ctx, "INFO", "memory"))
		if ierr != nil {
			return "", err
		}
		if policy, ok := infoField(info, "maxmemory_policy"); ok {
			return policy, nil
		}
		return "", err
	}
	var policy string
	var err error
	if p.router != nil {
		policy, err = p.router.onNodeOf(ctx, key, read) // CONFIG has no key: ask the queue's primary
	} else {
		policy, err = onPartition(ctx, p, "read maxmemory-policy", read)
	}
	switch {
	case err != nil:
		log.Debug("queue: cannot read maxmemory-policy; make sure it is noeviction", "partition", p.index, "err", err)
	case policy != "" && policy != "noeviction":
		log.Warn("queue: redis may evict keys and lose tasks; set maxmemory-policy noeviction",
			"partition", p.index, "maxmemory-policy", policy)
	}
}

// infoField returns the value of field in an INFO reply.
func infoField(info, field string) (string, bool) {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

// seqLostError reports pending tasks that went to the dead-letter store
// because their place in the claim sequence was lost.
func seqLostError(st *store, n int) error {
	return fmt.Errorf("queue: %s: %w: %d pending tasks had no claim-sequence record; "+
		"their order is unknown, so they were moved to the dead-letter store to be replayed by hand", st.what("recover"), ErrMalformed, n)
}
