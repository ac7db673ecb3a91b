package queue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The fault suite: real redis-server processes, producers and analysers
// as child processes (see faultproc_test.go), real faults, and a checker
// over the recorded histories (checker_test.go). docs/reliability.md lists
// what each test promises and the figures of the last run.

// faultLeaseTTL is the analysers' lease in the suite: short, so recovery
// is quick, yet long enough that a loaded 2-core CI machine does not delay
// a renewal (every third of it) past its end and cause a takeover no fault
// asked for.
const faultLeaseTTL = 2 * time.Second

// faultSuiteEnv set to "off" skips the fault suite. The suite starts its
// own redis-server processes whatever QUEUE_TEST_REDIS_URL says, so CI,
// which runs the package's tests twice (on miniredis, then on a real
// server), turns it off for the first pass.
const faultSuiteEnv = "QUEUE_FAULT_SUITE"

// requireFaultSuite skips the test in short mode, when turned off, or
// without redis-server.
func requireFaultSuite(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("fault suite skipped in short mode")
	}
	if os.Getenv(faultSuiteEnv) == "off" {
		t.Skipf("fault suite skipped: %s=off (it starts its own redis-server; CI runs it in its real-server pass)", faultSuiteEnv)
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skipf("fault suite skipped: redis-server is not on PATH (%v)", err)
	}
}

// redisProc is a redis-server the test started.
type redisProc struct {
	t    testing.TB
	port int
	dir  string
	args []string
	cmd  *exec.Cmd
	done chan struct{}
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startRedis starts a redis-server on a free loopback port, without RDB
// snapshots, with AOF on or off, in its own directory, and kills it at the
// end of the test.
func startRedis(t testing.TB, aof bool, extra ...string) *redisProc {
	t.Helper()
	r := &redisProc{t: t, port: freePort(t), dir: t.TempDir()}
	yes := map[bool]string{true: "yes", false: "no"}[aof]
	r.args = append([]string{"--port", strconv.Itoa(r.port), "--bind", "127.0.0.1", "--save", "",
		"--appendonly", yes, "--dir", r.dir, "--logfile", filepath.Join(r.dir, "redis.log"),
		"--daemonize", "no"}, extra...)
	r.start()
	t.Cleanup(r.kill)
	return r
}

func (r *redisProc) addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }
func (r *redisProc) url() string  { return "redis://" + r.addr() }

// start (re)starts the server on its port and waits until it answers.
func (r *redisProc) start() {
	r.t.Helper()
	r.cmd = exec.Command("redis-server", r.args...)
	require.NoError(r.t, r.cmd.Start())
	r.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(r.cmd, r.done)
	require.Eventually(r.t, func() bool {
		c, err := redis.Dial("tcp", r.addr(), redis.DialConnectTimeout(100*time.Millisecond))
		if err != nil {
			return false
		}
		defer c.Close()
		_, err = c.Do("PING") // fails with LOADING while the AOF loads
		return err == nil
	}, 10*time.Second, 10*time.Millisecond, "redis-server did not start; see %s", filepath.Join(r.dir, "redis.log"))
}

// kill stops the server with SIGKILL and waits for it.
func (r *redisProc) kill() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	r.cmd.Process.Kill()
	<-r.done
}

// child is a producer or analyser process.
type child struct {
	role string
	cfg  roleConfig
	cmd  *exec.Cmd
	done chan struct{}
	err  error // Wait's result, once done is closed
	log  string
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// faultEnv is one fault test's world: its redis-server, children, and the
// harness's own events.
type faultEnv struct {
	t      *testing.T
	dir    string
	redis  *redisProc
	url    string // what children connect to: the server, or a proxy
	prefix string
	queues int
	q      *Queue
	pool   *redis.Pool

	mu        sync.Mutex
	harness   []faultEvent
	histories []string
	children  []*child
}

func newFaultEnv(t *testing.T, queues int, aof bool, redisArgs ...string) *faultEnv {
	requireFaultSuite(t)
	e := &faultEnv{t: t, dir: t.TempDir(), queues: queues, prefix: "fault"}
	e.redis = startRedis(t, aof, redisArgs...)
	e.url = e.redis.url()
	e.pool = &redis.Pool{
		MaxIdle: 4,
		DialContext: func(ctx context.Context) (redis.Conn, error) {
			return redis.DialContext(ctx, "tcp", e.redis.addr(),
				redis.DialConnectTimeout(time.Second), redis.DialReadTimeout(5*time.Second))
		},
	}
	q, err := New([]*redis.Pool{e.pool}, Config{Prefix: e.prefix, Queues: queues})
	require.NoError(t, err)
	e.q = q
	t.Cleanup(func() {
		e.mu.Lock()
		cs := append([]*child(nil), e.children...)
		e.mu.Unlock()
		for _, c := range cs {
			if !c.exited() {
				c.cmd.Process.Kill()
			}
			<-c.done
		}
		q.Close()
		e.pool.Close()
		if t.Failed() {
			for _, c := range cs {
				if b, _ := os.ReadFile(c.log); len(b) > 0 {
					t.Logf("%s %d output:\n%s", c.role, c.pid(), tail(b, 3000))
				}
			}
		}
	})
	return e
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// analyserConfig is the suite's usual analyser: 8 workers, a 1s lease,
// and about 200µs of work per task.
func (e *faultEnv) analyserConfig(analyser int) roleConfig {
	return roleConfig{Analyser: analyser, Workers: 8, LeaseTTL: faultLeaseTTL, MaxAttempts: 5,
		ShutdownTimeout: 5 * time.Second, Work: 200 * time.Microsecond}
}

// spawn starts a child process in role with cfg.
func (e *faultEnv) spawn(role string, cfg roleConfig) *child {
	e.t.Helper()
	e.mu.Lock()
	n := len(e.children)
	e.mu.Unlock()
	if cfg.URL == "" {
		cfg.URL = e.url
	}
	cfg.Prefix, cfg.Queues = e.prefix, e.queues
	cfg.History = filepath.Join(e.dir, fmt.Sprintf("%s-%d.jsonl", role, n))
	js, err := json.Marshal(cfg)
	require.NoError(e.t, err)
	c := &child{role: role, cfg: cfg, done: make(chan struct{}), log: filepath.Join(e.dir, fmt.Sprintf("%s-%d.log", role, n))}
	out, err := os.Create(c.log)
	require.NoError(e.t, err)
	defer out.Close()
	c.cmd = exec.Command(os.Args[0])
	c.cmd.Env = append(os.Environ(), faultRoleEnv+"="+role, faultConfigEnv+"="+string(js))
	c.cmd.Stdout, c.cmd.Stderr = out, out
	require.NoError(e.t, c.cmd.Start())
	go func() { c.err = c.cmd.Wait(); close(c.done) }()
	e.mu.Lock()
	e.children = append(e.children, c)
	e.histories = append(e.histories, cfg.History)
	e.mu.Unlock()
	return c
}

// event records a harness event now.
func (e *faultEnv) event(ev faultEvent) {
	if ev.Wall == 0 {
		ev.Wall = time.Now().UnixNano()
	}
	e.mu.Lock()
	e.harness = append(e.harness, ev)
	e.mu.Unlock()
}

// kill9 kills c with SIGKILL and records its death once it is reaped.
func (e *faultEnv) kill9(c *child) {
	e.t.Helper()
	require.NoError(e.t, c.cmd.Process.Signal(syscall.SIGKILL))
	<-c.done
	e.event(faultEvent{Ev: evKill, Pid: c.pid()})
}

// terminate sends SIGTERM to c (a graceful stop) and records it.
func (e *faultEnv) terminate(c *child) {
	e.t.Helper()
	e.event(faultEvent{Ev: evTerm, Pid: c.pid()})
	require.NoError(e.t, c.cmd.Process.Signal(syscall.SIGTERM))
}

// waitExit waits for c to exit and requires a clean exit.
func (e *faultEnv) waitExit(c *child, timeout time.Duration) {
	e.t.Helper()
	select {
	case <-c.done:
	case <-time.After(timeout):
		e.t.Fatalf("%s %d did not exit within %v", c.role, c.pid(), timeout)
	}
	require.NoError(e.t, c.err, "%s %d exit", c.role, c.pid())
}

// stats returns the queues' stats, retrying for a while: after a server
// restart the harness's idle connections fail once each.
func (e *faultEnv) stats() []AnalyserStats {
	e.t.Helper()
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		var st []AnalyserStats
		if st, err = e.q.Stats(context.Background()); err == nil {
			return st
		}
	}
	require.NoError(e.t, err)
	return nil
}

// processed returns the acks of all queues so far.
func (e *faultEnv) processed() int64 {
	var n int64
	for _, s := range e.stats() {
		n += s.Processed
	}
	return n
}

// waitProcessed waits until at least n tasks were acknowledged.
func (e *faultEnv) waitProcessed(n int64, timeout time.Duration) {
	e.t.Helper()
	require.Eventually(e.t, func() bool { return e.processed() >= n }, timeout, 2*time.Millisecond,
		"fewer than %d tasks processed", n)
}

// recordPending records every task pending in Redis now (at a fault).
func (e *faultEnv) recordPending() int {
	e.t.Helper()
	n := 0
	for a := 0; a < e.q.Analysers(); a++ {
		ts, err := e.q.Pending(context.Background(), a)
		require.NoError(e.t, err)
		for _, task := range ts {
			e.event(faultEvent{Ev: evPending, ID: task.ID, Order: task.OrderID, Analyser: a})
		}
		n += len(ts)
	}
	return n
}

// drain waits for the producers to exit cleanly and the queues to empty,
// then stops the analysers gracefully.
func (e *faultEnv) drain(producers, analysers []*child, timeout time.Duration) {
	e.t.Helper()
	for _, p := range producers {
		e.waitExit(p, timeout)
	}
	require.Eventually(e.t, func() bool {
		for _, s := range e.stats() {
			if s.Ready != 0 || s.Pending != 0 {
				return false
			}
		}
		return true
	}, timeout, 10*time.Millisecond, "queues did not drain: %+v", e.stats())
	for _, a := range analysers {
		if !a.exited() {
			e.terminate(a)
		}
	}
	for _, a := range analysers {
		e.waitExit(a, 15*time.Second)
	}
}

// check reads every history and the dead-letter stores and runs the checker.
func (e *faultEnv) check() faultReport {
	e.t.Helper()
	return checkHistory(e.events())
}

// events returns every event of the run: the children's, the harness's,
// and the dead-letter stores' records.
func (e *faultEnv) events() []faultEvent {
	e.t.Helper()
	e.mu.Lock()
	events := append([]faultEvent(nil), e.harness...)
	paths := append([]string(nil), e.histories...)
	e.mu.Unlock()
	for _, p := range paths {
		ev, err := readHistory(p)
		require.NoError(e.t, err)
		events = append(events, ev...)
	}
	for a := 0; a < e.q.Analysers(); a++ {
		dead, err := e.q.Dead(context.Background(), a)
		require.NoError(e.t, err)
		for _, d := range dead {
			if d.Raw != nil { // a malformed record found in Redis, quarantined: no task of the run
				events = append(events, faultEvent{Ev: evQuarantined, ID: d.ID, Err: d.LastError, Wall: d.DiedAt.UnixNano(), Analyser: a})
				continue
			}
			order, seq, _, err := parsePayload(d.Payload)
			if err != nil {
				order, seq = 0, -1
			}
			events = append(events, faultEvent{Ev: evDeadRec, ID: d.ID, Order: order, Seq: seq, Wall: d.DiedAt.UnixNano(), Analyser: a})
		}
	}
	return events
}

// firstAfter returns the time from at to the first event of kind ev with
// result (any when empty) after it, or -1.
func firstAfter(events []faultEvent, at time.Time, ev, result string) time.Duration {
	best := int64(-1)
	for _, x := range events {
		if x.Ev == ev && (result == "" || x.Result == result) && x.Wall > at.UnixNano() && (best < 0 || x.Wall < best) {
			best = x.Wall
		}
	}
	if best < 0 {
		return -1
	}
	return time.Duration(best - at.UnixNano())
}

// requireClean asserts the figures every fault must keep: nothing lost or
// made up, order kept, no overlap, fencing held.
func requireClean(t *testing.T, r faultReport) {
	t.Helper()
	assert.Zero(t, r.Lost, "lost")
	assert.Zero(t, r.Unexpected, "unexpected")
	assert.Zero(t, r.Reordered, "reordered")
	assert.Zero(t, r.EarlyStarts, "early starts")
	assert.Zero(t, r.Overlap, "overlap")
	assert.Zero(t, r.LateAcks, "late acks accepted")
	assert.Zero(t, r.StaleStarts, "stale starts")
	assert.Zero(t, r.Quarantined, "malformed records quarantined")
	// A process that lost its lease before the fault was stalled past it
	// (an overloaded machine): an unplanned takeover, whose duplicates the
	// figures above do not expect.
	assert.Zero(t, r.EarlyLosses, "leases lost before the fault the test injected")
}

// produce is the usual producer: orders x per tasks with AddTask from 4
// goroutines.
func produce(orders, per int) roleConfig {
	return roleConfig{Orders: orders, PerOrder: per, Goroutines: 4}
}

func TestFaultKillAnalyser(t *testing.T) {
	e := newFaultEnv(t, 1, false)
	const orders, per = 200, 100
	total := int64(orders * per)
	a1 := e.spawn("analyser", e.analyserConfig(0))
	p := e.spawn("producer", produce(orders, per))
	frac := 0.2 + 0.6*rand.Float64()
	e.waitProcessed(int64(frac*float64(total)), 60*time.Second)
	e.kill9(a1)
	pending := e.recordPending()
	a2 := e.spawn("analyser", e.analyserConfig(0))
	e.drain([]*child{p}, []*child{a2}, 60*time.Second)

	r := e.check()
	t.Logf("kill -9 at %.0f%% done, %d pending: %v", 100*frac, pending, r)
	assertKillRecovered(t, r, total, pending)
}

// assertKillRecovered checks what a kill -9 of analysers with pending
// tasks promises: all total tasks added and completed, none dead,
// duplicates only among the tasks pending at the kill, recovery and
// redelivery within the lease and a second.
func assertKillRecovered(t *testing.T, r faultReport, total int64, pending int) {
	t.Helper()
	requireClean(t, r)
	assert.EqualValues(t, total, r.AddedOK)
	assert.EqualValues(t, total, r.Completed)
	assert.Zero(t, r.DupOther, "duplicates of tasks not pending at the kill")
	assert.LessOrEqual(t, r.DupPending, pending)
	assert.Zero(t, r.Dead)
	require.Positive(t, r.Recovery, "no start after the kill")
	assert.LessOrEqual(t, r.Recovery, faultLeaseTTL+time.Second, "recovery")
	if pending > 0 {
		assert.LessOrEqual(t, r.Redelivery, faultLeaseTTL+time.Second, "redelivery")
	}
}

func TestFaultGracefulStop(t *testing.T) {
	e := newFaultEnv(t, 1, false)
	const orders, per = 200, 100
	total := int64(orders * per)
	cfg := e.analyserConfig(0)
	cfg.Work = time.Millisecond // slower than the producer: a backlog, and a full prefetch window
	a1 := e.spawn("analyser", cfg)
	p := e.spawn("producer", produce(orders, per))
	e.waitProcessed(1, 30*time.Second) // a1 holds the lease
	a2 := e.spawn("analyser", cfg)     // a hot standby
	frac := 0.2 + 0.6*rand.Float64()
	e.waitProcessed(int64(frac*float64(total)), 60*time.Second)
	pending := e.recordPending()
	e.terminate(a1)
	e.waitExit(a1, 15*time.Second)
	e.drain([]*child{p}, []*child{a2}, 60*time.Second)

	r := e.check()
	t.Logf("SIGTERM at %.0f%% done, %d pending: %v", 100*frac, pending, r)
	requireClean(t, r)
	assert.EqualValues(t, total, r.AddedOK)
	assert.EqualValues(t, total, r.Completed)
	assert.Zero(t, r.DupPending+r.DupOther, "duplicates after a graceful stop")
	assert.Zero(t, r.Dead)
	require.Positive(t, r.Recovery, "no start after the stop")
	// The standby is woken by the release: no lease expiry to wait for.
	assert.Less(t, r.Recovery, faultLeaseTTL/2, "handover after a graceful stop")
}

func TestFaultKillAllAnalysers(t *testing.T) {
	e := newFaultEnv(t, 2, false) // two queues, two analysers
	const orders, per = 200, 100
	total := int64(orders * per)
	cfg := e.analyserConfig(0)
	cfg.Work = time.Millisecond // slower than the producer: a full prefetch window
	var old []*child
	for a := 0; a < 2; a++ {
		cfg.Analyser = a
		old = append(old, e.spawn("analyser", cfg))
	}
	p := e.spawn("producer", produce(orders, per))
	frac := 0.2 + 0.6*rand.Float64()
	e.waitProcessed(int64(frac*float64(total)), 60*time.Second)
	for _, a := range old {
		e.kill9(a)
	}
	pending := e.recordPending()
	var fresh []*child
	for a := 0; a < 2; a++ {
		cfg.Analyser = a
		fresh = append(fresh, e.spawn("analyser", cfg))
	}
	e.drain([]*child{p}, fresh, 60*time.Second)

	r := e.check()
	t.Logf("kill -9 of both analysers at %.0f%% done, %d pending: %v", 100*frac, pending, r)
	assertKillRecovered(t, r, total, pending)
	var redelivered int64
	for _, s := range e.stats() {
		redelivered += s.Redelivered
	}
	assert.EqualValues(t, pending, redelivered, "every task pending at the kill is put back once")
}

// waitAdded waits until at least n tasks reached Redis (ready, pending or
// acknowledged).
func (e *faultEnv) waitAdded(n int64, timeout time.Duration) {
	e.t.Helper()
	require.Eventually(e.t, func() bool {
		var got int64
		for _, s := range e.stats() {
			got += s.Ready + s.Pending + s.Processed
		}
		return got >= n
	}, timeout, 2*time.Millisecond, "fewer than %d tasks added", n)
}

func TestFaultKillProducer(t *testing.T) {
	e := newFaultEnv(t, 1, false)
	const orders, per = 200, 100 // half by AddTask, half by AddTasks
	total := int64(orders * per)
	a := e.spawn("analyser", e.analyserConfig(0))
	single := e.spawn("producer", roleConfig{Orders: orders / 2, PerOrder: per, Goroutines: 4})
	batched := e.spawn("producer", roleConfig{FirstOrder: orders / 2, Orders: orders / 2, PerOrder: per, Goroutines: 4, Batch: 50})
	frac := 0.2 + 0.6*rand.Float64()
	e.waitAdded(int64(frac*float64(total)), 60*time.Second)
	e.kill9(single)
	e.kill9(batched)
	e.drain(nil, []*child{a}, 60*time.Second)

	r := e.check()
	t.Logf("kill -9 of both producers at %.0f%% added: %v", 100*frac, r)
	requireClean(t, r)
	assert.Positive(t, r.AddedOK)
	assert.Less(t, int64(r.Attempted), total, "the producers were killed before the end")
	assert.Equal(t, r.AddedOK, r.Completed-r.UnknownDone, "every ok task completes")
	assert.Zero(t, r.UnknownTwice, "an unknown add completes at most once")
	assert.Zero(t, r.DupPending+r.DupOther, "no analyser fault, no duplicate")
	assert.Zero(t, r.AddErrors)
	assert.Zero(t, r.Dead)
}

// procState returns the state letter of process pid ('T' when stopped).
func procState(pid int) byte {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0
	}
	return b[i+2]
}

// count returns the events of kind ev in c's history so far.
func (e *faultEnv) count(c *child, ev string) int {
	e.t.Helper()
	evs, err := readHistory(c.cfg.History)
	if err != nil {
		return 0 // not written yet
	}
	n := 0
	for _, x := range evs {
		if x.Ev == ev {
			n++
		}
	}
	return n
}

// stop freezes c with SIGSTOP and records it once the process is stopped.
func (e *faultEnv) stop(c *child) {
	e.t.Helper()
	require.NoError(e.t, c.cmd.Process.Signal(syscall.SIGSTOP))
	require.Eventually(e.t, func() bool { return procState(c.pid()) == 'T' }, 5*time.Second, time.Millisecond)
	e.event(faultEvent{Ev: evStop, Pid: c.pid()})
}

// cont resumes c with SIGCONT, recording it first.
func (e *faultEnv) cont(c *child) {
	e.t.Helper()
	e.event(faultEvent{Ev: evCont, Pid: c.pid()})
	require.NoError(e.t, c.cmd.Process.Signal(syscall.SIGCONT))
}

func TestFaultZombieAnalyser(t *testing.T) {
	requireFaultSuite(t)
	t.Run("fn honours ctx", func(t *testing.T) { testZombie(t, false) })
	t.Run("fn ignores ctx", func(t *testing.T) { testZombie(t, true) })
	t.Run("consumer API acks late", testZombieConsumer)
}

// testZombieConsumer pauses a process that claimed tasks with the
// low-level API; when it resumes, its acks must be refused.
func testZombieConsumer(t *testing.T) {
	e := newFaultEnv(t, 1, false)
	const orders, per, claim = 200, 5, 50
	total := int64(orders * per)
	p := e.spawn("producer", produce(orders, per))
	e.waitExit(p, 30*time.Second)
	zcfg := roleConfig{LeaseTTL: faultLeaseTTL, Prefetch: claim, Work: 2 * faultLeaseTTL}
	zombie := e.spawn("consumer", zcfg)
	// Stop it once it has claimed and recorded the starts, during its work.
	require.Eventually(t, func() bool { return e.count(zombie, evStart) == claim }, 30*time.Second, time.Millisecond)
	e.stop(zombie)
	stoppedAt := time.Now()
	pending := e.recordPending()
	standby := e.spawn("analyser", e.analyserConfig(0))
	require.Eventually(t, func() bool {
		s := e.stats()[0]
		return s.Ready == 0 && s.Pending == 0 && s.Processed >= total
	}, 30*time.Second, 10*time.Millisecond, "the standby did not drain the queue")
	require.Less(t, time.Since(stoppedAt), 3*faultLeaseTTL, "drained too late for the test's timing")
	time.Sleep(time.Until(stoppedAt.Add(3 * faultLeaseTTL)))
	e.cont(zombie)
	e.waitExit(zombie, 10*time.Second)
	e.drain(nil, []*child{standby}, 30*time.Second)

	r := e.check()
	t.Logf("consumer with %d claimed, SIGSTOP for %v: %v", claim, 3*faultLeaseTTL, r)
	requireClean(t, r)
	assert.EqualValues(t, total, r.Completed)
	assert.Equal(t, claim, pending)
	assert.Equal(t, 1, r.Refused, "the zombie's ack is refused")
	assert.Equal(t, claim, r.DupPending, "the claimed tasks ran on both")
	assert.Zero(t, r.DupOther)
	assert.EqualValues(t, total, e.stats()[0].Processed, "only the standby's acks counted")
}

func testZombie(t *testing.T, ignoreCtx bool) {
	e := newFaultEnv(t, 1, false)
	const orders, per = 200, 20
	total := int64(orders * per)
	p := e.spawn("producer", produce(orders, per))
	e.waitExit(p, 30*time.Second)
	cfg := e.analyserConfig(0)
	cfg.Work = 2 * time.Millisecond // runs in flight at the stop
	cfg.IgnoreCtx = ignoreCtx
	zombie := e.spawn("analyser", cfg)
	e.waitProcessed(1, 30*time.Second)
	standby := e.spawn("analyser", cfg)
	frac := 0.2 + 0.6*rand.Float64()
	e.waitProcessed(int64(frac*float64(total)), 30*time.Second)
	e.stop(zombie)
	stoppedAt := time.Now()
	pending := e.recordPending()
	// The standby takes over after the lease expires and drains the queue
	// while the zombie is frozen.
	require.Eventually(t, func() bool {
		s := e.stats()[0]
		return s.Ready == 0 && s.Pending == 0 && s.Processed >= total
	}, 30*time.Second, 10*time.Millisecond, "the standby did not drain the queue")
	require.Less(t, time.Since(stoppedAt), 3*faultLeaseTTL, "drained too late for the test's timing")
	time.Sleep(time.Until(stoppedAt.Add(3 * faultLeaseTTL)))
	e.cont(zombie)
	// Give the zombie time to act on what it holds, then stop everyone.
	time.Sleep(faultLeaseTTL)
	e.drain(nil, []*child{zombie, standby}, 30*time.Second)

	r := e.check()
	t.Logf("SIGSTOP for %v at %.0f%% done, %d pending: %v", 3*faultLeaseTTL, 100*frac, pending, r)
	requireClean(t, r) // overlap, late acks accepted and stale starts among them
	assert.EqualValues(t, total, r.Completed)
	assert.Zero(t, r.DupOther, "duplicates of tasks not pending at the stop")
	assert.LessOrEqual(t, r.DupPending, pending)
	require.Positive(t, r.Recovery, "no start after the stop")
	assert.LessOrEqual(t, r.Recovery, faultLeaseTTL+time.Second, "takeover")
}

// A process resumed after a pause longer than its lease (the zombie fault)
// has every goroutine runnable at once; a worker that came before the
// renewer started prefetched tasks that the next owner had already run.
// Workers now check the lease's deadline before each start.
func TestWorkerStartsNothingPastLeaseDeadline(t *testing.T) {
	t.Parallel()
	q, _ := newTestQueue(t, 1, Config{})
	ctx := context.Background()
	_, err := q.AddTask(ctx, 1, []byte("a"))
	require.NoError(t, err)
	c, err := q.Consume(ctx, 0, ConsumerConfig{LeaseTTL: time.Second})
	require.NoError(t, err)
	cfg, err := PoolConfig{Workers: 1, LeaseTTL: time.Second}.withDefaults()
	require.NoError(t, err)
	var started atomic.Int64
	s := newSession(c.st, cfg, func(context.Context, Task) error { started.Add(1); return nil })
	defer s.cancelTask()
	defer s.cancelLease()
	tasks, err := c.st.claim(ctx, 10, 1<<20, false, nil)
	require.NoError(t, err)
	require.Len(t, tasks, 1)

	s.setDeadline(time.Now().Add(-time.Millisecond)) // the pause outlived the lease
	s.workers[0].give(tasks)
	done := make(chan struct{})
	go func() { defer close(done); s.workers[0].loop() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		s.loseLease()
		<-done
		t.Fatal("the worker did not stop")
	}
	assert.Zero(t, started.Load(), "a task started after the lease deadline")
	assert.True(t, s.isLost(), "the session takes the lease as lost")
}

func TestFaultConnectionResets(t *testing.T) {
	e := newFaultEnv(t, 1, false)
	proxy := startProxy(t, e.redis.addr())
	e.url = "redis://" + proxy.Addr()
	const orders, per = 200, 100
	a := e.spawn("analyser", e.analyserConfig(0))
	pcfg := produce(orders, per)
	pcfg.Pause = 2 * time.Millisecond // about 2,000 tasks/s: production spans the fault
	p := e.spawn("producer", pcfg)
	e.waitProcessed(1, 30*time.Second)
	e.event(faultEvent{Ev: evFault})
	end := time.Now().Add(10 * time.Second)
	resets := 0
	for time.Now().Before(end) {
		time.Sleep(200*time.Millisecond + rand.N(500*time.Millisecond))
		resets += proxy.resetAll()
	}
	e.drain([]*child{p}, []*child{a}, 60*time.Second)

	r := e.check()
	t.Logf("%d connections reset over 10s: %v", resets, r)
	requireClean(t, r)
	assert.Positive(t, resets)
	assert.Equal(t, r.AddedOK, r.Completed-r.UnknownDone, "every ok task completes")
	assert.Zero(t, r.UnknownTwice)
	assert.Zero(t, r.Dead)
}

// lossyConn runs the claim script but reports an error instead of its
// reply, while drops lasts: Redis moved the tasks, the client never saw it.
type lossyConn struct {
	redis.Conn
	drops *atomic.Int64
}

func (c *lossyConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	r, err := redis.DoContext(c.Conn, ctx, cmd, args...)
	if err == nil && scriptOf(cmd, args) == claimScript.Hash() {
		if v, _ := redis.Values(r, nil); len(v) > 1 && c.drops.Add(-1) >= 0 {
			return nil, errors.New("read: connection reset by peer (injected)")
		}
	}
	return r, err
}

func (c *lossyConn) ReceiveContext(ctx context.Context) (any, error) {
	return redis.ReceiveContext(c.Conn, ctx)
}

// A claim whose reply was lost left its tasks pending for as long as the
// owner lived: the fault suite's connection resets left tasks stranded.
// The pool now puts them back, in order, before it claims anything else.
func TestPoolRecoversClaimWithLostReply(t *testing.T) {
	t.Parallel()
	_, servers := newTestQueue(t, 1, Config{})
	var drops atomic.Int64
	drops.Store(2)
	pool := &redis.Pool{DialContext: func(ctx context.Context) (redis.Conn, error) {
		c, err := redis.DialURLContext(ctx, servers[0].url)
		if err != nil {
			return nil, err
		}
		return &lossyConn{Conn: c, drops: &drops}, nil
	}}
	defer pool.Close()
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	ctx := context.Background()
	var tasks []Task
	for i := 0; i < 30; i++ {
		tasks = append(tasks, Task{OrderID: uint64(i % 3), Payload: []byte(strconv.Itoa(i))})
	}
	_, err = q.AddTasks(ctx, tasks)
	require.NoError(t, err)

	var mu sync.Mutex
	got := map[uint64][]string{}
	err = q.AnalysePool(ctx, 0, PoolConfig{Workers: 2, Prefetch: 4, ExitOnEmpty: true, OnError: func(error) {}},
		func(_ context.Context, task Task) error {
			mu.Lock()
			got[task.OrderID] = append(got[task.OrderID], string(task.Payload))
			mu.Unlock()
			return nil
		})
	require.NoError(t, err)
	assert.Less(t, drops.Load(), int64(0), "the claim replies were dropped")
	for o := uint64(0); o < 3; o++ {
		var want []string
		for i := int(o); i < 30; i += 3 {
			want = append(want, strconv.Itoa(i))
		}
		assert.Equal(t, want, got[o], "order %d: every task once, in order", o)
	}
	pending, err := q.Pending(ctx, 0)
	require.NoError(t, err)
	assert.Empty(t, pending)
}

func TestFaultClaimReplyCut(t *testing.T) {
	e := newFaultEnv(t, 1, false)
	proxy := startProxy(t, e.redis.addr())
	const orders, per, cuts = 200, 50, 5
	total := int64(orders * per)
	p := e.spawn("producer", produce(orders, per)) // straight to Redis
	acfg := e.analyserConfig(0)
	acfg.URL = "redis://" + proxy.Addr()
	acfg.Work = time.Millisecond
	a := e.spawn("analyser", acfg)
	e.waitProcessed(1, 30*time.Second)
	e.event(faultEvent{Ev: evFault})
	for i := 0; i < cuts; i++ {
		// Cut the next claim reply that carries tasks (an empty one is
		// a few bytes) after half its bytes, then close the connection.
		proxy.cutReplies(claimScript.Hash(), 1, 200)
		require.Eventually(t, func() bool { return proxy.cutsLeft() == 0 }, 30*time.Second, time.Millisecond, "no claim reply to cut")
		time.Sleep(100 * time.Millisecond)
	}
	e.drain([]*child{p}, []*child{a}, 60*time.Second)

	r := e.check()
	t.Logf("%d claim replies cut: %v", proxy.cuts.Load(), r)
	requireClean(t, r)
	assert.EqualValues(t, cuts, proxy.cuts.Load())
	assert.EqualValues(t, total, r.Completed)
	assert.Zero(t, r.DupPending+r.DupOther, "the cut claims' tasks never ran before they were put back")
	assert.Zero(t, r.Dead)
}

func TestFaultRedisKillRestart(t *testing.T) {
	e := newFaultEnv(t, 1, true) // appendonly yes, appendfsync everysec (the default)
	const orders, per = 200, 50
	total := int64(orders * per)
	acfg := e.analyserConfig(0)
	acfg.Work = 5 * time.Millisecond // slower than the producer: tasks pending at the kill
	a := e.spawn("analyser", acfg)
	pcfg := produce(orders, per)
	pcfg.Pause = 2 * time.Millisecond // production spans the outage
	p := e.spawn("producer", pcfg)
	frac := 0.2 + 0.6*rand.Float64()
	e.waitProcessed(int64(frac*float64(total)), 60*time.Second)
	pending := e.recordPending() // a moment before the kill
	e.redis.kill()
	e.event(faultEvent{Ev: evFault})
	const down = time.Second
	time.Sleep(down)
	e.redis.start() // same port, same AOF
	restarted := time.Now()
	e.drain([]*child{p}, []*child{a}, 60*time.Second)

	events := e.events()
	r := checkHistory(events)
	consumeAgain := firstAfter(events, restarted, evStart, "")
	produceAgain := firstAfter(events, restarted, evAdded, "ok")
	t.Logf("redis-server kill -9 at %.0f%% done, down %v, %d pending just before: analysers start again %v and producers add again %v after the restart: %v",
		100*frac, down, pending, fmtRecovery(consumeAgain), fmtRecovery(produceAgain), r)
	requireClean(t, r)
	assert.Positive(t, r.AddErrors, "adds failed while the server was down")
	assert.Equal(t, r.AddedOK, r.Completed-r.UnknownDone, "every ok task completes")
	assert.Zero(t, r.UnknownTwice)
	assert.Zero(t, r.Dead)
	require.Positive(t, consumeAgain, "no start after the restart")
	assert.LessOrEqual(t, consumeAgain, faultLeaseTTL+5*time.Second, "reconnect and recovery (capped backoff 5s)")
	require.Positive(t, produceAgain, "no add after the restart")
}

func TestFaultPanicsAndErrors(t *testing.T) {
	e := newFaultEnv(t, 1, false)
	const orders, per, maxAttempts = 200, 100, 3
	total := int64(orders * per)
	acfg := e.analyserConfig(0)
	acfg.PanicRate, acfg.ErrorRate, acfg.MaxAttempts = 0.05, 0.05, maxAttempts
	a := e.spawn("analyser", acfg)
	p := e.spawn("producer", produce(orders, per))
	e.drain([]*child{p}, []*child{a}, 60*time.Second)

	events := e.events()
	r := checkHistory(events)
	panics, leaks := 0, 0
	for _, x := range events {
		switch {
		case x.Ev == evFinish && x.Result == "panic":
			panics++
		case x.Ev == evLeak:
			leaks++
			t.Logf("leak: %s", x.Err)
		}
	}
	bad := checkRetryPolicy(events, maxAttempts)
	t.Logf("5%% panics, 5%% errors, MaxAttempts %d: %d panics, %d dead, %d policy violations: %v",
		maxAttempts, panics, r.Dead, len(bad), r)
	requireClean(t, r)
	assert.Empty(t, bad, "retry policy")
	assert.EqualValues(t, total, r.Completed, "every task acked or dead-lettered")
	assert.Positive(t, panics)
	assert.Zero(t, r.DupPending+r.DupOther)
	assert.Zero(t, leaks, "goroutines left after AnalysePool returned")
	assert.Equal(t, int64(r.Dead), e.stats()[0].Dead)
}

func TestFaultPoisonTask(t *testing.T) {
	e := newFaultEnv(t, 1, false)
	const orders, per, maxAttempts, poisonAt = 200, 50, 3, 10
	total := int64(orders * per)
	acfg := e.analyserConfig(0)
	acfg.Work = time.Millisecond
	acfg.MaxAttempts = maxAttempts
	acfg.Poison, acfg.PoisonAfter = "poison", 200*time.Millisecond
	pcfg := produce(orders, per)
	pcfg.Poison, pcfg.PoisonAt = acfg.Poison, poisonAt
	p := e.spawn("producer", pcfg)
	e.waitExit(p, 30*time.Second)

	// A supervisor: restart the analyser whenever the poison kills it.
	a := e.spawn("analyser", acfg)
	crashes := 0
	require.Eventually(t, func() bool {
		if a.exited() {
			require.Error(t, a.err)
			var ee *exec.ExitError
			require.ErrorAs(t, a.err, &ee)
			require.Equal(t, poisonExit, ee.ExitCode(), "the analyser died of something else")
			e.event(faultEvent{Ev: evKill, Pid: a.pid()}) // dead by now
			crashes++
			a = e.spawn("analyser", acfg)
			return false
		}
		s := e.stats()[0]
		return s.Ready == 0 && s.Pending == 0
	}, 60*time.Second, 5*time.Millisecond, "the queue did not drain")
	e.drain(nil, []*child{a}, 30*time.Second)

	events := e.events()
	r := checkHistory(events)
	var poison faultEvent
	poisonStarts := 0
	var firstPoison, deadAt int64
	for _, x := range events {
		if x.Ev == evStart && x.Order == 0 && x.Seq == poisonAt {
			poisonStarts++
			if firstPoison == 0 {
				firstPoison = x.Wall
			}
			poison = x
		}
	}
	dead, err := e.q.Dead(context.Background(), 0)
	require.NoError(t, err)
	require.Len(t, dead, 1, "only the poison task is dead")
	deadAt = dead[0].DiedAt.UnixNano()
	// Tasks of other OrderIDs completed for good while the poison was
	// crashing processes: their last run finished ok in that window.
	last := map[string]faultEvent{}
	for _, x := range events {
		if x.Ev == evFinish && x.Order != 0 {
			last[x.ID] = x
		}
	}
	flowed := 0
	for _, x := range last {
		if x.Result == "ok" && x.Wall > firstPoison && x.Wall < deadAt {
			flowed++
		}
	}
	t.Logf("poison task: %d crashes, %d deliveries, dead after %d attempts (%q); %d tasks of other OrderIDs done meanwhile: %v",
		crashes, poisonStarts, dead[0].Attempts, dead[0].LastError, flowed, r)
	requireClean(t, r)
	assert.Equal(t, poison.ID, dead[0].ID)
	// Its first crash is not counted (nothing recorded that a first
	// delivery started); from its recovered delivery on, every start is
	// recorded first, and every crash counts.
	assert.Equal(t, maxAttempts+1, crashes)
	assert.Equal(t, maxAttempts+1, poisonStarts)
	assert.Equal(t, maxAttempts, dead[0].Attempts)
	assert.EqualValues(t, total, r.Completed)
	assert.Equal(t, 1, r.Dead)
	assert.Positive(t, flowed, "other OrderIDs kept flowing")
}

// A poison task that crashes its owner took the tasks claimed with it to
// the dead-letter store: recovery counted a delivery for every pending
// task, started or not. A redelivered task now records its delivery when
// it starts, and recovery counts none for one that never started.
func TestRecoveryChargesOnlyStartedRedeliveries(t *testing.T) {
	t.Parallel()
	q, servers := newTestQueue(t, 1, Config{})
	k := newQueueKeys(q.cfg.Prefix, 0, 0)
	ctx := context.Background()
	mk := func(id string, deliveries int) []byte {
		return encodeTask(Task{ID: id, OrderID: 1, AddedAt: time.UnixMilli(1000), Payload: []byte("p")}, deliveries)
	}
	unstarted, started := "aaa00000000000000000", "bbb00000000000000000"
	servers[0].do(t, "HSET", k.pending,
		unstarted, mk(unstarted, 1), // claimed for its second delivery, never started
		started, append([]byte{accountedMark}, mk(started, 2)...)) // its second delivery started, then the crash
	servers[0].do(t, "HSET", k.claims, "0", unstarted+started)
	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 2})
	require.NoError(t, err)
	got, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, unstarted, got[0].ID)
	assert.Equal(t, 2, got[0].Attempt, "the delivery that never started is not counted")
	dead, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, dead, 1)
	assert.Equal(t, started, dead[0].ID)
	assert.Equal(t, 2, dead[0].Attempts)

	// The low-level API counts a claim of a redelivered task as its start.
	pend, err := q.Pending(ctx, 0)
	require.NoError(t, err)
	require.Len(t, pend, 1)
	assert.Equal(t, 2, pend[0].Attempt)
	v, err := redis.String(servers[0].do(t, "HGET", k.pending, unstarted), nil)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(v, "+\x01"), "recorded as started: %q", v[:2])
}
