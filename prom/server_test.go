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
	// Analyser 0 has one task scheduled and one cancelled; analyser 1 is
	// paused.
	var later []string
	for n := range 2 {
		id, err := q.AddTaskAfter(ctx, orderFor(q, 0, n), time.Hour, []byte("later"))
		require.NoError(t, err)
		later = append(later, id)
	}
	_, err = q.Cancel(ctx, orderFor(q, 0, 0), later[0])
	require.NoError(t, err)
	require.NoError(t, q.Pause(ctx, queue.QueueOf(1)))
	defer func() { // leave the shared server as it was
		_, err := q.Cancel(ctx, orderFor(q, 0, 1), later[1])
		assert.NoError(t, err)
		assert.NoError(t, q.Resume(ctx, queue.AllQueues()))
		for a := range q.Analysers() {
			_ = q.AnalysePool(ctx, a, queue.PoolConfig{ExitOnEmpty: true}, func(context.Context, queue.Task) error { return nil })
		}
	}()

	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(NewCollector(q, Options{})))
	families, err := reg.Gather()
	require.NoError(t, err)
	values := map[string]map[string]float64{} // metric -> analyser -> value
	for _, f := range families {
		for _, m := range f.GetMetric() {
			if a := label(m, "analyser"); a != "" {
				if values[f.GetName()] == nil {
					values[f.GetName()] = map[string]float64{}
				}
				values[f.GetName()][a] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
		}
	}
	stats, err := q.Stats(ctx)
	require.NoError(t, err)
	require.Len(t, values["qugo_queue_ready"], q.Analysers())
	for _, s := range stats {
		a := strconv.Itoa(s.Analyser)
		assert.EqualValues(t, s.Analyser+1, s.Ready, "analyser %d in Stats", s.Analyser)
		assert.EqualValues(t, s.Ready, values["qugo_queue_ready"][a], "analyser %d exported", s.Analyser)
		assert.EqualValues(t, s.Scheduled, values["qugo_queue_scheduled"][a], "analyser %d", s.Analyser)
		assert.EqualValues(t, s.Cancelled, values["qugo_queue_cancelled_total"][a], "analyser %d", s.Analyser)
		assert.Equal(t, boolFloat(s.Paused), values["qugo_queue_paused"][a], "analyser %d", s.Analyser)
	}
	assert.Equal(t, [3]int64{1, 1, 0}, [3]int64{stats[0].Scheduled, stats[0].Cancelled, stats[1].Scheduled})
	assert.Equal(t, [2]bool{false, true}, [2]bool{stats[0].Paused, stats[1].Paused})
}
