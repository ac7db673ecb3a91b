package queue

import (
	"context"
	"sync"
	"testing"
	"time"
)

// poolWorkload: 24 tasks of 4 OrderIDs; pool A (pid 1) runs them, each
// task of seq 1 failing once, until task (1, 3) stops A gracefully while
// it runs (an interrupted task, and unstarted ones to hand back); pool B
// (pid 2), a standby since A's first task, takes over and drains the
// queue with ExitOnEmpty.
func poolWorkload(r *callRun) {
	const orders, per = 4, 6
	r.addTasks(r.queue(r.srv.pool), orders, per)
	fa, fb := r.faultPool("A", 1), r.faultPool("B", 2)
	qa, qb := r.queue(fa.pool), r.queue(fb.pool)
	cfg := func(owner string, pid int) PoolConfig {
		return PoolConfig{Workers: 2, Prefetch: 8, LeaseTTL: faultLeaseTTL, MaxAttempts: 5,
			ShutdownTimeout: 50 * time.Millisecond, Owner: owner, OnError: r.onError(pid),
			Backoff: func(int) time.Duration { return 5 * time.Millisecond }}
	}
	var failed sync.Map
	actx, stopA := context.WithCancel(context.Background())
	defer stopA()
	var stopOnce sync.Once
	stopping := func(ctx context.Context, order uint64, seq int) error {
		stopped := false
		if order == 1 && seq == 3 {
			stopOnce.Do(func() { stopped = true })
		}
		if !stopped {
			return nil
		}
		stopA()
		<-ctx.Done() // interrupted at the end of ShutdownTimeout
		return ctx.Err()
	}
	aDone := make(chan error, 1)
	go func() { aDone <- qa.AnalysePool(actx, 0, cfg("A", 1), r.analyse(1, 1, &failed, stopping)) }()
	started := func() bool { return r.hist.has(func(e faultEvent) bool { return e.Ev == evStart && e.Pid == 1 }) }
	for deadline := time.Now().Add(5 * time.Second); !started() && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	bctx, cancelB := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancelB()
	bcfg := cfg("B", 2)
	bcfg.ExitOnEmpty = true
	err := qb.AnalysePool(bctx, 0, bcfg, r.analyse(2, 1, &failed, nil))
	if err != nil || bctx.Err() != nil {
		r.fail("hang", "pool B did not drain the queue in 8s: %v", err)
	}
	stopA()
	select {
	case err := <-aDone:
		if err != nil {
			r.fail("poolerr", "pool A returned %v", err)
		}
	case <-time.After(15 * time.Second):
		r.fail("hang", "pool A did not return 15s after its stop")
		<-aDone
	}
}

func TestFaultEveryCallPool(t *testing.T) {
	driveCalls(t, callWorkload{driver: "pool", run: poolWorkload})
}
