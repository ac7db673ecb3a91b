package main

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/qugo/queue"
)

// backend is the dashboard's connection to the queue's servers. It
// connects on first use, not at start, so that a dashboard started while
// Redis is down (or before the producers ever ran) serves pages that say
// so, and connects once Redis answers. Once connected it stays so: the
// queue's pools reconnect on their own after a restart of a server.
type backend struct {
	connect func(ctx context.Context) (*queue.Queue, bool, error) // env.connect
	probe   func(ctx context.Context) (bool, error)               // env.prefixUsed

	sem  chan struct{} // held by the one goroutine connecting
	q    atomic.Pointer[queue.Queue]
	used atomic.Bool // a server has a layout recorded under the prefix
	// layoutErr is the layout mismatch the last recheck found, if any.
	layoutErr atomic.Pointer[error]

	closeOnce sync.Once
	closed    atomic.Bool
}

func newBackend(e *env) *backend {
	return &backend{
		connect: func(ctx context.Context) (*queue.Queue, bool, error) { return e.connect(ctx, 0) },
		probe: func(ctx context.Context) (bool, error) {
			urls, err := e.urls()
			if err != nil {
				return false, err
			}
			return e.prefixUsed(ctx, urls)
		},
		sem: make(chan struct{}, 1),
	}
}

// get returns the connected queue, connecting first if need be, or the
// layout mismatch the last recheck found. Callers waiting for another's
// connection give up when ctx ends.
func (b *backend) get(ctx context.Context) (*queue.Queue, error) {
	if b.closed.Load() {
		return nil, queue.ErrClosed
	}
	if q := b.q.Load(); q != nil {
		if err := b.layoutErr.Load(); err != nil {
			return nil, *err
		}
		return q, nil
	}
	select {
	case b.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-b.sem }()
	if b.closed.Load() {
		return nil, queue.ErrClosed
	}
	if q := b.q.Load(); q != nil {
		return q, nil
	}
	q, used, err := b.connect(ctx)
	if err != nil {
		return nil, err
	}
	b.used.Store(used)
	b.q.Store(q)
	return q, nil
}

// recheck checks the connected queue's layout again: a server with none
// recorded at the last look may have one now, recorded by a producer or
// analyser of another layout, which the flags' pages would show wrong and
// whose state an action would write under the wrong names. A mismatch is
// kept for get to return, and returned; any other failure (a server down)
// is left to the reads that need that server. The sampler calls it every
// -sample, and every action before it writes; it costs a read of each
// server with no layout recorded, nothing once all have one.
func (b *backend) recheck(ctx context.Context) error {
	q := b.q.Load()
	if q == nil {
		return nil
	}
	err := q.CheckLayout(ctx)
	switch {
	case errors.Is(err, queue.ErrLayoutMismatch):
		b.used.Store(true) // a layout is recorded: the prefix is used
		b.layoutErr.Store(&err)
		return err
	case err == nil:
		b.layoutErr.Store(nil)
	}
	return nil
}

// prefixUsed reports whether a server has a layout recorded under the
// prefix: whether producers or analysers have used it. Until they have,
// every call asks the servers again.
func (b *backend) prefixUsed(ctx context.Context) (bool, error) {
	if b.used.Load() {
		return true, nil
	}
	used, err := b.probe(ctx)
	if err != nil {
		return false, err
	}
	if used {
		b.used.Store(true)
	}
	return used, nil
}

// knownUnused reports whether the last look found the prefix unused
// (false before the first connection).
func (b *backend) knownUnused() bool { return b.q.Load() != nil && !b.used.Load() }

// close closes the queue, once; later gets fail with queue.ErrClosed.
func (b *backend) close() {
	b.closeOnce.Do(func() {
		b.closed.Store(true)
		b.sem <- struct{}{} // wait out a connection under way
		if q := b.q.Load(); q != nil {
			q.Close()
		}
		<-b.sem
	})
}
