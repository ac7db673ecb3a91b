package queue

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// With a retention, every batch the acker hands out pairs each pending
// field with its own task's status record, however the workers' acks and
// the acker's takes interleave.
func TestAckerKeepsEachFieldWithItsStatusRecord(t *testing.T) {
	t.Parallel()
	a := newAcker(&session{st: &store{retention: time.Hour}})
	const workers, per = 4, 20000
	var wg sync.WaitGroup
	for g := range workers {
		wg.Go(func() {
			for i := range per {
				n := g*per + i
				a.ack(claimed{Task: Task{ID: strconv.Itoa(n), Attempt: n + 1}, field: strconv.Itoa(n)}, time.Time{})
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); a.close(); close(done) }()
	seen, wrong := 0, 0
	for {
		refs, recs, _ := a.take()
		if len(refs) == 0 {
			break
		}
		require.Equal(t, len(refs), len(recs), "a batch's status records are not in step with its tasks")
		for i, f := range refs {
			n, err := strconv.Atoi(f.id)
			require.NoError(t, err)
			if recs[i].attempts != n+1 {
				wrong++
			}
		}
		seen += len(refs)
	}
	<-done
	assert.Equal(t, workers*per, seen)
	assert.Zero(t, wrong, "tasks acknowledged with another task's status record")
}

// A task a worker finished is acknowledged while the same worker runs a
// long task next: the ack does not wait for the worker to come back (a
// batch of acks a worker kept to itself would).
func TestFinishedTaskAcknowledgedWhileItsWorkerRunsAnother(t *testing.T) {
	t.Parallel()
	q, _, _ := testQueue1(t)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	addAll(t, q, []Task{{OrderID: 1, Payload: []byte("quick")}, {OrderID: 2, Payload: []byte("long")}})
	long, release := make(chan struct{}), make(chan struct{})
	errc := runPool(ctx, q, PoolConfig{Workers: 1, ExitOnEmpty: true}, func(_ context.Context, task Task) error {
		if string(task.Payload) == "long" {
			close(long)
			<-release
		}
		return nil
	})
	<-long
	stats := func() AnalyserStats {
		st, err := q.Stats(ctx)
		require.NoError(t, err)
		return st[0]
	}
	require.Eventually(t, func() bool { return stats().Processed == 1 }, 10*time.Second, 5*time.Millisecond,
		"the quick task is not acknowledged while the long one runs")
	assert.EqualValues(t, 1, stats().Pending, "the long task is pending")
	close(release)
	require.NoError(t, <-errc)
	assert.EqualValues(t, 2, stats().Processed)
	assert.Zero(t, stats().Pending)
}

// An acker that found nothing and waits is woken by the next ack, however
// the ack and its wait interleave: each ack here is taken before the next
// is made, so a wake lost once leaves take waiting for good.
func TestAckerWakesForEveryAck(t *testing.T) {
	t.Parallel()
	a := newAcker(&session{st: &store{}})
	const n = 20000
	taken := make(chan int, 1)
	go func() {
		for {
			refs, _, _ := a.take()
			if len(refs) == 0 {
				close(taken)
				return
			}
			taken <- len(refs)
		}
	}()
	for i := range n {
		a.ack(claimed{Task: Task{ID: strconv.Itoa(i)}}, time.Time{})
		select {
		case got := <-taken:
			require.Equal(t, 1, got)
		case <-time.After(30 * time.Second):
			t.Fatalf("ack %d was never taken", i)
		}
	}
	a.close()
	_, open := <-taken
	assert.False(t, open, "take returned tasks after the close")
}

// unconfirmed counts every ack Redis has not confirmed: those still with
// the workers' shards and those taken and on their way.
func TestAckerCountsUnconfirmedAcks(t *testing.T) {
	t.Parallel()
	a := newAcker(&session{st: &store{}})
	for i := range 5 {
		a.ack(claimed{Task: Task{ID: strconv.Itoa(i)}}, time.Time{})
	}
	assert.EqualValues(t, 5, a.unconfirmed(), "acks handed to the acker")
	refs, _, _ := a.take()
	require.Len(t, refs, 5)
	assert.EqualValues(t, 5, a.unconfirmed(), "acks taken, not confirmed")
	a.ack(claimed{Task: Task{ID: "6"}}, time.Time{})
	assert.EqualValues(t, 6, a.unconfirmed())
	a.taken.Add(-5) // what send does once Redis confirmed them
	assert.EqualValues(t, 1, a.unconfirmed())
}

// Each take holds the acks of one OrderID in the order they were made,
// whichever workers made them: the tasks of an OrderID here run on the
// workers in turn, each handing its ack over before the next one starts,
// as under DispatchFree. (OrderIDs 16 apart, as one analyser of 16 has.)
func TestAckerKeepsEachOrderIDsAcksInOrder(t *testing.T) {
	t.Parallel()
	a := newAcker(&session{st: &store{}})
	const workers, orders, per = 8, 64, 200
	turn := make([]chan int, workers) // OrderIDs whose next task the worker is to run
	for w := range turn {
		turn[w] = make(chan int, orders)
	}
	next := make([]int, orders) // each OrderID's next task, touched by the worker holding its turn
	var finished sync.WaitGroup
	finished.Add(orders)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for o := range turn[w] {
				i := next[o]
				a.ack(claimed{Task: Task{ID: fmt.Sprintf("%d:%d", o, i), OrderID: uint64(o) * 16}}, time.Time{})
				if next[o] = i + 1; next[o] == per {
					finished.Done()
					continue
				}
				turn[(w+1+o)%workers] <- o
			}
		})
	}
	for o := range orders {
		turn[o%workers] <- o
	}
	go func() {
		finished.Wait()
		for _, c := range turn {
			close(c)
		}
		wg.Wait()
		a.close()
	}()
	last := map[int]int{}
	seen, wrong := 0, 0
	for {
		refs, _, _ := a.take()
		if len(refs) == 0 {
			break
		}
		for _, r := range refs {
			var o, i int
			_, err := fmt.Sscanf(r.id, "%d:%d", &o, &i)
			require.NoError(t, err)
			if prev, ok := last[o]; ok && i != prev+1 || !ok && i != 0 {
				wrong++
			}
			last[o] = i
		}
		seen += len(refs)
		a.taken.Add(-int64(len(refs)))
	}
	assert.Equal(t, orders*per, seen)
	assert.Zero(t, wrong, "acks of an OrderID out of the order they were made")
}

// Under load (its last take found ackLingerFrom acks or more) the acker
// waits before it hands out a take of fewer than ackLingerFull, and the
// acks made meanwhile go with it; a close ends the wait at once.
func TestAckerLingersUnderLoad(t *testing.T) {
	t.Parallel()
	a := newAcker(&session{st: &store{}, cfg: PoolConfig{Prefetch: 4096}})
	a.lingerFor = time.Hour // ended by the wake-ups below
	take := func(last int) <-chan []string {
		a.last = last
		got := make(chan []string, 1)
		go func() {
			refs, _, _ := a.take()
			ids := make([]string, len(refs))
			for i, r := range refs {
				ids[i] = r.id
			}
			got <- ids
		}()
		return got
	}
	a.ack(claimed{Task: Task{ID: "first"}}, time.Time{})
	got := take(ackLingerFrom)
	// Once the take holds the first ack, it waits: the next ones join it.
	require.Eventually(t, func() bool { return a.taken.Load() == 1 }, 10*time.Second, time.Millisecond)
	for i := range 5 {
		a.ack(claimed{Task: Task{ID: strconv.Itoa(i)}}, time.Time{})
	}
	select {
	case ids := <-got:
		t.Fatalf("the take did not wait for more acks: it handed out %v", ids)
	case <-time.After(50 * time.Millisecond):
	}
	notify(a.wake) // as a close does; a wake-up sent before the wait began ends it too
	select {
	case ids := <-got:
		assert.Equal(t, []string{"first", "0", "1", "2", "3", "4"}, ids)
	case <-time.After(10 * time.Second):
		a.close()
		t.Fatal("a wake-up did not end the take's wait")
	}

	// The close ends a wait.
	a.ack(claimed{Task: Task{ID: "last"}}, time.Time{})
	got = take(ackLingerFrom)
	require.Eventually(t, func() bool { return a.taken.Load() == 7 }, 10*time.Second, time.Millisecond)
	a.close()
	select {
	case ids := <-got:
		assert.Equal(t, []string{"last"}, ids)
	case <-time.After(10 * time.Second):
		t.Fatal("the close did not end the take's wait")
	}
}

// An acker that is not under load hands out each take at once: a pool
// that finishes a task now and then has it acknowledged without delay.
// So does one under load whose take is full enough, and one whose
// Prefetch its acks would hold up.
func TestAckerDoesNotLingerWithoutLoad(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name           string
		prefetch, last int
		acks           int
		retention      bool // its acks go maxClaim to a script
	}{
		{"idle", 4096, 0, 1, false},
		{"a trickle", 4096, ackLingerFrom - 1, 10, false},
		{"a full take", 8192, ackLingerFrom, ackLingerFull, false},
		{"half the Prefetch", 512, ackLingerFrom, 256, false},
		{"an ack script's worth, with a retention", 8192, ackLingerFrom, maxClaim, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := &store{}
			if c.retention {
				st.retention = time.Hour
			}
			a := newAcker(&session{st: st, cfg: PoolConfig{Prefetch: c.prefetch}})
			a.lingerFor = time.Hour
			a.last = c.last
			for i := range c.acks {
				a.ack(claimed{Task: Task{ID: strconv.Itoa(i)}}, time.Time{})
			}
			got := make(chan int, 1)
			go func() {
				refs, _, _ := a.take()
				got <- len(refs)
			}()
			select {
			case n := <-got:
				assert.Equal(t, c.acks, n)
			case <-time.After(10 * time.Second):
				a.close()
				t.Fatal("the take waited for more acks")
			}
			assert.Equal(t, c.acks, a.last, "the take's count is kept for the next")
		})
	}
}
