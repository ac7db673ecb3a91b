package queue

import (
	"context"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"
)

// hookConn passes every call to conn, first letting before see script
// calls by name: before may block (a slow network) or return an error
// (the call refused before it reaches Redis).
type hookConn struct {
	redis.Conn
	before func(script string, args []any) error
	onCmd  func(cmd string, args []any) // when set, sees every call that is no script's, before it is sent
}

// hookPool is a pool over url whose connections call before ahead of
// every script call.
func hookPool(s *testServer, before func(script string, args []any) error) *redis.Pool {
	return s.wrapPool(16, func(c redis.Conn) redis.Conn { return &hookConn{Conn: c, before: before} })
}

// scriptName names the script an EVALSHA or EVAL runs, or "".
func scriptName(cmd string, args []any) string {
	cmd = strings.ToUpper(cmd)
	if (cmd != "EVALSHA" && cmd != "EVAL") || len(args) == 0 {
		return ""
	}
	first, _ := args[0].(string)
	for name, src := range scriptSources {
		if cmd == "EVAL" && first == src || cmd == "EVALSHA" && first == redis.NewScript(0, src).Hash() {
			return name
		}
	}
	return ""
}

func (c *hookConn) hook(cmd string, args []any) error {
	if name := scriptName(cmd, args); name != "" {
		if c.before == nil {
			return nil
		}
		return c.before(name, args)
	}
	if c.onCmd != nil && cmd != "" {
		c.onCmd(strings.ToUpper(cmd), args)
	}
	return nil
}

// cmdHookPool is a pool over s whose connections call onCmd ahead of
// every call that is no script's.
func cmdHookPool(s *testServer, onCmd func(cmd string, args []any)) *redis.Pool {
	return s.wrapPool(16, func(c redis.Conn) redis.Conn { return &hookConn{Conn: c, onCmd: onCmd} })
}

func (c *hookConn) Do(cmd string, args ...any) (any, error) {
	if err := c.hook(cmd, args); err != nil {
		return nil, err
	}
	return c.Conn.Do(cmd, args...)
}

// Send hooks a pipelined call as Do does a plain one: refused, it is not
// sent.
func (c *hookConn) Send(cmd string, args ...any) error {
	if err := c.hook(cmd, args); err != nil {
		return err
	}
	return c.Conn.Send(cmd, args...)
}

func (c *hookConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	if err := c.hook(cmd, args); err != nil {
		return nil, err
	}
	return c.Conn.(redis.ConnWithContext).DoContext(ctx, cmd, args...)
}

func (c *hookConn) ReceiveContext(ctx context.Context) (any, error) {
	return c.Conn.(redis.ConnWithContext).ReceiveContext(ctx)
}

func (c *hookConn) DoWithTimeout(d time.Duration, cmd string, args ...any) (any, error) {
	if err := c.hook(cmd, args); err != nil {
		return nil, err
	}
	return c.Conn.(redis.ConnWithTimeout).DoWithTimeout(d, cmd, args...)
}

func (c *hookConn) ReceiveWithTimeout(d time.Duration) (any, error) {
	return c.Conn.(redis.ConnWithTimeout).ReceiveWithTimeout(d)
}
