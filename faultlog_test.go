package queue

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gomodule/redigo/redis"
)

// The event log of the fault suite: one JSON event a line, written by each
// child (and recConn, which records the lease grants and acks a connection
// carries) and read back by the harness for the checker.

// faultEvent is one line of a history. Wall is Unix nanoseconds by the
// suite's clock (see stamp); Mono is nanoseconds since the history was
// opened (monotonic).
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
	Due      int64  `json:"due,omitempty"`  // a scheduled add's due time, ms since the epoch (the score Redis keeps)
}

// Event kinds.
const (
	evAdd         = "add"         // producer: about to add task (order, seq), in Batch if non-zero, scheduled at Due if non-zero
	evAdded       = "added"       // producer: AddTask of (order, seq) returned: Result ok or error
	evCancel      = "cancel"      // producer: about to Cancel task ID of (order, seq)
	evCancelled   = "cancelled"   // producer: Cancel of ID returned: Result the TaskState it reported, or error
	evCancelFin   = "cancelfin"   // analyser: a script finishing task ID as cancelled is about to be sent (or, in-process, ran)
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

// faultClockEnv passes the suite's wall offset (suiteWallOffset) from
// the harness to the children it starts.
const faultClockEnv = "QUEUE_FAULT_CLOCK"

// suiteWallOffset is the wall clock less the host's monotonic clock
// (hostMono), taken once for the whole suite: read from faultClockEnv in
// a child, measured (the median of a few readings) in the harness, which
// passes it on. Zero where no host clock is read.
var suiteWallOffset = sync.OnceValue(func() int64 {
	if v, err := strconv.ParseInt(os.Getenv(faultClockEnv), 10, 64); err == nil {
		return v
	}
	if _, ok := hostMono(); !ok {
		return 0
	}
	var offs [7]int64
	for i := range offs {
		m, _ := hostMono()
		offs[i] = time.Now().UnixNano() - m
	}
	slices.Sort(offs[:])
	return offs[len(offs)/2]
})

// clockAnchor is the suite clock's offset from this process's monotonic
// clock (a reading of which is base), taken once as the median of a few
// readings: the host's monotonic clock plus suiteWallOffset, or, where
// no host clock is read, this process's wall clock.
var clockAnchor = sync.OnceValues(func() (base time.Time, offset int64) {
	base = time.Now()
	wall := suiteWallOffset()
	var offs [7]int64
	for i := range offs {
		r := time.Now()
		at, ok := hostMono()
		if ok {
			at += wall
		} else {
			at = r.UnixNano()
		}
		offs[i] = at - int64(r.Sub(base))
	}
	slices.Sort(offs[:])
	return base, offs[len(offs)/2]
})

// stamp returns t as Unix nanoseconds by the suite's clock: this process's
// monotonic clock, anchored once to the host's monotonic clock, which
// all the suite's processes read alike, and shifted by one wall-clock
// offset for the whole suite. A reading of the wall clock can be off for
// an instant (by microseconds, on a loaded VM by milliseconds, then right
// again), and the pool's clock reading for a task's start is
// extrapolated from one such reading: stamped by the wall clock, a task
// could seem to start before the one it followed on the same worker
// finished. By the monotonic clock a process's events keep the order
// they happened in; and as the wall clock may be stepped while the suite
// runs (a VM's clock set right by seconds), processes that each anchored
// to it at their own start would disagree by the step: a harness's kill
// would seem to come before its victim's last start, and every recovery
// would seem that much slower. A time with no monotonic reading (one
// Redis recorded) stamps its wall clock.
func stamp(t time.Time) int64 {
	if t == t.Round(0) {
		return t.UnixNano() // no monotonic reading: a time Redis recorded
	}
	base, offset := clockAnchor()
	return offset + int64(t.Sub(base))
}

// wallSteps follows the wall clock against the suite's clock (see
// stamp) while a fault test runs, so that a time written by a process's
// wall clock (a dead record's DiedAt) is put on the suite's clock: a
// step of the wall clock mid-run (a VM's clock set right, by
// milliseconds or seconds) would otherwise move such a time by the step
// against every other event, and a task dead-lettered after the step
// seem to die after later tasks of its OrderID started.
type wallSteps struct {
	mu   sync.Mutex
	wall []int64 // the wall clock's reading when its offset moved, in order read
	off  []int64 // its offset from the suite's clock since then
}

// watch reads both clocks every 20ms until stop is closed.
func (w *wallSteps) watch(stop <-chan struct{}) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		now := time.Now()
		w.note(now.UnixNano(), stamp(now))
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}

// note records a reading of both clocks when the wall clock's offset
// from the suite's moved by more than a millisecond since the last one
// noted (the first is the offset every later one is measured against:
// with no step, no time is moved).
func (w *wallSteps) note(wall, suite int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	off := wall - suite
	if n := len(w.off); n > 0 {
		if d := off - w.off[n-1]; d > -int64(time.Millisecond) && d < int64(time.Millisecond) {
			return
		}
	}
	w.wall, w.off = append(w.wall, wall), append(w.off, off)
}

// toSuite puts a wall-clock time on the suite's clock: less the step
// in force at the last reading noted at or before it by the wall clock.
func (w *wallSteps) toSuite(wall int64) int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var step int64
	for i, at := range w.wall {
		if at <= wall {
			step = w.off[i] - w.off[0]
		}
	}
	return wall - step
}

// logAt writes e stamped with the time at.
func (h *historyWriter) logAt(e faultEvent, at time.Time) {
	e.Pid, e.Wall, e.Mono = h.pid, stamp(at), int64(at.Sub(h.start))
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

// recConn records, in a child's history, every lease the acquire script
// grants and every ack script sent with its outcome, so the checker can
// tell late acks that Redis accepted. Each event names the analyser whose
// queue keys the call touches, so one process may serve many (a group
// member).
type recConn struct {
	redis.Conn
	h          *historyWriter
	partitions int // R of the queue's layout
	// sent is pipelined, reply not read yet (a wrapper that adds WAIT
	// pipelines every call). mu guards it: redigo lets one goroutine send
	// while another receives, as the waiter's tracking link does.
	mu   sync.Mutex
	sent []recordCmd
}

// forget drops the pipelined commands: a Do reads their replies, which
// go unrecorded.
func (c *recConn) forget() {
	c.mu.Lock()
	c.sent = nil
	c.mu.Unlock()
}

// recordCmd is a pipelined command of a recConn, and when it was sent.
type recordCmd struct {
	cmd  string
	args []any
	at   time.Time
}

// analyserOfKey returns the analyser whose queue a key names
// ("{prefix:P.Q}:name", see newQueueKeys) in a layout of partitions
// servers, or -1 when it names none.
func analyserOfKey(key any, partitions int) int {
	s, _ := key.(string)
	if !strings.HasPrefix(s, "{") {
		return -1
	}
	tag, _, ok := strings.Cut(s[1:], "}")
	if !ok {
		return -1
	}
	pq := tag[strings.LastIndexByte(tag, ':')+1:]
	ps, qs, _ := strings.Cut(pq, ".")
	p, perr := strconv.Atoi(ps)
	q, qerr := strconv.Atoi(qs)
	if perr != nil || qerr != nil || p < 0 || p >= partitions || q < 0 {
		return -1
	}
	return q*partitions + p
}

var (
	ackHash             = ackScript.Hash()
	acquireHash         = acquireScript.Hash()
	finishCancelledHash = finishCancelledScript.Hash()
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

// leaseToken returns the fencing token of a lease value, as Stats reads it.
func leaseToken(v any) int64 {
	s, _ := v.(string)
	if b, ok := v.([]byte); ok {
		s = string(b)
	}
	tok, _ := parseLease(s)
	return tok
}

// scriptArgs splits the arguments of an EVALSHA or EVAL (script,
// numkeys, keys..., args...) into its keys and its args.
func scriptArgs(args []any) (keys, argv []any) {
	if len(args) < 2 {
		return nil, nil
	}
	n := -1
	switch v := args[1].(type) {
	case int:
		n = v
	case int64:
		n = int(v)
	case string:
		n, _ = strconv.Atoi(v)
	}
	if n < 0 || 2+n > len(args) {
		return nil, nil
	}
	return args[2 : 2+n], args[2+n:]
}

// ackToken returns the fencing token of the lease value an ack script
// call carries (its first arg), or 0.
func ackToken(args []any) int64 {
	if _, argv := scriptArgs(args); len(argv) > 0 {
		return leaseToken(argv[0])
	}
	return 0
}

// cancelFinIDs returns the task IDs a call of finishCancelledScript
// finishes as cancelled: its args are the lease value, TTL, history
// expiry and retention, then claim, place, task ID, packed ID and record
// groups.
func cancelFinIDs(args []any) []string {
	_, argv := scriptArgs(args)
	var ids []string
	for i := 4; i+2 < len(argv); i += 5 {
		switch id := argv[i+2].(type) {
		case string:
			ids = append(ids, id)
		case []byte:
			ids = append(ids, string(id))
		}
	}
	return ids
}

// intent records, before it is sent, a call the checker times from its
// sending whatever its reply: a script that finishes tasks as cancelled
// holds back the next task of their OrderIDs until it has run, and a kill
// -9 between its reply and a record written after would leave that
// unknown.
func (c *recConn) intent(cmd string, args []any) {
	if scriptOf(cmd, args) != finishCancelledHash {
		return
	}
	analyser := -1
	if len(args) > 2 {
		analyser = analyserOfKey(args[2], c.partitions)
	}
	for _, id := range cancelFinIDs(args) {
		c.h.log(faultEvent{Ev: evCancelFin, ID: id, Analyser: analyser})
	}
}

func (c *recConn) record(cmd string, args []any, do func() (any, error)) (any, error) {
	return c.recordSent(cmd, args, time.Now(), do)
}

func (c *recConn) recordSent(cmd string, args []any, sent time.Time, do func() (any, error)) (any, error) {
	script := scriptOf(cmd, args)
	if script != ackHash && script != acquireHash {
		return do()
	}
	r, err := do()
	if err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
		return r, err // the library sends the script again with EVAL
	}
	// EVALSHA hash numkeys key...: both scripts' first key is the queue's.
	analyser := -1
	if len(args) > 2 {
		analyser = analyserOfKey(args[2], c.partitions)
	}
	switch script {
	case ackHash:
		ev := faultEvent{Ev: evAck, Analyser: analyser, Result: "ok", Token: ackToken(args)}
		switch {
		case err == nil:
			ev.N, _, _ = ackReply(r, nil)
		case strings.Contains(err.Error(), staleReply):
			ev.Result = "refused"
		default:
			ev.Result, ev.Err = "error", err.Error()
		}
		c.h.logAt(ev, sent) // stamped with the send time
	case acquireHash:
		if err == nil {
			if v, verr := redis.Values(r, nil); verr == nil && len(v) == 3 {
				if n, _ := redis.Int(v[0], nil); n == 1 {
					c.h.log(faultEvent{Ev: evLease, Analyser: analyser, Token: leaseToken(v[1])})
				}
			}
		}
	}
	return r, err
}

func (c *recConn) Do(cmd string, args ...any) (any, error) {
	c.forget()
	c.intent(cmd, args)
	return c.record(cmd, args, func() (any, error) { return c.Conn.Do(cmd, args...) })
}

func (c *recConn) Send(cmd string, args ...any) error {
	c.intent(cmd, args)
	at := time.Now()
	err := c.Conn.Send(cmd, args...)
	if err == nil {
		c.mu.Lock()
		c.sent = append(c.sent, recordCmd{cmd: cmd, args: args, at: at})
		c.mu.Unlock()
	}
	return err
}

// received records the reply of the oldest pipelined command.
func (c *recConn) received(receive func() (any, error)) (any, error) {
	c.mu.Lock()
	if len(c.sent) == 0 {
		c.mu.Unlock()
		return receive()
	}
	head := c.sent[0]
	c.sent = c.sent[1:]
	c.mu.Unlock()
	return c.recordSent(head.cmd, head.args, head.at, receive)
}

func (c *recConn) Receive() (any, error) {
	return c.received(c.Conn.Receive)
}

func (c *recConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	c.forget()
	c.intent(cmd, args)
	return c.record(cmd, args, func() (any, error) { return redis.DoContext(c.Conn, ctx, cmd, args...) })
}

func (c *recConn) DoWithTimeout(d time.Duration, cmd string, args ...any) (any, error) {
	c.forget()
	c.intent(cmd, args)
	return c.record(cmd, args, func() (any, error) { return redis.DoWithTimeout(c.Conn, d, cmd, args...) })
}

func (c *recConn) ReceiveContext(ctx context.Context) (any, error) {
	return c.received(func() (any, error) { return redis.ReceiveContext(c.Conn, ctx) })
}

func (c *recConn) ReceiveWithTimeout(d time.Duration) (any, error) {
	return c.received(func() (any, error) { return redis.ReceiveWithTimeout(c.Conn, d) })
}

// readHistory reads one history file. A torn last line (the process was
// killed while writing it) is skipped; a bad line elsewhere is an error.
func readHistory(path string) ([]faultEvent, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []faultEvent
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for line := 1; sc.Scan(); line++ {
		var e faultEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			if !bytes.HasSuffix(b, []byte("\n")) && bytes.HasSuffix(b, sc.Bytes()) {
				break // torn last line
			}
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		out = append(out, e)
	}
	return out, sc.Err()
}
