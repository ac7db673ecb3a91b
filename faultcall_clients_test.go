package queue

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// The producer's and the low-level Consumer's calls, each with a fault.

// addWorkload: three goroutines add four tasks each of their own OrderID
// with AddTask (sharing round trips), then one AddTasks adds two more of
// each; the producer (pid 3) meets the faults. A task whose add returned
// an error may be in Redis or not, and may run after later tasks of its
// OrderID (Redis accepted it later); one whose add never reached Redis
// must not run. Then a pool without faults drains the queue.
func addWorkload(r *callRun) {
	const orders, per = 3, 4
	qp := r.queue(r.faultPool("P", 3).pool)
	ctx := context.Background()
	var wg sync.WaitGroup
	for o := uint64(0); o < orders; o++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 0; seq < per; seq++ {
				r.hist.log(faultEvent{Ev: evAdd, Pid: 3, Order: o, Seq: seq})
				id, err := qp.AddTask(ctx, o, taskPayload(o, seq, "x"))
				ev := faultEvent{Ev: evAdded, Pid: 3, Order: o, Seq: seq, ID: id, Result: "ok"}
				if err != nil {
					ev.Result, ev.Err = "error", err.Error()
				}
				r.hist.log(ev)
			}
		}()
	}
	wg.Wait()
	var batch []Task
	for seq := per; seq < per+2; seq++ {
		for o := uint64(0); o < orders; o++ {
			batch = append(batch, Task{OrderID: o, Payload: taskPayload(o, seq, "x")})
			r.hist.log(faultEvent{Ev: evAdd, Pid: 3, Order: o, Seq: seq, Batch: 1})
		}
	}
	_, err := qp.AddTasks(ctx, batch)
	ev := faultEvent{Ev: evBatch, Pid: 3, Batch: 1, Result: "ok", N: len(batch)}
	if err != nil {
		ev.Result, ev.Err = "error", err.Error()
	}
	r.hist.log(ev)
	r.plan.waitLate(r.t) // a delayed add lands before the drain
	r.sweep("drain")
}

func TestFaultEveryCallAdd(t *testing.T) {
	driveCalls(t, callWorkload{driver: "add", run: addWorkload, uncertainAdds: true})
}

// consumerWorkload drives the low-level API as its docs ask, doing on an
// error what a careful caller would: retry the call (Ack, Fail and
// Requeue skip tasks no longer pending, so a retry is safe), or, when the
// lease is lost, start over with Consume, which puts pending tasks back
// first. Consumer C (pid 4) claims one task at a time and three at a time
// in turn, fails each task of seq 1 once and runs it again in place, hands
// the rest of every third claim back with Requeue, and after eight tasks
// releases the lease to consumer D (pid 5), which drains the queue.
func consumerWorkload(r *callRun) {
	const orders, per = 3, 5
	r.addTasks(r.queue(r.srv.pool), orders, per)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := ConsumerConfig{LeaseTTL: faultLeaseTTL, MaxAttempts: 5}
	failed := map[string]bool{}
	for _, who := range []struct {
		actor string
		pid   int
		quota int
	}{{"C", 4, 8}, {"D", 5, 1 << 30}} {
		q := r.queue(r.faultPool(who.actor, who.pid).pool)
		cfg.Owner = who.actor
		var c *Consumer
		consume := func() bool {
			for ctx.Err() == nil {
				var err error
				if c, err = q.Consume(ctx, 0, cfg); err == nil {
					return true
				}
				time.Sleep(5 * time.Millisecond)
			}
			r.fail("hang", "%s: no lease in 10s", who.actor)
			return false
		}
		// retry runs call until it succeeds; it reports false when the
		// lease is lost (the caller starts over) or time is up.
		retry := func(call func() error) bool {
			for ctx.Err() == nil {
				err := call()
				if err == nil {
					return true
				}
				if errors.Is(err, ErrLeaseLost) {
					r.hist.log(faultEvent{Ev: evLost, Pid: who.pid, Err: err.Error()})
					r.snapshotPending()
					return false
				}
				time.Sleep(5 * time.Millisecond)
			}
			return false
		}
		if !consume() {
			return
		}
		mine := 0
		for i := 0; mine < who.quota && ctx.Err() == nil; i++ {
			var got []Task
			empty := false
			ok := retry(func() error {
				if i%2 == 0 {
					t, err := c.RemoveTask(ctx)
					empty = errors.Is(err, ErrNoTask)
					if err == nil {
						got = []Task{t}
					}
					if empty {
						return nil
					}
					return err
				}
				var err error
				got, err = c.Claim(ctx, 3)
				empty = err == nil && len(got) == 0
				return err
			})
			if !ok {
				if !consume() {
					return
				}
				continue
			}
			if empty {
				break
			}
			for j, t := range got {
				if i%3 == 1 && j > 0 { // hand the rest of this claim back
					ok = retry(func() error { return c.Requeue(ctx, got[j:]...) })
					break
				}
				order, seq, _, _ := parsePayload(t.Payload)
				ev := faultEvent{ID: t.ID, Order: order, Seq: seq, Pid: who.pid}
				run := func(result string) {
					ev.Ev, ev.Attempt, ev.Result = evStart, t.Attempt, ""
					r.hist.log(ev)
					ev.Ev, ev.Result = evFinish, result
					r.hist.log(ev)
				}
				if seq == 1 && !failed[t.ID] {
					failed[t.ID] = true
					run("error")
					dead := false
					if ok = retry(func() error { var err error; dead, err = c.Fail(ctx, t, errors.New("fails once")); return err }); !ok || dead {
						break
					}
					t.Attempt++
				}
				run("ok")
				if ok = retry(func() error { _, err := c.Ack(ctx, t.ID); return err }); !ok {
					break
				}
				mine++
			}
			if !ok && !consume() {
				return
			}
		}
		retry(func() error { return c.Release(ctx) })
	}
}

func TestFaultEveryCallConsumer(t *testing.T) {
	driveCalls(t, callWorkload{driver: "consumer", run: consumerWorkload})
}
