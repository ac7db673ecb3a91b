package browsertest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qugo/queue"
)

// Seeding the queue with the library, as producers and analysers do.

// orderOf returns the n-th OrderID (n >= 0) that analyser a serves.
func (s *setup) orderOf(a, n int) uint64 {
	return uint64(a + n*s.q.Analysers())
}

// add adds a task of order and returns its ID.
func (s *setup) add(order uint64, payload string) string {
	s.t.Helper()
	id, err := s.q.AddTask(s.ctx, order, []byte(payload))
	require.NoError(s.t, err)
	return id
}

// schedule adds a task of order due at at.
func (s *setup) schedule(order uint64, at time.Time, payload string) string {
	s.t.Helper()
	id, err := s.q.AddTaskAt(s.ctx, order, at, []byte(payload))
	require.NoError(s.t, err)
	return id
}

// failPrefix marks the payloads whose analysis failByPayload fails.
const failPrefix = "fail:"

// failByPayload fails the tasks whose payload starts with failPrefix,
// with the rest of the payload as the error, and processes the others.
func failByPayload(_ context.Context, t queue.Task) error {
	if msg, ok := strings.CutPrefix(string(t.Payload), failPrefix); ok {
		return errors.New(msg)
	}
	return nil
}

// drain runs a pool on analyser a until its queue is empty, with one
// delivery per task: a task fn fails is dead-lettered.
func (s *setup) drain(a int, owner string, fn queue.AnalyseFunc) {
	s.t.Helper()
	err := s.q.AnalysePool(s.ctx, a, queue.PoolConfig{
		Workers: 2, MaxAttempts: 1, ExitOnEmpty: true, Owner: owner,
		OnError: func(error) {}, // the failures are the point
		Logger:  slog.New(slog.DiscardHandler),
	}, fn)
	require.NoError(s.t, err)
}

// deadLetters makes n dead letters on analyser a, one OrderID each, in
// order of death, and returns their IDs.
func (s *setup) deadLetters(a, n int, msg string) []string {
	s.t.Helper()
	var ids []string
	for i := range n {
		ids = append(ids, s.add(s.orderOf(a, i), failPrefix+fmt.Sprintf("%s (%d)", msg, i)))
		// One at a time, so the order of death is the order of adding.
		s.drain(a, "seeder", failByPayload)
	}
	return ids
}

// runPool runs a pool on analyser a until the test ends.
func (s *setup) runPool(a int, cfg queue.PoolConfig, fn queue.AnalyseFunc) {
	t := s.t
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	if cfg.OnError == nil {
		cfg.OnError = func(error) {}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	var wg sync.WaitGroup
	wg.Go(func() { s.q.AnalysePool(ctx, a, cfg, fn) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
}

// hold runs a pool of one worker on analyser a whose analysis blocks
// until the test ends, and waits until it holds pending tasks and has
// nothing left to claim: the counts then stay as they are.
func (s *setup) hold(a int, owner string, pending int) {
	t := s.t
	t.Helper()
	release := make(chan struct{})
	s.runPool(a, queue.PoolConfig{Workers: 1, Owner: owner, ShutdownTimeout: 5 * time.Second},
		func(ctx context.Context, _ queue.Task) error {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil
		})
	t.Cleanup(func() { close(release) }) // before the pool's cleanup: cleanups run last first
	require.Eventually(t, func() bool {
		st := s.stats()[a]
		return st.Pending == int64(pending) && st.Ready == 0 && st.Owner == owner && st.Workers == 1
	}, 10*time.Second, 20*time.Millisecond, "analyser %d's pool holds %d tasks", a, pending)
}
