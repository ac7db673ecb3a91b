package queue

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/gomodule/redigo/redis"
)

// adder coalesces concurrent AddTask calls to one partition into pipelined
// round trips without a goroutine of its own (group commit): a call that
// finds no round trip in progress makes one for itself at once; calls that
// arrive meanwhile queue up, and when the round trip ends the first of them
// leads the next one, for everything queued by then. A lone caller costs one
// LPUSH; many callers share round trips and LPUSHes.
//
// Every call returns when its ctx ends. A call still in the waiting line
// leaves it and returns ctx's error: its task was not sent. A call whose
// round trip is under way waits for it; the round trip ends at the reply,
// at the connection's read timeout, or once the ctx of every call in it
// has ended (the connection is then closed, and the tasks may or may not
// be in Redis). The waiting line is bounded in calls and in bytes; a call
// that finds it full waits, on its ctx, for room.
type adder struct {
	mu      sync.Mutex
	busy    bool          // a leader is making a round trip
	waiting []*addCall    // calls queued for the next round trip, in arrival order
	bytes   int           // the entries' bytes in waiting
	room    chan struct{} // closed when the waiting line shrinks; nil if nobody waits for room
}

type addCall struct {
	ctx   context.Context
	key   string
	entry []byte
	done  chan addResult // receives the result, or lead=true to lead the next round trip
	state callState      // guarded by adder.mu
}

type callState uint8

const (
	callQueued  callState = iota // in the waiting line
	callLeading                  // told to lead the next round trip, still in the line
	callTaken                    // taken into a round trip, out of the line
)

type addResult struct {
	err  error
	lead bool
}

const (
	// maxAddBatch bounds the calls one round trip carries.
	maxAddBatch = 1024
	// maxAddWaiting and maxAddWaitingBytes bound a partition's waiting
	// line: what a producer holds for a Redis that does not answer. A call
	// is let in while the line is empty, whatever its size.
	maxAddWaiting      = 4 * maxAddBatch
	maxAddWaitingBytes = 64 << 20
)

func (a *adder) add(ctx context.Context, pool *redis.Pool, key string, entry []byte) error {
	a.mu.Lock()
	for a.busy && !a.hasRoom(len(entry)) {
		if a.room == nil {
			a.room = make(chan struct{})
		}
		room := a.room
		a.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			return ctx.Err()
		}
		a.mu.Lock()
	}
	if !a.busy {
		a.busy = true
		a.mu.Unlock()
		err := pushOne(ctx, pool, key, entry)
		a.handOff()
		return err
	}
	c := &addCall{ctx: ctx, key: key, entry: entry, done: make(chan addResult, 1)}
	a.waiting = append(a.waiting, c)
	a.bytes += len(entry)
	a.mu.Unlock()
	var r addResult
	select {
	case r = <-c.done:
	case <-ctx.Done():
		if a.leave(c) {
			return ctx.Err() // never sent
		}
		r = <-c.done // taken, or told to lead: both end soon
	}
	if !r.lead {
		return r.err
	}
	return a.lead(pool, c)
}

// hasRoom reports whether the waiting line takes an entry of n bytes.
// Called with a.mu held.
func (a *adder) hasRoom(n int) bool {
	return len(a.waiting) == 0 || len(a.waiting) < maxAddWaiting && a.bytes+n <= maxAddWaitingBytes
}

// leave takes c, whose ctx has ended, out of the waiting line, and passes
// the lead on if it had been given it. It reports false if c was already
// taken into a round trip.
func (a *adder) leave(c *addCall) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c.state == callTaken {
		return false
	}
	i := slices.Index(a.waiting, c)
	a.waiting = slices.Delete(a.waiting, i, i+1)
	a.bytes -= len(c.entry)
	a.freed()
	if c.state == callLeading {
		a.handOffLocked()
	}
	return true
}

// freed wakes the calls waiting for room. Called with a.mu held.
func (a *adder) freed() {
	if a.room != nil {
		close(a.room)
		a.room = nil
	}
}

// lead makes a round trip for up to maxAddBatch waiting calls, c first,
// and returns c's result. Calls whose ctx has ended by then are answered
// at once, unsent.
func (a *adder) lead(pool *redis.Pool, c *addCall) error {
	a.mu.Lock()
	n := min(len(a.waiting), maxAddBatch)
	taking := a.waiting[:n:n]
	a.waiting = append([]*addCall(nil), a.waiting[n:]...)
	batch := make([]*addCall, 0, n)
	var own error
	for _, b := range taking {
		b.state = callTaken
		a.bytes -= len(b.entry)
		switch err := b.ctx.Err(); {
		case err == nil:
			batch = append(batch, b)
		case b == c:
			own = err
		default:
			b.done <- addResult{err: err}
		}
	}
	a.freed()
	a.mu.Unlock()
	if len(batch) > 0 {
		ctx, stop := roundTripContext(batch)
		errs := pushMany(ctx, pool, batch)
		gaveUp := ctx.Err() != nil // read before stop, which ends ctx
		stop()
		for i, b := range batch {
			if errs[i] != nil && gaveUp {
				errs[i] = b.ctx.Err() // every call gave up: each gets its own reason
			}
			if b == c {
				own = errs[i]
				continue
			}
			b.done <- addResult{err: errs[i]}
		}
	}
	a.handOff()
	return own
}

// roundTripContext returns a context that ends once the ctx of every call
// of batch has ended: the round trip is then of use to nobody. Call stop
// when the round trip is over.
func roundTripContext(batch []*addCall) (ctx context.Context, stop func()) {
	for _, b := range batch {
		if b.ctx.Done() == nil { // a call that never gives up
			return context.Background(), func() {}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var left atomic.Int64
	left.Store(int64(len(batch)))
	stops := make([]func() bool, len(batch))
	for i, b := range batch {
		stops[i] = context.AfterFunc(b.ctx, func() {
			if left.Add(-1) == 0 {
				cancel()
			}
		})
	}
	return ctx, func() {
		for _, s := range stops {
			s()
		}
		cancel()
	}
}

// handOff ends a round trip: the first waiting call leads the next one, or
// the adder goes idle.
func (a *adder) handOff() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.handOffLocked()
}

func (a *adder) handOffLocked() {
	if len(a.waiting) == 0 {
		a.busy = false
		a.freed() // calls waiting for room can make their own round trip
		return
	}
	a.waiting[0].state = callLeading
	a.waiting[0].done <- addResult{lead: true}
}

func pushOne(ctx context.Context, pool *redis.Pool, key string, entry []byte) error {
	conn, err := getConn(ctx, pool)
	if err != nil {
		return err
	}
	defer conn.Close()
	return doPush(ctx, conn, key, entry)
}

// pushMany writes the calls' entries with one LPUSH per key (the push
// script where one is large), keeping their order, in one pipeline, and
// returns each call's error.
func pushMany(ctx context.Context, pool *redis.Pool, calls []*addCall) []error {
	errs := make([]error, len(calls))
	fail := func(err error) []error {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	conn, err := getConn(ctx, pool)
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	var keys []string
	args := map[string][]any{}
	for _, c := range calls {
		if _, ok := args[c.key]; !ok {
			keys = append(keys, c.key)
			args[c.key] = []any{c.key}
		}
		args[c.key] = append(args[c.key], c.entry)
	}
	for _, k := range keys {
		if err := sendPush(conn, args[k], largeIn(args[k])); err != nil {
			return fail(err)
		}
	}
	if err := conn.Flush(); err != nil {
		return fail(err)
	}
	keyErr := map[string]error{}
	for _, k := range keys {
		if _, err := receiveContext(conn, ctx); err != nil {
			keyErr[k] = err
		}
	}
	for i, c := range calls {
		errs[i] = keyErr[c.key]
	}
	return errs
}
