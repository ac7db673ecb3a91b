package main

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qugo/queue"
)

// runGroup joins cfg.Group and runs a pool on every analyser the group
// gives this member, until ctx ends; then it leaves the group (its queues
// go to the other members at once) and stops its pools gracefully.
func runGroup(ctx context.Context, q *queue.Queue, cfg config, log *slog.Logger,
	hooks poolHooks, mirror *deadMirror, rows *batcher[taskRow]) error {
	n := q.Analysers()
	onDone := make([]func(queue.Task, time.Duration, error), n)
	onError := make([]func(error), n)
	for a := range n {
		onDone[a] = hooks.collector.OnDone(a)
		onError[a] = poolErrors(a, log, mirror, hooks.metrics)
	}
	otherErrors := poolErrors(anyAnalyser, log, mirror, hooks.metrics)
	processed := make([]atomic.Int64, n)
	pc := queue.PoolConfig{
		MinWorkers:  cfg.Workers.Min,
		MaxWorkers:  cfg.Workers.Max,
		MaxAttempts: cfg.Attempts,
		TaskTimeout: cfg.TaskTimeout,
		Logger:      log,
		Owner:       hooks.owner,
		OnDone: func(t queue.Task, took time.Duration, err error) {
			a := q.AnalyserOf(t.OrderID)
			onDone[a](t, took, err)
			if err == nil {
				processed[a].Add(1)
			}
		},
		OnError: func(err error) {
			// A task's errors belong to its analyser; a pool's own errors
			// name theirs in the text.
			if te, ok := errors.AsType[*queue.TaskError](err); ok {
				onError[q.AnalyserOf(te.OrderID)](err)
				return
			}
			otherErrors(err)
		},
	}
	gc := queue.GroupConfig{
		Member: hooks.owner,
		Weight: cfg.Weight,
		Pool:   pc,
		OnAssign: func(as []int) {
			log.Debug("analysers assigned", "group", cfg.Group, "member", hooks.owner, "analysers", as)
		},
	}
	log.Info("analyser started", "group", cfg.Group, "member", hooks.owner, "weight", cfg.Weight,
		"workers", cfg.Workers.String(), "redis", len(cfg.Redis), "queues", cfg.Queues)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	logged := make([]int64, n)
	wg.Go(func() {
		tick := time.NewTicker(cfg.LogEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				logProcessed(log, processed, logged)
			}
		}
	})
	err := q.JoinGroup(ctx, cfg.Group, gc, func(ctx context.Context, t queue.Task) error {
		// Returns once the row is committed: only then is the task acknowledged.
		return rows.Add(ctx, newTaskRow(t, q.AnalyserOf(t.OrderID)))
	})
	cancel()
	wg.Wait()
	logProcessed(log, processed, logged)
	if err == nil {
		log.Info("analyser stopped")
	}
	return err
}

// anyAnalyser labels the errors of a group member that no one analyser's
// task caused.
const anyAnalyser = -1

// logProcessed logs the tasks each analyser processed, for those whose
// count differs from logged, and updates logged.
func logProcessed(log *slog.Logger, processed []atomic.Int64, logged []int64) {
	for a := range processed {
		if n := processed[a].Load(); n != logged[a] {
			logged[a] = n
			log.Info("processed", "analyser", a, "total", n)
		}
	}
}
