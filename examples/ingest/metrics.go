package main

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the ingest's Prometheus metrics:
//
//	qugo_ingest_requests_total{route,code}                 counter
//	qugo_ingest_request_duration_seconds{route,code}       histogram
//	qugo_ingest_enqueue_errors_total{reason}               counter: unavailable, too_large, bad_request, layout
//	qugo_ingest_issued_record_errors_total                 counter: ids enqueued but not recorded for GET
//
// route is the matched pattern ("POST /v1/tasks", "GET /v1/tasks/{id}",
// ...) or "other", so unknown paths do not make new series.
type metrics struct {
	reg           *prometheus.Registry
	requests      *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	enqueueErrors *prometheus.CounterVec
	recordErrors  prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qugo_ingest_requests_total", Help: "HTTP requests answered, by route and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "qugo_ingest_request_duration_seconds", Help: "Time to answer an HTTP request, by route and status code.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"route", "code"}),
		enqueueErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qugo_ingest_enqueue_errors_total", Help: "Enqueue calls that failed, by reason: unavailable, too_large, bad_request, layout.",
		}, []string{"reason"}),
		recordErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "qugo_ingest_issued_record_errors_total", Help: "Enqueued tasks whose ids could not be recorded, so GET answers 404 for them until they are done.",
		}),
	}
	for _, r := range []string{"unavailable", "too_large", "bad_request", "layout"} {
		m.enqueueErrors.WithLabelValues(r) // export zeros, so rate() sees the first error
	}
	m.reg.MustRegister(m.requests, m.latency, m.enqueueErrors, m.recordErrors,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// handler serves /metrics.
func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// instrument counts and times every request next serves. It reads the
// pattern that the ServeMux next matched from the request after the fact.
func (m *metrics) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(sw, r)
		route := r.Pattern
		if route == "" || route == "/" {
			route = "other"
		}
		code := strconv.Itoa(sw.code)
		m.requests.WithLabelValues(route, code).Inc()
		m.latency.WithLabelValues(route, code).Observe(time.Since(start).Seconds())
	})
}

// statusWriter remembers the status code written.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
