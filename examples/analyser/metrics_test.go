package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qugo/queue"
)

// value returns the value of the sample of name whose labels include
// labels (name=value pairs), and whether there is one; a histogram gives
// its sample count.
func value(t *testing.T, m *metrics, name string, labels ...string) (float64, bool) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(collectorsOf(m)))
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, s := range f.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, l := range s.GetLabel() {
					found = found || l.GetName() == labels[i] && l.GetValue() == labels[i+1]
				}
				if !found {
					continue next
				}
			}
			if h := s.GetHistogram(); h != nil {
				return float64(h.GetSampleCount()), true
			}
			return s.GetCounter().GetValue() + s.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

// collectorsOf joins m's collectors into one.
type joined []prometheus.Collector

func collectorsOf(m *metrics) joined { return joined(m.collectors()) }

func (j joined) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range j {
		c.Describe(ch)
	}
}

func (j joined) Collect(ch chan<- prometheus.Metric) {
	for _, c := range j {
		c.Collect(ch)
	}
}

func TestInsertMetrics(t *testing.T) {
	t.Parallel()
	m := newMetrics([]int{0})
	fail := false
	insert := timeInsert(m, func(_ context.Context, rows []int) error {
		if fail {
			return errors.New("connection reset")
		}
		return nil
	})
	require.NoError(t, insert(context.Background(), []int{1, 2, 3}))
	require.NoError(t, insert(context.Background(), []int{1}))
	fail = true
	require.Error(t, insert(context.Background(), []int{1, 2}))

	v, ok := value(t, m, "qugo_analyser_pg_insert_duration_seconds", "outcome", "ok")
	assert.True(t, ok)
	assert.Equal(t, 2.0, v)
	v, _ = value(t, m, "qugo_analyser_pg_insert_duration_seconds", "outcome", "error")
	assert.Equal(t, 1.0, v)
	v, _ = value(t, m, "qugo_analyser_pg_batch_rows")
	assert.Equal(t, 3.0, v, "one observation per insert")
	v, _ = value(t, m, "qugo_analyser_pg_insert_errors_total")
	assert.Equal(t, 1.0, v)

	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(collectorsOf(m)))
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() == "qugo_analyser_pg_batch_rows" {
			assert.Equal(t, 6.0, f.GetMetric()[0].GetHistogram().GetSampleSum(), "rows: 3 + 1 + 2")
		}
	}
}

func TestPoolErrorMetricsAndLogs(t *testing.T) {
	t.Parallel()
	m := newMetrics([]int{0, 1})
	for _, name := range []string{"qugo_analyser_retries_total", "qugo_analyser_dead_lettered_total", "qugo_analyser_queue_errors_total"} {
		v, ok := value(t, m, name, "analyser", "1")
		assert.True(t, ok, "%s is exported at zero before the first event", name)
		assert.Zero(t, v)
	}
	logs := &captured{}
	onError := poolErrors(1, slog.New(logs), newDeadMirror(nil, nil, quiet, []int{1}, time.Hour), m)
	onError(&queue.TaskError{ID: "t1", OrderID: 5, Attempt: 1, Err: errors.New("busy")})
	onError(&queue.TaskError{ID: "t1", OrderID: 5, Attempt: 2, Err: errors.New("busy")})
	onError(&queue.TaskError{ID: "t1", OrderID: 5, Attempt: 3, Err: errors.New("busy"), Dead: true})
	// A Redis error that keeps coming is logged once, then when it changes;
	// each one is counted.
	for range 5 {
		onError(errors.New("queue: claim partition 0 queue 0: connection refused"))
	}
	onError(errors.New("queue: ack on partition 0 queue 0: connection refused"))

	for name, want := range map[string]float64{
		"qugo_analyser_retries_total": 2, "qugo_analyser_dead_lettered_total": 1, "qugo_analyser_queue_errors_total": 6,
	} {
		v, _ := value(t, m, name, "analyser", "1")
		assert.Equal(t, want, v, name)
	}
	assert.Equal(t, []string{
		"WARN task failed, will retry", "WARN task failed, will retry", "ERROR task dead-lettered", "ERROR queue error", "ERROR queue error",
	}, logs.lines())
}

// captured is a slog.Handler that keeps "LEVEL message" of each record,
// and the records' attributes.
type captured struct {
	mu    sync.Mutex
	recs  []string
	attrs []map[string]string
}

func (c *captured) Enabled(context.Context, slog.Level) bool { return true }
func (c *captured) WithAttrs([]slog.Attr) slog.Handler       { return c }
func (c *captured) WithGroup(string) slog.Handler            { return c }

func (c *captured) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recs = append(c.recs, r.Level.String()+" "+r.Message)
	attrs := map[string]string{}
	r.Attrs(func(a slog.Attr) bool {
		attrs[a.Key] = a.Value.String()
		return true
	})
	c.attrs = append(c.attrs, attrs)
	return nil
}

// String returns every record kept, a line each, with its attributes.
func (c *captured) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	for i, r := range c.recs {
		fmt.Fprintf(&b, "%s %v\n", r, c.attrs[i])
	}
	return b.String()
}

func (c *captured) lines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.recs...)
}

// A standby processes nothing and logs nothing; an analyser that works
// logs its counts once per change.
func TestLogCountsOnlyWhenTheyGrow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, _ := newTestQueue(t, 1, 1)
	cfg := config{IDs: idList{0, 1}}
	standby, worker := &queue.Counters{}, &queue.Counters{}
	logs := &captured{}
	log := slog.New(logs)
	logged := make([]int64, 2)
	logCounts(cfg, log, []*queue.Counters{standby, worker}, logged)
	assert.Empty(t, logs.lines(), "nothing processed: nothing to say")

	_, err := q.AddTasks(ctx, []queue.Task{{OrderID: 1, Payload: []byte("a")}, {OrderID: 2, Payload: []byte("b")}})
	require.NoError(t, err)
	require.NoError(t, q.AnalysePool(ctx, 0, queue.PoolConfig{Workers: 2, ExitOnEmpty: true, Counters: worker, Logger: quiet},
		func(context.Context, queue.Task) error { return nil }))
	logCounts(cfg, log, []*queue.Counters{standby, worker}, logged)
	logCounts(cfg, log, []*queue.Counters{standby, worker}, logged)
	require.Equal(t, []string{"INFO processed"}, logs.lines(), "once, for the analyser that worked")
	assert.Equal(t, "1", logs.attrs[0]["analyser"])
	assert.Equal(t, "2", logs.attrs[0]["total"])
}
