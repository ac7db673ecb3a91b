package main

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qugo/queue"
)

// metrics are the analyser's own Prometheus metrics, beside the queue's
// from prom.Collector:
//
//	qugo_analyser_pg_insert_duration_seconds{outcome}  histogram  one multi-row INSERT, ok or error
//	qugo_analyser_pg_batch_rows                        histogram  rows per INSERT
//	qugo_analyser_pg_insert_errors_total               counter    INSERTs that failed
//	qugo_analyser_retries_total{analyser}              counter    failed deliveries that will be retried
//	qugo_analyser_dead_lettered_total{analyser}        counter    tasks moved to the dead-letter store
//	qugo_analyser_queue_errors_total{analyser}         counter    other errors of the pool (Redis, lease);
//	                                                             analyser="any" for a group member's errors of no one analyser
type metrics struct {
	insertTime   *prometheus.HistogramVec
	batchRows    prometheus.Histogram
	insertErrors prometheus.Counter
	retries      *prometheus.CounterVec
	dead         *prometheus.CounterVec
	queueErrors  *prometheus.CounterVec
}

func newMetrics(ids []int) *metrics {
	m := &metrics{
		insertTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "qugo_analyser_pg_insert_duration_seconds", Help: "Time one multi-row INSERT into tasks took, by outcome (ok or error).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"outcome"}),
		batchRows: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "qugo_analyser_pg_batch_rows", Help: "Rows per INSERT into tasks.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 15),
		}),
		insertErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "qugo_analyser_pg_insert_errors_total", Help: "INSERTs into tasks that failed.",
		}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qugo_analyser_retries_total", Help: "Failed deliveries that will be retried.",
		}, []string{"analyser"}),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qugo_analyser_dead_lettered_total", Help: "Tasks moved to the dead-letter store after their last attempt.",
		}, []string{"analyser"}),
		queueErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qugo_analyser_queue_errors_total", Help: "Errors of the queue other than failed deliveries: Redis errors being retried, a lost lease.",
		}, []string{"analyser"}),
	}
	for _, a := range ids { // export zeros, so that rate() sees the first event
		l := label(a)
		m.retries.WithLabelValues(l)
		m.dead.WithLabelValues(l)
		m.queueErrors.WithLabelValues(l)
	}
	return m
}

// collectors returns every metric, to register.
func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.insertTime, m.batchRows, m.insertErrors, m.retries, m.dead, m.queueErrors}
}

// timeInsert wraps an insert of rows with its metrics.
func timeInsert[T any](m *metrics, insert func(context.Context, []T) error) func(context.Context, []T) error {
	return func(ctx context.Context, rows []T) error {
		start := time.Now()
		err := insert(ctx, rows)
		outcome := "ok"
		if err != nil {
			outcome = "error"
			m.insertErrors.Inc()
		}
		m.insertTime.WithLabelValues(outcome).Observe(time.Since(start).Seconds())
		m.batchRows.Observe(float64(len(rows)))
		return err
	}
}

// poolError counts one error of analyser a's pool; it reports whether
// the error is a delivery that will be retried, one that was
// dead-lettered, or neither.
func (m *metrics) poolError(a int, err error) (te *queue.TaskError) {
	switch {
	case errors.As(err, &te) && te.Dead:
		m.dead.WithLabelValues(label(a)).Inc()
	case te != nil:
		m.retries.WithLabelValues(label(a)).Inc()
	default:
		m.queueErrors.WithLabelValues(label(a)).Inc()
	}
	return te
}

func label(a int) string {
	if a == anyAnalyser {
		return "any"
	}
	return strconv.Itoa(a)
}
