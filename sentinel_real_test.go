package queue

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Tests of the Sentinel client on real servers: a primary, its replica
// and three sentinels (redis-server --sentinel) on loopback, stopped by
// pid. They start servers, so they run with the fault suite.

// sentinelTopo is a primary named "mp", its replica and three sentinels.
type sentinelTopo struct {
	t                *testing.T
	primary, replica *redisProc
	sentinels        []*redisProc
	sentinelPass     string // the sentinels' user "watch", when they require one
}

// Failover settings of the test sentinels: a primary that does not answer
// for a second is down; a failover that stalls is tried again after 5s.
const (
	testDownAfter       = time.Second
	testFailoverTimeout = 5 * time.Second
)

// startSentinelTopo starts the topology. With pass set, the servers'
// default user has that password (the sentinels and the replica use it)
// and a user "app" has pass+"a"; with sentinelPass set, the sentinels
// admit their user "watch" with that password (and their default user with
// another).
func startSentinelTopo(t *testing.T, pass, sentinelPass string) *sentinelTopo {
	t.Helper()
	requireFaultSuite(t)
	topo := &sentinelTopo{t: t, sentinelPass: sentinelPass}
	var auth []string
	if pass != "" {
		auth = []string{"--requirepass", pass, "--masterauth", pass, "--user", "app", "on", ">" + pass + "a", "~*", "&*", "+@all"}
	}
	topo.primary = startServer(t, pass, auth...)
	topo.replica = startServer(t, pass, append(auth, "--replicaof", "127.0.0.1", strconv.Itoa(topo.primary.port))...)
	for range 3 {
		port, dir := freePort(t), t.TempDir()
		conf := []string{
			"port " + strconv.Itoa(port),
			"bind 127.0.0.1",
			"dir " + dir,
			"logfile " + filepath.Join(dir, "sentinel.log"),
			fmt.Sprintf("sentinel monitor mp 127.0.0.1 %d 2", topo.primary.port),
			fmt.Sprintf("sentinel down-after-milliseconds mp %d", testDownAfter.Milliseconds()),
			fmt.Sprintf("sentinel failover-timeout mp %d", testFailoverTimeout.Milliseconds()),
		}
		if pass != "" {
			conf = append(conf, "sentinel auth-pass mp "+pass)
		}
		if sentinelPass != "" {
			conf = append(conf, "requirepass "+sentinelPass+"-default", "user watch on >"+sentinelPass+" ~* &* +@all",
				"sentinel sentinel-user watch", "sentinel sentinel-pass "+sentinelPass)
		}
		path := filepath.Join(dir, "sentinel.conf") // the sentinel rewrites it
		require.NoError(t, os.WriteFile(path, []byte(strings.Join(conf, "\n")+"\n"), 0o600))
		r := &redisProc{t: t, port: port, dir: dir, args: []string{path, "--sentinel"}}
		if sentinelPass != "" {
			r.pass = sentinelPass + "-default"
		}
		t.Cleanup(r.kill) // first: a server that starts but never answers is killed too
		r.start()
		topo.sentinels = append(topo.sentinels, r)
	}
	return topo
}

// startServer is startRedis without AOF, for a server whose default user
// has password pass.
func startServer(t *testing.T, pass string, extra ...string) *redisProc {
	t.Helper()
	r := &redisProc{t: t, port: freePort(t), dir: t.TempDir(), pass: pass}
	r.setArgs(false, extra...)
	t.Cleanup(r.kill) // first: a server that starts but never answers is killed too
	r.start()
	return r
}

// sentinelAddrs returns the sentinels' addresses.
func (topo *sentinelTopo) sentinelAddrs() []string {
	var a []string
	for _, s := range topo.sentinels {
		a = append(a, s.addr())
	}
	return a
}

// ask runs a command on sentinel i.
func (topo *sentinelTopo) ask(i int, cmd string, args ...any) (any, error) {
	opts := []redis.DialOption{redis.DialConnectTimeout(time.Second), redis.DialReadTimeout(time.Second)}
	if topo.sentinelPass != "" {
		opts = append(opts, redis.DialUsername("watch"), redis.DialPassword(topo.sentinelPass))
	}
	c, err := redis.Dial("tcp", topo.sentinels[i].addr(), opts...)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Do(cmd, args...)
}

// waitReady waits until every live sentinel knows the replica and the
// other sentinels, so that a failover can be agreed on.
func (topo *sentinelTopo) waitReady(live ...int) {
	topo.t.Helper()
	require.Eventually(topo.t, func() bool {
		for _, i := range live {
			ok, err := redis.String(topo.ask(i, "SENTINEL", "CKQUORUM", "mp"))
			if err != nil || !strings.Contains(ok, "3 usable") {
				return false
			}
			replicas, err := redis.Values(topo.ask(i, "SENTINEL", "REPLICAS", "mp"))
			if err != nil || len(replicas) != 1 {
				return false
			}
		}
		return true
	}, 20*time.Second, 50*time.Millisecond, "the sentinels did not find each other and the replica")
}

// waitPrimary waits until sentinel i names addr as the primary.
func (topo *sentinelTopo) waitPrimary(i int, addr string, timeout time.Duration) {
	topo.t.Helper()
	require.Eventually(topo.t, func() bool {
		a, err := primaryAddr(topo.ask(i, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mp"))
		return err == nil && a == addr
	}, timeout, 20*time.Millisecond, "sentinel %d does not name %s", i, addr)
}

// TestSentinelFailover runs a producer and an AnalysePool on a queue
// dialled through sentinels (a stale one that names the replica, one that
// is down, then the three real ones), kills the sentinel the partition
// follows and then, with kill -9, the primary. The sentinels fail over to
// the replica; producer and pool go on without a restart. It logs the
// recovery time and what the failover lost: with asynchronous replication
// a few acknowledged adds may be lost, and are counted, not hidden.
func TestSentinelFailover(t *testing.T) {
	topo := startSentinelTopo(t, "", "")
	stale := newFakeSentinel(t, "mp", topo.replica.addr())
	ctx := context.Background()
	u := sentinelURL("mp", append([]string{stale.Addr(), closedAddr(t)}, topo.sentinelAddrs()...)...)
	q, err := Dial(ctx, []string{u}, Config{Prefix: testPrefix(t), DialTimeout: time.Second})
	require.NoError(t, err)
	defer q.Close()
	topo.waitReady(0, 1, 2)

	const orders = 16
	var (
		mu        sync.Mutex
		added     = map[string]int{} // task ID -> seq, adds that returned nil
		addedPost = map[string]bool{}
		runs      = map[string]int{}
		lastSeq   = map[uint64]int{} // per OrderID, the seq of its last first run
		reordered int
		firstPost time.Time // the first run of a task added after the kill
		addFails  atomic.Int64
		poolErrs  atomic.Int64
		killed    atomic.Bool
		killAt    time.Time
		addBack   time.Time // the first add that succeeded after the kill
	)
	runCtx, stop := context.WithCancel(ctx)
	addCtx, stopAdding := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { // the producer: one add at a time, each retried until it succeeds
		for seq := 0; addCtx.Err() == nil; seq++ {
			post := killed.Load()
			payload := fmt.Appendf(nil, "%d %t", seq, post)
			for addCtx.Err() == nil {
				actx, cancel := context.WithTimeout(addCtx, 2*time.Second)
				id, err := q.AddTask(actx, uint64(seq%orders), payload)
				cancel()
				if err == nil {
					mu.Lock()
					added[id], addedPost[id] = seq, post
					if post && addBack.IsZero() {
						addBack = time.Now()
					}
					mu.Unlock()
					break
				}
				addFails.Add(1)
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(2 * time.Millisecond)
		}
	})
	poolDone := make(chan error, 1)
	go func() {
		poolDone <- q.AnalysePool(runCtx, 0, PoolConfig{Workers: 4, LeaseTTL: 2 * time.Second,
			OnError: func(error) { poolErrs.Add(1) }},
			func(_ context.Context, task Task) error {
				var seq int
				var post bool
				if _, err := fmt.Sscanf(string(task.Payload), "%d %t", &seq, &post); err != nil {
					return err // not a task of this test: it stays, and the test fails
				}
				mu.Lock()
				defer mu.Unlock()
				runs[task.ID]++
				if runs[task.ID] == 1 {
					if last, ok := lastSeq[task.OrderID]; ok && seq < last {
						reordered++
					}
					lastSeq[task.OrderID] = seq
				}
				if post && firstPost.IsZero() {
					firstPost = time.Now()
				}
				return nil
			})
	}()
	ran := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(runs)
	}
	require.Eventually(t, func() bool { return ran() >= 200 }, 20*time.Second, time.Millisecond)

	// The partition follows sentinel 0 (the stale one is asked last, the
	// one that is down fails): kill it, then the primary.
	topo.sentinels[0].kill()
	time.Sleep(200 * time.Millisecond)
	killAt = time.Now()
	killed.Store(true)
	topo.primary.kill()
	topo.waitPrimary(1, topo.replica.addr(), 30*time.Second)
	failedOver := time.Since(killAt)
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return !firstPost.IsZero()
	}, 30*time.Second, time.Millisecond, "no task added after the kill ran")
	n := ran()
	require.Eventually(t, func() bool { return ran() >= n+200 }, 20*time.Second, time.Millisecond)

	// Stop adding, and let the pool run every task added after the kill.
	stopAdding()
	wg.Wait()
	assert.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for id, post := range addedPost {
			if post && runs[id] == 0 {
				return false
			}
		}
		return true
	}, 20*time.Second, 5*time.Millisecond, "tasks added after the kill did not run")
	stop()
	require.NoError(t, <-poolDone)

	mu.Lock()
	defer mu.Unlock()
	var lost, lostPost, dups int
	for id, post := range addedPost {
		switch {
		case runs[id] == 0 && post:
			lostPost++
		case runs[id] == 0:
			lost++
		case runs[id] > 1:
			dups++
		}
	}
	t.Logf("failover: sentinels named the replica %v after the kill; first add after it %v; first run of a task added after it %v",
		failedOver.Round(time.Millisecond), addBack.Sub(killAt).Round(time.Millisecond), firstPost.Sub(killAt).Round(time.Millisecond))
	t.Logf("failover: %d adds acknowledged, %d failed adds retried, %d acknowledged before the kill lost, %d run twice, %d reordered, %d pool errors",
		len(added), addFails.Load(), lost, dups, reordered, poolErrs.Load())
	assert.Zero(t, reordered, "first runs out of order within an OrderID")
	assert.Zero(t, lostPost, "tasks added after the kill lost")
	assert.Positive(t, addFails.Load(), "no add failed: the primary was not killed under the producer")
	assert.Positive(t, stale.asked.Load(), "every sentinel is asked, and the majority's answer taken")
}

// TestSentinelCredentials dials a primary whose users need a password
// through sentinels that admit only their own user: it works with both
// sets of credentials, and no failure with a wrong or missing one quotes
// a password.
func TestSentinelCredentials(t *testing.T) {
	pw := sentinelPassword
	topo := startSentinelTopo(t, pw, pw+"s")
	ctx := context.Background()
	hosts := strings.Join(topo.sentinelAddrs(), ",")
	u := "redis+sentinel://app:" + pw + "a@" + hosts + "/mp/3?sentinel_user=watch&sentinel_password=" + pw + "s"
	cfg := Config{Prefix: testPrefix(t), DialTimeout: time.Second}
	q, err := Dial(ctx, []string{u}, cfg)
	require.NoError(t, err)
	_, err = q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	claimAckOne(t, q, 0)

	for name, bad := range map[string]string{
		"wrong password of the primary's user": strings.Replace(u, pw+"a@", pw+"x@", 1),
		"no credentials for the primary":       strings.Replace(u, "app:"+pw+"a@", "", 1),
		"wrong sentinel password":              strings.Replace(u, pw+"s", pw+"x", 1),
		"no sentinel user":                     strings.Replace(u, "sentinel_user=watch&", "", 1),
		"no sentinel credentials":              u[:strings.Index(u, "?")],
	} {
		_, err := Dial(ctx, []string{bad}, cfg)
		require.Error(t, err, name)
		assertNoSecret(t, err.Error(), name)
		t.Logf("%s: %v", name, err)
	}

	// Every server down: the errors of a running queue quote no password.
	topo.primary.kill()
	topo.replica.kill()
	for _, s := range topo.sentinels {
		s.kill()
	}
	_, err = q.AddTask(ctx, 1, []byte("x"))
	require.Error(t, err)
	assertNoSecret(t, err.Error())
	_, err = q.AddTask(ctx, 1, []byte("x")) // now asking the sentinels
	require.Error(t, err)
	assertNoSecret(t, err.Error())
	assert.Contains(t, err.Error(), "no sentinel named the primary")
	assertNoSecret(t, q.Ping(ctx).Error())
	require.NoError(t, q.Close())
}

// TestSentinelReadOnly demotes the primary by hand (REPLICAOF, which
// leaves its clients connected, where Sentinel would disconnect them) and
// has the sentinel name the new primary without announcing it: the add
// that reaches the old primary is refused with ErrReadOnly and did not
// run; its connection is dropped, and the next add asks the sentinel and
// goes to the new primary.
func TestSentinelReadOnly(t *testing.T) {
	requireFaultSuite(t)
	ctx := context.Background()
	a, b := startServer(t, ""), startServer(t, "")
	s := newFakeSentinel(t, "mp", a.addr())
	q, err := Dial(ctx, []string{sentinelURL("mp", s.Addr())}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	defer q.Close()
	_, err = q.AddTask(ctx, 1, []byte("before"))
	require.NoError(t, err)
	idle := q.parts[0].pool.Stats().IdleCount
	require.Positive(t, idle)

	c, err := redis.Dial("tcp", a.addr())
	require.NoError(t, err)
	_, err = c.Do("REPLICAOF", "127.0.0.1", b.port)
	c.Close()
	require.NoError(t, err)
	s.setAddr(b.addr())

	_, err = q.AddTask(ctx, 1, []byte("refused"))
	require.ErrorIs(t, err, ErrReadOnly)
	assert.Equal(t, idle-1, q.parts[0].pool.Stats().IdleCount, "the refused connection went back to the pool")
	id, err := q.AddTask(ctx, 1, []byte("after"))
	require.NoError(t, err)
	ready, err := redis.ByteSlices(redisOn(t, b, "LRANGE", newQueueKeys(q.cfg.Prefix, 0, 0).ready, 0, -1))
	require.NoError(t, err)
	require.Len(t, ready, 1, "the refused add ran")
	assert.Equal(t, id, entryID(ready[0]))
}

// redisOn runs one command on r.
func redisOn(t *testing.T, r *redisProc, cmd string, args ...any) (any, error) {
	t.Helper()
	c, err := redis.Dial("tcp", r.addr(), redis.DialPassword(r.pass))
	require.NoError(t, err)
	defer c.Close()
	return c.Do(cmd, args...)
}
