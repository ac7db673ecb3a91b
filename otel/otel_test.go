package otel

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/qugo/queue"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var prefixSeq atomic.Int64

// newQueue returns a one-queue queue on the server QUEUE_TEST_REDIS_URL
// names (under a key prefix of the test's own), or on a miniredis.
func newQueue(t *testing.T) *queue.Queue {
	t.Helper()
	url := os.Getenv("QUEUE_TEST_REDIS_URL")
	if url == "" {
		url = "redis://" + miniredis.RunT(t).Addr()
	}
	prefix := fmt.Sprintf("qt:otel:%s:%d:%d", t.Name(), time.Now().UnixNano(), prefixSeq.Add(1))
	q, err := queue.Dial(context.Background(), []string{url}, queue.Config{Prefix: prefix, Queues: 1})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	return q
}

// tracing returns a tracer provider whose spans the recorder keeps.
func tracing() (*sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	rec := tracetest.NewSpanRecorder()
	return sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)), rec
}

// deliveries returns the ended delivery spans, in the order they ended.
func deliveries(rec *tracetest.SpanRecorder) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == SpanName {
			out = append(out, s)
		}
	}
	return out
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

// drain runs analyser 0 until its queue is empty.
func drain(t *testing.T, q *queue.Queue, cfg queue.PoolConfig, fn queue.AnalyseFunc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg.ExitOnEmpty = true
	if cfg.Backoff == nil {
		cfg.Backoff = func(int) time.Duration { return time.Millisecond }
	}
	require.NoError(t, q.AnalysePool(ctx, 0, cfg, fn))
}

var traceContext = propagation.TraceContext{}

// A producer's span goes on in the delivery's, through Redis, and the
// analyse function's own spans nest under the delivery's.
func TestTraceGoesOnThroughTheQueue(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	tp, rec := tracing()
	ctx, producer := tp.Tracer("producer").Start(context.Background(), "produce")
	withTrace, err := q.AddTask(ctx, 7, []byte("traced"), AddOption(ctx, WithPropagator(traceContext)))
	require.NoError(t, err)
	ids, err := q.AddTasks(ctx, []queue.Task{{OrderID: 8, Payload: []byte("batch"), Headers: Headers(ctx, WithPropagator(traceContext))}})
	require.NoError(t, err)
	producer.End()
	plain, err := q.AddTask(context.Background(), 9, []byte("no trace"), AddOption(context.Background(), WithPropagator(traceContext)))
	require.NoError(t, err)

	var mu sync.Mutex
	inner := map[string]trace.SpanContext{} // task ID: the delivery span fn saw
	drain(t, q, queue.PoolConfig{}, Wrap(func(ctx context.Context, task queue.Task) error {
		_, span := tp.Tracer("analyser").Start(ctx, "write row", trace.WithAttributes(AttrTaskID.String(task.ID)))
		defer span.End()
		mu.Lock()
		defer mu.Unlock()
		inner[task.ID] = trace.SpanContextFromContext(ctx)
		return nil
	}, WithTracerProvider(tp), WithPropagator(traceContext)))

	spans := deliveries(rec)
	require.Len(t, spans, 3)
	byID := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		byID[attrs(s)[AttrTaskID].AsString()] = s
	}
	for _, id := range []string{withTrace, ids[0]} {
		s := byID[id]
		require.NotNil(t, s, "task %s", id)
		assert.Equal(t, producer.SpanContext().TraceID(), s.SpanContext().TraceID(), "the producer's trace")
		assert.Equal(t, producer.SpanContext().SpanID(), s.Parent().SpanID(), "a child of the producer's span")
		assert.True(t, s.Parent().IsRemote())
		assert.Equal(t, inner[id], s.SpanContext(), "fn runs in the delivery's span")
	}
	s := byID[plain]
	require.NotNil(t, s)
	assert.False(t, s.Parent().IsValid(), "a task without trace context starts a trace")
	assert.NotEqual(t, producer.SpanContext().TraceID(), s.SpanContext().TraceID())

	a := attrs(byID[withTrace])
	assert.Equal(t, trace.SpanKindConsumer, byID[withTrace].SpanKind())
	assert.Equal(t, "qugo", a[AttrSystem].AsString())
	assert.Equal(t, "process", a[AttrOperation].AsString())
	assert.Equal(t, "7", a[AttrOrderID].AsString())
	assert.Equal(t, int64(1), a[AttrAttempt].AsInt64())
	assert.Equal(t, codes.Unset, byID[withTrace].Status().Code)
	assert.Equal(t, ScopeName, byID[withTrace].InstrumentationScope().Name)
	nested := 0
	for _, in := range rec.Ended() {
		if in.Name() == "write row" {
			assert.Equal(t, byID[attrs(in)[AttrTaskID].AsString()].SpanContext().SpanID(), in.Parent().SpanID(), "nested")
			nested++
		}
	}
	assert.Equal(t, 3, nested)
}

// A failed delivery records its error; the retry is a second span, with
// attempt 2, in the same trace.
func TestFailedDeliveryRecordsError(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	tp, rec := tracing()
	ctx, producer := tp.Tracer("producer").Start(context.Background(), "produce")
	id, err := q.AddTask(ctx, 1, []byte("x"), AddOption(ctx, WithPropagator(traceContext)))
	require.NoError(t, err)
	producer.End()
	drain(t, q, queue.PoolConfig{}, Wrap(func(_ context.Context, task queue.Task) error {
		if task.Attempt == 1 {
			return errors.New("database is down")
		}
		return nil
	}, WithTracerProvider(tp), WithPropagator(traceContext)))

	spans := deliveries(rec)
	require.Len(t, spans, 2)
	for i, s := range spans {
		a := attrs(s)
		assert.Equal(t, id, a[AttrTaskID].AsString())
		assert.Equal(t, int64(i+1), a[AttrAttempt].AsInt64())
		assert.Equal(t, producer.SpanContext().TraceID(), s.SpanContext().TraceID())
	}
	assert.Equal(t, codes.Error, spans[0].Status().Code)
	assert.Equal(t, "database is down", spans[0].Status().Description)
	require.Len(t, spans[0].Events(), 1)
	assert.Equal(t, "exception", spans[0].Events()[0].Name)
	assert.Contains(t, spans[0].Events()[0].Attributes, attribute.String("exception.message", "database is down"))
	assert.Equal(t, codes.Unset, spans[1].Status().Code)
	assert.Empty(t, spans[1].Events())
}

// panicky panics, so that a stack can be checked for it.
func panicky() { panic("bad task") }

// A panic is recorded on the span, which ends, and goes on to the pool
// unchanged: its PanicError still shows where fn panicked.
func TestPanicRecordedAndPassedOn(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	tp, rec := tracing()
	_, err := q.AddTask(context.Background(), 1, []byte("x"))
	require.NoError(t, err)
	var mu sync.Mutex
	var reported []error
	cfg := queue.PoolConfig{OnError: func(err error) {
		mu.Lock()
		defer mu.Unlock()
		reported = append(reported, err)
	}}
	drain(t, q, cfg, Wrap(func(_ context.Context, task queue.Task) error {
		if task.Attempt == 1 {
			panicky()
		}
		return nil
	}, WithTracerProvider(tp)))

	spans := deliveries(rec)
	require.Len(t, spans, 2)
	assert.Equal(t, codes.Error, spans[0].Status().Code)
	assert.Equal(t, "panic: bad task", spans[0].Status().Description)
	assert.Equal(t, codes.Unset, spans[1].Status().Code)
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, reported, 1)
	var pe *queue.PanicError
	require.ErrorAs(t, reported[0], &pe)
	assert.Equal(t, "bad task", pe.Value)
	assert.Contains(t, string(pe.Stack), "otel.panicky", "the stack of the panic itself")
}

func TestHeaders(t *testing.T) {
	t.Parallel()
	assert.Nil(t, Headers(context.Background(), WithPropagator(traceContext)), "nothing to propagate: no headers")
	tp, _ := tracing()
	ctx, span := tp.Tracer("t").Start(context.Background(), "s")
	defer span.End()
	h := Headers(ctx, WithPropagator(traceContext))
	sc := span.SpanContext()
	assert.Equal(t, map[string]string{"traceparent": fmt.Sprintf("00-%s-%s-01", sc.TraceID(), sc.SpanID())}, h)
	both := propagation.NewCompositeTextMapPropagator(traceContext, propagation.Baggage{})
	assert.Equal(t, h, Headers(ctx, WithPropagator(both)), "no baggage, no baggage header")
}

// Without options, OpenTelemetry's global propagator and tracer provider
// serve. (Not parallel: it sets them.)
func TestGlobals(t *testing.T) {
	q := newQueue(t)
	tp, rec := tracing()
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(traceContext)
	ctx, producer := tp.Tracer("producer").Start(context.Background(), "produce")
	_, err := q.AddTask(ctx, 1, []byte("x"), AddOption(ctx))
	require.NoError(t, err)
	producer.End()
	drain(t, q, queue.PoolConfig{}, Wrap(func(context.Context, queue.Task) error { return nil }))
	spans := deliveries(rec)
	require.Len(t, spans, 1)
	assert.Equal(t, producer.SpanContext().SpanID(), spans[0].Parent().SpanID())
}

// The span follows OpenTelemetry's messaging conventions (semconv 1.26
// and later, whose messaging.operation.type it sets): the operation's
// name is a required attribute and, with no destination known to Wrap,
// the whole span name; a failed delivery says its error's type in
// error.type (the Go type, or "panic").
func TestSpanFollowsMessagingConventions(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	tp, rec := tracing()
	_, err := q.AddTask(context.Background(), 1, []byte("x"))
	require.NoError(t, err)
	drain(t, q, queue.PoolConfig{OnError: func(error) {}}, Wrap(func(_ context.Context, task queue.Task) error {
		switch task.Attempt {
		case 1:
			return fmt.Errorf("insert: %w", context.DeadlineExceeded)
		case 2:
			panicky()
		}
		return nil
	}, WithTracerProvider(tp)))

	spans := deliveries(rec)
	require.Len(t, spans, 3)
	for _, s := range spans {
		assert.Equal(t, "process", s.Name(), "{messaging.operation.name}, no destination")
		assert.Equal(t, "process", attrs(s)["messaging.operation.name"].AsString())
	}
	assert.Equal(t, "*fmt.wrapError", attrs(spans[0])["error.type"].AsString())
	assert.Equal(t, "panic", attrs(spans[1])["error.type"].AsString())
	_, set := attrs(spans[2])["error.type"]
	assert.False(t, set, "no error.type on success")
}

// Baggage as large as OpenTelemetry allows (8,192 bytes) does not fit a
// task's headers (8 KiB encoded in all) beside the trace context: the
// task goes all the same, with its trace context and without the
// baggage, rather than its AddTask failing for the sake of tracing.
func TestLargeBaggageDoesNotFailTheTask(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	tp, rec := tracing()
	var members []baggage.Member
	for _, k := range []string{"a", "b"} {
		m, err := baggage.NewMember(k, strings.Repeat("x", 4090))
		require.NoError(t, err)
		members = append(members, m)
	}
	b, err := baggage.New(members...)
	require.NoError(t, err)
	require.Len(t, b.String(), 8185, "within OpenTelemetry's limit")
	ctx, producer := tp.Tracer("producer").Start(baggage.ContextWithBaggage(context.Background(), b), "produce")
	both := WithPropagator(propagation.NewCompositeTextMapPropagator(traceContext, propagation.Baggage{}))
	_, err = q.AddTask(ctx, 1, []byte("x"), AddOption(ctx, both))
	require.NoError(t, err)
	tasks := []queue.Task{{OrderID: 2, Payload: []byte("y"), Headers: Headers(ctx, both)}}
	_, err = q.AddTasks(ctx, tasks)
	require.NoError(t, err)
	producer.End()
	assert.Equal(t, []string{"traceparent"}, slices.Collect(maps.Keys(tasks[0].Headers)))

	drain(t, q, queue.PoolConfig{}, Wrap(func(context.Context, queue.Task) error { return nil }, WithTracerProvider(tp), both))
	spans := deliveries(rec)
	require.Len(t, spans, 2)
	for _, s := range spans {
		assert.Equal(t, producer.SpanContext().SpanID(), s.Parent().SpanID(), "the trace goes on")
	}
}

// hugePropagator writes a trace context too large for a task's headers.
type hugePropagator struct{ propagation.TraceContext }

func (hugePropagator) Inject(_ context.Context, c propagation.TextMapCarrier) {
	c.Set("tracestate", strings.Repeat("x", 8<<10))
}

// A trace context that does not fit even without baggage is left out:
// no headers, and the task is added.
func TestHugeTraceContextLeftOut(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	huge := WithPropagator(hugePropagator{})
	assert.Nil(t, Headers(context.Background(), huge))
	_, err := q.AddTask(context.Background(), 1, []byte("x"), AddOption(context.Background(), huge))
	assert.NoError(t, err)
}

// A task without trace context, or with a traceparent that does not
// parse, starts a trace of its own and runs, even when the pool's ctx
// carries a span (the process's own): that span must not become the
// parent of every such delivery for as long as the pool runs.
func TestNoOrBadTraceContextStartsATrace(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	tp, rec := tracing()
	_, err := q.AddTask(context.Background(), 1, []byte("none"))
	require.NoError(t, err)
	_, err = q.AddTask(context.Background(), 2, []byte("bad"),
		queue.WithHeaders(map[string]string{"traceparent": "00-not-a-trace-01"}))
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ctx, process := tp.Tracer("main").Start(ctx, "analyser process")
	var ran atomic.Int64
	require.NoError(t, q.AnalysePool(ctx, 0, queue.PoolConfig{ExitOnEmpty: true}, Wrap(func(context.Context, queue.Task) error {
		ran.Add(1)
		return nil
	}, WithTracerProvider(tp), WithPropagator(traceContext))))
	process.End()

	assert.Equal(t, int64(2), ran.Load())
	spans := deliveries(rec)
	require.Len(t, spans, 2)
	for _, s := range spans {
		assert.False(t, s.Parent().IsValid(), "%s: a root span", attrs(s)[AttrOrderID].AsString())
		assert.NotEqual(t, process.SpanContext().TraceID(), s.SpanContext().TraceID())
	}
}

// The producer's trace goes on in every later life of the task: after an
// owner that claimed it went away (the next owner recovers it), and
// after it died and was replayed from the dead-letter store.
func TestTraceSurvivesRecoveryAndReplay(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	tp, rec := tracing()
	ctx, producer := tp.Tracer("producer").Start(context.Background(), "produce")
	id, err := q.AddTask(ctx, 1, []byte("x"), AddOption(ctx, WithPropagator(traceContext)))
	require.NoError(t, err)
	producer.End()

	// An owner claims the task and goes away without finishing it.
	bg := context.Background()
	first, err := q.Consume(bg, 0, queue.ConsumerConfig{})
	require.NoError(t, err)
	claimed, err := first.Claim(bg, 1)
	require.NoError(t, err)
	require.Len(t, claimed, 1)
	require.NoError(t, first.Release(bg))

	// The next owner recovers it; it dies, and is replayed.
	var parents []trace.SpanContext
	fn := Wrap(func(ctx context.Context, task queue.Task) error {
		parents = append(parents, trace.SpanContextFromContext(ctx)) // one worker: no race
		return errors.New("dies")
	}, WithTracerProvider(tp), WithPropagator(traceContext))
	drain(t, q, queue.PoolConfig{Workers: 1, MaxAttempts: 1, OnError: func(error) {}}, fn)
	n, err := q.Replay(bg, 0, id)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	drain(t, q, queue.PoolConfig{Workers: 1, MaxAttempts: 1, OnError: func(error) {}}, fn)

	require.Len(t, parents, 2)
	spans := deliveries(rec)
	require.Len(t, spans, 2)
	for i, s := range spans {
		assert.Equal(t, id, attrs(s)[AttrTaskID].AsString())
		assert.Equal(t, producer.SpanContext().SpanID(), s.Parent().SpanID(), "delivery %d: a child of the producer's span", i+1)
		assert.Equal(t, s.SpanContext(), parents[i], "delivery %d: fn runs in it", i+1)
	}
}
