package queue

import (
	"context"
	"sync"

	"github.com/gomodule/redigo/redis"
)

// adder coalesces concurrent AddTask calls to one partition into pipelined
// round trips without a goroutine of its own (group commit): a call that
// finds no round trip in progress makes one for itself at once; calls that
// arrive meanwhile queue up, and when the round trip ends the first of them
// leads the next one, for everything queued by then. A lone caller costs one
// LPUSH; many callers share round trips and LPUSHes.
type adder struct {
	mu      sync.Mutex
	busy    bool       // a leader is making a round trip
	waiting []*addCall // calls queued for the next round trip, in arrival order
}

type addCall struct {
	key   string
	entry []byte
	done  chan addResult // receives the result, or lead=true to lead the next round trip
}

type addResult struct {
	err  error
	lead bool
}

// maxAddBatch bounds the calls one round trip carries.
const maxAddBatch = 1024

func (a *adder) add(ctx context.Context, pool *redis.Pool, key string, entry []byte) error {
	a.mu.Lock()
	if !a.busy {
		a.busy = true
		a.mu.Unlock()
		err := pushOne(ctx, pool, key, entry)
		a.handOff()
		return err
	}
	c := &addCall{key: key, entry: entry, done: make(chan addResult, 1)}
	a.waiting = append(a.waiting, c)
	a.mu.Unlock()
	// The call is queued: its write goes out with a round trip it cannot
	// take back, so it waits for that even when ctx ends.
	r := <-c.done
	if !r.lead {
		return r.err
	}
	a.mu.Lock()
	n := min(len(a.waiting), maxAddBatch)
	batch := a.waiting[:n:n]
	a.waiting = append([]*addCall(nil), a.waiting[n:]...)
	a.mu.Unlock()
	errs := pushMany(context.WithoutCancel(ctx), pool, batch)
	var own error
	for i, b := range batch {
		if b == c {
			own = errs[i]
			continue
		}
		b.done <- addResult{err: errs[i]}
	}
	a.handOff()
	return own
}

// handOff ends a round trip: the first waiting call leads the next one, or
// the adder goes idle.
func (a *adder) handOff() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.waiting) == 0 {
		a.busy = false
		return
	}
	a.waiting[0].done <- addResult{lead: true}
}

func pushOne(ctx context.Context, pool *redis.Pool, key string, entry []byte) error {
	conn, err := pool.GetContext(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = doContext(conn, ctx, "LPUSH", key, entry)
	return err
}

// pushMany writes the calls' entries with one LPUSH per key, keeping their
// order, in one pipeline, and returns each call's error.
func pushMany(ctx context.Context, pool *redis.Pool, calls []*addCall) []error {
	errs := make([]error, len(calls))
	fail := func(err error) []error {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	conn, err := pool.GetContext(ctx)
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
		if err := conn.Send("LPUSH", args[k]...); err != nil {
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
