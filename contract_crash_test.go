package queue_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qugo/queue"
)

// expireLease lets a lease of ttl run out: miniredis's clock moves only
// when told.
func expireLease(s *contractServer, ttl time.Duration) {
	if s.mini != nil {
		s.mini.FastForward(ttl + time.Millisecond)
		return
	}
	time.Sleep(ttl + 50*time.Millisecond)
}

// TestContractCrashRecovery: a Consumer that dies holding tasks (its lease
// runs out) loses nothing: the next owner gets them back first, in claim
// order, before tasks added since; the dead owner's late ack is refused
// with ErrLeaseLost; and a task that keeps dying with its owner is
// dead-lettered after at most MaxAttempts+1 crashes, its OrderID going on.
func TestContractCrashRecovery(t *testing.T) {
	verifyNoLeak(t)
	servers, prefix := contractSetup(t, 1)
	ctx := context.Background()
	q := contractQueue(t, servers, queue.Config{Prefix: prefix})
	const ttl = 300 * time.Millisecond
	cc := queue.ConsumerConfig{LeaseTTL: ttl, MaxAttempts: 2}
	for i := 0; i < 3; i++ {
		_, err := q.AddTask(ctx, 5, []byte(fmt.Sprint("old", i)))
		require.NoError(t, err)
	}
	dying, err := q.Consume(ctx, 0, cc)
	require.NoError(t, err)
	held, err := dying.Claim(ctx, 10)
	require.NoError(t, err)
	require.Len(t, held, 3)
	_, err = q.AddTask(ctx, 5, []byte("new"))
	require.NoError(t, err)
	expireLease(servers[0], ttl) // the owner is gone

	next, err := q.Consume(ctx, 0, cc)
	require.NoError(t, err)
	n, err := dying.Ack(ctx, held[0].ID)
	assert.ErrorIs(t, err, queue.ErrLeaseLost, "a stale owner's late ack")
	assert.Zero(t, n)
	got, err := next.Claim(ctx, 10)
	require.NoError(t, err)
	var payloads []string
	for _, task := range got {
		payloads = append(payloads, string(task.Payload))
	}
	assert.Equal(t, []string{"old0", "old1", "old2", "new"}, payloads, "recovered first, in claim order")
	stats, err := q.Stats(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(3), stats[0].Redelivered)
	n, err = next.Ack(ctx, got[1].ID, got[2].ID, got[3].ID)
	require.NoError(t, err)
	assert.Equal(t, 3, n)
	_, err = q.AddTask(ctx, 5, []byte("behind"))
	require.NoError(t, err)

	// old0 has died with two owners (dying's and next's claims); it now
	// dies with every owner that claims it, until it is dead-lettered.
	crashes := 2
	owner := next
	for ; crashes <= cc.MaxAttempts+2; crashes++ {
		expireLease(servers[0], ttl)
		owner, err = q.Consume(ctx, 0, cc)
		require.NoError(t, err)
		task, err := owner.RemoveTask(ctx)
		require.NoError(t, err)
		if string(task.Payload) != "old0" {
			assert.Equal(t, "behind", string(task.Payload), "the OrderID goes on")
			break
		}
	}
	assert.LessOrEqual(t, crashes, cc.MaxAttempts+1, "crashes before the poison task was dead-lettered")
	dead, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, dead, 1)
	assert.Equal(t, "old0", string(dead[0].Payload))
	assert.GreaterOrEqual(t, dead[0].Attempts, cc.MaxAttempts)
	assert.NotEmpty(t, dead[0].LastError)
	require.NoError(t, owner.Release(ctx))
}

// TestContractOrderUnderLoad: many OrderIDs over a pool of 8 workers, with
// random failures retried in place: per OrderID, every task starts after
// the previous one ended, in the order added, and each is acknowledged
// once; in both dispatch modes.
func TestContractOrderUnderLoad(t *testing.T) {
	for _, mode := range []queue.DispatchMode{queue.DispatchByOrder, queue.DispatchFree} {
		t.Run(mode.String(), func(t *testing.T) {
			verifyNoLeak(t)
			servers, prefix := contractSetup(t, 1)
			ctx := context.Background()
			q := contractQueue(t, servers, queue.Config{Prefix: prefix})
			const orders, each = 24, 20
			var batch []queue.Task
			for i := 0; i < each; i++ {
				for o := 0; o < orders; o++ {
					batch = append(batch, queue.Task{OrderID: uint64(o), Payload: []byte(fmt.Sprint(i))})
				}
			}
			_, err := q.AddTasks(ctx, batch)
			require.NoError(t, err)
			var mu sync.Mutex
			running := map[uint64]bool{}
			next := map[uint64]int{}
			bad := 0
			err = q.AnalysePool(ctx, 0, queue.PoolConfig{
				Workers: 8, Dispatch: mode, ExitOnEmpty: true, MaxAttempts: 1000,
				Backoff: func(int) time.Duration { return time.Millisecond },
				OnError: func(err error) {
					var te *queue.TaskError
					if !errors.As(err, &te) {
						t.Errorf("pool error: %v", err)
					}
				},
			}, func(_ context.Context, task queue.Task) error {
				var i int
				fmt.Sscan(string(task.Payload), &i)
				mu.Lock()
				if running[task.OrderID] || next[task.OrderID] != i {
					bad++
				}
				running[task.OrderID] = true
				mu.Unlock()
				time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
				fail := rand.IntN(5) == 0
				mu.Lock()
				running[task.OrderID] = false
				if !fail {
					next[task.OrderID] = i + 1
				}
				mu.Unlock()
				if fail {
					return errors.New("transient")
				}
				return nil
			})
			require.NoError(t, err)
			assert.Zero(t, bad, "tasks started out of order or alongside their OrderID's previous one")
			for o := uint64(0); o < orders; o++ {
				assert.Equal(t, each, next[o], "OrderID %d", o)
			}
			stats, err := q.Stats(ctx)
			require.NoError(t, err)
			assert.Equal(t, int64(orders*each), stats[0].Processed)
			assert.Zero(t, stats[0].Dead+stats[0].Pending+stats[0].Ready)
		})
	}
}

// TestContractStatusTracks follows a task ID through its life with
// Config.Retention: unknown while queued (documented), pending with its
// attempt and owner while it runs, done with its times afterwards.
func TestContractStatusTracks(t *testing.T) {
	servers, prefix := contractSetup(t, 1)
	ctx := context.Background()
	q := contractQueue(t, servers, queue.Config{Prefix: prefix, Retention: time.Hour})
	id, err := q.AddTask(ctx, 3, []byte("tracked"))
	require.NoError(t, err)
	st, err := q.Status(ctx, 3, id)
	require.NoError(t, err)
	assert.Equal(t, queue.StateUnknown, st.State, "a queued task")

	var running queue.TaskStatus
	require.NoError(t, q.AnalysePool(ctx, 0, queue.PoolConfig{ExitOnEmpty: true, Owner: "tester"}, func(ctx context.Context, task queue.Task) error {
		assert.Equal(t, id, task.ID)
		running, err = q.Status(ctx, 3, id)
		assert.NoError(t, err)
		return nil
	}))
	assert.Equal(t, queue.StatePending, running.State)
	assert.Equal(t, 1, running.Attempt)
	assert.Equal(t, "tester", running.Owner)
	assert.Equal(t, uint64(3), running.OrderID)

	st, err = q.Status(ctx, 3, id)
	require.NoError(t, err)
	assert.Equal(t, queue.StateDone, st.State)
	assert.Equal(t, 1, st.Attempt)
	assert.False(t, st.AddedAt.IsZero() || st.StartedAt.IsZero() || st.FinishedAt.IsZero(), "times %+v", st)
	assert.False(t, st.StartedAt.Before(st.AddedAt.Truncate(time.Millisecond)), "started before added")
	assert.False(t, st.FinishedAt.Before(st.StartedAt), "finished before started")
}

// TestContractStandbyTakesOver: a second pool on the same analyser waits
// as a hot standby, runs nothing while the owner lives, and takes over at
// once when the owner stops gracefully.
func TestContractStandbyTakesOver(t *testing.T) {
	verifyNoLeak(t)
	servers, prefix := contractSetup(t, 1)
	bg := context.Background()
	q := contractQueue(t, servers, queue.Config{Prefix: prefix})
	ran := make(chan string, 16)
	run := func(ctx context.Context, owner string, done chan<- error) {
		done <- q.AnalysePool(ctx, 0, queue.PoolConfig{Owner: owner}, func(_ context.Context, task queue.Task) error {
			ran <- owner + ":" + string(task.Payload)
			return nil
		})
	}
	ctxA, stopA := context.WithCancel(bg)
	ctxB, stopB := context.WithCancel(bg)
	doneA, doneB := make(chan error, 1), make(chan error, 1)
	go run(ctxA, "a", doneA)
	_, err := q.AddTask(bg, 1, []byte("1"))
	require.NoError(t, err)
	assert.Equal(t, "a:1", <-ran)
	go run(ctxB, "b", doneB)
	for i := 2; i <= 4; i++ {
		_, err := q.AddTask(bg, 1, []byte(fmt.Sprint(i)))
		require.NoError(t, err)
		assert.Equal(t, fmt.Sprint("a:", i), <-ran, "the standby ran a task while the owner lived")
	}
	select {
	case err := <-doneA:
		t.Fatalf("the owner returned before its ctx ended: %v", err)
	case err := <-doneB:
		t.Fatalf("the standby returned before its ctx ended: %v", err)
	default:
	}
	stopA()
	require.NoError(t, <-doneA)
	at := time.Now()
	_, err = q.AddTask(bg, 1, []byte("5"))
	require.NoError(t, err)
	select {
	case got := <-ran:
		assert.Equal(t, "b:5", got)
		assert.Less(t, time.Since(at), 2*time.Second, "the standby took over after a graceful stop")
	case <-time.After(10 * time.Second):
		t.Fatal("the standby did not take over")
	}
	stopB()
	require.NoError(t, <-doneB)
}
