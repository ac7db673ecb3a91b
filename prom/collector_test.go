package prom

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/gomodule/redigo/redis"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/qugo/queue"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newTestQueue returns a queue over r miniredis partitions with q queues each.
func newTestQueue(t *testing.T, r, q int) *queue.Queue {
	qu, _ := newTestQueueOn(t, r, q)
	return qu
}

// newTestQueueOn is newTestQueue, with the servers.
func newTestQueueOn(t *testing.T, r, q int) (*queue.Queue, []*miniredis.Miniredis) {
	t.Helper()
	pools := make([]*redis.Pool, r)
	minis := make([]*miniredis.Miniredis, r)
	for i := range pools {
		minis[i] = miniredis.RunT(t)
		pools[i] = testPool(minis[i].Addr())
		t.Cleanup(func() { pools[i].Close() })
	}
	qu, err := queue.New(pools, queue.Config{Queues: q})
	require.NoError(t, err)
	t.Cleanup(func() { qu.Close() })
	return qu, minis
}

func testPool(addr string) *redis.Pool {
	return &redis.Pool{
		MaxIdle: 4,
		DialContext: func(ctx context.Context) (redis.Conn, error) {
			return redis.DialContext(ctx, "tcp", addr, redis.DialConnectTimeout(time.Second))
		},
	}
}

// orderFor returns the n-th OrderID served by analyser a of q.
func orderFor(q *queue.Queue, a, n int) uint64 {
	return uint64(a + n*q.Analysers())
}

func TestCollectorQueueMetrics(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newTestQueue(t, 2, 2) // analysers 0..3
	start := time.Now()
	c := NewCollector(q, Options{Now: func() time.Time { return start.Add(time.Hour) }})
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(c))

	var tasks []queue.Task
	add := func(a, n int, payload string) {
		tasks = append(tasks, queue.Task{OrderID: orderFor(q, a, n), Payload: []byte(payload)})
	}
	for i := 0; i < 5; i++ {
		add(0, i, "ok")
	}
	add(0, 5, "bad")
	for i := 0; i < 4; i++ {
		add(1, i, "ok")
	}
	add(3, 0, "ok")
	_, err := q.AddTasks(ctx, tasks)
	require.NoError(t, err)

	// Analyser 0: five acknowledged, one dead.
	err = q.AnalysePool(ctx, 0, queue.PoolConfig{
		Workers: 2, MaxAttempts: 1, ExitOnEmpty: true, OnError: func(error) {}, OnDone: c.OnDone(0),
	}, func(ctx context.Context, task queue.Task) error {
		if string(task.Payload) == "bad" {
			return errors.New("bad payload")
		}
		return nil
	})
	require.NoError(t, err)

	// Analyser 1: a first owner claims three and goes away; the next one
	// puts them back (three redeliveries) and claims two, left pending.
	first, err := q.Consume(ctx, 1, queue.ConsumerConfig{})
	require.NoError(t, err)
	_, err = first.Claim(ctx, 3)
	require.NoError(t, err)
	require.NoError(t, first.Release(ctx))
	second, err := q.Consume(ctx, 1, queue.ConsumerConfig{})
	require.NoError(t, err)
	defer second.Release(ctx)
	claimed, err := second.Claim(ctx, 2)
	require.NoError(t, err)
	require.Len(t, claimed, 2)

	want := `
# HELP qugo_queue_ready Tasks waiting to be claimed (queue depth).
# TYPE qugo_queue_ready gauge
qugo_queue_ready{analyser="0",partition="0",queue="0"} 0
qugo_queue_ready{analyser="1",partition="1",queue="0"} 2
qugo_queue_ready{analyser="2",partition="0",queue="1"} 0
qugo_queue_ready{analyser="3",partition="1",queue="1"} 1
# HELP qugo_queue_pending Tasks claimed and not finished.
# TYPE qugo_queue_pending gauge
qugo_queue_pending{analyser="0",partition="0",queue="0"} 0
qugo_queue_pending{analyser="1",partition="1",queue="0"} 2
qugo_queue_pending{analyser="2",partition="0",queue="1"} 0
qugo_queue_pending{analyser="3",partition="1",queue="1"} 0
# HELP qugo_queue_dead Tasks in the dead-letter store.
# TYPE qugo_queue_dead gauge
qugo_queue_dead{analyser="0",partition="0",queue="0"} 1
qugo_queue_dead{analyser="1",partition="1",queue="0"} 0
qugo_queue_dead{analyser="2",partition="0",queue="1"} 0
qugo_queue_dead{analyser="3",partition="1",queue="1"} 0
# HELP qugo_queue_lease_held 1 when a process holds the queue's lease, else 0.
# TYPE qugo_queue_lease_held gauge
qugo_queue_lease_held{analyser="0",partition="0",queue="0"} 0
qugo_queue_lease_held{analyser="1",partition="1",queue="0"} 1
qugo_queue_lease_held{analyser="2",partition="0",queue="1"} 0
qugo_queue_lease_held{analyser="3",partition="1",queue="1"} 0
# HELP qugo_queue_processed_total Tasks acknowledged.
# TYPE qugo_queue_processed_total counter
qugo_queue_processed_total{analyser="0",partition="0",queue="0"} 5
qugo_queue_processed_total{analyser="1",partition="1",queue="0"} 0
qugo_queue_processed_total{analyser="2",partition="0",queue="1"} 0
qugo_queue_processed_total{analyser="3",partition="1",queue="1"} 0
# HELP qugo_queue_failed_total Tasks moved to the dead-letter store.
# TYPE qugo_queue_failed_total counter
qugo_queue_failed_total{analyser="0",partition="0",queue="0"} 1
qugo_queue_failed_total{analyser="1",partition="1",queue="0"} 0
qugo_queue_failed_total{analyser="2",partition="0",queue="1"} 0
qugo_queue_failed_total{analyser="3",partition="1",queue="1"} 0
# HELP qugo_queue_redelivered_total Pending tasks put back by a new owner after a crash or a lost lease.
# TYPE qugo_queue_redelivered_total counter
qugo_queue_redelivered_total{analyser="0",partition="0",queue="0"} 0
qugo_queue_redelivered_total{analyser="1",partition="1",queue="0"} 3
qugo_queue_redelivered_total{analyser="2",partition="0",queue="1"} 0
qugo_queue_redelivered_total{analyser="3",partition="1",queue="1"} 0
# HELP qugo_queue_lease_acquisitions_total Leases of the queue taken so far: each start, takeover and return after a lost lease adds one.
# TYPE qugo_queue_lease_acquisitions_total counter
qugo_queue_lease_acquisitions_total{analyser="1",partition="1",queue="0"} 2
# HELP qugo_up 1 when the last scrape read every Redis partition, else 0.
# TYPE qugo_up gauge
qugo_up 1
`
	assert.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want),
		"qugo_queue_ready", "qugo_queue_pending", "qugo_queue_dead", "qugo_queue_lease_held",
		"qugo_queue_processed_total", "qugo_queue_failed_total", "qugo_queue_redelivered_total",
		"qugo_queue_lease_acquisitions_total", "qugo_up"))

	families, err := reg.Gather()
	require.NoError(t, err)
	ages := map[string]float64{}
	var okCount, errCount uint64
	for _, f := range families {
		switch f.GetName() {
		case "qugo_queue_oldest_pending_age_seconds":
			for _, m := range f.GetMetric() {
				ages[label(m, "analyser")] = m.GetGauge().GetValue()
			}
		case "qugo_handler_duration_seconds":
			for _, m := range f.GetMetric() {
				require.Equal(t, "0", label(m, "analyser"))
				h := m.GetHistogram()
				assert.Equal(t, 0.001, h.GetBucket()[0].GetUpperBound())
				switch label(m, "outcome") {
				case "ok":
					okCount = h.GetSampleCount()
				case "error":
					errCount = h.GetSampleCount()
				}
			}
		}
	}
	assert.EqualValues(t, 5, okCount)
	assert.EqualValues(t, 1, errCount)
	require.Len(t, ages, 4)
	assert.InDelta(t, time.Hour.Seconds(), ages["1"], 60, "enqueued about an hour before the fake now")
	for _, a := range []string{"0", "2", "3"} {
		assert.Zero(t, ages[a], "analyser %s has nothing pending", a)
	}

	problems, err := testutil.CollectAndLint(c)
	require.NoError(t, err)
	assert.Empty(t, problems)
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func TestCollectorSkipOldestPendingAndOptions(t *testing.T) {
	t.Parallel()
	q := newTestQueue(t, 1, 1)
	c := NewCollector(q, Options{
		Namespace:         "jobs",
		ConstLabels:       prometheus.Labels{"site": "a"},
		SkipOldestPending: true,
		Buckets:           []float64{0.01, 0.1},
	})
	// OnDone creates both outcome series at once, so rates start at zero.
	c.OnDone(0)(queue.Task{}, 50*time.Millisecond, nil)
	want := `
# HELP jobs_handler_duration_seconds Time an AnalyseFunc took per delivery, by outcome (ok or error).
# TYPE jobs_handler_duration_seconds histogram
jobs_handler_duration_seconds_bucket{analyser="0",outcome="error",site="a",le="0.01"} 0
jobs_handler_duration_seconds_bucket{analyser="0",outcome="error",site="a",le="0.1"} 0
jobs_handler_duration_seconds_bucket{analyser="0",outcome="error",site="a",le="+Inf"} 0
jobs_handler_duration_seconds_sum{analyser="0",outcome="error",site="a"} 0
jobs_handler_duration_seconds_count{analyser="0",outcome="error",site="a"} 0
jobs_handler_duration_seconds_bucket{analyser="0",outcome="ok",site="a",le="0.01"} 0
jobs_handler_duration_seconds_bucket{analyser="0",outcome="ok",site="a",le="0.1"} 1
jobs_handler_duration_seconds_bucket{analyser="0",outcome="ok",site="a",le="+Inf"} 1
jobs_handler_duration_seconds_sum{analyser="0",outcome="ok",site="a"} 0.05
jobs_handler_duration_seconds_count{analyser="0",outcome="ok",site="a"} 1
# HELP jobs_up 1 when the last scrape read every Redis partition, else 0.
# TYPE jobs_up gauge
jobs_up{site="a"} 1
`
	assert.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(want),
		"jobs_handler_duration_seconds", "jobs_up", "jobs_queue_oldest_pending_age_seconds"))
	assert.Equal(t, 14, testutil.CollectAndCount(c), "up, eleven queue metrics, two histogram series")
}

func TestCollectorRedisDown(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	pool := testPool(mr.Addr())
	t.Cleanup(func() { pool.Close() })
	q, err := queue.New([]*redis.Pool{pool}, queue.Config{})
	require.NoError(t, err)
	c := NewCollector(q, Options{Timeout: time.Second, Groups: []string{"g"}, Logger: slog.New(slog.DiscardHandler)})
	mr.Close()
	want := `
# HELP qugo_up 1 when the last scrape read every Redis partition, else 0.
# TYPE qugo_up gauge
qugo_up 0
`
	assert.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(want), "qugo_up"))
	assert.Equal(t, 1, testutil.CollectAndCount(c), "only qugo_up while Redis is down")
}

// With Options.Owner, only the lease holder exports a queue's series, so
// that sums over processes count each queue once, and lease_held summed by
// analyser counts its owners.
func TestCollectorOwnerExportsOnlyItsQueues(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newTestQueue(t, 1, 2) // analysers 0 and 1
	_, err := q.AddTasks(ctx, []queue.Task{
		{OrderID: orderFor(q, 1, 0), Payload: []byte("a")},
		{OrderID: orderFor(q, 1, 1), Payload: []byte("b")},
		{OrderID: orderFor(q, 0, 0), Payload: []byte("c")},
	})
	require.NoError(t, err)
	holder, err := q.Consume(ctx, 1, queue.ConsumerConfig{Owner: "host-a:1"})
	require.NoError(t, err)
	defer holder.Release(ctx)

	gather := func(owner string) string {
		reg := prometheus.NewPedanticRegistry()
		require.NoError(t, reg.Register(NewCollector(q, Options{Owner: owner, SkipOldestPending: true})))
		var b strings.Builder
		families, err := reg.Gather()
		require.NoError(t, err)
		for _, f := range families {
			if !strings.HasPrefix(f.GetName(), "qugo_queue_") {
				continue
			}
			for _, m := range f.GetMetric() {
				v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
				fmt.Fprintf(&b, "%s{analyser=%s} %g\n", f.GetName(), m.GetLabel()[0].GetValue(), v)
			}
		}
		return b.String()
	}
	assert.Equal(t, `qugo_queue_cancelled_total{analyser=1} 0
qugo_queue_dead{analyser=1} 0
qugo_queue_failed_total{analyser=1} 0
qugo_queue_lease_acquisitions_total{analyser=1} 1
qugo_queue_lease_held{analyser=0} 0
qugo_queue_lease_held{analyser=1} 1
qugo_queue_paused{analyser=1} 0
qugo_queue_pending{analyser=1} 0
qugo_queue_processed_total{analyser=1} 0
qugo_queue_ready{analyser=1} 2
qugo_queue_redelivered_total{analyser=1} 0
qugo_queue_scheduled{analyser=1} 0
qugo_queue_workers{analyser=1} 0
`, gather("host-a:1"), "the holder exports its queue, and no other")
	assert.Equal(t, `qugo_queue_lease_held{analyser=0} 0
qugo_queue_lease_held{analyser=1} 0
`, gather("host-b:2"), "a standby exports no queue series, and holds no lease")
}

// qugo_queue_workers is the worker count of the pool holding the lease,
// and 0 once none does.
func TestCollectorWorkers(t *testing.T) {
	q := newTestQueue(t, 1, 1)
	c := NewCollector(q, Options{SkipOldestPending: true})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- q.AnalysePool(ctx, 0, queue.PoolConfig{Workers: 3}, func(context.Context, queue.Task) error { return nil })
	}()
	workers := func() string {
		return `
# HELP qugo_queue_workers Worker goroutines of the pool holding the queue's lease (an elastic pool resizes); 0 when none does.
# TYPE qugo_queue_workers gauge
qugo_queue_workers{analyser="0",partition="0",queue="0"} `
	}
	require.Eventually(t, func() bool {
		return testutil.CollectAndCompare(c, strings.NewReader(workers()+"3\n"), "qugo_queue_workers") == nil
	}, 10*time.Second, 10*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(workers()+"0\n"), "qugo_queue_workers"))
}

// Scheduled tasks, cancels and pauses show per queue.
func TestCollectorScheduledCancelledPaused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := newTestQueue(t, 1, 2) // analysers 0 and 1
	c := NewCollector(q, Options{SkipOldestPending: true})
	var ids []string
	for n := range 3 {
		id, err := q.AddTaskAfter(ctx, orderFor(q, 1, n), time.Hour, []byte("later"))
		require.NoError(t, err)
		ids = append(ids, id)
	}
	for n, id := range ids[:2] {
		where, err := q.Cancel(ctx, orderFor(q, 1, n), id)
		require.NoError(t, err)
		require.Equal(t, queue.StateScheduled, where)
	}
	require.NoError(t, q.Pause(ctx, queue.QueueOf(0)))
	want := `
# HELP qugo_queue_scheduled Tasks waiting for their due time, not yet in the ready list.
# TYPE qugo_queue_scheduled gauge
qugo_queue_scheduled{analyser="0",partition="0",queue="0"} 0
qugo_queue_scheduled{analyser="1",partition="0",queue="1"} 1
# HELP qugo_queue_cancelled_total Tasks cancelled.
# TYPE qugo_queue_cancelled_total counter
qugo_queue_cancelled_total{analyser="0",partition="0",queue="0"} 0
qugo_queue_cancelled_total{analyser="1",partition="0",queue="1"} 2
# HELP qugo_queue_paused 1 while the queue is paused: its pool claims nothing new; else 0.
# TYPE qugo_queue_paused gauge
qugo_queue_paused{analyser="0",partition="0",queue="0"} 1
qugo_queue_paused{analyser="1",partition="0",queue="1"} 0
`
	assert.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(want),
		"qugo_queue_scheduled", "qugo_queue_cancelled_total", "qugo_queue_paused"))

	require.NoError(t, q.Resume(ctx, queue.AllQueues()))
	resumed := `
# HELP qugo_queue_paused 1 while the queue is paused: its pool claims nothing new; else 0.
# TYPE qugo_queue_paused gauge
qugo_queue_paused{analyser="0",partition="0",queue="0"} 0
qugo_queue_paused{analyser="1",partition="0",queue="1"} 0
`
	assert.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(resumed), "qugo_queue_paused"))
	problems, err := testutil.CollectAndLint(c)
	require.NoError(t, err)
	assert.Empty(t, problems)
}

// With one partition down, the scrape keeps the series of the partitions
// that answered, and the groups, beside qugo_up 0: alerts on the queues
// that are read can still fire.
func TestCollectorOnePartitionDown(t *testing.T) {
	t.Parallel()
	q, minis := newTestQueueOn(t, 2, 1)
	_, err := q.AddTask(context.Background(), 0, []byte("x")) // analyser 0, on partition 0
	require.NoError(t, err)
	c := NewCollector(q, Options{Timeout: time.Second, Groups: []string{"g"}, Logger: slog.New(slog.DiscardHandler)})
	minis[1].Close()
	want := `
# HELP qugo_queue_ready Tasks waiting to be claimed (queue depth).
# TYPE qugo_queue_ready gauge
qugo_queue_ready{analyser="0",partition="0",queue="0"} 1
# HELP qugo_up 1 when the last scrape read every Redis partition, else 0.
# TYPE qugo_up gauge
qugo_up 0
`
	assert.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(want), "qugo_up", "qugo_queue_ready"))
	assert.Equal(t, 1, testutil.CollectAndCount(c, "qugo_group_members"), "the group, on partition 0, is read")
}
