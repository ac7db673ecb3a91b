package queue

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// poolLog tells the story of one AnalysePool in its Logger, each event
// once: waiting as a standby (and for whom), taking the lease (after how
// long, with how many tasks recovered), losing Redis and getting it back,
// stopping and stopped. Every background error still goes to OnError when
// the caller set one; without one, errors are logged, except that an
// outage is told once when it begins and once when it ends rather than by
// every goroutine at every retry.
type poolLog struct {
	log      *slog.Logger
	onError  func(error) // the caller's OnError, or nil
	analyser int

	down      atomic.Bool // Redis did not answer the last call
	mu        sync.Mutex
	downSince time.Time
}

func newPoolLog(log *slog.Logger, onError func(error), analyser int) *poolLog {
	return &poolLog{log: log, onError: onError, analyser: analyser}
}

// error takes one background error.
func (l *poolLog) error(err error) {
	conn := isConnErr(err)
	if conn {
		l.lost(err)
	}
	if l.onError != nil {
		callHook(func() { l.onError(err) })
		return
	}
	if conn || errors.Is(err, ErrLeaseLost) && l.down.Load() {
		return // told by lost, and by back once it answers
	}
	logError(l.log, err, "analyser", l.analyser)
}

// logError logs a background error when OnError is not set, after args: a
// failed delivery as "queue: task failed", at Warn when it will be
// retried (the queue does what it is for), with the stack of a panic in
// the analyse function; the rest as "queue: pool error", at Error.
func logError(log *slog.Logger, err error, args ...any) {
	msg, level := "queue: pool error", slog.LevelError
	if te, ok := errors.AsType[*TaskError](err); ok {
		msg = "queue: task failed"
		if !te.Dead {
			level = slog.LevelWarn
		}
	}
	args = append(args, "err", err)
	if pe, ok := errors.AsType[*PanicError](err); ok && len(pe.Stack) > 0 {
		args = append(args, "stack", string(pe.Stack))
	}
	log.Log(context.Background(), level, msg, args...)
}

// lost records that Redis did not answer, and says so when it is news.
func (l *poolLog) lost(err error) {
	if l.down.Load() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.downSince.IsZero() {
		l.downSince = time.Now()
		l.down.Store(true)
		l.log.Warn("queue: lost redis; retrying with backoff", "analyser", l.analyser, "err", err)
	}
}

// ok records that Redis answered a call sent at sent, and says so after an
// outage. An answer to a call sent before the outage began says nothing
// (it may have been written just before). It costs an atomic load when
// nothing was wrong.
func (l *poolLog) ok(sent time.Time) {
	if !l.down.Load() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.downSince.IsZero() && !sent.Before(l.downSince) {
		l.log.Info("queue: redis is back", "analyser", l.analyser, "after", time.Since(l.downSince).Round(time.Millisecond))
		l.downSince = time.Time{}
		l.down.Store(false)
	}
}

// isConnErr reports whether err says that Redis could not be reached or
// did not answer, rather than that it refused a call. A failed delivery
// (*TaskError) never does: its error is the analyse function's, whose
// timeout or network error (its database down) says nothing of Redis.
func isConnErr(err error) bool {
	var te *TaskError
	if errors.As(err, &te) {
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE)
}
