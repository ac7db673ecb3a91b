package prom

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qugo/queue"
)

// TestCollectorOnServer exports a queue on the Redis that
// QUEUE_TEST_REDIS_URL names (a server, or a Redis Cluster as
// redis+cluster://...: CI runs it on both): every analyser's ready gauge
// is what Stats reports, whichever primary serves its queue.
func TestCollectorOnServer(t *testing.T) {
	url := os.Getenv("QUEUE_TEST_REDIS_URL")
	if url == "" {
		t.Skip("needs QUEUE_TEST_REDIS_URL")
	}
	ctx := context.Background()
	q, err := queue.Dial(ctx, []string{url}, queue.Config{
		Prefix: fmt.Sprintf("qt:prom:%d", time.Now().UnixNano()), Queues: 6})
	require.NoError(t, err)
	defer q.Close()
	var tasks []queue.Task
	for a := range q.Analysers() {
		for n := range a + 1 { // analyser a holds a+1 tasks
			tasks = append(tasks, queue.Task{OrderID: orderFor(q, a, n), Payload: []byte("x")})
		}
	}
	_, err = q.AddTasks(ctx, tasks)
	require.NoError(t, err)
	defer func() { // leave the shared server as it was
		for a := range q.Analysers() {
			_ = q.AnalysePool(ctx, a, queue.PoolConfig{ExitOnEmpty: true}, func(context.Context, queue.Task) error { return nil })
		}
	}()

	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(NewCollector(q, Options{})))
	families, err := reg.Gather()
	require.NoError(t, err)
	ready := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "qugo_queue_ready" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "analyser" {
					ready[l.GetValue()] = m.GetGauge().GetValue()
				}
			}
		}
	}
	stats, err := q.Stats(ctx)
	require.NoError(t, err)
	require.Len(t, ready, q.Analysers())
	for _, s := range stats {
		assert.EqualValues(t, s.Analyser+1, s.Ready, "analyser %d in Stats", s.Analyser)
		assert.EqualValues(t, s.Ready, ready[strconv.Itoa(s.Analyser)], "analyser %d exported", s.Analyser)
	}
}
