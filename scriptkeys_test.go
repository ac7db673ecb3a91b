package queue

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Every key a script touches must come in KEYS (scripts.go): a Redis
// Cluster checks only those before it runs a script. Neither miniredis nor
// a standalone server checks, so this test runs every script as rewritten
// by declaredOnly, over a connection that swaps each script call for its
// rewritten text, and drives a queue through the calls that run them.

// declaredPrelude wraps redis.call and redis.pcall: a command on a key
// not in KEYS fails the script with undeclaredReply and the key.
const declaredPrelude = `
local qugoDeclared = {}
for _, k in ipairs(KEYS) do qugoDeclared[k] = true end
local function qugoKeyed(f, cmd, ...)
  local a, c = {...}, string.upper(cmd)
  local from, to = 1, 1
  if c == 'DEL' or c == 'EXISTS' or c == 'UNLINK' then to = #a
  elseif c == 'BITOP' then from, to = 2, #a
  elseif c == 'TIME' then to = 0 end
  for i = from, to do
    if not qugoDeclared[a[i]] then error('` + undeclaredReply + ` ' .. cmd .. ' ' .. tostring(a[i])) end
  end
  return f(cmd, ...)
end
`

const undeclaredReply = "QUGOUNDECLARED"

// declaredOnly returns src with every redis.call and redis.pcall checked
// by declaredPrelude.
func declaredOnly(src string) string {
	src = strings.ReplaceAll(src, "redis.call(", "qugoKeyed(redis.call, ")
	src = strings.ReplaceAll(src, "redis.pcall(", "qugoKeyed(redis.pcall, ")
	return declaredPrelude + src
}

// keysConn runs every script of the package as declaredOnly has it, and
// records the scripts run and the undeclared keys they touched.
type keysConn struct {
	redis.Conn
	rec *keysRecord
}

type keysRecord struct {
	mu         sync.Mutex
	ran        map[string]bool
	undeclared []string
}

func (c *keysConn) swap(cmd string, args []any) (string, []any) {
	name := scriptName(cmd, args)
	if name == "" {
		return cmd, args
	}
	c.rec.mu.Lock()
	c.rec.ran[name] = true
	c.rec.mu.Unlock()
	out := append([]any{declaredOnly(scriptSources[name])}, args[1:]...)
	return "EVAL", out
}

func (c *keysConn) note(cmd string, args []any, err error) {
	var re redis.Error
	if errors.As(err, &re) && strings.Contains(string(re), undeclaredReply) {
		c.rec.mu.Lock()
		c.rec.undeclared = append(c.rec.undeclared, scriptName(cmd, args)+": "+string(re))
		c.rec.mu.Unlock()
	}
}

func (c *keysConn) Do(cmd string, args ...any) (any, error) {
	ncmd, nargs := c.swap(cmd, args)
	v, err := c.Conn.Do(ncmd, nargs...)
	c.note(cmd, args, err)
	return v, err
}

func (c *keysConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	ncmd, nargs := c.swap(cmd, args)
	v, err := c.Conn.(redis.ConnWithContext).DoContext(ctx, ncmd, nargs...)
	c.note(cmd, args, err)
	return v, err
}

func (c *keysConn) DoWithTimeout(d time.Duration, cmd string, args ...any) (any, error) {
	ncmd, nargs := c.swap(cmd, args)
	v, err := c.Conn.(redis.ConnWithTimeout).DoWithTimeout(d, ncmd, nargs...)
	c.note(cmd, args, err)
	return v, err
}

func (c *keysConn) Send(cmd string, args ...any) error {
	ncmd, nargs := c.swap(cmd, args)
	return c.Conn.Send(ncmd, nargs...)
}

func (c *keysConn) ReceiveContext(ctx context.Context) (any, error) {
	return c.Conn.(redis.ConnWithContext).ReceiveContext(ctx)
}

func (c *keysConn) ReceiveWithTimeout(d time.Duration) (any, error) {
	return c.Conn.(redis.ConnWithTimeout).ReceiveWithTimeout(d)
}

// TestDeclaredOnlyCatches proves the check can fail: a script that reads
// a key it was not given is refused.
func TestDeclaredOnlyCatches(t *testing.T) {
	s := newTestServers(t, 1)[0]
	skipOnCluster(t, "the undeclared key may be in another slot")
	c := s.pool.Get()
	defer c.Close()
	_, err := c.Do("EVAL", declaredOnly("return redis.call('GET', KEYS[1] .. 'x')"), 1, "qt:declared")
	require.Error(t, err)
	assert.Contains(t, err.Error(), undeclaredReply)
	v, err := redis.Int(c.Do("EVAL", declaredOnly("redis.call('DEL', KEYS[1], KEYS[2]) return 1"), 2, "qt:a", "qt:b"))
	require.NoError(t, err)
	assert.Equal(t, 1, v)
}

// declaredQueue returns a queue with Retention whose scripts run as
// declaredOnly has them, its server, and the record of what they ran and
// touched.
func declaredQueue(t *testing.T) (*Queue, *testServer, *keysRecord) {
	s := newTestServers(t, 1)[0]
	skipOnCluster(t, "a routed connection sends its own script calls")
	rec := &keysRecord{ran: map[string]bool{}}
	pool := s.wrapPool(16, func(c redis.Conn) redis.Conn { return &keysConn{Conn: c, rec: rec} })
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t), Retention: time.Hour})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	return q, s, rec
}

// TestScriptsTouchDeclaredKeysOnly drives a queue through claims, acks,
// retries, dead-letters, hand-backs, cancels, a takeover's recovery and
// the dead-letter store, every script checked by declaredOnly.
func TestScriptsTouchDeclaredKeysOnly(t *testing.T) {
	q, s, rec := declaredQueue(t)
	ctx := context.Background()

	var ids []string
	for i := 0; i < 8; i++ {
		id, err := q.AddTask(ctx, uint64(i), []byte(pl(i, 0)))
		require.NoError(t, err)
		ids = append(ids, id)
	}
	_, _, err := q.AddTaskOnce(ctx, 9, "once", time.Minute, []byte("once"))
	require.NoError(t, err)
	_, err = q.AddTask(ctx, 10, []byte("later"), At(time.Now().Add(time.Hour)))
	require.NoError(t, err)

	c1, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 2})
	require.NoError(t, err)
	ts, err := c1.Claim(ctx, 4)
	require.NoError(t, err)
	require.Len(t, ts, 4)
	// A cancel of a pending task (it names the task's place), of a ready
	// one, and of one that is nowhere.
	_, err = q.Cancel(ctx, ts[3].OrderID, ts[3].ID)
	require.NoError(t, err)
	_, err = q.Cancel(ctx, 7, ids[7])
	require.NoError(t, err)
	n, err := c1.Ack(ctx, ts[0].ID)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	dead, err := c1.Fail(ctx, ts[1], errors.New("once"))
	require.NoError(t, err)
	require.False(t, dead)
	ts[1].Attempt++ // its second delivery, in place
	dead, err = c1.Fail(ctx, ts[1], errors.New("twice"))
	require.NoError(t, err)
	require.True(t, dead)
	require.NoError(t, c1.Requeue(ctx, ts[2]))
	more, err := c1.Claim(ctx, 10) // finishes the cancelled task and the one marked while ready
	require.NoError(t, err)
	require.NotEmpty(t, more)
	require.NoError(t, c1.Renew(ctx))
	// c1 crashes holding more: a takeover recovers them.
	lapse(t, s, newQueueKeys(q.cfg.Prefix, 0, 0).lease)
	c2, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 2})
	require.NoError(t, err)
	again, err := c2.Claim(ctx, 20)
	require.NoError(t, err)
	require.NotEmpty(t, again)
	for _, tk := range again {
		_, err := c2.Ack(ctx, tk.ID)
		require.NoError(t, err)
	}
	_, err = c2.Claim(ctx, 1) // empty: sweeps cancel marks
	require.NoError(t, err)
	require.NoError(t, c2.Release(ctx))

	deads, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.NotEmpty(t, deads)
	_, err = q.Replay(ctx, 0, deads[0].ID)
	require.NoError(t, err)
	_, err = q.Purge(ctx, 0)
	require.NoError(t, err)

	// A pool's life: claims, a retry in place, acks, workers recorded.
	addAll(t, q, orderTasks(3, 3))
	var failed atomic.Bool
	r := newRecorder()
	require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{ExitOnEmpty: true}, r.fn(func(ctx context.Context, tk Task) error {
		if failed.CompareAndSwap(false, true) {
			return errors.New("once")
		}
		return nil
	})))
	for o := 0; o < 3; o++ {
		assert.Subset(t, r.order(uint64(o)), []string{pl(o, 0), pl(o, 1), pl(o, 2)})
	}

	// A group's life: a member joins, a second one takes queues from it
	// (nudging it), then leaves (nudging it again).
	gctx, stopA := context.WithCancel(ctx)
	doneA := make(chan error, 1)
	go func() {
		doneA <- q.JoinGroup(gctx, "g", GroupConfig{Member: "a", Pool: PoolConfig{Workers: 1}}, func(context.Context, Task) error { return nil })
	}()
	require.Eventually(t, func() bool { return settled(t, q, "g", "a") }, 10*time.Second, 5*time.Millisecond)
	b, err := q.newGroupStore("g", time.Minute)
	require.NoError(t, err)
	_, err = b.beat(ctx, "b", maxGroupWeight, "beat", 0)
	require.NoError(t, err)
	_, err = b.beat(ctx, "b", 1, "leave", 0)
	require.NoError(t, err)
	stopA()
	require.NoError(t, <-doneA)

	rec.mu.Lock()
	defer rec.mu.Unlock()
	assert.Empty(t, rec.undeclared)
	for _, name := range []string{"group-beat", "claim", "ack", "fail", "bury", "requeue", "cancel", "finish-cancelled", "drop", "retry", "acquire", "release", "renew", "add-once", "schedule", "replay", "layout", "workers"} {
		assert.True(t, rec.ran[name], "script %s did not run", name)
	}
}

// A Consumer's Fail of a task it no longer holds (handed back, here) has
// no claim to name: the failure script read the claim list of the claim
// "", a key it was not given.
func TestFailOfATaskNotHeldTouchesDeclaredKeysOnly(t *testing.T) {
	q, _, rec := declaredQueue(t)
	ctx := context.Background()
	addAll(t, q, orderTasks(1, 1))
	c := consumeFirst(t, q)
	ts, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	require.Len(t, ts, 1)
	require.NoError(t, c.Requeue(ctx, ts[0]))
	dead, err := c.Fail(ctx, ts[0], errors.New("late"))
	require.NoError(t, err)
	assert.False(t, dead)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	assert.True(t, rec.ran["fail"])
	assert.Empty(t, rec.undeclared)
}
