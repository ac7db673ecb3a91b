package queue

import (
	"context"
	"errors"
	"sync"
	"time"
)

// A waiter lets the idle pools of one partition wait for work on two
// connections in all, rather than on a blocking connection each. A Queue
// has one per partition; AnalysePool retains it while it runs, and the
// waiter connects at the first wait and disconnects, its goroutines
// joined, when the last pool releases it (or at Queue.Close).
//
// It uses Redis's server-assisted client-side caching (Redis 6 and later)
// in its default mode, over RESP2: one connection subscribes to
// __redis__:invalidate, the other runs CLIENT TRACKING ON REDIRECT <the
// first's id>. To watch a key, the second connection reads it (LLEN of a
// ready list, PTTL of a lease): the reply says whether there is work now,
// and Redis, remembering the read, sends the key's name on the first
// connection the next time the key is modified, deleted or expires (a
// null instead of names at a flush). One read buys one message, so every
// wait reads again; producers change nothing (an LPUSH is a modification).
// Every second the waiter reads all the watched keys again in one write
// (waiterRecheck): a lost message costs at most that, and a wait whose
// read goes unanswered ends, so that its caller looks for itself. A
// waiter wakes every wait when it loses a connection (tracking ends with
// it), and reconnects with backoff; the waits read again on the new one.
//
// When the server refuses tracking (a proxy, an ACL, miniredis), every
// wait gets errNoTracking and waits on its own connection as before; the
// waiter asks again trackRetry later.
type waiter struct {
	part *partition

	mu      sync.Mutex
	users   int                 // pools holding the waiter (retain, release)
	closed  bool                // Queue.Close ran: connect no more
	refused time.Time           // tracking was refused: waits fall back until then
	run     *waiterRun          // the connection's goroutine, while it runs
	link    *link               // the connections, while tracking is on
	watches map[string][]*watch // waits by key, until over
	queue   []*watch            // reads to send once connected
}

// waiterRun is one run of a waiter's connection goroutine.
type waiterRun struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when the goroutine has returned
}

// watch is one wait on a key. Its read's reply is judged by the goroutine
// that reads it, so that a wait that goes on is not woken for it.
type watch struct {
	cmd, key string
	ready    func(reply int64) bool
	done     chan struct{} // closed when the wait is over; end and err say why
	end      awoke
	err      error
	// Under mu:
	over     bool      // done is closed
	sent     time.Time // when its last read was sent (zero: not yet)
	answered bool      // its last read was answered
	replied  bool      // a read of it was answered
}

// awoke says why a wait ended.
type awoke int

const (
	awokeReady   awoke = iota // the read showed what the caller waits for
	awokeChanged              // the key changed (or the waiter lost its connection)
	awokeTimeout              // the deadline passed
	awokeSecond               // await2's second key changed, or its read showed what the caller waits for
)

var errNoTracking = errors.New("queue: the server does not track keys for this process")

const (
	// waiterRecheck is how often a waiter reads every watched key again,
	// all in one write: a wait whose wake-up message was lost learns of
	// its key's change within that. A wait whose last read is not answered
	// by then ends (awokeTimeout), and its caller looks for itself.
	waiterRecheck = time.Second
	// trackRetry is how long a partition's waits fall back to their own
	// connections after the server refused tracking.
	trackRetry = time.Minute
	// waiterPing is how many rechecks apart a waiter checks that its
	// connections answer: a connection that has not answered the last
	// check by the next is dropped.
	waiterPing = 10
	// waiterName is the CLIENT SETNAME of a waiter's connections.
	waiterName = "qugo-waiter"
	// invalidateChannel carries tracking's messages over RESP2.
	invalidateChannel = "__redis__:invalidate"
)

func newWaiter(p *partition) *waiter {
	return &waiter{part: p, watches: map[string][]*watch{}}
}

// retain counts a user of the waiter; each must release it.
func (w *waiter) retain() *waiter {
	w.mu.Lock()
	w.users++
	w.mu.Unlock()
	return w
}

// release ends a user's hold. The last one stops the connections and
// joins the waiter's goroutines.
func (w *waiter) release() {
	w.mu.Lock()
	w.users--
	var r *waiterRun
	if w.users == 0 {
		r = w.stopLocked()
	}
	w.mu.Unlock()
	r.wait()
}

// close stops the waiter for good (Queue.Close).
func (w *waiter) close() {
	w.mu.Lock()
	w.closed = true
	r := w.stopLocked()
	w.mu.Unlock()
	r.wait()
}

func (w *waiter) stopLocked() *waiterRun {
	r := w.run
	w.run = nil
	if r != nil {
		r.cancel()
	}
	return r
}

func (r *waiterRun) wait() {
	if r != nil {
		<-r.done
	}
}

// await reads key with cmd (LLEN, PTTL) on the tracking connection and,
// unless ready(reply) holds, waits until the key changes, until passes or
// ctx ends. A wait whose read is not answered within waiterRecheck (the
// waiter is connecting, or its connection is stuck) ends then, as do the
// rechecks that go unanswered: the caller looks for itself. It returns
// errNoTracking when the caller must wait on its own instead: the server
// refused tracking, or the waiter is stopped.
func (w *waiter) await(ctx context.Context, cmd, key string, until time.Time, ready func(int64) bool) (awoke, error) {
	return w.await2(ctx, cmd, key, until, ready, "", "", nil)
}

// await2 is await that also ends, with awokeSecond, when key2 changes or
// its read (with cmd2) satisfies ready2: a pool waits for its ready list
// and for its scheduled set at once. An empty key2 watches key alone.
func (w *waiter) await2(ctx context.Context, cmd, key string, until time.Time, ready func(int64) bool, cmd2, key2 string, ready2 func(int64) bool) (awoke, error) {
	wt, err := w.watch(cmd, key, ready)
	if err != nil {
		return 0, err
	}
	var done2 <-chan struct{}
	var wt2 *watch
	if key2 != "" {
		if wt2, err = w.watch(cmd2, key2, ready2); err != nil {
			w.finish(wt, 0, err)
			return 0, err
		}
		defer w.finish(wt2, awokeTimeout, nil)
		done2 = wt2.done
	}
	first := true
	timer := time.NewTimer(min(time.Until(until), waiterRecheck))
	defer timer.Stop()
	for {
		select {
		case <-wt.done:
			return wt.end, wt.err
		case <-done2:
			w.finish(wt, awokeSecond, wt2.err)
			return wt.end, wt.err
		case <-timer.C:
			w.mu.Lock()
			replied := wt.replied && (wt2 == nil || wt2.replied)
			w.mu.Unlock()
			if left := time.Until(until); first && replied && left > 0 {
				first = false
				timer.Reset(left)
				continue
			}
			w.finish(wt, awokeTimeout, nil)
			return wt.end, wt.err // what ended it, if something came first
		case <-ctx.Done():
			w.finish(wt, 0, ctx.Err())
			return wt.end, wt.err
		}
	}
}

// watch registers a wait on key and sends its read, or queues it while
// the waiter connects, starting the connection goroutine if it does not
// run.
func (w *waiter) watch(cmd, key string, ready func(int64) bool) (*watch, error) {
	w.mu.Lock()
	if w.users == 0 || w.closed || time.Now().Before(w.refused) {
		w.mu.Unlock()
		return nil, errNoTracking
	}
	if w.run == nil {
		ctx, cancel := context.WithCancel(context.Background())
		r := &waiterRun{cancel: cancel, done: make(chan struct{})}
		w.run = r
		go func() {
			defer close(r.done)
			w.loop(ctx, r)
		}()
	}
	wt := &watch{cmd: cmd, key: key, ready: ready, done: make(chan struct{})}
	w.watches[key] = append(w.watches[key], wt)
	l := w.link
	if l == nil {
		w.queue = append(w.queue, wt)
		w.mu.Unlock()
		return wt, nil
	}
	w.mu.Unlock()
	// Sent by the caller, not handed to a goroutine: a wait costs one
	// goroutine switch less (each is a few µs of CPU with idle Ps spinning).
	l.send(w, []*watch{wt})
	return wt, nil
}

// finish ends a wait, once: it is no longer woken, and its read, if not
// sent yet, is not sent.
func (w *waiter) finish(wt *watch, end awoke, err error) {
	w.mu.Lock()
	w.finishLocked(wt, end, err)
	w.mu.Unlock()
}

func (w *waiter) finishLocked(wt *watch, end awoke, err error) {
	if wt.over {
		return
	}
	wt.over, wt.end, wt.err = true, end, err
	close(wt.done)
	ws := w.watches[wt.key]
	for i, o := range ws {
		if o == wt {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(w.watches, wt.key)
	} else {
		w.watches[wt.key] = ws
	}
}

// wake ends the waits on key: it changed.
func (w *waiter) wake(key string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, wt := range w.watches[key] {
		wt.over, wt.end = true, awokeChanged
		close(wt.done)
	}
	delete(w.watches, key)
}

// wakeAll ends every wait (a flush, a lost connection), and drops the
// reads not sent.
func (w *waiter) wakeAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for key, ws := range w.watches {
		for _, wt := range ws {
			wt.over, wt.end = true, awokeChanged
			close(wt.done)
		}
		delete(w.watches, key)
	}
	clear(w.queue)
	w.queue = w.queue[:0]
}

// refuse makes every wait fall back to its own connection for trackRetry,
// those queued included, and ends run r.
func (w *waiter) refuse(r *waiterRun) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.refused = time.Now().Add(trackRetry)
	for _, wt := range w.queue {
		w.finishLocked(wt, 0, errNoTracking)
	}
	clear(w.queue)
	w.queue = w.queue[:0]
	if w.run == r {
		w.run = nil
	}
}

// loop keeps the waiter connected until ctx ends or the server refuses
// tracking, reconnecting with backoff.
func (w *waiter) loop(ctx context.Context, r *waiterRun) {
	defer func() {
		w.mu.Lock()
		if w.run == r {
			w.run = nil
		}
		w.mu.Unlock()
	}()
	var b backoff
	for {
		l, err := w.connect(ctx)
		served := false // for a while: then it is made again at once
		if err == nil {
			b.reset()
			up := time.Now()
			err = w.serve(ctx, l)
			served = time.Since(up) > waiterRecheck
		}
		if ctx.Err() == nil && errors.Is(err, errNoTracking) {
			w.refuse(r)
			w.wakeAll()
			return
		}
		w.wakeAll() // tracking ended with the connection, if any
		if ctx.Err() != nil {
			return
		}
		if !served && b.wait(ctx) != nil {
			return
		}
	}
}
