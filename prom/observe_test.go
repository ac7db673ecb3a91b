package prom

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qugo/queue"
)

// newServerOrMiniQueue returns a queue of one partition with qs queues on
// the server QUEUE_TEST_REDIS_URL names (under a key prefix of the
// test's own), or on a miniredis.
func newServerOrMiniQueue(t *testing.T, qs int) *queue.Queue {
	t.Helper()
	url := os.Getenv("QUEUE_TEST_REDIS_URL")
	if url == "" {
		url = "redis://" + miniredis.RunT(t).Addr()
	}
	prefix := fmt.Sprintf("qt:prom:%s:%d", t.Name(), time.Now().UnixNano())
	q, err := queue.Dial(context.Background(), []string{url}, queue.Config{Prefix: prefix, Queues: qs})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	return q
}

// A consumer group member runs one PoolConfig on every queue it is
// given, so its OnDone hook cannot be OnDone(a) of one analyser:
// Observe files each delivery under the analyser that serves its task.
func TestObserveFilesDeliveriesUnderTheirAnalyser(t *testing.T) {
	t.Parallel()
	q := newServerOrMiniQueue(t, 2) // analysers 0 and 1
	c := NewCollector(q, Options{SkipOldestPending: true})
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(c))
	ctx := context.Background()
	var tasks []queue.Task
	for n := range 3 {
		tasks = append(tasks, queue.Task{OrderID: orderFor(q, 0, n), Payload: []byte("ok")})
	}
	tasks = append(tasks, queue.Task{OrderID: orderFor(q, 1, 0), Payload: []byte("fails once")})
	_, err := q.AddTasks(ctx, tasks)
	require.NoError(t, err)

	gctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	cfg := queue.GroupConfig{Member: "m", SessionTTL: testSessionTTL, Pool: queue.PoolConfig{
		Logger: slog.New(slog.DiscardHandler), OnError: func(error) {},
		Backoff: func(int) time.Duration { return time.Millisecond }, OnDone: c.Observe}}
	go func() {
		done <- q.JoinGroup(gctx, "g", cfg, func(_ context.Context, task queue.Task) error {
			if string(task.Payload) == "fails once" && task.Attempt == 1 {
				return errors.New("once")
			}
			return nil
		})
	}()
	defer func() {
		cancel()
		assert.NoError(t, <-done)
	}()

	want := map[[2]string]uint64{{"0", "ok"}: 3, {"1", "ok"}: 1, {"1", "error"}: 1}
	assert.EventuallyWithT(t, func(ct *assert.CollectT) {
		fams, err := reg.Gather()
		require.NoError(ct, err)
		got := map[[2]string]uint64{}
		for _, f := range fams {
			if f.GetName() != "qugo_handler_duration_seconds" {
				continue
			}
			for _, m := range f.Metric {
				got[[2]string{label(m, "analyser"), label(m, "outcome")}] = m.GetHistogram().GetSampleCount()
			}
		}
		assert.Equal(ct, want, got)
	}, 10*time.Second, 10*time.Millisecond)
}
