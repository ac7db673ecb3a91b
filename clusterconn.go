package queue

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gomodule/redigo/redis"
)

// clusterPools marks the pools made by partitionPool, for New.
var clusterPools sync.Map // *redis.Pool -> *clusterRouter

// isClusterPool reports whether p routes to a Redis Cluster.
func isClusterPool(p *redis.Pool) bool {
	_, ok := clusterPools.Load(p)
	return ok
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
	clusterPools.Store(p, r)
	return p
}

// routedConn is a connection to a cluster: each command goes to the
// primary that serves its key. Commands sent in a pipeline go on one
// connection per primary, held until their replies are read.
type routedConn struct {
	r       *clusterRouter
	pending []routedCmd           // sent, reply not read yet, in order
	held    map[string]redis.Conn // by node address, while they have replies to read
	dirty   map[string]bool       // held connections with commands not flushed
	err     error
}

type routedCmd struct {
	addr string
	cmd  string
	args []any
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
	for addr, nc := range c.held {
		errs = append(errs, nc.Close())
		delete(c.held, addr)
		delete(c.dirty, addr)
	}
	c.pending = nil
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
		if err != nil && !isReplyError(err) {
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

func (c *routedConn) Send(cmd string, args ...any) error {
	if c.err != nil {
		return c.err
	}
	key, keyless, ok := commandKey(cmd, args)
	if !ok {
		return redis.Error("ERR " + strings.ToUpper(cmd) + " is not supported on a Redis Cluster connection")
	}
	slot := -1
	if !keyless {
		slot = keySlot(key)
	}
	addr, err := c.r.addrFor(context.Background(), slot)
	if err != nil {
		return err
	}
	nc := c.held[addr]
	if nc == nil {
		if nc, err = c.r.nodeConn(context.Background(), addr); err != nil {
			c.r.refreshAsync()
			return err
		}
		if c.held == nil {
			c.held, c.dirty = map[string]redis.Conn{}, map[string]bool{}
		}
		c.held[addr] = nc
	}
	if err := nc.Send(cmd, args...); err != nil {
		return err
	}
	c.dirty[addr] = true
	c.pending = append(c.pending, routedCmd{addr: addr, cmd: cmd, args: args})
	return nil
}

func (c *routedConn) Flush() error {
	if c.err != nil {
		return c.err
	}
	for addr := range c.dirty {
		if err := c.held[addr].Flush(); err != nil {
			return err
		}
		delete(c.dirty, addr)
	}
	return nil
}

func (c *routedConn) Receive() (any, error) { return c.ReceiveContext(context.Background()) }

func (c *routedConn) ReceiveWithTimeout(d time.Duration) (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return c.ReceiveContext(ctx)
}

// ReceiveContext reads the reply of the oldest command sent. A command
// that was redirected or refused is sent again (it did not run) on a
// connection of its own, before the next command's reply is read.
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
	nc := c.held[head.addr]
	reply, err := receiveContext(nc, ctx)
	if err != nil && !isReplyError(err) {
		c.r.refreshAsync()
	}
	if !slices.ContainsFunc(c.pending, func(p routedCmd) bool { return p.addr == head.addr }) {
		delete(c.held, head.addr)
		nc.Close()
	}
	if kind, _, _ := parseRedirect(err); kind != noRedirect {
		return c.r.do(ctx, head.cmd, head.args)
	}
	return reply, err
}
