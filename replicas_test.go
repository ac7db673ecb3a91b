package queue

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConfigWaitReplicas(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cfg      Config
		timeout  time.Duration // the WaitTimeout used
		badField string        // the setting an error names
	}{
		{name: "off", cfg: Config{}},
		{name: "default timeout", cfg: Config{WaitReplicas: 1}, timeout: time.Second},
		{name: "half a short read timeout", cfg: Config{WaitReplicas: 2, ReadTimeout: time.Second}, timeout: 500 * time.Millisecond},
		{name: "own timeout", cfg: Config{WaitReplicas: 1, WaitTimeout: 50 * time.Millisecond}, timeout: 50 * time.Millisecond},
		{name: "negative", cfg: Config{WaitReplicas: -1}, badField: "WaitReplicas"},
		{name: "too many", cfg: Config{WaitReplicas: maxWaitReplicas + 1}, badField: "WaitReplicas"},
		{name: "timeout without replicas", cfg: Config{WaitTimeout: time.Second}, badField: "WaitTimeout"},
		{name: "timeout not under the read timeout", cfg: Config{WaitReplicas: 1, WaitTimeout: 10 * time.Second}, badField: "WaitTimeout"},
		{name: "timeout under a millisecond", cfg: Config{WaitReplicas: 1, WaitTimeout: time.Microsecond}, badField: "WaitTimeout"},
		{name: "negative timeout", cfg: Config{WaitReplicas: 1, WaitTimeout: -time.Second}, badField: "WaitTimeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.cfg.withDefaults()
			if tc.badField != "" {
				require.ErrorIs(t, err, ErrBadConfig)
				assert.Contains(t, err.Error(), tc.badField)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.timeout, got.WaitTimeout)
		})
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		cmd  string
		args []any
		want sent
	}{
		{"LPUSH", []any{"k", "v"}, sentWrite},
		{"lpush", []any{"k", "v"}, sentWrite},
		{"EVALSHA", []any{"sha", 1, "k"}, sentWrite},
		{"EVAL", []any{"return 1", 0}, sentWrite},
		{"EVALSHA_RO", []any{"sha", 1, "k"}, sentRead},
		{"EVALSHA", []any{findScript.Hash(), 2, "k", "l"}, sentRead}, // State's and Status's read
		{"EVAL", []any{scriptSources["find"], 2, "k", "l"}, sentRead},
		{"EVALSHA", []any{renewScript.Hash(), 1, "k"}, sentZero},
		{"HDEL", []any{"h", "f"}, sentWrite},
		{"PEXPIREAT", []any{"k", 1}, sentWrite},
		{"RPOP", []any{"k"}, sentPop},
		{"BLPOP", []any{"k", "1"}, sentPop},
		{"BLMOVE", []any{"a", "b", "RIGHT", "LEFT", "1"}, sentPop},
		{"BLMOVE", []any{"a", "a", "RIGHT", "LEFT", "1"}, sentPop}, // a rotation: it changes the list
		{"BLMOVE", []any{"a", "a", "RIGHT", "right", "1"}, sentRead},
		{"LMOVE", []any{"a", "a", "LEFT", "LEFT"}, sentRead},
		{"GET", []any{"k"}, sentRead},
		{"HGETALL", []any{"h"}, sentRead},
		{"CLIENT", []any{"ID"}, sentRead},
		{"SUBSCRIBE", []any{"c"}, sentRead},
		{"PING", nil, sentRead},
		{"WAIT", []any{1, 100}, sentRead},
		{"", nil, sentRead},
	} {
		assert.Equal(t, tc.want, classify(tc.cmd, tc.args), "%s %v", tc.cmd, tc.args)
	}
}

// ackConn is a connection to miniredis that answers WAIT with acked (an
// error reply when acked < 0) and logs the commands it was sent.
type ackConn struct {
	redis.Conn
	acked int
	log   []string
}

var (
	_ redis.ConnWithContext = (*ackConn)(nil)
	_ redis.ConnWithTimeout = (*ackConn)(nil)
)

func (c *ackConn) Send(cmd string, args ...any) error {
	c.log = append(c.log, cmd)
	if cmd != "WAIT" {
		return c.Conn.Send(cmd, args...)
	}
	if c.acked < 0 {
		return c.Conn.Send("EVAL", "return redis.error_reply('NOPERM no WAIT for you')", 0)
	}
	return c.Conn.Send("EVAL", "return tonumber(ARGV[1])", 0, c.acked)
}

func (c *ackConn) Do(cmd string, args ...any) (any, error) {
	c.log = append(c.log, cmd)
	return c.Conn.Do(cmd, args...)
}

func (c *ackConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	c.log = append(c.log, cmd)
	return redis.DoContext(c.Conn, ctx, cmd, args...)
}

func (c *ackConn) DoWithTimeout(d time.Duration, cmd string, args ...any) (any, error) {
	c.log = append(c.log, cmd)
	return redis.DoWithTimeout(c.Conn, d, cmd, args...)
}

func (c *ackConn) ReceiveContext(ctx context.Context) (any, error) {
	return redis.ReceiveContext(c.Conn, ctx)
}

func (c *ackConn) ReceiveWithTimeout(d time.Duration) (any, error) {
	return redis.ReceiveWithTimeout(c.Conn, d)
}

// newAckConn returns a waitConn that wants want replicas over an ackConn
// to a fresh miniredis whose WAIT answers acked.
func newAckConn(t *testing.T, want, acked int) (*waitConn, *ackConn, *miniredis.Miniredis) {
	t.Helper()
	m := miniredis.RunT(t)
	raw, err := redis.Dial("tcp", m.Addr(), redis.DialReadTimeout(5*time.Second))
	require.NoError(t, err)
	t.Cleanup(func() { raw.Close() })
	ac := &ackConn{Conn: raw, acked: acked}
	cfg, err := Config{WaitReplicas: want, WaitTimeout: 100 * time.Millisecond}.withDefaults()
	require.NoError(t, err)
	return newWaitConn(ac, cfg), ac, m
}

// doModes are the ways redigo runs one command.
var doModes = map[string]func(c redis.Conn, cmd string, args ...any) (any, error){
	"Do": func(c redis.Conn, cmd string, args ...any) (any, error) { return c.Do(cmd, args...) },
	"DoContext": func(c redis.Conn, cmd string, args ...any) (any, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return redis.DoContext(c, ctx, cmd, args...)
	},
	"DoContext/background": func(c redis.Conn, cmd string, args ...any) (any, error) {
		return redis.DoContext(c, context.Background(), cmd, args...)
	},
	"DoWithTimeout": func(c redis.Conn, cmd string, args ...any) (any, error) {
		return redis.DoWithTimeout(c, time.Second, cmd, args...)
	},
}

func TestWaitConnDo(t *testing.T) {
	for name, do := range doModes {
		t.Run(name, func(t *testing.T) {
			wc, ac, m := newAckConn(t, 1, 1)
			n, err := redis.Int(do(wc, "LPUSH", "list", "a"))
			require.NoError(t, err)
			assert.Equal(t, 1, n)
			assert.Equal(t, []string{"LPUSH", "WAIT"}, ac.log, "a write is followed by WAIT")

			ac.log, ac.acked = nil, 0
			_, err = do(wc, "LPUSH", "list", "b")
			require.ErrorIs(t, err, ErrNotReplicated)
			assert.Equal(t, "write acknowledged by 0 of 1 replicas within 100ms", err.Error())
			got, _ := m.List("list")
			assert.Equal(t, []string{"b", "a"}, got, "the write was made all the same")

			ac.log = nil
			n, err = redis.Int(do(wc, "LLEN", "list"))
			require.NoError(t, err, "a read does not wait")
			assert.Equal(t, 2, n)
			assert.Equal(t, []string{"LLEN"}, ac.log)

			ac.log = nil
			v, err := do(wc, "RPOP", "empty")
			require.NoError(t, err, "an empty pop wrote nothing")
			assert.Nil(t, v)
			_, err = do(wc, "BLMOVE", "list", "list", "RIGHT", "RIGHT", "0.01")
			require.NoError(t, err)
			assert.Equal(t, []string{"RPOP", "WAIT", "BLMOVE"}, ac.log, "a list's end moved onto itself waits for nothing")

			_, err = do(wc, "HSET", "list", "f", "v")
			assert.ErrorContains(t, err, "WRONGTYPE", "an error reply is the write's outcome, whatever WAIT says")
			assert.NotErrorIs(t, err, ErrNotReplicated)
			_, err = do(wc, "EVAL", "return redis.error_reply('"+staleReply+" lease lost')", 0)
			assert.ErrorIs(t, redisErr("ack", err), ErrLeaseLost, "a fenced refusal stays a refusal")

			ac.acked = -1
			_, err = do(wc, "SET", "k", "v")
			require.ErrorIs(t, err, ErrNotReplicated, "a WAIT refused")
			assert.ErrorContains(t, err, "NOPERM")
			assert.True(t, isReplyError(err))
			assert.NoError(t, wc.Err(), "the connection is in step")

			assert.False(t, isRedisError(err), "WAIT's error is not the write's")
			pong, err := redis.String(do(wc, "PING"))
			require.NoError(t, err)
			assert.Equal(t, "PONG", pong)
		})
	}
}

// receiveModes are the ways redigo reads the next reply.
var receiveModes = map[string]func(c redis.Conn) (any, error){
	"Receive": func(c redis.Conn) (any, error) { return c.Receive() },
	"ReceiveContext": func(c redis.Conn) (any, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return redis.ReceiveContext(c, ctx)
	},
	"ReceiveWithTimeout": func(c redis.Conn) (any, error) { return redis.ReceiveWithTimeout(c, time.Second) },
}

func TestWaitConnPipeline(t *testing.T) {
	for name, receive := range receiveModes {
		t.Run(name, func(t *testing.T) {
			wc, ac, _ := newAckConn(t, 2, 1)
			require.NoError(t, wc.Send("GET", "k"))
			require.NoError(t, wc.Send("LPUSH", "list", "a"))
			require.NoError(t, wc.Send("LLEN", "list"))
			require.NoError(t, wc.Send("RPOP", "none"))
			require.NoError(t, wc.Send("HSET", "list", "f", "v"))
			require.NoError(t, wc.Flush())
			ac.acked = 2 // too late: the WAIT that was sent answers 1
			require.NoError(t, wc.Send("LPUSH", "list", "b"))
			require.NoError(t, wc.Flush())
			assert.Equal(t, []string{"GET", "LPUSH", "LLEN", "RPOP", "HSET", "WAIT", "LPUSH", "WAIT"}, ac.log)

			v, err := receive(wc)
			assert.NoError(t, err)
			assert.Nil(t, v, "GET of a missing key")
			_, err = receive(wc)
			assert.ErrorIs(t, err, ErrNotReplicated, "the first LPUSH: 1 of 2 replicas")
			n, err := redis.Int(receive(wc))
			assert.NoError(t, err)
			assert.Equal(t, 1, n, "LLEN")
			v, err = receive(wc)
			assert.NoError(t, err)
			assert.Nil(t, v, "an empty pop")
			_, err = receive(wc)
			assert.ErrorContains(t, err, "WRONGTYPE")
			n, err = redis.Int(receive(wc))
			assert.NoError(t, err, "the second LPUSH's WAIT answered 2")
			assert.Equal(t, 2, n)
			assert.Zero(t, wc.owed())

			// Sent and not flushed: a receive flushes, WAIT included.
			ac.log = nil
			require.NoError(t, wc.Send("DEL", "list"))
			n, err = redis.Int(receive(wc))
			assert.NoError(t, err)
			assert.Equal(t, 1, n)
			assert.Equal(t, []string{"DEL", "WAIT"}, ac.log)
		})
	}
}

func TestWaitConnDoFlushesPipeline(t *testing.T) {
	wc, _, _ := newAckConn(t, 1, 0)
	require.NoError(t, wc.Send("LPUSH", "list", "a"))
	require.NoError(t, wc.Send("LLEN", "list"))
	replies, err := redis.Values(wc.Do(""))
	require.NoError(t, err)
	require.Len(t, replies, 2, "WAIT's reply is not the caller's")
	assert.ErrorIs(t, replies[0].(error), ErrNotReplicated)
	assert.Equal(t, int64(1), replies[1])

	require.NoError(t, wc.Send("LPUSH", "list", "b"))
	v, err := wc.Do("LLEN", "list")
	assert.ErrorIs(t, err, ErrNotReplicated, "Do returns the first error among the replies it reads")
	assert.Equal(t, int64(2), v, "and the reply of its own command")

	v, err = wc.Do("")
	assert.NoError(t, err)
	assert.Nil(t, v, "nothing pending")
}

func TestWaitConnTransaction(t *testing.T) {
	wc, ac, m := newAckConn(t, 1, 0)
	require.NoError(t, wc.Send("SET", "before", "1"))
	require.NoError(t, wc.Send("MULTI"))
	require.NoError(t, wc.Send("SET", "k", "v"))
	require.NoError(t, wc.Send("INCR", "n"))
	require.NoError(t, wc.Send("EXEC"))
	replies, err := redis.Values(wc.Do(""))
	require.NoError(t, err)
	assert.Equal(t, []string{"SET", "WAIT", "MULTI", "SET", "INCR", "EXEC", "WAIT"}, ac.log, "no WAIT inside the transaction")
	require.Len(t, replies, 5)
	assert.ErrorIs(t, replies[0].(error), ErrNotReplicated)
	assert.Equal(t, "QUEUED", replies[2])
	assert.ErrorIs(t, replies[4].(error), ErrNotReplicated, "EXEC's reply is the transaction's writes'")
	v, err := m.Get("k")
	require.NoError(t, err)
	assert.Equal(t, "v", v, "the transaction ran")

	ac.log = nil
	require.NoError(t, wc.Send("MULTI"))
	require.NoError(t, wc.Send("GET", "k"))
	_, err = wc.Do("EXEC")
	assert.NoError(t, err, "a transaction of reads waits for nothing")
	assert.Equal(t, []string{"MULTI", "GET", "EXEC"}, ac.log)
}

func TestWaitConnPubSub(t *testing.T) {
	wc, _, m := newAckConn(t, 1, 0)
	psc := redis.PubSubConn{Conn: wc}
	require.NoError(t, psc.Subscribe("ch"))
	_, ok := psc.Receive().(redis.Subscription)
	require.True(t, ok)
	m.Publish("ch", "hello")
	msg, ok := psc.Receive().(redis.Message)
	require.True(t, ok, "a reply no command asked for comes as it is")
	assert.Equal(t, "hello", string(msg.Data))
}

// TestWaitConnPool checks that a connection given back with replies
// unread is drained, WAIT's reply included, and serves the next borrower.
func TestWaitConnPool(t *testing.T) {
	wc, _, _ := newAckConn(t, 1, 1)
	dials := 0
	p := &redis.Pool{MaxIdle: 1, Dial: func() (redis.Conn, error) { dials++; return wc, nil }}
	defer p.Close()
	c := p.Get()
	require.NoError(t, c.Send("LPUSH", "list", "a"))
	require.NoError(t, c.Flush())
	require.NoError(t, c.Close())
	c = p.Get()
	defer c.Close()
	n, err := redis.Int(c.Do("LLEN", "list"))
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Equal(t, 1, dials, "the same connection")
}

// TestWaitReplicasDial checks the knob on the pools Dial makes, against
// miniredis, whose WAIT always answers 0: every write the queue reports is
// refused with ErrNotReplicated, though made, and reads go on. On a
// cluster, each node's pool waits (the router is made by hand: miniredis
// has no cluster of its own).
func TestWaitReplicasDial(t *testing.T) {
	ctx := context.Background()
	for _, topo := range []string{"standalone", "cluster"} {
		t.Run(topo, func(t *testing.T) {
			m := miniredis.RunT(t)
			cfg := Config{Prefix: testPrefix(t), WaitReplicas: 1, WaitTimeout: 10 * time.Millisecond}
			var q *Queue
			var err error
			if topo == "standalone" {
				q, err = Dial(ctx, []string{"redis://" + m.Addr()}, cfg)
			} else {
				q, err = New([]*redis.Pool{miniClusterPool(t, m.Addr(), cfg)}, cfg)
			}
			require.NoError(t, err)
			defer q.Close()

			_, err = q.AddTask(ctx, 7, []byte("x"))
			require.ErrorIs(t, err, ErrNotReplicated, "the layout check")
			q.parts[0].checked.Store(true) // recorded, as on a server whose replica is away

			_, err = q.AddTask(ctx, 7, []byte("x"))
			require.ErrorIs(t, err, ErrNotReplicated)
			assert.ErrorContains(t, err, "add task to partition 0 queue 0")
			_, err = q.AddTasks(ctx, []Task{{OrderID: 1, Payload: []byte("y")}, {OrderID: 2, Payload: []byte("z")}})
			require.ErrorIs(t, err, ErrNotReplicated)
			got, _ := m.List(q.ready[0][0])
			assert.Len(t, got, 3, "the writes were made")

			stats, err := q.Stats(ctx)
			require.NoError(t, err, "reads wait for nothing")
			assert.Equal(t, int64(3), stats[0].Ready)
			require.NoError(t, q.CheckLayout(ctx))

			// A fenced script refused for a stale lease value is the
			// caller's ErrLeaseLost, not an uncertain write.
			st, err := q.newStore(ctx, 0, 0, 0, "stale")
			require.NoError(t, err)
			st.lease.Store(new(string))
			_, err = st.ack(ctx, []ackRef{{claim: &claimBatch{record: "0"}, id: "some-id"}}, nil)
			assert.ErrorIs(t, err, ErrLeaseLost)
			assert.NotErrorIs(t, err, ErrNotReplicated)

			// A renewal the replicas did not confirm is uncertain, not a
			// lost lease: the renewer tries again until its deadline.
			held := "1.nonce:me"
			require.NoError(t, m.Set(st.keys.lease, held))
			m.SetTTL(st.keys.lease, time.Minute)
			st.lease.Store(&held)
			err = st.renew(ctx)
			assert.ErrorIs(t, err, ErrNotReplicated)
			assert.NotErrorIs(t, err, ErrLeaseLost)
			assert.Equal(t, 5*time.Second, m.TTL(st.keys.lease), "extended on the primary")

			// A renewal that finds the lease gone changed nothing: it
			// reads as lost at once, replicas or not.
			m.Del(st.keys.lease)
			err = st.renew(ctx)
			assert.ErrorIs(t, err, ErrLeaseLost)
			assert.NotErrorIs(t, err, ErrNotReplicated)

			// An AddTaskOnce that finds its key taken reports a task
			// queued by a write the replicas may not have: it waits for
			// them as a write does.
			_, _, err = q.AddTaskOnce(ctx, 9, "k", time.Minute, []byte("once"))
			require.ErrorIs(t, err, ErrNotReplicated, "the first add wrote")
			dedup := newQueueKeys(q.cfg.Prefix, 0, 0).dedup(9, "k")
			first, _ := m.Get(dedup)
			_, _, err = q.AddTaskOnce(ctx, 9, "k", time.Minute, []byte("once"))
			require.ErrorIs(t, err, ErrNotReplicated, "a duplicate the replicas may lack")
			kept, _ := m.Get(dedup)
			assert.Equal(t, first, kept, "the key kept")
			assert.Equal(t, time.Minute, m.TTL(dedup), "and its expiry")
			got, _ = m.List(q.ready[0][0])
			assert.Len(t, got, 4, "one task added")
		})
	}
}

// miniClusterPool returns a partition pool of a cluster router whose slot
// map gives every slot to the server at addr.
func miniClusterPool(t *testing.T, addr string, cfg Config) *redis.Pool {
	t.Helper()
	cfg, err := cfg.withDefaults()
	require.NoError(t, err)
	u, err := parseRedisURL("redis+cluster://" + addr)
	require.NoError(t, err)
	r := &clusterRouter{u: u, cfg: cfg, seeds: u.addrs, nodes: map[string]*redis.Pool{}}
	m := newSlotMap()
	require.NoError(t, m.assign(0, clusterSlots-1, addr))
	r.mu.Lock()
	r.storeSlotsLocked(m)
	r.mu.Unlock()
	t.Cleanup(func() { r.close() })
	return r.partitionPool(nil)
}

// TestNotReplicatedError checks the error's wording and its test.
func TestNotReplicatedError(t *testing.T) {
	err := redisErr("add task to partition 0 queue 0", &notReplicated{acked: 1, want: 2, timeout: time.Second})
	assert.Equal(t, "queue: add task to partition 0 queue 0: write acknowledged by 1 of 2 replicas within 1s", err.Error())
	assert.ErrorIs(t, err, ErrNotReplicated)
	assert.False(t, errors.Is(fmt.Errorf("x: %w", redis.Error("ERR")), ErrNotReplicated))
}

// The waiter's link sends on its connections from one goroutine while
// another reads their replies, which redigo allows and a waitConn (its
// record of the replies owed is not guarded) does not: under
// WaitReplicas its connections are the server's own. It only reads, so
// it has nothing to wait for. (Idle pools of the Sentinel fault test with
// WaitReplicas=1 raced there.)
func TestWaitReplicasWaiterConnsDoNotWait(t *testing.T) {
	t.Parallel()
	m := miniredis.RunT(t)
	ctx := context.Background()
	q, err := Dial(ctx, []string{"redis://" + m.Addr()}, Config{Prefix: testPrefix(t), WaitReplicas: 1})
	require.NoError(t, err)
	defer q.Close()
	pooled, err := q.Pool(0).DialContext(ctx)
	require.NoError(t, err)
	pooled.Close()
	require.IsType(t, &waitConn{}, pooled, "the pool's connections wait")
	c, err := q.waiters[0].dial(ctx)
	require.NoError(t, err)
	defer c.Close()
	_, waits := c.(*waitConn)
	assert.False(t, waits, "the waiter's connection is a waitConn")
}
