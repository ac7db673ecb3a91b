package queue

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
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

// roleConfig configures a child process.
type roleConfig struct {
	URL     string // redis:// URL, possibly through a proxy
	Prefix  string
	Queues  int
	History string // the file the process appends its events to

	// Analyser settings.
	Analyser        int
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
	PerOrder   int           // tasks per OrderID
	Batch      int           // tasks per AddTasks call; 0 uses AddTask
	Goroutines int           // concurrent producing goroutines, each owning Orders/Goroutines OrderIDs
	PoisonAt   int           // when Poison is set, task seq PoisonAt of OrderID 0 carries it
	Pause      time.Duration // each goroutine waits this long after each add
	PayloadPad int           // bytes of padding in each payload
	// RetryRefused makes the producer add a task (or batch) again, after
	// 5ms, when Redis refused it (ErrRedisOOM, ErrWrongType): such an add
	// wrote nothing, so a retry cannot duplicate it.
	RetryRefused bool
}

// faultEvent is one line of a history. Wall is Unix nanoseconds; Mono is
// nanoseconds since the process started (monotonic).
type faultEvent struct {
	Ev       string `json:"ev"`
	Pid      int    `json:"pid"`
	Wall     int64  `json:"wall"`
	Mono     int64  `json:"mono,omitempty"`
	ID       string `json:"id,omitempty"`
	Order    uint64 `json:"order"`
	Seq      int    `json:"seq"`
	Attempt  int    `json:"attempt,omitempty"`
	Result   string `json:"result,omitempty"`
	Batch    int    `json:"batch,omitempty"`
	Token    int64  `json:"token,omitempty"`
	Analyser int    `json:"analyser"`
	N        int    `json:"n,omitempty"`
	Err      string `json:"err,omitempty"`
	Kind     string `json:"kind,omitempty"` // an error's kind (errKind)
}

// Event kinds.
const (
	evAdd         = "add"         // producer: about to add task (order, seq), in Batch if non-zero
	evAdded       = "added"       // producer: AddTask of (order, seq) returned: Result ok or error
	evBatch       = "batch"       // producer: AddTasks of Batch returned: Result ok or error
	evStart       = "start"       // analyser: analyse call begins
	evFinish      = "finish"      // analyser: analyse call returns: Result ok, error, panic, cancelled
	evDead        = "dead"        // analyser: OnError reported the task dead-lettered
	evLost        = "lost"        // analyser: OnError reported a lost lease
	evLease       = "lease"       // analyser: Redis granted it a lease with Token
	evAck         = "ack"         // analyser: ack script sent (Wall) with Token: Result ok (N acked) or refused or error
	evExit        = "exit"        // any child: exiting normally
	evLeak        = "leak"        // analyser: goroutines left after AnalysePool returned (Err lists them)
	evPoolErr     = "poolerr"     // analyser: OnError reported a Redis error (Err, Kind)
	evKill        = "kill"        // harness: SIGKILL sent to Pid
	evTerm        = "term"        // harness: SIGTERM sent to Pid
	evStop        = "stop"        // harness: SIGSTOP sent to Pid
	evCont        = "cont"        // harness: SIGCONT sent to Pid
	evFault       = "fault"       // harness: a fault not tied to a child (server kill, proxy resets)
	evPending     = "pending"     // harness: task ID was pending in Redis at the fault
	evDeadRec     = "deadrec"     // harness: task ID is in the dead-letter store; Wall = when it died
	evQuarantined = "quarantined" // harness: a malformed record (field ID) is in the dead-letter store
)

// historyWriter appends events to a file, one write per event.
type historyWriter struct {
	mu    sync.Mutex
	f     *os.File
	pid   int
	start time.Time
	buf   []byte
}

func openHistory(path string) (*historyWriter, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return &historyWriter{f: f, pid: os.Getpid(), start: time.Now()}, nil
}

func (h *historyWriter) log(e faultEvent) { h.logAt(e, time.Now()) }

// logAt writes e stamped with the time at.
func (h *historyWriter) logAt(e faultEvent, at time.Time) {
	e.Pid, e.Wall, e.Mono = h.pid, at.UnixNano(), int64(at.Sub(h.start))
	b, _ := json.Marshal(e)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.buf = append(append(h.buf[:0], b...), '\n')
	h.f.Write(h.buf)
}

// errKind classifies an error for a history: "oom" (ErrRedisOOM),
// "wrongtype" (ErrWrongType), or "other".
func errKind(err error) string {
	switch {
	case errors.Is(err, ErrRedisOOM):
		return "oom"
	case errors.Is(err, ErrWrongType):
		return "wrongtype"
	}
	return "other"
}

// refused reports whether Redis refused a write and so made none.
func refused(err error) bool { return errors.Is(err, ErrRedisOOM) || errors.Is(err, ErrWrongType) }

// taskPayload is the payload of the suite's tasks: OrderID, per-order
// sequence number, and a marker.
func taskPayload(order uint64, seq int, mark string) []byte {
	return []byte(fmt.Sprintf("%d:%d:%s", order, seq, mark))
}

func parsePayload(p []byte) (order uint64, seq int, mark string, err error) {
	parts := strings.SplitN(string(p), ":", 3)
	if len(parts) != 3 {
		return 0, 0, "", fmt.Errorf("payload %q: want order:seq:mark", p)
	}
	order, err = strconv.ParseUint(parts[0], 10, 64)
	if err == nil {
		seq, err = strconv.Atoi(parts[1])
	}
	return order, seq, parts[2], err
}

// runFaultRole runs this process as a fault-suite child when
// QUEUE_FAULT_ROLE is set, and reports whether it did. A failing role
// exits the process with a non-zero status.
func runFaultRole() bool {
	role := os.Getenv(faultRoleEnv)
	if role == "" {
		return false
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

// roleQueue makes the child's queue; every connection records the lease
// grants and acks it carries in h.
func roleQueue(cfg roleConfig, h *historyWriter) (*Queue, *redis.Pool) {
	pool := &redis.Pool{
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
			return &recConn{Conn: c, h: h, analyser: cfg.Analyser}, nil
		},
	}
	q, err := New([]*redis.Pool{pool}, Config{Prefix: cfg.Prefix, Queues: cfg.Queues})
	if err != nil {
		panic(err) // the harness passes a valid config
	}
	return q, pool
}

func runAnalyser(cfg roleConfig) error {
	h, err := openHistory(cfg.History)
	if err != nil {
		return err
	}
	q, pool := roleQueue(cfg, h)
	defer pool.Close()
	defer q.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	pc := PoolConfig{
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
				h.log(faultEvent{Ev: evDead, ID: te.ID, Order: te.OrderID, Attempt: te.Attempt, Analyser: cfg.Analyser})
			case errors.As(err, &te):
			case errors.Is(err, ErrLeaseLost):
				h.log(faultEvent{Ev: evLost, Analyser: cfg.Analyser, Err: err.Error()})
			default:
				h.log(faultEvent{Ev: evPoolErr, Analyser: cfg.Analyser, Err: err.Error(), Kind: errKind(err)})
				logger.Warn("pool error", "err", err)
			}
		},
	}
	baseline := goleak.IgnoreCurrent()
	err = q.AnalysePool(ctx, cfg.Analyser, pc, func(ctx context.Context, t Task) (err error) {
		order, seq, mark, perr := parsePayload(t.Payload)
		if perr != nil {
			return perr
		}
		ev := faultEvent{ID: t.ID, Order: order, Seq: seq, Attempt: t.Attempt, Analyser: cfg.Analyser}
		ev.Ev = evStart
		h.log(ev)
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
		if cfg.Work > 0 {
			timer := time.NewTimer(rand.N(2 * cfg.Work))
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
	})
	if err == nil {
		// AnalysePool joined everything it started: only this process's
		// own goroutines may be left.
		if lerr := goleak.Find(baseline); lerr != nil {
			h.log(faultEvent{Ev: evLeak, Analyser: cfg.Analyser, Err: lerr.Error()})
		}
	}
	h.log(faultEvent{Ev: evExit, Analyser: cfg.Analyser})
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
	q, pool := roleQueue(cfg, h)
	defer pool.Close()
	defer q.Close()
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
	q, pool := roleQueue(cfg, h)
	defer pool.Close()
	defer q.Close()
	ctx := context.Background()
	g := max(cfg.Goroutines, 1)
	var wg sync.WaitGroup
	var batchSeq struct {
		sync.Mutex
		n int
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
					order := uint64(cfg.FirstOrder + o)
					mark := "x" + strings.Repeat("p", cfg.PayloadPad)
					if cfg.Poison != "" && order == 0 && seq == cfg.PoisonAt {
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
						ev := ev
						h.log(ev)
						id, err := q.AddTask(ctx, order, p)
						ev.Ev, ev.ID, ev.Result = evAdded, id, "ok"
						if err != nil {
							ev.Result, ev.Err, ev.Kind = "error", err.Error(), errKind(err)
						}
						h.log(ev)
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
	h.log(faultEvent{Ev: evExit})
	return nil
}

// recConn records, in a child's history, every lease the acquire script
// grants and every ack script sent with its outcome, so the checker can
// tell late acks that Redis accepted.
type recConn struct {
	redis.Conn
	h        *historyWriter
	analyser int
}

var (
	ackHash     = ackScript.Hash()
	acquireHash = acquireScript.Hash()
)

// scriptOf returns the hash of the script an EVAL or EVALSHA runs.
func scriptOf(cmd string, args []any) string {
	if len(args) == 0 {
		return ""
	}
	switch strings.ToUpper(cmd) {
	case "EVALSHA":
		s, _ := args[0].(string)
		return s
	case "EVAL":
		s, _ := args[0].(string)
		sum := sha1.Sum([]byte(s))
		return hex.EncodeToString(sum[:])
	}
	return ""
}

func leaseToken(v any) int64 {
	s, _ := v.(string)
	if b, ok := v.([]byte); ok {
		s = string(b)
	}
	tok, _, _ := strings.Cut(s, ":")
	n, _ := strconv.ParseInt(tok, 10, 64)
	return n
}

func (c *recConn) record(cmd string, args []any, do func() (any, error)) (any, error) {
	script := scriptOf(cmd, args)
	if script != ackHash && script != acquireHash {
		return do()
	}
	sent := time.Now()
	r, err := do()
	if err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
		return r, err // the library sends the script again with EVAL
	}
	switch script {
	case ackHash:
		// EVALSHA hash 4 pending lease meta order leaseValue ttl k ids... orders...
		ev := faultEvent{Ev: evAck, Analyser: c.analyser, Result: "ok"}
		if len(args) > 6 {
			ev.Token = leaseToken(args[6])
		}
		switch {
		case err == nil:
			ev.N, _ = redis.Int(r, nil)
		case strings.Contains(err.Error(), staleReply):
			ev.Result = "refused"
		default:
			ev.Result, ev.Err = "error", err.Error()
		}
		c.h.logAt(ev, sent) // stamped with the send time
	case acquireHash:
		if err == nil {
			if v, verr := redis.Values(r, nil); verr == nil && len(v) == 2 {
				if n, _ := redis.Int(v[0], nil); n == 1 {
					c.h.log(faultEvent{Ev: evLease, Analyser: c.analyser, Token: leaseToken(v[1])})
				}
			}
		}
	}
	return r, err
}

func (c *recConn) Do(cmd string, args ...any) (any, error) {
	return c.record(cmd, args, func() (any, error) { return c.Conn.Do(cmd, args...) })
}

func (c *recConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	return c.record(cmd, args, func() (any, error) { return redis.DoContext(c.Conn, ctx, cmd, args...) })
}

func (c *recConn) DoWithTimeout(d time.Duration, cmd string, args ...any) (any, error) {
	return c.record(cmd, args, func() (any, error) { return redis.DoWithTimeout(c.Conn, d, cmd, args...) })
}

func (c *recConn) ReceiveContext(ctx context.Context) (any, error) {
	return redis.ReceiveContext(c.Conn, ctx)
}

func (c *recConn) ReceiveWithTimeout(d time.Duration) (any, error) {
	return redis.ReceiveWithTimeout(c.Conn, d)
}
