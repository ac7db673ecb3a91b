package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testRow is a row of a batcher test: the n-th row of caller key.
type testRow struct {
	key, n int
	bad    bool // the fake database rejects it
}

// fakeDB records committed batches; a batch holding a bad row fails whole.
type fakeDB struct {
	mu      sync.Mutex
	batches [][]testRow // committed, in commit order
	failed  int         // batches refused
}

var errBadRow = errors.New("bad row")

func (db *fakeDB) flush(_ context.Context, rows []testRow) error {
	db.mu.Lock()
	defer db.mu.Unlock()
	for _, r := range rows {
		if r.bad {
			db.failed++
			return fmt.Errorf("insert: %w", errBadRow)
		}
	}
	db.batches = append(db.batches, append([]testRow(nil), rows...))
	return nil
}

func (db *fakeDB) committed() []testRow {
	db.mu.Lock()
	defer db.mu.Unlock()
	var out []testRow
	for _, b := range db.batches {
		out = append(out, b...)
	}
	return out
}

// startBatcher runs b until the test ends.
func startBatcher[T any](t *testing.T, b *batcher[T]) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Run()
	}()
	t.Cleanup(func() {
		b.Close()
		<-done
	})
}

func TestBatcherKeepsEachCallersOrder(t *testing.T) {
	t.Parallel()
	db := &fakeDB{}
	b := newBatcher(batcherConfig{Max: 8, Linger: time.Millisecond, Flushers: 4}, db.flush)
	startBatcher(t, b)
	const callers, rows = 20, 50
	var wg sync.WaitGroup
	for k := range callers {
		wg.Go(func() {
			for n := range rows {
				// Like a worker: the next row only after this one is committed.
				assert.NoError(t, b.Add(context.Background(), testRow{key: k, n: n}))
			}
		})
	}
	wg.Wait()
	next := make([]int, callers)
	for _, r := range db.committed() {
		require.Equal(t, next[r.key], r.n, "caller %d's rows out of order", r.key)
		next[r.key]++
	}
	for k := range callers {
		assert.Equal(t, rows, next[k], "caller %d", k)
	}
	for _, batch := range db.batches {
		assert.LessOrEqual(t, len(batch), 8)
	}
}

func TestBatcherGivesEachCallerItsBatchResult(t *testing.T) {
	t.Parallel()
	db := &fakeDB{}
	b := newBatcher(batcherConfig{Max: 4, Linger: time.Millisecond, Flushers: 2}, db.flush)
	startBatcher(t, b)
	const n = 200
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = b.Add(context.Background(), testRow{n: i, bad: i%37 == 0}) })
	}
	wg.Wait()
	ok := map[int]bool{}
	for _, r := range db.committed() {
		ok[r.n] = true
	}
	require.NotZero(t, db.failed)
	for i, err := range errs {
		if ok[i] {
			assert.NoError(t, err, "row %d was committed", i)
		} else {
			assert.ErrorIs(t, err, errBadRow, "row %d was not committed", i)
		}
	}
	assert.Less(t, len(ok), n)
	assert.GreaterOrEqual(t, len(ok), n-6*4, "only batches holding one of the 6 bad rows fail")
}

func TestBatcherSplitIsolatesTheBadRow(t *testing.T) {
	t.Parallel()
	db := &fakeDB{}
	b := newBatcher(batcherConfig{
		Max: 16, Linger: 5 * time.Millisecond, Flushers: 1,
		Split: func(err error) bool { return errors.Is(err, errBadRow) },
	}, db.flush)
	startBatcher(t, b)
	const n = 64
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = b.Add(context.Background(), testRow{n: i, bad: i == 7}) })
	}
	wg.Wait()
	for i, err := range errs {
		if i == 7 {
			assert.ErrorIs(t, err, errBadRow)
		} else {
			assert.NoError(t, err, "row %d", i)
		}
	}
	assert.Len(t, db.committed(), n-1)
}

func TestBatcherFullBatchFlushesWithoutLinger(t *testing.T) {
	t.Parallel()
	db := &fakeDB{}
	b := newBatcher(batcherConfig{Max: 3, Linger: time.Hour, Flushers: 1}, db.flush)
	startBatcher(t, b)
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() { assert.NoError(t, b.Add(context.Background(), testRow{n: i})) })
	}
	wg.Wait() // would hang for an hour if a full batch waited for the linger
	require.Len(t, db.batches, 1)
	assert.Len(t, db.batches[0], 3)
}

func TestBatcherCloseFlushesWhatItTook(t *testing.T) {
	t.Parallel()
	db := &fakeDB{}
	b := newBatcher(batcherConfig{Max: 10, Linger: time.Hour}, db.flush)
	added := make(chan error, 1)
	go func() { added <- b.Add(context.Background(), testRow{n: 1}) }()
	require.Eventually(t, func() bool { return len(b.in) == 1 }, 5*time.Second, time.Millisecond)
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Run()
	}()
	require.Eventually(t, func() bool { return len(b.in) == 0 }, 5*time.Second, time.Millisecond)
	b.Close()
	<-done
	assert.NoError(t, <-added)
	assert.Equal(t, []testRow{{n: 1}}, db.committed())
	assert.ErrorIs(t, b.Add(context.Background(), testRow{n: 2}), errBatcherClosed)
}

func TestBatcherAddGivesUpWhenCtxEnds(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	b := newBatcher(batcherConfig{Max: 1, Flushers: 1}, func(ctx context.Context, rows []testRow) error {
		<-release
		return nil
	})
	startBatcher(t, b)
	defer close(release)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.ErrorIs(t, b.Add(ctx, testRow{}), context.Canceled)
}

func TestBatcherWithoutLingerGroupsRowsWhileFlushersAreBusy(t *testing.T) {
	t.Parallel()
	db := &fakeDB{}
	release := make(chan struct{})
	var once sync.Once
	b := newBatcher(batcherConfig{Max: 100, Flushers: 1}, func(ctx context.Context, rows []testRow) error {
		once.Do(func() { <-release }) // the first flush holds the only flusher
		return db.flush(ctx, rows)
	})
	startBatcher(t, b)
	const n = 20
	var started sync.WaitGroup
	started.Add(n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			started.Done()
			assert.NoError(t, b.Add(context.Background(), testRow{n: i}))
		})
	}
	started.Wait()
	require.Eventually(t, func() bool { return len(b.in) == 0 }, 5*time.Second, time.Millisecond)
	close(release)
	wg.Wait()
	assert.Len(t, db.committed(), n)
	assert.Less(t, len(db.batches), n, "rows that came while the flusher was busy share a batch")
}

// A row whose caller's ctx ended before a flush took it is never written:
// its caller returned an error, and its task is to be retried (or
// dead-lettered), not written behind the next row of its order.
func TestBatcherWithdrawsARowItsCallerGaveUpOn(t *testing.T) {
	t.Parallel()
	db := &fakeDB{}
	flushing, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	b := newBatcher(batcherConfig{Max: 1, Flushers: 1}, func(ctx context.Context, rows []testRow) error {
		once.Do(func() { close(flushing); <-release }) // the first flush holds the only flusher
		return db.flush(ctx, rows)
	})
	startBatcher(t, b)
	first := make(chan error, 1)
	go func() { first <- b.Add(context.Background(), testRow{n: 1}) }()
	<-flushing
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	assert.ErrorIs(t, b.Add(ctx, testRow{n: 2}), context.DeadlineExceeded, "queued behind the busy flusher")
	close(release)
	require.NoError(t, <-first)
	require.NoError(t, b.Add(context.Background(), testRow{n: 3}))
	assert.Equal(t, []testRow{{n: 1}, {n: 3}}, db.committed(), "the row given up on is not written")
}

// A row a flush carries already is waited for when its caller's ctx ends:
// the caller learns whether it was written.
func TestBatcherAddWaitsForTheFlushCarryingItsRow(t *testing.T) {
	t.Parallel()
	db := &fakeDB{}
	flushing, release := make(chan struct{}), make(chan struct{})
	b := newBatcher(batcherConfig{Max: 1, Flushers: 1}, func(ctx context.Context, rows []testRow) error {
		close(flushing)
		<-release
		return db.flush(ctx, rows)
	})
	startBatcher(t, b)
	releaseOnce := sync.OnceFunc(func() { close(release) })
	defer releaseOnce() // before the batcher's close, should the test fail
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Add(ctx, testRow{n: 1}) }()
	<-flushing
	cancel()
	select {
	case err := <-done:
		t.Fatalf("Add returned %v while its row was being written", err)
	case <-time.After(50 * time.Millisecond):
	}
	releaseOnce()
	assert.NoError(t, <-done, "written: the caller is told so")
	assert.Equal(t, []testRow{{n: 1}}, db.committed())
}

// A batch's rows retried one by one (Split) share its one Timeout: a
// caller whose ctx ended waits for its row at most that long, not a
// Timeout for each row ahead of it.
func TestBatcherSplitKeepsToOneTimeout(t *testing.T) {
	t.Parallel()
	errBatch := errors.New("batch refused")
	const timeout = 200 * time.Millisecond
	b := newBatcher(batcherConfig{Max: 6, Flushers: 1, Linger: 20 * time.Millisecond, Timeout: timeout,
		Split: func(error) bool { return true }},
		func(ctx context.Context, rows []testRow) error {
			if len(rows) > 1 {
				return errBatch
			}
			<-ctx.Done() // a row alone: the database hangs
			return ctx.Err()
		})
	startBatcher(t, b)
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			deadline, _ := ctx.Deadline()
			assert.Error(t, b.Add(ctx, testRow{n: i}))
			assert.LessOrEqual(t, time.Since(deadline), 2*timeout, "row %d", i)
		})
	}
	wg.Wait()
}
