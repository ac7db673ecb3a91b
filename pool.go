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
		case endMoved:
			b.reset() // reported; taken again at once, and recovered
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
