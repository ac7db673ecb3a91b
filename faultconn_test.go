package queue

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// The call-fault harness: pools whose connections count every Redis round
// trip a run makes (a Do, or a pipeline of Sends ended by a Flush) and can
// inject one fault at exactly one of them. faultcall_test.go drives
// workloads through it and checks each run's history.

// faultKind is what happens to the one call a run injects a fault at.
type faultKind int

const (
	faultNone    faultKind = iota
	faultLost              // the command runs in Redis; the caller gets an error instead of the reply
	faultDelayed           // the caller gets a read timeout; the command runs in Redis afterwards
	faultRefused           // the caller gets an error; the command never reaches Redis
	faultReset             // every connection of the pool is reset; the call fails unsent
	// faultUnreplicated: the command runs in Redis; the reply of each write
	// that changed something comes back ErrNotReplicated on a connection
	// still in step, as Config.WaitReplicas makes it when no replica
	// acknowledged the write (faultunrepl_test.go).
	faultUnreplicated
)

var faultKinds = []faultKind{faultLost, faultDelayed, faultRefused, faultReset, faultUnreplicated}

func (k faultKind) String() string {
	return [...]string{"none", "lost", "delayed", "refused", "reset", "unreplicated"}[k]
}

const (
	// lateReadTimeout is how long a delayed call waits before it reports
	// its timeout. Its command runs once the same actor's next call of the
	// same name has come back (when the caller has reacted to the timeout:
	// retried, resynced), or lateDelay after the call, whichever is first.
	lateReadTimeout = 20 * time.Millisecond
	lateDelay       = 500 * time.Millisecond
)

// callSite names one round trip of a run: the actor that makes it, what it
// runs (a script's name, a command, or a pipeline's commands joined by
// "+"), and which of that actor's calls of that name it is (1-based).
// Sites are stable across runs of one workload where global call numbers
// are not: an acker batches by timing, a renewer runs by the clock.
type callSite struct {
	Actor, Name string
	N           int
}

func (s callSite) String() string { return fmt.Sprintf("%s:%s#%d", s.Actor, s.Name, s.N) }

// what is the site without its occurrence.
func (s callSite) what() string { return s.Actor + ":" + s.Name }

// callPlan counts the calls of one run, over every pool of the run, and
// injects at most one fault.
type callPlan struct {
	mu     sync.Mutex
	seen   map[string]int    // site.what() -> calls so far
	calls  []callSite        // every call, in order
	failed map[callSite]bool // calls that returned an error to their caller
	target callSite
	kind   faultKind
	fired  bool
	onFire func(callSite)             // called as the fault is injected, before it takes effect
	late   sync.WaitGroup             // delayed commands not yet run
	after  map[string][]chan struct{} // site.what() -> closed when the next such call comes back
	lateMu sync.Mutex
	lateEr []error // delayed commands that Redis refused or that failed to run
}

func newCallPlan(target callSite, kind faultKind) *callPlan {
	return &callPlan{seen: map[string]int{}, target: target, kind: kind, after: map[string][]chan struct{}{},
		failed: map[callSite]bool{}}
}

// nextDone returns a channel closed when the next call of actor and name
// comes back.
func (p *callPlan) nextDone(actor, name string) <-chan struct{} {
	ch := make(chan struct{})
	w := actor + ":" + name
	p.mu.Lock()
	p.after[w] = append(p.after[w], ch)
	p.mu.Unlock()
	return ch
}

// came counts a call of actor and name that came back.
func (p *callPlan) came(actor, name string) {
	w := actor + ":" + name
	p.mu.Lock()
	chs := p.after[w]
	delete(p.after, w)
	p.mu.Unlock()
	for _, ch := range chs {
		close(ch)
	}
}

// next counts a call and returns the fault to inject at it.
func (p *callPlan) next(actor, name string) (callSite, faultKind) {
	p.mu.Lock()
	s := callSite{actor, name, 0}
	p.seen[s.what()]++
	s.N = p.seen[s.what()]
	p.calls = append(p.calls, s)
	kind := faultNone
	if !p.fired && p.kind != faultNone && s == p.target {
		p.fired, kind = true, p.kind
	}
	onFire := p.onFire
	p.mu.Unlock()
	if kind != faultNone && onFire != nil {
		onFire(s)
	}
	return s, kind
}

// failedCall records that the call at s returned an error to its caller.
func (p *callPlan) failedCall(s callSite) {
	p.mu.Lock()
	p.failed[s] = true
	p.mu.Unlock()
}

// outcome reports whether the call at s was made, and whether it failed.
func (p *callPlan) outcome(s callSite) (made, failed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[s.what()] >= s.N, p.failed[s]
}

func (p *callPlan) didFire() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fired
}

// sites returns every call of the run so far.
func (p *callPlan) sites() []callSite {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]callSite(nil), p.calls...)
}

// waitLate waits for the delayed commands to have run.
func (p *callPlan) waitLate(t testing.TB) {
	t.Helper()
	done := make(chan struct{})
	go func() { p.late.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("a delayed command did not run in 15s")
	}
}

// faultPool is the *redis.Pool of one actor of a run (a producer, a pool,
// a consumer), dialling url, with every connection a faultConn.
type faultPool struct {
	plan  *callPlan
	actor string
	url   string
	pool  *redis.Pool
	// observe sees every command that reached Redis, with Redis's reply
	// (even one the caller never got), when Redis ran it.
	observe func(name string, args []any, sent time.Time, reply any, err error)

	mu   sync.Mutex
	live map[*faultConn]struct{}
}

func newFaultPool(t testing.TB, plan *callPlan, actor, url string) *faultPool {
	fp := &faultPool{plan: plan, actor: actor, url: url, live: map[*faultConn]struct{}{}}
	fp.pool = &redis.Pool{
		MaxIdle: 8,
		DialContext: func(ctx context.Context) (redis.Conn, error) {
			// Read as Dial's connections are, through a buffer a claim's
			// read can tap: the faults reach the tap as they reach redigo.
			var tcp *bufferedReader
			var d net.Dialer
			buffered := redis.DialContextFunc(func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := d.DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				tcp = &bufferedReader{Conn: c, r: bufio.NewReaderSize(c, readBuffer)}
				return tcp, nil
			})
			c, err := redis.DialURLContext(ctx, url, redis.DialReadTimeout(10*time.Second), buffered)
			if err != nil {
				return nil, err
			}
			fc := &faultConn{c: c, p: fp, tcp: tcp}
			fp.mu.Lock()
			fp.live[fc] = struct{}{}
			fp.mu.Unlock()
			noteBorrowed(ctx, tcp)
			return fc, nil
		},
		TestOnBorrowContext: func(ctx context.Context, c redis.Conn, _ time.Time) error {
			fc := c.(*faultConn)
			if fc.tcp.tap != nil { // a tap left armed: its stream is lost
				return errPeerClosed
			}
			noteBorrowed(ctx, fc.tcp)
			return nil
		},
	}
	t.Cleanup(func() { fp.pool.Close() })
	return fp
}

// resetAll closes every connection of the pool, idle or busy.
func (fp *faultPool) resetAll() {
	fp.mu.Lock()
	conns := make([]*faultConn, 0, len(fp.live))
	for c := range fp.live {
		conns = append(conns, c)
	}
	fp.mu.Unlock()
	for _, c := range conns {
		c.c.Close()
	}
}

func (fp *faultPool) seen(name string, args []any, sent time.Time, reply any, err error) {
	if fp.observe != nil {
		fp.observe(name, args, sent, reply, err)
	}
}

// runLate runs cmds on a connection of its own once the actor's next call
// of name came back, or lateDelay after now: the delayed request reaching
// Redis after its caller gave up on it.
func (fp *faultPool) runLate(name string, cmds []pendingCmd) {
	for i := range cmds {
		cmds[i].args = copyArgs(cmds[i].args)
	}
	next := fp.plan.nextDone(fp.actor, name)
	fp.plan.late.Add(1)
	go func() {
		defer fp.plan.late.Done()
		t := time.NewTimer(lateDelay)
		select {
		case <-next:
		case <-t.C:
		}
		t.Stop()
		c, err := redis.DialURL(fp.url, redis.DialReadTimeout(10*time.Second))
		if err != nil {
			fp.plan.lateMu.Lock()
			fp.plan.lateEr = append(fp.plan.lateEr, err)
			fp.plan.lateMu.Unlock()
			return
		}
		defer c.Close()
		for _, pc := range cmds {
			sent := time.Now()
			r, err := c.Do(pc.cmd, pc.args...)
			name, _ := commandName(pc.cmd, pc.args)
			fp.seen(name, pc.args, sent, r, err)
		}
	}()
}

// copyArgs copies args, byte slices included: the caller may reuse its
// buffers once the call returned.
func copyArgs(args []any) []any {
	out := make([]any, len(args))
	for i, a := range args {
		if b, ok := a.([]byte); ok {
			a = append([]byte(nil), b...)
		}
		out[i] = a
	}
	return out
}

type pendingCmd struct {
	cmd  string
	args []any
}

// injected errors.
var (
	errInjectedLost    = errors.New("read: connection reset by peer (injected: reply lost)")
	errInjectedRefused = errors.New("write: broken pipe (injected: not sent)")
)

// timeoutErr is the error of a read that timed out.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "read: i/o timeout (injected: reply delayed)" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// faultConn is one connection of a faultPool.
type faultConn struct {
	c     redis.Conn
	tcp   *bufferedReader // c's TCP connection, as it reads it
	p     *faultPool
	err   error        // set once the connection is broken by a fault
	sends []pendingCmd // sent and not flushed
	pipe  *callSite    // the last pipeline flushed, whose replies Receive reads
	unrep []pendingCmd // the commands of a pipeline flushed with faultUnreplicated, replies unread
	// waiter: the connection is one of a waiter's (it named itself so
	// before anything else), and passes everything through, neither
	// counted nor faulted: it writes nothing, its reads come by the clock,
	// and it sends and receives at once, which a faultConn does not.
	waiter bool
}

// broken marks the connection broken with err and closes it, as redigo
// does after a failed read or write.
func (c *faultConn) broken(err error) {
	c.err = err
	c.c.Close()
}

func (c *faultConn) Close() error {
	c.p.mu.Lock()
	delete(c.p.live, c)
	c.p.mu.Unlock()
	return c.c.Close()
}

func (c *faultConn) Err() error {
	if c.err != nil {
		return c.err
	}
	return c.c.Err()
}

func (c *faultConn) Do(cmd string, args ...any) (any, error) {
	return c.DoContext(context.Background(), cmd, args...)
}

func (c *faultConn) DoWithTimeout(d time.Duration, cmd string, args ...any) (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return c.DoContext(ctx, cmd, args...)
}

func (c *faultConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	if c.waiter || cmd == "CLIENT" && len(args) == 2 && args[0] == "SETNAME" && args[1] == waiterName {
		c.waiter = true
		return redis.DoContext(c.c, ctx, cmd, args...)
	}
	if cmd == "" { // the pool flushing a connection it takes back
		if len(c.sends) > 0 {
			if err := c.Flush(); err != nil {
				return nil, err
			}
		}
		if c.err != nil {
			return nil, c.err
		}
		return c.c.Do("")
	}
	if c.err != nil {
		return nil, c.err
	}
	name, known := commandName(cmd, args)
	if !known {
		return redis.DoContext(c.c, ctx, cmd, args...)
	}
	site, kind := c.p.plan.next(c.p.actor, name)
	r, err := c.do(ctx, site, kind, cmd, args)
	if err != nil {
		c.p.plan.failedCall(site)
	}
	return r, err
}

func (c *faultConn) do(ctx context.Context, site callSite, kind faultKind, cmd string, args []any) (any, error) {
	name := site.Name
	switch kind {
	case faultRefused:
		c.broken(errInjectedRefused)
		return nil, c.err
	case faultDelayed:
		c.p.runLate(name, []pendingCmd{{cmd, args}})
		c.broken(timeoutErr{})
		time.Sleep(lateReadTimeout)
		return nil, c.err
	case faultReset:
		c.p.resetAll()
	}
	sent := time.Now()
	r, err := redis.DoContext(c.c, ctx, cmd, args...)
	if kind != faultReset || err == nil {
		c.p.seen(name, args, sent, r, err)
	}
	c.p.plan.came(c.p.actor, name)
	switch kind {
	case faultLost:
		c.broken(errInjectedLost)
		return nil, c.err
	case faultUnreplicated:
		return unreplicated(cmd, args, r, err)
	}
	return r, err
}

func (c *faultConn) Send(cmd string, args ...any) error {
	if c.waiter {
		return c.c.Send(cmd, args...)
	}
	if c.err != nil {
		return c.err
	}
	c.sends = append(c.sends, pendingCmd{cmd, args})
	return nil
}

// Flush sends the pipeline of the Sends since the last Flush: one round
// trip, named by its commands.
func (c *faultConn) Flush() error {
	if c.waiter {
		return c.c.Flush()
	}
	if c.err != nil {
		return c.err
	}
	cmds := c.sends
	c.sends = nil
	if len(cmds) == 0 {
		return c.c.Flush()
	}
	names := make([]string, len(cmds))
	for i, pc := range cmds {
		names[i], _ = commandName(pc.cmd, pc.args)
	}
	name := strings.Join(names, "+")
	site, kind := c.p.plan.next(c.p.actor, name)
	c.pipe = &site
	err := c.flush(site, kind, cmds)
	if err != nil {
		c.p.plan.failedCall(site)
	}
	return err
}

func (c *faultConn) flush(site callSite, kind faultKind, cmds []pendingCmd) error {
	name := site.Name
	switch kind {
	case faultRefused:
		c.broken(errInjectedRefused)
		return c.err
	case faultDelayed:
		c.p.runLate(name, cmds)
		c.err = timeoutErr{} // the replies never come: Receive times out
		c.c.Close()
		return nil
	case faultReset:
		c.p.resetAll()
	}
	for _, pc := range cmds {
		if err := c.c.Send(pc.cmd, pc.args...); err != nil {
			return err
		}
	}
	if err := c.c.Flush(); err != nil {
		return err
	}
	switch kind {
	case faultLost:
		for range cmds {
			c.c.Receive()
		}
		c.broken(errInjectedLost)
	case faultUnreplicated:
		c.unrep = cmds
	}
	c.p.plan.came(c.p.actor, name) // sent: its replies are on their way
	return nil
}

func (c *faultConn) Receive() (any, error) {
	return c.ReceiveContext(context.Background())
}

func (c *faultConn) ReceiveWithTimeout(d time.Duration) (any, error) {
	if c.waiter {
		return redis.ReceiveWithTimeout(c.c, d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return c.ReceiveContext(ctx)
}

func (c *faultConn) ReceiveContext(ctx context.Context) (any, error) {
	r, err := c.receive(ctx)
	if err != nil && c.pipe != nil {
		c.p.plan.failedCall(*c.pipe)
	}
	return r, err
}

func (c *faultConn) receive(ctx context.Context) (any, error) {
	if c.err != nil {
		if errors.Is(c.err, timeoutErr{}) {
			time.Sleep(lateReadTimeout)
		}
		return nil, c.err
	}
	r, err := redis.ReceiveContext(c.c, ctx)
	if len(c.unrep) > 0 {
		pc := c.unrep[0]
		c.unrep = c.unrep[1:]
		r, err = unreplicated(pc.cmd, pc.args, r, err)
	}
	return r, err
}
