package queue

import (
	"fmt"
	"log/slog"
	"time"
)

// The settings of AnalysePool, and their defaults.

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
	// (ErrMalformed), and on a Redis Cluster the queue's slot served by
	// another primary during the lease (the pool resyncs: see the package
	// doc's Redis Cluster section). A layout mismatch is not one of them: AnalysePool
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
