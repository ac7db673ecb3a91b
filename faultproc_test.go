package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gomodule/redigo/redis"
	"go.uber.org/goleak"
)

// The fault suite runs producers and analysers as child processes: the
// test binary re-executes itself with QUEUE_FAULT_ROLE set, and TestMain
// hands over to runFaultRole before any test runs. Each child writes its
// history, one JSON event a line, to its own file; every event is written
// with one unbuffered write before the step it announces goes on, so a
// kill -9 loses at most the event being written.

const (
	faultRoleEnv   = "QUEUE_FAULT_ROLE"   // "analyser", "producer" or "consumer"
	faultConfigEnv = "QUEUE_FAULT_CONFIG" // the role's roleConfig as JSON
)

// poisonExit is the exit status of an analyser killed by a poison task.
const poisonExit = 3

// faultTaskTimeout is the analysers' TaskTimeout (the default), set so
// that a call can read from its ctx's deadline when the pool started it.
const faultTaskTimeout = time.Minute

// roleConfig configures a child process.
type roleConfig struct {
	URL     string // redis:// URL, possibly through a proxy
	Prefix  string
	Queues  int
	History string // the file the process appends its events to
	// WaitReplicas is the queue's Config.WaitReplicas (Sentinel and
	// cluster URLs, whose pools Dial's code makes).
	WaitReplicas int

	// Analyser settings.
	Analyser        int           // the analyser served, unless Group is set
	Group           string        // when set, the process joins this group (JoinGroup) and serves what it is given
	Member          string        // its member name in Group
	Weight          int           // its weight in Group
	SessionTTL      time.Duration // its session in Group
	Workers         int
	Prefetch        int
	LeaseTTL        time.Duration
	MaxAttempts     int
	ShutdownTimeout time.Duration
	Work            time.Duration // each analyse call sleeps up to twice this, on average this
	IgnoreCtx       bool          // the sleep does not end with the task's ctx (a call that cannot be cut short)
	PanicRate       float64       // share of calls that panic
	ErrorRate       float64       // share of calls that return an error
	Poison          string        // a payload containing this makes the process exit after PoisonAfter
	PoisonAfter     time.Duration

	// Producer settings.
	FirstOrder int // OrderIDs FirstOrder..FirstOrder+Orders-1
	Orders     int
	PerOrder   int // tasks per OrderID
	Batch      int // tasks per AddTasks call; 0 uses AddTask
	Goroutines int // concurrent producing goroutines, each owning Orders/Goroutines OrderIDs
	PoisonAt   int // when Poison is set, task seq PoisonAt of OrderID 0 carries it
	// PoisonOrders, when over 1, puts the poison in task seq PoisonAt of
	// OrderIDs 0 to PoisonOrders-1.
	PoisonOrders int
	Pause        time.Duration // each goroutine waits this long after each add
	// Rate, when positive, paces the producer on a schedule until it gets
	// SIGUSR1: its n-th add starts no sooner than n/Rate seconds after the
	// first, whatever each add costs. After SIGUSR1 it adds the rest as
	// fast as it can. A test that makes changes while tasks flow keeps the
	// producer adding until its last change, however long they take.
	Rate       int
	PayloadPad int // bytes of padding in each payload
	// HoldAfter, when positive, is how many tasks the producer adds at
	// most: then it waits to be killed instead of exiting, so a kill meant
	// to land before the end finds it alive however late it comes.
	HoldAfter int
	// RetryRefused makes the producer add a task (or batch) again, after
	// 5ms, when Redis refused it (ErrRedisOOM, ErrWrongType, ErrReadOnly): such an add
	// wrote nothing, so a retry cannot duplicate it.
	RetryRefused bool
	// ScheduleShare is the share of single adds made with AddTaskAt, due
	// up to ScheduleMax ahead (faultproc_control_test.go).
	ScheduleShare float64
	ScheduleMax   time.Duration
	// CancelShare is the share of the tasks added ok one at a time that
	// the producer cancels, each up to CancelMax after its add returned.
	CancelShare float64
	CancelMax   time.Duration
	// SlowShare is the share of single adds marked slow (an analyser
	// with SlowWork takes longer over them), each of which the producer
	// cancels up to SlowCancel after an analyser claimed it: most while
	// they run.
	SlowShare  float64
	SlowCancel time.Duration
	SlowWork   time.Duration // analyser: each slow task's call sleeps up to twice this, honouring ctx
}

// refused reports whether Redis refused a write and so made none.
func refused(err error) bool {
	return errors.Is(err, ErrRedisOOM) || errors.Is(err, ErrWrongType) || errors.Is(err, ErrReadOnly)
}

// runFaultRole runs this process as a fault-suite child when
// QUEUE_FAULT_ROLE is set, and reports whether it did. A failing role
// exits the process with a non-zero status.
func runFaultRole() bool {
	role := os.Getenv(faultRoleEnv)
	if role == "" {
		return false
	}
	if role == "clock" { // TestStampIsOneClockForTheSuite
		fmt.Println(stamp(time.Now()))
		return true
	}
	var cfg roleConfig
	err := json.Unmarshal([]byte(os.Getenv(faultConfigEnv)), &cfg)
	if err == nil {
		switch role {
		case "analyser":
			err = runAnalyser(cfg)
		case "producer":
			err = runProducer(cfg)
		case "consumer":
			err = runConsumer(cfg)
		default:
			err = fmt.Errorf("unknown role %q", role)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "fault role %s: %v\n", role, err)
		os.Exit(2)
	}
	return true
}

// roleQueue makes the child's queue, on one server, on the primary its
// redis+sentinel:// URL names (through Dial's Sentinel pool, which follows
// a failover) or, given a redis+cluster:// URL, on one partition of the
// cluster through a slot router; every connection records the lease
// grants and acks it carries in h. closeAll closes the queue and what it
// uses.
func roleQueue(cfg roleConfig, h *historyWriter) (q *Queue, closeAll func()) {
	rec := func(c redis.Conn) redis.Conn { return &recConn{Conn: c, h: h, partitions: 1} }
	qcfg := Config{Prefix: cfg.Prefix, Queues: cfg.Queues}
	var pool *redis.Pool
	stop := func() error { return nil }
	u, uerr := parseRedisURL(cfg.URL)
	if uerr == nil && u.topo == sentinel {
		sc, err := Config{DialTimeout: time.Second, ReadTimeout: 5 * time.Second, WaitReplicas: cfg.WaitReplicas}.withDefaults()
		if err == nil {
			pool, stop, err = sentinelPool(context.Background(), u, sc, nil, rec)
		}
		if err != nil {
			panic(err) // the harness starts children once the sentinels answer
		}
	} else if uerr == nil && u.topo == cluster {
		rcfg, err := Config{DialTimeout: time.Second, ReadTimeout: 5 * time.Second, MaxIdle: 32, WaitReplicas: cfg.WaitReplicas}.withDefaults()
		if err != nil {
			panic(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r, err := newClusterRouter(ctx, u, rcfg)
		if err != nil {
			fmt.Fprintf(os.Stderr, "fault role: cluster router: %v\n", err)
			os.Exit(2)
		}
		pool, stop = r.partitionPool(rec), r.close
	} else {
		pool = &redis.Pool{
			MaxIdle:     32,
			IdleTimeout: time.Minute,
			DialContext: func(ctx context.Context) (redis.Conn, error) {
				c, err := redis.DialURLContext(ctx, cfg.URL,
					redis.DialConnectTimeout(time.Second),
					redis.DialReadTimeout(5*time.Second),
					redis.DialWriteTimeout(5*time.Second))
				if err != nil {
					return nil, err
				}
				return rec(c), nil
			},
		}
	}
	q, err := New([]*redis.Pool{pool}, qcfg)
	if err != nil {
		panic(err) // the harness passes a valid config
	}
	return q, func() {
		q.Close()
		pool.Close()
		stop()
	}
}

func runAnalyser(cfg roleConfig) error {
	h, err := openHistory(cfg.History)
	if err != nil {
		return err
	}
	q, closeAll := roleQueue(cfg, h)
	defer closeAll()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	// At Info: when a test fails, the tail of each child's output it
	// shows tells when the child waited, took a lease, and how long its
	// recovery took.
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	// A group member serves many analysers through one OnError: an error
	// that is not a task's is recorded with analyser -1 (unknown).
	errAnalyser := cfg.Analyser
	if cfg.Group != "" {
		errAnalyser = -1
	}
	pc := PoolConfig{
		TaskTimeout:     faultTaskTimeout,
		Workers:         cfg.Workers,
		Prefetch:        cfg.Prefetch,
		LeaseTTL:        cfg.LeaseTTL,
		MaxAttempts:     cfg.MaxAttempts,
		ShutdownTimeout: cfg.ShutdownTimeout,
		Backoff:         func(int) time.Duration { return 5 * time.Millisecond },
		Logger:          logger,
		OnError: func(err error) {
			var te *TaskError
			switch {
			case errors.As(err, &te) && te.Dead:
				h.log(faultEvent{Ev: evDead, ID: te.ID, Order: te.OrderID, Attempt: te.Attempt, Analyser: q.AnalyserOf(te.OrderID)})
			case errors.As(err, &te):
			case errors.Is(err, ErrLeaseLost):
				h.log(faultEvent{Ev: evLost, Analyser: errAnalyser, Err: err.Error()})
			default:
				h.log(faultEvent{Ev: evPoolErr, Analyser: errAnalyser, Err: err.Error(), Kind: errKind(err)})
				logger.Warn("pool error", "err", err)
			}
		},
	}
	baseline := goleak.IgnoreCurrent()
	fn := func(ctx context.Context, t Task) (err error) {
		// A start is the pool's: the clock reading it checked its lease
		// with before it made the call, which it also gives the task's ctx
		// (its deadline less TaskTimeout). The call may get the CPU later:
		// a process paused in between makes the call when it continues,
		// as it finishes one paused in the middle (a zombie's tail, see the
		// checker). A start the pool decided after it continued is stale.
		begun := time.Now()
		if dl, ok := ctx.Deadline(); ok {
			begun = dl.Add(-faultTaskTimeout)
		}
		order, seq, mark, perr := parsePayload(t.Payload)
		if perr != nil {
			return perr
		}
		ev := faultEvent{ID: t.ID, Order: order, Seq: seq, Attempt: t.Attempt, Analyser: q.AnalyserOf(t.OrderID)}
		ev.Ev = evStart
		h.logAt(ev, begun)
		ev.Ev, ev.Result = evFinish, "ok"
		defer func() {
			if r := recover(); r != nil {
				ev.Result = "panic"
				h.log(ev)
				panic(r)
			}
			h.log(ev)
		}()
		if cfg.Poison != "" && strings.Contains(mark, cfg.Poison) {
			time.Sleep(cfg.PoisonAfter)
			os.Exit(poisonExit) // the task kills its process, every time
		}
		work := cfg.Work
		if cfg.SlowWork > 0 && strings.Contains(mark, "slow") {
			work = cfg.SlowWork
		}
		if work > 0 {
			timer := time.NewTimer(rand.N(2 * work))
			done := ctx.Done()
			if cfg.IgnoreCtx {
				done = nil
			}
			select {
			case <-timer.C:
			case <-done:
				timer.Stop()
			}
		}
		if ctx.Err() != nil && !cfg.IgnoreCtx {
			ev.Result = "cancelled"
			return ctx.Err()
		}
		switch r := rand.Float64(); {
		case r < cfg.PanicRate:
			panic("injected panic")
		case r < cfg.PanicRate+cfg.ErrorRate:
			ev.Result = "error"
			return errors.New("injected error")
		}
		return nil
	}
	if cfg.Group != "" {
		err = q.JoinGroup(ctx, cfg.Group, GroupConfig{Member: cfg.Member, Weight: cfg.Weight, SessionTTL: cfg.SessionTTL, Pool: pc}, fn)
	} else {
		err = q.AnalysePool(ctx, cfg.Analyser, pc, fn)
	}
	if err == nil {
		// AnalysePool and JoinGroup join everything they start: only this
		// process's own goroutines may be left.
		if lerr := goleak.Find(baseline); lerr != nil {
			h.log(faultEvent{Ev: evLeak, Analyser: errAnalyser, Err: lerr.Error()})
		}
	}
	h.log(faultEvent{Ev: evExit, Analyser: errAnalyser})
	return err
}

// runConsumer drives the low-level API once: it takes the lease, claims
// up to Prefetch tasks, "works" on them for Work (without renewing),
// acknowledges them and exits. An ack refused as stale is the expected
// outcome when the process was paused past its lease, and exits 0 too.
func runConsumer(cfg roleConfig) error {
	h, err := openHistory(cfg.History)
	if err != nil {
		return err
	}
	q, closeAll := roleQueue(cfg, h)
	defer closeAll()
	ctx := context.Background()
	c, err := q.Consume(ctx, cfg.Analyser, ConsumerConfig{LeaseTTL: cfg.LeaseTTL, MaxAttempts: cfg.MaxAttempts})
	if err != nil {
		return err
	}
	tasks, err := c.Claim(ctx, cfg.Prefetch)
	if err != nil {
		return err
	}
	evs := make([]faultEvent, len(tasks))
	ids := make([]string, len(tasks))
	for i, t := range tasks {
		order, seq, _, err := parsePayload(t.Payload)
		if err != nil {
			return err
		}
		evs[i] = faultEvent{Ev: evStart, ID: t.ID, Order: order, Seq: seq, Attempt: t.Attempt, Analyser: cfg.Analyser}
		h.log(evs[i])
		ids[i] = t.ID
	}
	time.Sleep(cfg.Work)
	for _, ev := range evs {
		ev.Ev, ev.Result = evFinish, "ok"
		h.log(ev)
	}
	_, err = c.Ack(ctx, ids...)
	if err != nil && !errors.Is(err, ErrLeaseLost) {
		return err
	}
	h.log(faultEvent{Ev: evExit, Analyser: cfg.Analyser})
	return nil
}

func runProducer(cfg roleConfig) error {
	h, err := openHistory(cfg.History)
	if err != nil {
		return err
	}
	q, closeAll := roleQueue(cfg, h)
	defer closeAll()
	// A ctx that can end, as a server's requests have, though it never
	// does: adds that share a round trip take the path of callers who may
	// give up.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g := max(cfg.Goroutines, 1)
	var wg sync.WaitGroup
	var batchSeq struct {
		sync.Mutex
		n int
	}
	var begun atomic.Int64 // tasks this producer began to add
	var paced atomic.Int64 // adds that waited for their slot
	start := time.Now()
	unpaced := make(chan os.Signal, 1)
	signal.Notify(unpaced, syscall.SIGUSR1)
	defer signal.Stop(unpaced)
	var fast atomic.Bool // SIGUSR1 came
	canc := &canceller{q: q, log: h.log, share: cfg.CancelShare, most: cfg.CancelMax, slowMost: cfg.SlowCancel}
	pace := func() {
		if cfg.Rate <= 0 || fast.Load() {
			return
		}
		n := paced.Add(1) - 1
		slot := time.NewTimer(time.Until(start.Add(time.Duration(n) * time.Second / time.Duration(cfg.Rate))))
		defer slot.Stop()
		select {
		case <-slot.C:
		case <-unpaced:
			fast.Store(true)
		}
	}
	for gi := 0; gi < g; gi++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var batch []Task
			var keys []faultEvent
			flush := func() {
				if len(batch) == 0 {
					return
				}
				batchSeq.Lock()
				batchSeq.n++
				b := batchSeq.n
				batchSeq.Unlock()
				for {
					for _, k := range keys {
						k.Batch = b
						h.log(k)
					}
					_, err := q.AddTasks(ctx, batch)
					ev := faultEvent{Ev: evBatch, Batch: b, Result: "ok", N: len(batch)}
					if err != nil {
						ev.Result, ev.Err, ev.Kind = "error", err.Error(), errKind(err)
					}
					h.log(ev)
					if err == nil || !cfg.RetryRefused || !refused(err) {
						break
					}
					time.Sleep(5 * time.Millisecond)
					batchSeq.Lock()
					batchSeq.n++
					b = batchSeq.n
					batchSeq.Unlock()
				}
				batch, keys = batch[:0], keys[:0]
			}
			for seq := 0; seq < cfg.PerOrder; seq++ {
				for o := gi; o < cfg.Orders; o += g {
					if cfg.HoldAfter > 0 && begun.Add(1) > int64(cfg.HoldAfter) {
						for { // wait for the kill (a sleep, not a block the runtime would call a deadlock)
							time.Sleep(time.Hour)
						}
					}
					pace()
					order := uint64(cfg.FirstOrder + o)
					mark := "x" + strings.Repeat("p", cfg.PayloadPad)
					slow := cfg.Batch == 0 && cfg.SlowShare > 0 && rand.Float64() < cfg.SlowShare
					if slow {
						mark += "slow"
					}
					if cfg.Poison != "" && order < uint64(max(cfg.PoisonOrders, 1)) && seq == cfg.PoisonAt {
						mark = cfg.Poison
					}
					p := taskPayload(order, seq, mark)
					ev := faultEvent{Ev: evAdd, Order: order, Seq: seq}
					if cfg.Batch > 0 {
						batch = append(batch, Task{OrderID: order, Payload: p})
						keys = append(keys, ev)
						if len(batch) >= cfg.Batch {
							flush()
						}
						continue
					}
					for {
						id, err := addLogged(ctx, q, h.log, order, seq, pickDueTime(cfg.ScheduleShare, cfg.ScheduleMax), p)
						if err == nil {
							canc.maybe(ctx, order, seq, id, slow)
						}
						if err == nil || !cfg.RetryRefused || !refused(err) {
							break
						}
						time.Sleep(5 * time.Millisecond)
					}
					if cfg.Pause > 0 {
						time.Sleep(cfg.Pause)
					}
				}
			}
			flush()
		}()
	}
	wg.Wait()
	canc.wait()
	h.log(faultEvent{Ev: evExit})
	return nil
}
