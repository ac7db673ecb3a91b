package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Waiting for replicas (Config.WaitReplicas). Every connection of a pool
// that Dial makes (a standalone server, a Sentinel primary, each node of a
// Redis Cluster: all come from newPool) is then a waitConn. It follows
// every round trip that carries a write with WAIT, in the same pipeline,
// and reads WAIT's reply before it hands out the replies of those writes:
// a write reported done is on the primary and on the replicas WAIT
// counted. When WAIT counts fewer, the writes' replies become a
// notReplicated error (ErrNotReplicated): the write was made, but it may
// not survive the loss of the primary; callers treat it as the uncertain
// outcome of a lost reply. Reads, error replies (a script's refusal comes
// before its first write), empty pops (nothing moved) and the 0 of the
// scripts that say so when they changed nothing (zeroScripts) are handed
// out as they came: they reported no change, so nothing waits on them;
// so are the replies of the scripts that write nothing (readScripts).
//
// WAIT waits for every write the connection made so far, so a write made
// on it beside the pool's calls (a layout re-recorded on a new
// connection) is covered by the next call's WAIT.

// maxWaitReplicas bounds Config.WaitReplicas.
const maxWaitReplicas = 100

// waitDefaults checks WaitReplicas and WaitTimeout, after ReadTimeout has
// its default.
func (c Config) waitDefaults() (Config, error) {
	if c.WaitReplicas < 0 || c.WaitReplicas > maxWaitReplicas {
		return c, fmt.Errorf("%w: WaitReplicas %d not in [0, %d]", ErrBadConfig, c.WaitReplicas, maxWaitReplicas)
	}
	if c.WaitReplicas == 0 {
		if c.WaitTimeout != 0 {
			return c, fmt.Errorf("%w: WaitTimeout %v is set but WaitReplicas is 0", ErrBadConfig, c.WaitTimeout)
		}
		return c, nil
	}
	if c.WaitTimeout == 0 {
		c.WaitTimeout = min(time.Second, c.ReadTimeout/2)
	}
	if c.WaitTimeout < time.Millisecond || c.WaitTimeout >= c.ReadTimeout {
		return c, fmt.Errorf("%w: WaitTimeout %v not in [1ms, ReadTimeout %v)", ErrBadConfig, c.WaitTimeout, c.ReadTimeout)
	}
	return c, nil
}

// notReplicated is the error a write's reply becomes when fewer replicas
// than asked acknowledged it in time.
type notReplicated struct {
	acked, want int
	timeout     time.Duration
	cause       error // WAIT's own error reply, if it failed
}

func (e *notReplicated) Error() string {
	if e.cause != nil {
		return fmt.Sprintf("write not known to be on %d replicas: WAIT failed: %v", e.want, e.cause)
	}
	return fmt.Sprintf("write acknowledged by %d of %d replicas within %v", e.acked, e.want, e.timeout)
}

// Is reports ErrNotReplicated. (WAIT's own error is not unwrapped: it is
// not the write's, and a refusal such as TRYAGAIN read as the write's
// would have it sent again.)
func (e *notReplicated) Is(target error) bool { return target == ErrNotReplicated }

// isReplyError reports whether err is what a command got back on a
// connection that is still in step: Redis's error reply, or a write that
// WAIT found not replicated.
func isReplyError(err error) bool {
	return isRedisError(err) || errors.Is(err, ErrNotReplicated)
}

// sent is what the server owes a waitConn a reply for.
type sent uint8

const (
	sentRead  sent = iota // a command that changes nothing
	sentWrite             // a command that may change data
	sentPop               // a write whose nil reply says it changed nothing (an empty pop)
	sentZero              // a script whose reply 0 (or {0, ...}) says it changed nothing
	sentWait              // the connection's own WAIT
)

// writeCommands are the commands that change data, of the kinds this
// package uses (keys, strings, lists, hashes, sorted sets, scripts). Any
// other command (a read, CLIENT, PING, SUBSCRIBE, EVAL_RO...) is sent as
// it is, with no WAIT behind it.
var writeCommands = map[string]sent{
	"DEL": sentWrite, "UNLINK": sentWrite, "EXPIRE": sentWrite, "PEXPIRE": sentWrite,
	"EXPIREAT": sentWrite, "PEXPIREAT": sentWrite, "PERSIST": sentWrite, "RENAME": sentWrite,
	"RENAMENX": sentWrite, "COPY": sentWrite, "RESTORE": sentWrite, "FLUSHDB": sentWrite, "FLUSHALL": sentWrite,
	"SET": sentWrite, "SETNX": sentWrite, "SETEX": sentWrite, "PSETEX": sentWrite, "MSET": sentWrite,
	"INCR": sentWrite, "INCRBY": sentWrite, "DECR": sentWrite, "DECRBY": sentWrite, "APPEND": sentWrite,
	"GETSET": sentWrite, "GETDEL": sentPop, "GETEX": sentWrite,
	"LPUSH": sentWrite, "RPUSH": sentWrite, "LPUSHX": sentWrite, "RPUSHX": sentWrite, "LINSERT": sentWrite,
	"LSET": sentWrite, "LREM": sentWrite, "LTRIM": sentWrite,
	"LPOP": sentPop, "RPOP": sentPop, "BLPOP": sentPop, "BRPOP": sentPop, "LMPOP": sentPop, "BLMPOP": sentPop,
	"LMOVE": sentPop, "BLMOVE": sentPop, "RPOPLPUSH": sentPop, "BRPOPLPUSH": sentPop,
	"HSET": sentWrite, "HSETNX": sentWrite, "HMSET": sentWrite, "HDEL": sentWrite, "HINCRBY": sentWrite,
	"ZADD": sentWrite, "ZREM": sentWrite, "ZINCRBY": sentWrite, "ZREMRANGEBYSCORE": sentWrite,
	"ZPOPMIN": sentPop, "ZPOPMAX": sentPop,
	"EVAL": sentWrite, "EVALSHA": sentWrite, "FCALL": sentWrite,
}

// zeroScripts are the scripts that say by a reply of 0, or {0, ...}, that
// they changed nothing (a renewal or release of a lease that is not the
// caller's): such a reply needs no replica, and passes as it is, so that
// a lost lease reads as lost. By hash (EVALSHA) and by source (EVAL). An
// AddTaskOnce duplicate is not one of them: its reply says the task is
// queued, which is known to survive a failover only once the replicas
// have the write that queued it.
var zeroScripts = func() map[string]bool {
	m := map[string]bool{}
	for name, sc := range map[string]*redis.Script{"renew": renewScript, "release": releaseScript} {
		m[sc.Hash()] = true // naming the scripts makes them, and their sources, first
		m[scriptSources[name]] = true
	}
	return m
}()

// readScripts are the scripts that write nothing (find: State and Status
// look for a task in a claim's list): reads, which never wait. By hash
// and by source.
var readScripts = func() map[string]bool {
	m := map[string]bool{}
	for name, sc := range map[string]*redis.Script{"find": findScript} {
		m[sc.Hash()] = true
		m[scriptSources[name]] = true
	}
	return m
}()

// unchangedZero reports a reply of 0 or {0, ...}.
func unchangedZero(v any) bool {
	if list, ok := v.([]any); ok && len(list) > 0 {
		v = list[0]
	}
	n, ok := v.(int64)
	return ok && n == 0
}

// classify says what cmd is. Moving a list's end onto itself (BLMOVE k k
// RIGHT RIGHT: a pool's wait for work) changes nothing.
func classify(cmd string, args []any) sent {
	kind, ok := writeCommands[cmd]
	if !ok {
		kind = writeCommands[strings.ToUpper(cmd)]
	}
	if kind == sentWrite && len(args) > 0 && (strings.EqualFold(cmd, "EVALSHA") || strings.EqualFold(cmd, "EVAL")) {
		if src, ok := args[0].(string); ok && zeroScripts[src] {
			return sentZero
		}
		if src, ok := args[0].(string); ok && readScripts[src] {
			return sentRead
		}
	}
	if kind == sentPop && len(args) >= 4 && (strings.EqualFold(cmd, "BLMOVE") || strings.EqualFold(cmd, "LMOVE")) {
		src, _ := args[0].(string)
		dst, _ := args[1].(string)
		from, _ := args[2].(string)
		to, _ := args[3].(string)
		if src != "" && src == dst && from != "" && strings.EqualFold(from, to) {
			return sentRead
		}
	}
	return kind
}

type received struct {
	v    any
	err  error
	kind sent
}

// waitConn is a connection that waits for replicas after writes (see the
// top of this file). Like any redigo connection it is not safe for
// concurrent use.
type waitConn struct {
	redis.Conn                // a connection with context and timeout support (watchedConn)
	replicas    int           // WAIT's count
	timeout     time.Duration // WAIT's timeout
	timeoutMS   int64
	readTimeout time.Duration // the connection's read timeout, for WAIT's reply

	sent     []sent     // replies the server owes, in order, WAIT's included
	waits    int        // the WAITs in sent
	ready    []received // replies read ahead (up to a WAIT), not handed out yet
	unwaited bool       // a write was sent that no WAIT follows yet
	multi    bool       // inside MULTI: commands are queued, EXEC runs them
	queued   bool       // a write was queued in the MULTI
}

var (
	_ redis.ConnWithContext = (*waitConn)(nil)
	_ redis.ConnWithTimeout = (*waitConn)(nil)
)

// newWaitConn wraps c, which must support contexts and timeouts, to wait
// for cfg.WaitReplicas replicas after every write.
func newWaitConn(c redis.Conn, cfg Config) *waitConn {
	ms := (cfg.WaitTimeout + time.Millisecond - 1) / time.Millisecond // 0 would wait for ever
	return &waitConn{Conn: c, replicas: cfg.WaitReplicas, timeout: cfg.WaitTimeout, timeoutMS: int64(max(ms, 1)),
		readTimeout: cfg.ReadTimeout}
}

// how says how a call reads replies: with the connection's read timeout
// (zero value), within ctx, or within a timeout of its own.
type how struct {
	ctx     context.Context
	timeout time.Duration
	timed   bool
}

// within returns how to read within ctx: a ctx that never ends is the
// read timeout alone, without redigo's goroutine per read.
func within(ctx context.Context) how {
	if ctx.Done() == nil {
		return how{}
	}
	return how{ctx: ctx}
}

func (c *waitConn) Send(cmd string, args ...any) error {
	kind := classify(cmd, args)
	switch {
	case strings.EqualFold(cmd, "MULTI"):
		if err := c.sendWait(); err != nil { // no WAIT may go into the transaction
			return err
		}
		c.multi, c.queued = true, false
	case c.multi && strings.EqualFold(cmd, "EXEC"):
		c.multi, kind = false, sentRead
		if c.queued {
			kind = sentPop // a nil reply: aborted by WATCH, nothing written
		}
	case c.multi && strings.EqualFold(cmd, "DISCARD"):
		c.multi = false
	case c.multi && kind != sentRead:
		c.queued, kind = true, sentRead // its reply is QUEUED; EXEC's is the write's
	}
	if err := c.Conn.Send(cmd, args...); err != nil {
		return err
	}
	c.sent = append(c.sent, kind)
	c.unwaited = c.unwaited || kind != sentRead
	return nil
}

// sendWait sends WAIT if a write was sent since the last one.
func (c *waitConn) sendWait() error {
	if !c.unwaited {
		return nil
	}
	if err := c.Conn.Send("WAIT", c.replicas, c.timeoutMS); err != nil {
		return err
	}
	c.sent = append(c.sent, sentWait)
	c.waits++
	c.unwaited = false
	return nil
}

// Flush sends what was sent, with WAIT behind it if it holds a write.
func (c *waitConn) Flush() error {
	if err := c.sendWait(); err != nil {
		return err
	}
	return c.Conn.Flush()
}

func (c *waitConn) Receive() (any, error) { return c.receive(how{}) }

func (c *waitConn) ReceiveContext(ctx context.Context) (any, error) { return c.receive(within(ctx)) }

func (c *waitConn) ReceiveWithTimeout(d time.Duration) (any, error) {
	return c.receive(how{timeout: d, timed: true})
}

func (c *waitConn) Do(cmd string, args ...any) (any, error) { return c.do(how{}, cmd, args) }

func (c *waitConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	return c.do(within(ctx), cmd, args)
}

func (c *waitConn) DoWithTimeout(d time.Duration, cmd string, args ...any) (any, error) {
	return c.do(how{timeout: d, timed: true}, cmd, args)
}

// owed is the number of replies the caller has still to read.
func (c *waitConn) owed() int { return len(c.ready) + len(c.sent) - c.waits }

// do is redigo's Do: it sends cmd (unless empty), flushes, and reads
// every reply owed; it returns cmd's reply and the first error among
// them, or for cmd "" all the replies, errors among them.
func (c *waitConn) do(h how, cmd string, args []any) (any, error) {
	if c.owed() == 0 && !c.unwaited && !c.multi && classify(cmd, args) == sentRead && !strings.EqualFold(cmd, "MULTI") {
		return c.doDirect(h, cmd, args) // a read with nothing pending: nothing to wait for
	}
	if cmd != "" {
		if err := c.Send(cmd, args...); err != nil {
			return nil, err
		}
	}
	if err := c.Flush(); err != nil {
		return nil, err
	}
	replies := make([]any, 0, c.owed())
	var first error
	for c.owed() > 0 {
		v, err := c.receive(h)
		if err != nil {
			if !isReplyError(err) {
				return nil, err
			}
			if first == nil {
				first = err
			}
			v = err
		}
		replies = append(replies, v)
	}
	if cmd == "" {
		return replies, nil
	}
	last := replies[len(replies)-1]
	if _, failed := last.(error); failed {
		last = nil
	}
	return last, first
}

func (c *waitConn) doDirect(h how, cmd string, args []any) (any, error) {
	switch {
	case h.ctx != nil:
		return redis.DoContext(c.Conn, h.ctx, cmd, args...)
	case h.timed:
		return redis.DoWithTimeout(c.Conn, h.timeout, cmd, args...)
	}
	return c.Conn.Do(cmd, args...)
}

// receiveOne reads the next reply off the connection. WAIT's reply may
// come up to the wait's timeout after the write's: a shorter timeout of
// the caller's own is stretched to the read timeout for it (which is
// longer than the wait's; a ctx's deadline is kept).
func (c *waitConn) receiveOne(h how, wait bool) (any, error) {
	switch {
	case h.ctx != nil:
		return redis.ReceiveContext(c.Conn, h.ctx)
	case h.timed:
		d := h.timeout
		if wait && d != 0 {
			d = max(d, c.readTimeout)
		}
		return redis.ReceiveWithTimeout(c.Conn, d)
	}
	return c.Conn.Receive()
}

// receive hands out the next reply owed to the caller. The reply of a
// write comes once WAIT's has been read, with those of every command
// sent before that WAIT.
func (c *waitConn) receive(h how) (any, error) {
	if len(c.ready) == 0 {
		if c.unwaited { // sent, not flushed: WAIT must go too
			if err := c.Flush(); err != nil {
				return nil, err
			}
		}
		if len(c.sent) == 0 || c.sent[0] == sentRead {
			// A read, or a reply no command asked for (pub/sub): as it is.
			if len(c.sent) > 0 {
				c.sent = c.sent[1:]
			}
			return c.receiveOne(h, false)
		}
		if err := c.readThrough(h); err != nil {
			return nil, err
		}
	}
	r := c.ready[0]
	c.ready = c.ready[1:]
	return r.v, r.err
}

// readThrough reads the replies up to the next WAIT's, and WAIT's; when
// fewer replicas than asked acknowledged, the replies of the writes among
// them become a notReplicated error. A connection error ends the
// connection (redigo closes it): nothing more is owed.
func (c *waitConn) readThrough(h how) error {
	end := slices.Index(c.sent, sentWait)
	if end < 0 { // cannot happen: a write is always followed by WAIT
		return errors.New("queue: a write without its WAIT")
	}
	fail := func(err error) error {
		c.sent, c.waits, c.ready = nil, 0, nil
		return err
	}
	for _, kind := range c.sent[:end] {
		v, err := c.receiveOne(h, false)
		if err != nil && !isRedisError(err) {
			return fail(err)
		}
		c.ready = append(c.ready, received{v: v, err: err, kind: kind})
	}
	v, err := c.receiveOne(h, true)
	if err != nil && !isRedisError(err) {
		return fail(err)
	}
	c.sent = c.sent[end+1:]
	c.waits--
	acked, err := redis.Int(v, err)
	if err == nil && acked >= c.replicas {
		return nil
	}
	short := &notReplicated{acked: acked, want: c.replicas, timeout: c.timeout, cause: err}
	for i := range c.ready {
		r := &c.ready[i]
		if r.kind != sentRead && r.err == nil && (r.kind != sentPop || r.v != nil) && (r.kind != sentZero || !unchangedZero(r.v)) {
			r.v, r.err = nil, short
		}
	}
	return nil
}
