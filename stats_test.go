package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStatsRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, _ := newTestQueue(t, 2, Config{Queues: 2})

	// Before any use: one empty row per analyser, in analyser order.
	st, err := q.Stats(ctx)
	require.NoError(t, err)
	require.Len(t, st, 4)
	for a, s := range st {
		assert.Equal(t, AnalyserStats{Analyser: a, Partition: a % 2, Queue: a / 2}, s)
	}

	// Analyser 0 (partition 0, queue 0) gets OrderIDs 0 mod 4, analyser 3
	// (partition 1, queue 1) OrderIDs 3 mod 4.
	var tasks []Task
	for i := 0; i < 5; i++ {
		tasks = append(tasks, Task{OrderID: uint64(4 * i), Payload: []byte("a")})
	}
	tasks = append(tasks, Task{OrderID: 3, Payload: []byte("b")}, Task{OrderID: 7, Payload: []byte("b")})
	_, err = q.AddTasks(ctx, tasks)
	require.NoError(t, err)

	const ttl = time.Minute
	c, err := q.Consume(ctx, 0, ConsumerConfig{Owner: "first:1", MaxAttempts: 1, LeaseTTL: ttl})
	require.NoError(t, err)
	claimed, err := c.Claim(ctx, 3)
	require.NoError(t, err)
	require.Len(t, claimed, 3)
	_, err = c.Ack(ctx, claimed[0].ID)
	require.NoError(t, err)
	dead, err := c.Fail(ctx, claimed[1], errors.New("boom"))
	require.NoError(t, err)
	require.True(t, dead)

	st, err = q.Stats(ctx)
	require.NoError(t, err)
	s := st[0]
	assert.Equal(t, 0, s.Analyser)
	assert.EqualValues(t, 2, s.Ready)
	assert.EqualValues(t, 1, s.Pending)
	assert.EqualValues(t, 1, s.Dead)
	assert.EqualValues(t, 1, s.Processed)
	assert.EqualValues(t, 1, s.Failed)
	assert.Zero(t, s.Redelivered)
	assert.Equal(t, "first:1", s.Owner, "an owner name may hold ':'")
	assert.Equal(t, c.Token(), s.Token)
	assert.Positive(t, s.Token)
	assert.True(t, s.LeaseLeft > 0 && s.LeaseLeft <= ttl, "LeaseLeft %v", s.LeaseLeft)
	assert.Equal(t, AnalyserStats{Analyser: 3, Partition: 1, Queue: 1, Ready: 2}, st[3])
	assert.Equal(t, AnalyserStats{Analyser: 1, Partition: 1, Queue: 0}, st[1])
	assert.Equal(t, AnalyserStats{Analyser: 2, Partition: 0, Queue: 1}, st[2])

	// A new owner puts the pending task back and counts the redelivery.
	first := c.Token()
	require.NoError(t, c.Release(ctx))
	c2, err := q.Consume(ctx, 0, ConsumerConfig{Owner: "second", LeaseTTL: ttl})
	require.NoError(t, err)
	s = statsOf(t, q, 0)
	assert.EqualValues(t, 3, s.Ready)
	assert.Zero(t, s.Pending)
	assert.EqualValues(t, 1, s.Redelivered)
	assert.EqualValues(t, 1, s.Processed)
	assert.EqualValues(t, 1, s.Failed)
	assert.Equal(t, "second", s.Owner)
	assert.Greater(t, s.Token, first, "every acquisition has a higher token")
	assert.Equal(t, c2.Token(), s.Token)

	require.NoError(t, c2.Release(ctx))
	s = statsOf(t, q, 0)
	assert.Empty(t, s.Owner)
	assert.Zero(t, s.Token)
	assert.Zero(t, s.LeaseLeft)
	assert.EqualValues(t, 3, s.Ready)
	assert.EqualValues(t, 1, s.Dead)
}

// TestDrainLeavesFixedKeys drains every queue with ExitOnEmpty, some tasks
// failing once on the way, and checks that only a fixed handful of keys
// per queue remain: its meta hash, the server's layout, and the wake list
// a lease release leaves behind with an expiry.
func TestDrainLeavesFixedKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const r, queues, n = 2, 2, 400
	q, servers := newTestQueue(t, r, Config{Queues: queues})
	var tasks []Task
	for i := 0; i < n; i++ {
		tasks = append(tasks, Task{OrderID: uint64(i % 37), Payload: []byte(fmt.Sprint(i))})
	}
	_, err := q.AddTasks(ctx, tasks)
	require.NoError(t, err)

	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	for a := 0; a < q.Analysers(); a++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := q.AnalysePool(ctx, a, PoolConfig{
				Workers: 4, ExitOnEmpty: true, Logger: slog.New(slog.DiscardHandler), OnError: func(error) {},
				Backoff: func(int) time.Duration { return time.Millisecond },
			}, func(_ context.Context, task Task) error {
				mu.Lock()
				defer mu.Unlock()
				seen[task.ID]++
				if task.OrderID%5 == 0 && task.Attempt == 1 {
					return errors.New("fails once")
				}
				return nil
			})
			assert.NoError(t, err)
		}()
	}
	wg.Wait()
	assert.Len(t, seen, n)

	st, err := q.Stats(ctx)
	require.NoError(t, err)
	var processed int64
	for _, s := range st {
		assert.Zero(t, s.Ready)
		assert.Zero(t, s.Pending)
		assert.Zero(t, s.Dead)
		assert.Empty(t, s.Owner)
		processed += s.Processed
	}
	assert.EqualValues(t, n, processed)

	prefix := q.cfg.Prefix
	// The partitions whose keys each server holds: on a cluster, one
	// keyspace holds them all.
	held := [][]int{{0}, {1}}
	if testOnCluster {
		held = [][]int{{0, 1}}
	}
	for _, parts := range held {
		s := servers[parts[0]]
		var wantKeep, wantExpiring []string
		for _, pi := range parts {
			wantKeep = append(wantKeep, q.layoutKeyOf(q.parts[pi]))
			for qi := 0; qi < queues; qi++ {
				k := newQueueKeys(prefix, pi, qi)
				wantKeep = append(wantKeep, k.meta)
				wantExpiring = append(wantExpiring, k.wake)
			}
		}
		var keep, expiring []string
		for _, key := range scanKeys(t, s, prefix) {
			ttl, err := redis.Int64(s.do(t, "PTTL", key), nil)
			require.NoError(t, err)
			if ttl == -1 {
				keep = append(keep, key)
				continue
			}
			assert.True(t, ttl > 0 && ttl <= 60000, "key %s expires in %dms", key, ttl)
			expiring = append(expiring, key)
		}
		sort.Strings(wantKeep)
		sort.Strings(wantExpiring)
		assert.Equal(t, wantKeep, keep, "partitions %v: persistent keys", parts)
		assert.Equal(t, wantExpiring, expiring, "partitions %v: expiring keys", parts)
	}
}

// Stats shows the lease holder's worker count, recorded by its pool, and
// nothing while no pool holds the lease: a count recorded under another
// lease value is an earlier tenure's.
func TestStatsWorkers(t *testing.T) {
	t.Parallel()
	q, srv, k := testQueue1(t)
	ctx, cancel := context.WithCancel(bounded(t))
	errc := runPool(ctx, q, PoolConfig{Workers: 2}, func(context.Context, Task) error { return nil })
	require.Eventually(t, func() bool { return stats0(t, q).Workers == 2 }, 10*time.Second, time.Millisecond)
	cancel()
	require.NoError(t, receive(t, errc))
	assert.Zero(t, stats0(t, q).Workers, "released")
	field, err := redis.String(srv.do(t, "HGET", k.meta, "workers"), nil)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(field, "2:"), "the last record stays: %q", field)

	c, err := q.Consume(bounded(t), 0, ConsumerConfig{LeaseTTL: time.Minute})
	require.NoError(t, err)
	defer c.Release(context.Background())
	st := stats0(t, q)
	assert.NotEmpty(t, st.Owner)
	assert.Zero(t, st.Workers, "a Consumer holds the lease: the record is another tenure's")
}

func TestRecordedWorkers(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		field, lease string
		want         int
	}{
		{"4:12.ab:host:1", "12.ab:host:1", 4},
		{"4:12.ab:host:1", "13.cd:host:1", 0},
		{"", "12.ab:host:1", 0},
		{"x:12.ab:host:1", "12.ab:host:1", 0},
		{"-1:12.ab:host:1", "12.ab:host:1", 0},
		{"4", "4", 0},
	} {
		assert.Equal(t, tt.want, recordedWorkers(tt.field, tt.lease), "%q under %q", tt.field, tt.lease)
	}
}

// A queue key holding another type fails Stats with ErrWrongType, naming
// the key: Redis's own WRONGTYPE says which command, not which key.
func TestStatsNamesAKeyOfTheWrongType(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	s.do(t, "SET", k.dead, "x")
	_, err := q.Stats(context.Background())
	require.ErrorIs(t, err, ErrWrongType)
	assert.Contains(t, err.Error(), "(key "+k.dead+")")
	s.do(t, "DEL", k.dead)
	_, err = q.Stats(context.Background())
	require.NoError(t, err)
}

// With a partition down, Stats returns the rows of the others, those of
// the one down holding only where they are, and an error that names it.
func TestStatsWithAPartitionDown(t *testing.T) {
	t.Parallel()
	minis := []*miniredis.Miniredis{miniredis.RunT(t), miniredis.RunT(t)}
	pools := make([]*redis.Pool, len(minis))
	for i, m := range minis {
		pools[i] = testPool("redis://" + m.Addr())
		t.Cleanup(func() { pools[i].Close() })
	}
	q, err := New(pools, Config{Prefix: testPrefix(t), Queues: 2})
	require.NoError(t, err)
	defer q.Close()
	ctx := context.Background()
	_, err = q.AddTask(ctx, 0, []byte("x")) // analyser 0: partition 0, queue 0
	require.NoError(t, err)
	minis[1].Close()
	st, err := q.Stats(ctx)
	require.Error(t, err)
	var pe *PartitionError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, []int{1}, FailedPartitions(err))
	require.Len(t, st, 4)
	assert.Equal(t, int64(1), st[0].Ready, "partition 0 was read")
	for a, s := range st {
		wp, wq, _ := q.Layout().Serves(a)
		assert.Equal(t, AnalyserStats{Analyser: a, Partition: wp, Queue: wq, Ready: s.Ready}, s, "analyser %d", a)
	}
	assert.Nil(t, FailedPartitions(errors.New("other")))
	assert.Equal(t, []int{0, 2}, FailedPartitions(fmt.Errorf("w: %w", errors.Join(&PartitionError{Partition: 0}, &PartitionError{Partition: 2}))))
}

// A partition that fails half way leaves none of its rows filled in, as
// Stats's doc says: the rows of a failed partition hold only where they
// are.
func TestStatsLeavesAFailedPartitionsRowsEmpty(t *testing.T) {
	t.Parallel()
	q, srv := newTestQueue(t, 1, Config{Queues: 2})
	_, err := q.AddTask(context.Background(), 0, []byte("x")) // queue 0
	require.NoError(t, err)
	srv[0].do(t, "SET", newQueueKeys(q.cfg.Prefix, 0, 1).dead, "x") // queue 1's read fails
	st, err := q.Stats(context.Background())
	require.ErrorIs(t, err, ErrWrongType)
	assert.Equal(t, []int{0}, FailedPartitions(err))
	assert.Equal(t, []AnalyserStats{{Analyser: 0}, {Analyser: 1, Queue: 1}}, st)
	var nilPE *PartitionError
	assert.Nil(t, FailedPartitions(nilPE))
}
