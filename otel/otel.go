// Package otel carries OpenTelemetry trace context through the tasks of a
// github.com/qugo/queue queue and records a span per delivery. It is a
// module of its own so that the queue itself depends on redigo only.
//
// A producer puts the trace context of its ctx into the task's headers:
//
//	id, err := q.AddTask(ctx, orderID, payload, otel.AddOption(ctx))
//
// and an analyser wraps its function:
//
//	err := q.AnalysePool(ctx, a, queue.PoolConfig{}, otel.Wrap(fn))
//
// Each delivery then runs under a span of kind consumer, a child of the
// producer's span, so that the trace goes on across the queue; a retry is
// a span of its own with the next attempt. Both sides use OpenTelemetry's
// global propagator and tracer provider unless given others (the global
// propagator propagates nothing until otel.SetTextMapPropagator of
// go.opentelemetry.io/otel is called). This package shares its name with
// OpenTelemetry's: import it under another, such as qotel, where both are
// used.
//
// The headers a propagator writes are a few short strings (W3C's
// traceparent is 55 bytes), well within a task's header limits; a ctx
// with nothing to propagate adds no header, so such a task costs nothing
// more.
package otel

import (
	"context"
	"fmt"
	"strconv"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/qugo/queue"
)

// ScopeName is the instrumentation scope of the spans Wrap records.
const ScopeName = "github.com/qugo/queue/otel"

// SpanName is the name of the span of every delivery: the operation's
// name, as OpenTelemetry's messaging conventions name a span
// ("{messaging.operation.name} {destination}") when the destination is
// not known, as it is not to Wrap. messaging.system says it is qugo's.
const SpanName = "process"

// The attributes of a delivery's span.
const (
	// AttrSystem is messaging.system, "qugo".
	AttrSystem = attribute.Key("messaging.system")
	// AttrOperation is messaging.operation.type, "process".
	AttrOperation = attribute.Key("messaging.operation.type")
	// AttrOperationName is messaging.operation.name, "process", which
	// the conventions require beside the operation's type.
	AttrOperationName = attribute.Key("messaging.operation.name")
	// AttrTaskID is messaging.message.id, the task's ID.
	AttrTaskID = attribute.Key("messaging.message.id")
	// AttrOrderID is the task's OrderID, in decimal (an OrderID may not
	// fit an attribute's int64).
	AttrOrderID = attribute.Key("qugo.order_id")
	// AttrAttempt is the 1-based number of the delivery.
	AttrAttempt = attribute.Key("qugo.attempt")
	// AttrErrorType is error.type, set when a delivery fails: the Go type
	// of the error fn returned (such as "*fmt.wrapError"), or "panic".
	// The conventions require it on a failed operation, low in
	// cardinality, unlike the error's text (in the span's status).
	AttrErrorType = attribute.Key("error.type")
)

// Option sets what Headers, AddOption and Wrap use instead of
// OpenTelemetry's globals.
type Option func(*config)

type config struct {
	provider   trace.TracerProvider
	propagator propagation.TextMapPropagator
}

// WithTracerProvider makes Wrap record its spans with p instead of the
// global tracer provider.
func WithTracerProvider(p trace.TracerProvider) Option {
	return func(c *config) { c.provider = p }
}

// WithPropagator makes Headers and AddOption write, and Wrap read, the
// trace context with p instead of the global propagator.
func WithPropagator(p propagation.TextMapPropagator) Option {
	return func(c *config) { c.propagator = p }
}

func newConfig(opts []Option) config {
	var c config
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	if c.provider == nil {
		c.provider = otel.GetTracerProvider() // forwards to the one set later, if any
	}
	if c.propagator == nil {
		c.propagator = otel.GetTextMapPropagator() // likewise
	}
	return c
}

// Headers returns the trace context of ctx (its span's, and baggage, as
// the propagator writes them) as task headers, or nil when the propagator
// writes nothing for ctx. It is safe for concurrent use.
//
// Tracing never costs a task its AddTask: what the propagator writes
// must fit the queue's limits on a task's headers (64, 8 KiB encoded),
// and baggage may be as large as 8 KiB itself. When it does not fit,
// Headers writes the span's context without the baggage, and when even
// that does not fit (a huge tracestate), no header at all; either way it
// reports the loss to OpenTelemetry's error handler (otel.Handle). The
// caller's own headers for the task count against the same limits.
func Headers(ctx context.Context, opts ...Option) map[string]string {
	c := newConfig(opts)
	h := inject(c.propagator, ctx)
	if !fits(h) {
		h = inject(c.propagator, baggage.ContextWithoutBaggage(ctx))
		if fits(h) {
			otel.Handle(fmt.Errorf("qugo otel: trace context and baggage over a task's header limits: baggage left out"))
		} else {
			otel.Handle(fmt.Errorf("qugo otel: trace context over a task's header limits: left out"))
			h = nil
		}
	}
	if len(h) == 0 {
		return nil
	}
	return h
}

func inject(p propagation.TextMapPropagator, ctx context.Context) propagation.MapCarrier {
	h := propagation.MapCarrier{}
	p.Inject(ctx, h)
	return h
}

// The limits of a task's headers, as the queue package documents them
// (Task.Headers, and "Headers" in its package documentation).
const (
	maxHeaders     = 64
	maxHeaderBytes = 8 << 10
)

// fits reports whether h is within the limits of a task's headers. It
// counts what the queue's encoding stores: the count, and each key and
// value with its length as a uvarint; it bounds each length's uvarint by
// its worst case within the limit (2 bytes), so that it never says yes to
// headers the queue would refuse.
func fits(h map[string]string) bool {
	if len(h) > maxHeaders {
		return false
	}
	n := 1 // the count, under 128
	for k, v := range h {
		n += 2 + len(k) + 2 + len(v)
	}
	return n <= maxHeaderBytes
}

// AddOption returns the option that gives a task Headers(ctx, opts...),
// for queue.Queue.AddTask and AddTaskOnce. Other queue.WithHeaders
// options add up with it. For AddTasks, set each Task's Headers instead.
func AddOption(ctx context.Context, opts ...Option) queue.AddOption {
	return queue.WithHeaders(Headers(ctx, opts...))
}

// Wrap returns fn recording a span for every delivery: it extracts the
// producer's trace context from the task's headers, starts a span named
// SpanName of kind consumer as its child (a root span when the task
// carries none), with the attributes above, and calls fn with the span's
// context, so that fn's own spans nest under it. A delivery that returns
// an error has it recorded on the span, with the span's status set to
// Error and AttrErrorType to its type. When fn panics, the span records the panic the same way and
// ends, and the panic goes on unchanged to the pool, which turns it into
// a *queue.PanicError (its stack still shows where fn panicked).
func Wrap(fn queue.AnalyseFunc, opts ...Option) queue.AnalyseFunc {
	c := newConfig(opts)
	tracer := c.provider.Tracer(ScopeName)
	return func(ctx context.Context, t queue.Task) (err error) {
		if len(t.Headers) > 0 {
			ctx = c.propagator.Extract(ctx, propagation.MapCarrier(t.Headers))
		}
		// The task's ctx carries the values of the pool's, a span of the
		// process's own among them: a delivery whose task brought no trace
		// context starts a trace of its own rather than nest under that
		// span for as long as the pool runs.
		start := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer)}
		if !trace.SpanContextFromContext(ctx).IsRemote() {
			start = append(start, trace.WithNewRoot())
		}
		ctx, span := tracer.Start(ctx, SpanName, append(start,
			trace.WithAttributes(
				AttrSystem.String("qugo"),
				AttrOperation.String("process"),
				AttrOperationName.String("process"),
				AttrTaskID.String(t.ID),
				AttrOrderID.String(strconv.FormatUint(t.OrderID, 10)),
				AttrAttempt.Int(t.Attempt),
			))...)
		defer func() {
			if r := recover(); r != nil {
				perr := fmt.Errorf("panic: %v", r)
				span.RecordError(perr)
				span.SetAttributes(AttrErrorType.String("panic"))
				span.SetStatus(codes.Error, perr.Error())
				span.End()
				panic(r)
			}
			if err != nil {
				span.RecordError(err)
				span.SetAttributes(AttrErrorType.String(fmt.Sprintf("%T", err)))
				span.SetStatus(codes.Error, err.Error())
			}
			span.End()
		}()
		return fn(ctx, t)
	}
}
