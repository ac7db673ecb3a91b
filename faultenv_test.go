package queue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The fault suite's environment: the redis-server processes a test starts,
// the child processes it spawns and signals (kill -9, SIGTERM, SIGSTOP),
// the waits on their progress, and the collection of every event of a run
// for the checker (checker_test.go). The children's side is in
// faultproc_test.go, their history format in faultlog_test.go, the proxy
// that cuts connections in faultproxy_test.go.

// faultLeaseTTL is the analysers' lease in the suite: short, so recovery
// is quick, yet long enough that a loaded 2-core CI machine does not delay
// a renewal (every third of it) past its end and cause a takeover no fault
// asked for.
const faultLeaseTTL = 2 * time.Second

// recoveryAllowance bounds the time from a new owner's lease to its first
// start, with pending tasks to put back first: a second, and a
// millisecond for every two of them. BenchmarkRecovery puts back about
// 100,000 a second on a quiet machine; a loaded one under the race
// detector did 2,400 a second. The allowance is 2,000 a second, so that a
// recovery that stalls, or grows out of line with its tasks, still fails.
func recoveryAllowance(pending int) time.Duration {
	return time.Second + time.Duration(pending)*time.Millisecond/2
}

// faultSuiteEnv set to "off" skips the fault suite. The suite starts its
// own redis-server processes whatever QUEUE_TEST_REDIS_URL says, so CI,
// which runs the package's tests twice (on miniredis, then on a real
// server), turns it off for the first pass.
const faultSuiteEnv = "QUEUE_FAULT_SUITE"

// requireFaultSuite skips the test in short mode, when turned off, or
// without redis-server.
func requireFaultSuite(t testing.TB) {
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
	pass string // the default user's password, if it has one
	cmd  *exec.Cmd
	done chan struct{}
}

// freePort returns a loopback port that was free a moment ago and that
// it has not returned before in this process, so that tests running in
// parallel never pick the same one. Another process may still take it
// before a server binds it: redisProc.start then starts the server on
// another.
func freePort(t testing.TB) int {
	t.Helper()
	ports.Lock()
	defer ports.Unlock()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		p := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !ports.given[p] {
			ports.given[p] = true
			return p
		}
	}
	t.Fatal("no loopback port not given before")
	return 0
}

// portLike returns a new port picked as port was: by clusterPort (below
// 55535, its bus port free too) or by freePort.
func portLike(t testing.TB, port int) int {
	clusterPorts.Lock()
	cluster := clusterPorts.used[port]
	clusterPorts.Unlock()
	if cluster {
		return clusterPort(t)
	}
	return freePort(t)
}

// ports are the ports freePort gave.
var ports = struct {
	sync.Mutex
	given map[int]bool
}{given: map[int]bool{}}

// startRedis starts a redis-server on a free loopback port, without RDB
// snapshots, with AOF on or off, in its own directory, and kills it at the
// end of the test.
func startRedis(t testing.TB, aof bool, extra ...string) *redisProc {
	t.Helper()
	r := &redisProc{t: t, port: freePort(t), dir: t.TempDir()}
	r.setArgs(aof, extra...)
	t.Cleanup(r.kill) // first: a server that starts but never answers is killed too
	r.start()
	return r
}

// setArgs sets the server's arguments: its port on loopback, no RDB
// snapshots, AOF on or off, its directory and log file there, then
// extra.
func (r *redisProc) setArgs(aof bool, extra ...string) {
	yes := map[bool]string{true: "yes", false: "no"}[aof]
	r.args = append([]string{"--port", strconv.Itoa(r.port), "--bind", "127.0.0.1", "--save", "",
		"--appendonly", yes, "--dir", r.dir, "--logfile", filepath.Join(r.dir, "redis.log"),
		"--daemonize", "no"}, extra...)
}

func (r *redisProc) addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

func (r *redisProc) url() string { return "redis://" + r.addr() }

// start (re)starts the server on its port and waits until it answers.
func (r *redisProc) start() {
	r.t.Helper()
	first := r.cmd == nil
	for try := 1; ; try++ {
		if r.launch() {
			return
		}
		// The server exited at start. On its first start that is most
		// likely its port, taken by another process after freePort
		// looked: it starts on another. A restart keeps its port.
		i := slices.Index(r.args, "--port")
		if !first || i < 0 || try == 3 {
			r.t.Fatalf("redis-server on port %d exited at start; see the log in %s", r.port, r.dir)
		}
		r.port = portLike(r.t, r.port)
		r.args[i+1] = strconv.Itoa(r.port)
	}
}

// launch starts the server and waits until it answers, and reports
// whether it is this server that answers: false when it exited first.
// Another server answering on its port (one that took the port) is not
// taken for it: the process's ID is checked.
func (r *redisProc) launch() bool {
	r.t.Helper()
	r.cmd = exec.Command("redis-server", r.args...)
	require.NoError(r.t, r.cmd.Start())
	r.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(r.cmd, r.done)
	pid := "\r\nprocess_id:" + strconv.Itoa(r.cmd.Process.Pid) + "\r\n"
	ours := false
	require.Eventually(r.t, func() bool {
		select {
		case <-r.done:
			return true
		default:
		}
		c, err := redis.Dial("tcp", r.addr(), redis.DialConnectTimeout(100*time.Millisecond), redis.DialPassword(r.pass))
		if err != nil {
			return false
		}
		defer c.Close()
		if _, err := c.Do("PING"); err != nil { // LOADING while the AOF loads
			return false
		}
		info, err := redis.String(c.Do("INFO", "server"))
		ours = err == nil && strings.Contains(info, pid)
		return ours
	}, 10*time.Second, 10*time.Millisecond, "redis-server did not start; see %s", filepath.Join(r.dir, "redis.log"))
	return ours
}

// startWith (re)starts the server as start does, with extra arguments
// for this start only.
func (r *redisProc) startWith(extra ...string) {
	r.t.Helper()
	args := r.args
	r.args = append(args[:len(args):len(args)], extra...)
	defer func() { r.args = args }()
	r.start()
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
	reports   []string // what report logged, logged again last when the test fails

	wall wallSteps // the wall clock's steps against the suite's clock
}

// report logs what a test found, as t.Logf does, and keeps it: when the
// test fails, close logs it again after the children's output, so that
// the last lines of a failed run (all a CI excerpt may show) say what it
// found rather than what a child printed.
func (e *faultEnv) report(format string, args ...any) {
	e.t.Helper()
	msg := fmt.Sprintf(format, args...)
	e.t.Log(msg)
	e.mu.Lock()
	e.reports = append(e.reports, msg)
	e.mu.Unlock()
}

func newFaultEnv(t *testing.T, queues int, aof bool, redisArgs ...string) *faultEnv {
	requireFaultSuite(t)
	e := &faultEnv{t: t, dir: t.TempDir(), queues: queues, prefix: "fault"}
	e.redis = startRedis(t, aof, redisArgs...)
	e.url = e.redis.url()
	e.open(&redis.Pool{
		MaxIdle: 4,
		DialContext: func(ctx context.Context) (redis.Conn, error) {
			return redis.DialContext(ctx, "tcp", e.redis.addr(),
				redis.DialConnectTimeout(time.Second), redis.DialReadTimeout(5*time.Second))
		},
	})
	return e
}

// open makes the harness's queue over pool, and, at the test's end, kills
// the children left and closes the queue and the pool.
func (e *faultEnv) open(pool *redis.Pool) {
	t := e.t
	e.pool = pool
	q, err := New([]*redis.Pool{e.pool}, Config{Prefix: e.prefix, Queues: e.queues})
	require.NoError(t, err)
	e.q = q
	e.watchWall()
	t.Cleanup(e.close)
}

// watchWall follows the wall clock against the suite's until the test
// ends (see wallSteps).
func (e *faultEnv) watchWall() {
	stop := make(chan struct{})
	go e.wall.watch(stop)
	e.t.Cleanup(func() { close(stop) })
}

// close kills the children still running and closes the harness's queue.
func (e *faultEnv) close() {
	t := e.t
	e.mu.Lock()
	cs := append([]*child(nil), e.children...)
	e.mu.Unlock()
	failed := t.Failed()
	for _, c := range cs {
		if !c.exited() && failed && c.role == "analyser" {
			// The goroutines of an analyser still running when the test
			// failed (a stall, a wait that never ended) say where it was:
			// SIGQUIT has the Go runtime print them, and exit.
			c.cmd.Process.Signal(syscall.SIGQUIT)
			select {
			case <-c.done:
			case <-time.After(5 * time.Second):
			}
		}
		if !c.exited() {
			c.cmd.Process.Kill()
		}
		<-c.done
	}
	e.q.Close()
	if e.pool != nil {
		e.pool.Close()
	}
	if failed {
		for _, c := range cs {
			b, _ := os.ReadFile(c.log)
			out, dump := splitDump(b)
			if len(out) > 0 {
				t.Logf("%s %d output:\n%s", c.role, c.pid(), tail(out, 3000))
			}
			if len(dump) > 0 {
				t.Logf("%s %d goroutines at the end (SIGQUIT), by state and the first frame of this package:\n%s", c.role, c.pid(), summarizeDump(dump))
			}
		}
		e.mu.Lock()
		for _, r := range e.reports {
			t.Logf("failed; the test had found: %s", r)
		}
		e.mu.Unlock()
	}
}

// splitDump splits a child's output into what it printed and the
// goroutine dump the Go runtime printed on a SIGQUIT, if any.
func splitDump(b []byte) (out, dump []byte) {
	i := bytes.Index(b, []byte("SIGQUIT: quit"))
	if i < 0 {
		return b, nil
	}
	return b[:i], b[i:]
}

// summarizeDump condenses a goroutine dump into one line for each state
// and first frame of this package (or the first frame, for goroutines
// that run none of its code), with how many goroutines share them, most
// shared first: where each of an analyser's goroutines waited, in a few
// lines a CI log keeps.
func summarizeDump(dump []byte) string {
	type key struct{ state, frame string }
	count := map[key]int{}
	var order []key
	for _, block := range strings.Split(string(dump), "\n\n") {
		lines := strings.Split(strings.TrimSpace(block), "\n")
		if len(lines) < 2 || !strings.HasPrefix(lines[0], "goroutine ") {
			continue
		}
		state := lines[0]
		if i, j := strings.Index(state, "["), strings.LastIndex(state, "]"); i >= 0 && j > i {
			state = state[i+1 : j]
		}
		frame := ""
		for _, l := range lines[1:] {
			if strings.HasPrefix(l, "\t") || strings.HasPrefix(l, "created by ") {
				continue
			}
			if frame == "" {
				frame = l // the first, should none be this package's
			}
			if strings.HasPrefix(l, "github.com/qugo/queue.") {
				frame = l
				break
			}
		}
		if i := strings.LastIndex(frame, "("); i > 0 && strings.HasSuffix(frame, ")") {
			frame = frame[:i] // the arguments
		}
		k := key{state, frame}
		if count[k] == 0 {
			order = append(order, k)
		}
		count[k]++
	}
	slices.SortStableFunc(order, func(a, b key) int { return count[b] - count[a] })
	var sb strings.Builder
	for _, k := range order {
		fmt.Fprintf(&sb, "%4d  [%s]  %s\n", count[k], k.state, k.frame)
	}
	return sb.String()
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
	c.cmd.Env = append(os.Environ(), faultRoleEnv+"="+role, faultConfigEnv+"="+string(js),
		faultClockEnv+"="+strconv.FormatInt(suiteWallOffset(), 10)) // one clock for the suite (stamp)
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
		ev.Wall = stamp(time.Now())
	}
	e.mu.Lock()
	e.harness = append(e.harness, ev)
	e.mu.Unlock()
}

// kill9 kills c with SIGKILL and records its death once it is reaped. A
// child that is already gone fails the test: the fault it was meant to
// suffer never happened (a test kills only children that cannot end on
// their own before the kill).
func (e *faultEnv) kill9(c *child) {
	e.t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		if errors.Is(err, os.ErrProcessDone) {
			<-c.done
			e.t.Fatalf("kill -9 of %s %d: it exited on its own first (%v)", c.role, c.pid(), c.err)
		}
		e.t.Fatalf("kill -9 of %s %d: %v", c.role, c.pid(), err)
	}
	<-c.done
	e.event(faultEvent{Ev: evKill, Pid: c.pid()})
}

// terminate sends SIGTERM to c (a graceful stop) and records it.
func (e *faultEnv) terminate(c *child) {
	e.t.Helper()
	e.event(faultEvent{Ev: evTerm, Pid: c.pid()})
	require.NoError(e.t, c.cmd.Process.Signal(syscall.SIGTERM))
}

// unpace tells producer c to add the rest of its tasks as fast as it can
// (see roleConfig.Rate). It fails the test if c has exited already.
func (e *faultEnv) unpace(c *child) {
	e.t.Helper()
	require.NoError(e.t, c.cmd.Process.Signal(syscall.SIGUSR1), "producer %d", c.pid())
}

// hurry is unpace for a test whose producer may have added every task
// already: a test that checks otherwise that tasks flowed through its
// faults. How the producer exited is for drain to judge.
func (e *faultEnv) hurry(c *child) {
	e.t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGUSR1); !errors.Is(err, os.ErrProcessDone) {
		require.NoError(e.t, err, "producer %d", c.pid())
	}
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
	all := make([]int, e.q.Analysers())
	for a := range all {
		all[a] = a
	}
	return len(e.recordPendingOf(all...))
}

// recordPendingOf records the tasks pending in Redis now on the analysers
// given (those of the process hit by a fault), and returns their IDs.
func (e *faultEnv) recordPendingOf(analysers ...int) []string {
	e.t.Helper()
	var ids []string
	for _, a := range analysers {
		ts, err := e.q.Pending(context.Background(), a)
		require.NoError(e.t, err)
		for _, task := range ts {
			e.event(faultEvent{Ev: evPending, ID: task.ID, Order: task.OrderID, Analyser: a})
			ids = append(ids, task.ID)
		}
	}
	return ids
}

// drain waits for the producers to exit cleanly and the queues to empty
// (scheduled tasks included), then stops the analysers gracefully.
func (e *faultEnv) drain(producers, analysers []*child, timeout time.Duration) {
	e.t.Helper()
	for _, p := range producers {
		e.waitExit(p, timeout)
	}
	require.Eventually(e.t, func() bool {
		for _, s := range e.stats() {
			if s.Ready != 0 || s.Pending != 0 || s.Scheduled != 0 {
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
				events = append(events, faultEvent{Ev: evQuarantined, ID: d.ID, Err: d.LastError, Wall: e.wall.toSuite(d.DiedAt.UnixNano()), Analyser: a})
				continue
			}
			order, seq, _, err := parsePayload(d.Payload)
			if err != nil {
				order, seq = 0, -1
			}
			// DiedAt is the burying process's wall clock: on the
			// suite's clock, as every other event is.
			events = append(events, faultEvent{Ev: evDeadRec, ID: d.ID, Order: order, Seq: seq, Wall: e.wall.toSuite(d.DiedAt.UnixNano()), Analyser: a})
		}
	}
	return events
}

// firstAfter returns the time from at to the first event of kind ev with
// result (any when empty) after it, or -1.
func firstAfter(events []faultEvent, at time.Time, ev, result string) time.Duration {
	best, from := int64(-1), stamp(at)
	for _, x := range events {
		if x.Ev == ev && (result == "" || x.Result == result) && x.Wall > from && (best < 0 || x.Wall < best) {
			best = x.Wall
		}
	}
	if best < 0 {
		return -1
	}
	return time.Duration(best - from)
}

// requireClean asserts the figures every fault must keep: nothing lost or
// made up, order kept, no overlap, fencing held.
func requireClean(t *testing.T, r faultReport) {
	t.Helper()
	assert.Zero(t, r.Lost, "lost")
	assert.Zero(t, r.Unexpected, "unexpected")
	assert.Zero(t, r.Reordered, "reordered")
	assert.Zero(t, r.EarlyStarts, "early starts: %q", r.Seen)
	assert.Zero(t, r.Overlap, "overlap: %q", r.Seen)
	assert.Zero(t, r.LateAcks, "late acks accepted")
	assert.Zero(t, r.StaleStarts, "stale starts")
	assert.Zero(t, r.Quarantined, "malformed records quarantined")
	assert.Zero(t, r.RunAfterCancel, "starts after a Cancel reported the task scheduled or queued")
	assert.Zero(t, r.UnaskedCancels, "tasks finished as cancelled that no Cancel named")
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

// A server whose port another server took after freePort looked starts
// on another port, and the harness talks to it, not to the other one.
func TestRedisProcStartsElsewhereWhenItsPortIsTaken(t *testing.T) {
	t.Parallel()
	requireFaultSuite(t)
	other := startRedis(t, false)
	dir := t.TempDir()
	r := &redisProc{t: t, port: other.port, dir: dir}
	r.setArgs(false)
	t.Cleanup(r.kill)
	r.start()
	require.NotEqual(t, other.port, r.port)
	c, err := redis.Dial("tcp", r.addr())
	require.NoError(t, err)
	defer c.Close()
	info, err := redis.String(c.Do("INFO", "server"))
	require.NoError(t, err)
	assert.Contains(t, info, "\r\nprocess_id:"+strconv.Itoa(r.cmd.Process.Pid)+"\r\n")
	assert.Contains(t, info, "\r\ntcp_port:"+strconv.Itoa(r.port)+"\r\n")
}
