package queue

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// controlWorkload: scheduled tasks and cancels, a fault at every call.
// A producer that meets no fault (pid 3) adds 4 tasks of each of 3
// OrderIDs at once, then, per OrderID, a task due 30ms later (seq 4)
// and one due 700ms later (seq 5), and 100ms after the start one more
// task at once (seq 6, added before seq 5 falls due, so it runs before
// it). A canceller (pid 6), which meets the faults, cancels task (0, 5)
// while it is scheduled and (2, 1) while it is queued, before pool A
// (pid 1) starts, and two tasks from inside their own runs: (0, 3),
// which then finishes ok, and (2, 3), which waits for its ctx to end
// (the owner reads the cancel marks every cancelPoll). A's claims move
// the scheduled tasks to the ready list as they fall due; each task of
// seq 1 fails once. Task (1, 5) stops A gracefully while it runs (or
// when B runs it first); pool B (pid 2), a standby since A's first
// start, takes over and runs until nothing is scheduled, ready or
// pending.
func controlWorkload(r *callRun) {
	const orders = 3
	ctx := context.Background()
	qp := r.queue(r.srv.pool)
	logAs := func(pid int) func(faultEvent) {
		return func(e faultEvent) { e.Pid = pid; r.hist.log(e) }
	}
	var mu sync.Mutex
	ids := map[taskKey]string{}
	add := func(o uint64, seq int, at time.Time) {
		id, err := addLogged(ctx, qp, logAs(3), o, seq, at, taskPayload(o, seq, "x"))
		if err != nil {
			r.fail("harness", "add (%d, %d): %v", o, seq, err)
			return
		}
		mu.Lock()
		ids[taskKey{o, seq}] = id
		mu.Unlock()
	}
	start := time.Now()
	for seq := 0; seq < 4; seq++ {
		for o := uint64(0); o < orders; o++ {
			add(o, seq, time.Time{})
		}
	}
	for o := uint64(0); o < orders; o++ {
		add(o, 4, start.Add(30*time.Millisecond))
		add(o, 5, start.Add(700*time.Millisecond))
	}
	late := make(chan struct{})
	go func() {
		defer close(late)
		time.Sleep(time.Until(start.Add(100 * time.Millisecond)))
		for o := uint64(0); o < orders; o++ {
			add(o, 6, time.Time{})
		}
	}()

	qx := r.queue(r.faultPool("X", 6).pool)
	cancel := func(o uint64, seq int) {
		mu.Lock()
		id := ids[taskKey{o, seq}]
		mu.Unlock()
		cancelLogged(ctx, qx, logAs(6), o, seq, id)
	}
	cancel(0, 5)
	cancel(2, 1)

	fa, fb := r.faultPool("A", 1), r.faultPool("B", 2)
	qa, qb := r.queue(fa.pool), r.queue(fb.pool)
	cfg := func(owner string, pid int) PoolConfig {
		return PoolConfig{Workers: 2, Prefetch: 8, LeaseTTL: faultLeaseTTL, MaxAttempts: 5,
			ShutdownTimeout: 50 * time.Millisecond, Owner: owner, OnError: r.onError(pid),
			Backoff: func(int) time.Duration { return 5 * time.Millisecond }}
	}
	var failed sync.Map
	var hooked func(pid int, ctx context.Context, o uint64, seq int) error
	actx, stopA := context.WithCancel(context.Background())
	defer stopA()
	var cut0, cut2, stop sync.Once
	hook := func(pid int) func(ctx context.Context, o uint64, seq int) error {
		return func(ctx context.Context, o uint64, seq int) error { return hooked(pid, ctx, o, seq) }
	}
	hooked = func(pid int, ctx context.Context, o uint64, seq int) error {
		switch {
		case o == 0 && seq == 3:
			cut0.Do(func() { cancel(0, 3) })
		case o == 2 && seq == 3:
			first := false
			cut2.Do(func() { first = true; cancel(2, 3) })
			if !first {
				return nil
			}
			t := time.NewTimer(3 * time.Second)
			defer t.Stop()
			select {
			case <-ctx.Done():
				return errors.Join(errCut, ctx.Err())
			case <-t.C:
			}
		case o == 1 && seq == 5:
			first := false
			stop.Do(func() { first = true })
			if first {
				// A stops at the task's first run, whoever runs it: B,
				// should it hold A's queue by then (A's lease lost to a
				// stall of a loaded machine, or to the fault), where A,
				// waiting as a standby, would otherwise never stop.
				stopA()
				if pid == 1 {
					<-ctx.Done() // interrupted at the end of ShutdownTimeout
					return ctx.Err()
				}
			}
		}
		return nil
	}
	aDone := make(chan error, 1)
	go func() { aDone <- qa.AnalysePool(actx, 0, cfg("A", 1), r.analyse(1, 1, &failed, hook(1))) }()
	started := func() bool { return r.hist.has(func(e faultEvent) bool { return e.Ev == evStart && e.Pid == 1 }) }
	for deadline := time.Now().Add(5 * time.Second); !started() && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	bctx, cancelB := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelB()
	bDone := make(chan error, 1)
	go func() { bDone <- qb.AnalysePool(bctx, 0, cfg("B", 2), r.analyse(2, 1, &failed, hook(2))) }()
	<-late
	select {
	case err := <-aDone:
		if err != nil {
			r.fail("poolerr", "pool A returned %v", err)
		}
	case <-time.After(15 * time.Second):
		r.fail("hang", "pool A did not return 15s after its start")
		stopA()
		<-aDone
	}
	for !r.queueEmpty() && bctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	if bctx.Err() != nil {
		r.fail("hang", "pool B did not empty the queue in 10s")
	}
	cancelB()
	if err := <-bDone; err != nil {
		r.fail("poolerr", "pool B returned %v", err)
	}
}

// queueEmpty reports whether nothing is scheduled, ready or pending.
func (r *callRun) queueEmpty() bool {
	ready, pending, sched, err := r.snapshot()
	return err == nil && ready+len(pending)+sched == 0
}

func TestFaultEveryCallControls(t *testing.T) {
	driveCalls(t, callWorkload{driver: "controls", run: controlWorkload, dry: func(t *testing.T, rep faultReport) {
		// (0, 5) removed while scheduled, (2, 1) finished unrun, (2, 3)
		// cut by its cancel; (0, 3) finished ok after its cancel.
		assert.Equal(t, 6, rep.Scheduled, "%v", rep)
		assert.Equal(t, 4, rep.Cancels, "%v", rep)
		assert.Equal(t, 3, rep.Cancelled, "%v", rep)
		assert.Equal(t, 2, rep.CancelledUnrun, "%v", rep)
		assert.Equal(t, 1, rep.CutByCancel, "%v", rep)
		assert.Equal(t, 3*7-3, rep.Completed, "%v", rep)
	}})
}
