package main

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// errBatcherClosed is returned by Add after Close.
var errBatcherClosed = errors.New("batcher closed")

// batcherConfig holds the settings of a batcher. The zero value works.
type batcherConfig struct {
	// Max is the most rows one flush writes. If zero, 500 is used.
	Max int
	// Linger is how long a partly full batch waits for more rows before it
	// is flushed. If zero, a batch is flushed as soon as a flusher is free,
	// so batches grow only while every flusher is busy (group commit).
	Linger time.Duration
	// Flushers is how many flushes may run at once. If zero, 4 is used.
	Flushers int
	// Timeout bounds one batch's flush, its rows retried one by one
	// (Split) included. If zero, 30s is used.
	Timeout time.Duration
	// Split reports whether a failed flush of several rows is retried row
	// by row, so that a row the database rejects fails only its own
	// caller. If nil, a failed batch fails every row in it.
	Split func(error) bool
}

func (c batcherConfig) withDefaults() batcherConfig {
	if c.Max <= 0 {
		c.Max = 500
	}
	if c.Flushers <= 0 {
		c.Flushers = 4
	}
	if c.Timeout <= 0 {
		c.Timeout = 30 * time.Second
	}
	return c
}

// batcher groups rows that many goroutines write into batches, and tells
// each caller the outcome of the flush that carried its row: Add returns
// only once its row is committed (or failed). So a caller that waits for
// Add before writing its next row keeps its rows in order, even though
// batches flush concurrently.
type batcher[T any] struct {
	cfg   batcherConfig
	flush func(ctx context.Context, rows []T) error
	in    chan *batchRequest[T]

	mu     sync.RWMutex // held for reading while sending on in
	closed bool
}

type batchRequest[T any] struct {
	row  T
	done chan error // buffered: the flusher never waits for the caller
	// state is queued, then taken by the flush that carries the row, or
	// withdrawn by its caller whose ctx ended first: a row its caller
	// gave up on is never written.
	state atomic.Int32
}

const (
	rowQueued int32 = iota
	rowTaken
	rowWithdrawn
)

// newBatcher returns a batcher that writes rows with flush. flush must
// write all its rows or none (one transaction). Run must be running for
// Add to make progress.
func newBatcher[T any](cfg batcherConfig, flush func(ctx context.Context, rows []T) error) *batcher[T] {
	cfg = cfg.withDefaults()
	return &batcher[T]{cfg: cfg, flush: flush, in: make(chan *batchRequest[T], cfg.Max)}
}

// Add hands row to the batcher and waits for the flush that carries it,
// and returns that flush's error. When ctx ends first, a row no flush has
// taken yet is withdrawn, never to be written, and Add returns ctx's
// error; a row a flush carries already is waited for (the flush is
// bounded by Timeout), and its outcome returned: nil says the row is
// written, an error that it is not, whatever ctx says. It is safe for
// concurrent use.
func (b *batcher[T]) Add(ctx context.Context, row T) error {
	r := &batchRequest[T]{row: row, done: make(chan error, 1)}
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return errBatcherClosed
	}
	select {
	case b.in <- r:
	case <-ctx.Done():
		b.mu.RUnlock()
		return ctx.Err()
	}
	b.mu.RUnlock()
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		if r.state.CompareAndSwap(rowQueued, rowWithdrawn) {
			return ctx.Err()
		}
		return <-r.done // being written: its outcome is the caller's to know
	}
}

// Close stops taking rows: later Adds return errBatcherClosed, and Run
// returns once the rows already taken are flushed.
func (b *batcher[T]) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed {
		b.closed = true
		close(b.in)
	}
}

// Run collects rows into batches and flushes each when it is full or has
// lingered, on up to Flushers goroutines. It returns after Close, once
// every row taken is flushed, and joins its goroutines.
func (b *batcher[T]) Run() {
	work := make(chan []*batchRequest[T])
	var wg sync.WaitGroup
	for range b.cfg.Flushers {
		wg.Go(func() {
			for batch := range work {
				b.write(batch)
			}
		})
	}
	defer wg.Wait()
	defer close(work)

	linger := time.NewTimer(time.Hour)
	linger.Stop()
	defer linger.Stop()
	var batch []*batchRequest[T]
	due := false // the batch has lingered long enough
	in := b.in
	for in != nil || len(batch) > 0 {
		var out chan<- []*batchRequest[T]
		if len(batch) > 0 && (due || b.cfg.Linger <= 0 || len(batch) >= b.cfg.Max || in == nil) {
			out = work
		}
		recv := in
		if len(batch) >= b.cfg.Max {
			recv = nil // full: wait for a flusher
		}
		select {
		case r, ok := <-recv:
			if !ok {
				in = nil
				continue
			}
			if len(batch) == 0 && b.cfg.Linger > 0 {
				due = false
				linger.Reset(b.cfg.Linger)
			}
			batch = append(batch, r)
		case out <- batch:
			batch, due = nil, false
			linger.Stop()
		case <-linger.C:
			due = true
		}
	}
}

// write flushes one batch, but for the rows withdrawn, and gives every
// caller in it its result.
func (b *batcher[T]) write(all []*batchRequest[T]) {
	batch := all[:0]
	for _, r := range all {
		if r.state.CompareAndSwap(rowQueued, rowTaken) {
			batch = append(batch, r)
		}
	}
	if len(batch) == 0 {
		return
	}
	rows := make([]T, len(batch))
	for i, r := range batch {
		rows[i] = r.row
	}
	// One Timeout bounds the batch, its rows retried one by one included:
	// a caller whose ctx ended waits for its row at most that long.
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.Timeout)
	defer cancel()
	err := b.flush(ctx, rows)
	if err != nil && len(batch) > 1 && b.cfg.Split != nil && b.cfg.Split(err) {
		for i, r := range batch {
			if ctx.Err() != nil {
				r.done <- ctx.Err() // not tried: not written
				continue
			}
			r.done <- b.flush(ctx, rows[i:i+1])
		}
		return
	}
	for _, r := range batch {
		r.done <- err
	}
}
