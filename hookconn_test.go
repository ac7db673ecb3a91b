package queue

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"sync"
	"testing"

	"github.com/gomodule/redigo/redis"
)

// hookAction is what a hookConn does with one call.
type hookAction int

const (
	hookPass        hookAction = iota // run it
	hookFailBefore                    // return an error; the call never reaches Redis
	hookLoseReply                     // run it, and return an error instead of its reply
	hookDeliverLate                   // return a timeout at once; run it when the test releases it
)

// hooks decides, call by call, what the connections of a hookPool do. A
// call is named by its command, or for a script by the script's name
// (see scriptSources).
type hooks struct {
	mu     sync.Mutex
	decide func(name string) hookAction
	late   []func() // calls held back by hookDeliverLate, in order
	calls  []string // every call, in order
}

func (h *hooks) act(name string) hookAction {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, name)
	if h.decide == nil {
		return hookPass
	}
	return h.decide(name)
}

// releaseLate runs the calls held back so far, in order, on conn.
func (h *hooks) releaseLate(t testing.TB) int {
	t.Helper()
	h.mu.Lock()
	late := h.late
	h.late = nil
	h.mu.Unlock()
	for _, f := range late {
		f()
	}
	return len(late)
}

// count returns how many calls named name were made.
func (h *hooks) count(name string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, c := range h.calls {
		if c == name {
			n++
		}
	}
	return n
}

// scriptNames maps each script's SHA1 to its name.
var scriptNames = func() map[string]string {
	m := map[string]string{}
	for name, src := range scriptSources {
		sum := sha1.Sum([]byte(src))
		m[hex.EncodeToString(sum[:])] = name
	}
	return m
}()

func callName(cmd string, args []any) string {
	if (cmd == "EVALSHA" || cmd == "EVAL") && len(args) > 0 {
		var key string
		switch v := args[0].(type) {
		case string:
			key = v
		case []byte:
			key = string(v)
		}
		if cmd == "EVAL" {
			sum := sha1.Sum([]byte(key))
			key = hex.EncodeToString(sum[:])
		}
		if n, ok := scriptNames[key]; ok {
			return n
		}
	}
	return cmd
}

// hookTimeout is the error of a call whose reply did not come in time.
type hookTimeout struct{}

func (hookTimeout) Error() string { return "hook: i/o timeout" }
func (hookTimeout) Timeout() bool { return true }

// hookConn is a connection whose calls hooks decide on. Pipelined calls
// (Send, Flush, Receive) pass through.
type hookConn struct {
	redis.Conn
	h    *hooks
	pool *redis.Pool // for calls delivered late, on a connection of their own
}

func (c *hookConn) Do(cmd string, args ...any) (any, error) {
	return c.DoContext(context.Background(), cmd, args...)
}

func (c *hookConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	if cmd == "" {
		return redis.DoContext(c.Conn, ctx, cmd, args...)
	}
	switch c.h.act(callName(cmd, args)) {
	case hookFailBefore:
		return nil, errors.New("hook: connection reset before the call was sent")
	case hookLoseReply:
		redis.DoContext(c.Conn, ctx, cmd, args...)
		return nil, errors.New("hook: connection reset before the reply came")
	case hookDeliverLate:
		c.h.mu.Lock()
		c.h.late = append(c.h.late, func() {
			conn := c.pool.Get()
			defer conn.Close()
			conn.Do(cmd, args...)
		})
		c.h.mu.Unlock()
		return nil, hookTimeout{}
	}
	return redis.DoContext(c.Conn, ctx, cmd, args...)
}

func (c *hookConn) ReceiveContext(ctx context.Context) (any, error) {
	return redis.ReceiveContext(c.Conn, ctx)
}

// hookedQueue returns a queue of one partition whose connections h
// decides on, and the test server beneath it.
func hookedQueue(t *testing.T, h *hooks, cfg Config) (*Queue, *testServer, queueKeys) {
	t.Helper()
	s := newTestServers(t, 1)[0]
	pool := &redis.Pool{MaxIdle: 16}
	pool.DialContext = func(ctx context.Context) (redis.Conn, error) {
		c, err := s.pool.GetContext(ctx)
		if err != nil {
			return nil, err
		}
		return &hookConn{Conn: c, h: h, pool: s.pool}, nil
	}
	t.Cleanup(func() { pool.Close() })
	if cfg.Prefix == "" {
		cfg.Prefix = testPrefix(t)
	}
	q, err := New([]*redis.Pool{pool}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q, s, newQueueKeys(cfg.Prefix, 0, 0)
}

// nth returns a decide func that gives action to the n-th call (1-based)
// named name, and passes every other call.
func nth(name string, n int, action hookAction) func(string) hookAction {
	seen := 0
	return func(got string) hookAction {
		if got != name {
			return hookPass
		}
		seen++
		if seen == n {
			return action
		}
		return hookPass
	}
}
