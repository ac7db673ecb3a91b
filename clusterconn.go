package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/gomodule/redigo/redis"
)

// clusterPools marks the pools made by partitionPool, for New, until
// their router closes.
var clusterPools sync.Map // *redis.Pool -> *clusterRouter

// routerOf returns the router of a pool partitionPool made, or nil for
// any other pool.
func routerOf(p *redis.Pool) *clusterRouter {
	r, _ := clusterPools.Load(p)
	router, _ := r.(*clusterRouter)
	return router
}

// partitionPool returns a pool of routed connections for one partition on
// the cluster. wrap, when set, wraps each of them.
func (r *clusterRouter) partitionPool(wrap func(redis.Conn) redis.Conn) *redis.Pool {
	p := &redis.Pool{
		MaxIdle: r.cfg.MaxIdle,
		DialContext: func(ctx context.Context) (redis.Conn, error) {
			r.mu.Lock()
			closed := r.closed
			r.mu.Unlock()
			if closed {
				return nil, ErrClosed
			}
			var c redis.Conn = &routedConn{r: r}
			if wrap != nil {
				c = wrap(c)
			}
			return c, nil
		},
	}
	r.mu.Lock()
	r.parts = append(r.parts, p)
	r.mu.Unlock()
	clusterPools.Store(p, r)
	return p
}

// routedConn is a connection to a cluster: each command goes to the
// primary that serves its key. A pipeline is kept until Flush, which
// writes each command on a connection to its primary (one per primary,
// held until its replies are read) and flushes them all; replies are read
// back in the order of the commands.
//
// A primary that fails is the failure of its own commands only: a
// command that could not be written to it (no connection, or the
// connection failed before it was written) did not run, and is sent when
// its reply is due if the map names another primary by then, or fails
// with the error; a command written on a connection that then failed
// gets that error as its reply (an uncertain one). Commands to the other
// primaries get their own replies, and the routed connection stays
// usable. Until Flush nothing is written, so a pipeline its caller gives
// up before flushing runs nowhere.
type routedConn struct {
	r       *clusterRouter
	pending []routedCmd          // sent, reply not read yet, in order
	fresh   int                  // the last fresh of pending are not written yet
	held    map[string]*heldConn // by node address, while commands of the pipeline go to it
	err     error
}

// heldConn is a node connection of a routed connection's pipeline.
type heldConn struct {
	c     redis.Conn // nil when none could be had
	err   error      // why it failed: later commands for its node are not written on it
	n     int        // commands of the pipeline routed to the node, reply not read yet
	dirty bool       // written since the last flush
	// lost: a command written on it has no reply (it may have run), so a
	// later one of its node that was not sent must not run elsewhere
	// either: it could run before that one.
	lost bool
}

type routedCmd struct {
	addr    string
	slot    int // -1 for a command with no key
	cmd     string
	args    []any
	notSent bool // could not be written: it did not run
}

var (
	_ redis.ConnWithContext = (*routedConn)(nil)
	_ redis.ConnWithTimeout = (*routedConn)(nil)
)

func (c *routedConn) Err() error { return c.err }

func (c *routedConn) Close() error {
	err := c.reset()
	if c.err == nil {
		c.err = errors.New("redigo: closed")
	}
	return err
}

// reset gives back the node connections held, and forgets the replies
// still pending on them.
func (c *routedConn) reset() error {
	var errs []error
	for addr, h := range c.held {
		if h.c != nil {
			errs = append(errs, h.c.Close())
		}
		delete(c.held, addr)
	}
	c.pending, c.fresh = nil, 0
	return errors.Join(errs...)
}

func (c *routedConn) Do(cmd string, args ...any) (any, error) {
	return c.DoContext(context.Background(), cmd, args...)
}

func (c *routedConn) DoWithTimeout(d time.Duration, cmd string, args ...any) (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return c.DoContext(ctx, cmd, args...)
}

func (c *routedConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	if c.err != nil {
		return nil, c.err
	}
	if len(c.pending) == 0 {
		if cmd == "" {
			return nil, nil
		}
		return c.r.do(ctx, cmd, args)
	}
	// Replies are pending: as redigo does, send cmd after them, then read
	// them all; the reply is cmd's (all of them for cmd "").
	if cmd != "" {
		if err := c.Send(cmd, args...); err != nil {
			return nil, err
		}
	}
	if err := c.Flush(); err != nil {
		return nil, err
	}
	replies := make([]any, 0, len(c.pending))
	var last error
	for len(c.pending) > 0 {
		v, err := c.ReceiveContext(ctx)
		if err != nil && ctx.Err() != nil {
			c.reset() // the replies still pending are lost with their connections
			return nil, err
		}
		replies = append(replies, v)
		last = err
		if err != nil {
			replies[len(replies)-1] = err
		}
	}
	if cmd == "" {
		return replies, nil
	}
	return replies[len(replies)-1], last
}

// Send adds a command to the pipeline; nothing is written before Flush.
func (c *routedConn) Send(cmd string, args ...any) error {
	if c.err != nil {
		return c.err
	}
	slot, err := commandSlot(cmd, args)
	if err != nil {
		return err
	}
	addr, err := c.r.addrFor(context.Background(), slot)
	if err != nil {
		addr = "" // no primary known: sent when its reply is due
	}
	if c.held == nil {
		c.held = map[string]*heldConn{}
	}
	h := c.held[addr]
	if h == nil {
		h = &heldConn{}
		c.held[addr] = h
	}
	h.n++
	c.pending = append(c.pending, routedCmd{addr: addr, slot: slot, cmd: cmd, args: args})
	c.fresh++
	return nil
}

// Flush writes the commands sent since the last Flush, each to its
// primary, and flushes the node connections. A failure is the failure of
// the commands it concerns, reported as their replies: Flush itself
// fails only on a closed connection.
func (c *routedConn) Flush() error {
	if c.err != nil {
		return c.err
	}
	if c.fresh == 0 {
		return nil
	}
	for i := len(c.pending) - c.fresh; i < len(c.pending); i++ {
		p := &c.pending[i]
		h := c.held[p.addr]
		if p.addr == "" {
			h.err = errNoPrimary
		}
		if h.c == nil && h.err == nil {
			nc, err := c.r.nodeConn(context.Background(), p.addr)
			if err != nil {
				h.err = fmt.Errorf("%w: %w", errNodeUnreachable, err)
				c.r.refreshAsync()
			}
			h.c = nc
		}
		if h.err != nil {
			p.notSent = true
			continue
		}
		if err := h.c.Send(p.cmd, p.args...); err != nil {
			// Not written whole: Redis runs no command it did not read whole.
			h.err = err
			p.notSent = true
			c.r.refreshAsync()
			continue
		}
		h.dirty = true
	}
	c.fresh = 0
	for _, h := range c.held {
		if !h.dirty {
			continue
		}
		h.dirty = false
		if err := h.c.Flush(); err != nil && h.err == nil {
			h.err = err // the commands written on it get it as their replies
			c.r.refreshAsync()
		}
	}
	return nil
}

// errNoPrimary is a command's when the map names no primary for its slot.
var errNoPrimary = errors.New("no primary serves the slot")

func (c *routedConn) Receive() (any, error) { return c.ReceiveContext(context.Background()) }

func (c *routedConn) ReceiveWithTimeout(d time.Duration) (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return c.ReceiveContext(ctx)
}

// ReceiveContext reads the reply of the oldest command sent. A command
// that was redirected or refused, or could not be written to a primary
// the map no longer names, is sent again (it did not run) on a connection
// of its own before the next command's reply is read. The later commands
// of its pipeline may have run by then: a caller whose writes of one key
// must keep their order does not have two of them in flight at once
// (see partAdd.push).
func (c *routedConn) ReceiveContext(ctx context.Context) (any, error) {
	if c.err != nil {
		return nil, c.err
	}
	if len(c.pending) == 0 {
		return nil, errors.New("queue: no reply pending on a Redis Cluster connection (it does not carry pub/sub)")
	}
	if err := c.Flush(); err != nil {
		return nil, err
	}
	head := c.pending[0]
	c.pending = c.pending[1:]
	h := c.held[head.addr]
	var reply any
	var err error
	switch {
	case head.notSent:
		err = h.err
	case h.err != nil:
		err, h.lost = h.err, true // written on a connection that failed since: uncertain
	default:
		reply, err = receiveContext(h.c, ctx)
		if err != nil && !isReplyError(err) {
			h.err, h.lost = err, true
			c.r.refreshAsync()
		}
	}
	lost := h.lost
	if h.n--; h.n == 0 {
		if h.c != nil {
			h.c.Close()
		}
		delete(c.held, head.addr)
	}
	if head.notSent {
		// It did not run: where the map now names another primary (a
		// failover was seen), it goes there, unless an earlier command of
		// its node may have run; else it fails with its node.
		if head.slot >= 0 && !lost {
			if addr := c.r.slots.Load().addrOf(head.slot); addr != "" && addr != head.addr {
				return c.r.do(ctx, head.cmd, head.args)
			}
		}
		return nil, err
	}
	if kind, _, _ := parseRedirect(err); kind != noRedirect {
		return c.r.do(ctx, head.cmd, head.args)
	}
	return reply, err
}
