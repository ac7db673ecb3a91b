package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Small helpers for running commands on a partition's connections.

// onPartition runs f with a connection to p.
func onPartition[T any](ctx context.Context, p *partition, what string, f func(redis.Conn) (T, error)) (T, error) {
	var zero T
	conn, err := getConn(ctx, p.pool)
	if err != nil {
		return zero, redisErr(what, err)
	}
	defer conn.Close()
	v, err := f(conn)
	return v, redisErr(what, err)
}

// getConn is pool.GetContext for a call that may write: a pool hands out
// an idle connection whatever ctx says, and redis.DoContext sends a
// command even when ctx was cancelled before it, so a call whose ctx has
// ended gets ctx's error here and sends nothing.
func getConn(ctx context.Context, pool *redis.Pool) (redis.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c, err := pool.GetContext(ctx)
	return c, ctxCause(ctx, err)
}

// doContext is redis.DoContext, which runs every command on a goroutine of
// its own so that it can watch ctx, without that goroutine when ctx can
// never end (context.Background, context.WithoutCancel): then plain Do,
// with the connection's read timeout, is the same thing.
func doContext(c redis.Conn, ctx context.Context, cmd string, args ...any) (any, error) {
	if ctx.Done() == nil {
		return c.Do(cmd, args...)
	}
	v, err := redis.DoContext(c, ctx, cmd, args...)
	return v, ctxCause(ctx, err)
}

// receiveContext is redis.ReceiveContext as doContext is redis.DoContext.
func receiveContext(c redis.Conn, ctx context.Context) (any, error) {
	if ctx.Done() == nil {
		return c.Receive()
	}
	v, err := redis.ReceiveContext(c, ctx)
	return v, ctxCause(ctx, err)
}

// replyErr is the first error of a pipeline's replies. Once the
// connection fails, or ctx ends, every reply after that fails the same
// way: one error tells it, where joining them would repeat it.
func replyErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// runScript is sc.DoContext, its error ctx's own when ctx ended the call
// (see ctxCause).
func runScript(ctx context.Context, sc *redis.Script, c redis.Conn, keysAndArgs ...any) (any, error) {
	v, err := sc.DoContext(ctx, c, keysAndArgs...)
	return v, ctxCause(ctx, err)
}

// ctxCause returns err, the error of a call made on ctx, as one that is
// ctx's own error too when ctx ended the call. redigo reads a reply with
// ctx's deadline as the connection's, so a call that runs out of its time
// most often fails with the network's "i/o timeout", and ctx itself may
// not say it has ended yet: a caller that asks errors.Is(err,
// context.DeadlineExceeded) must still hear yes. A timeout of the
// connection's own read timeout, sooner than ctx's deadline, stays as it
// is.
func ctxCause(ctx context.Context, err error) error {
	if err == nil || !isTimeout(err) {
		return err
	}
	cause := ctx.Err()
	if cause == nil {
		dl, ok := ctx.Deadline()
		if !ok || time.Now().Before(dl) {
			return err
		}
		cause = context.DeadlineExceeded
	}
	if errors.Is(err, cause) && strings.Contains(err.Error(), cause.Error()) {
		return err // says it already
	}
	// The net package's timeout of a dial cut short by ctx is
	// context.DeadlineExceeded to errors.Is, but says only "i/o timeout".
	return fmt.Errorf("%w: %w", cause, err)
}

// blockSeconds renders d as the timeout of a blocking command, at least 1ms.
func blockSeconds(d time.Duration) string {
	return strconv.FormatFloat(max(d.Seconds(), 0.001), 'f', 3, 64)
}

// replyGrace is how long after its block time a blocking command's reply
// may come: one that has not come by then (a connection gone half-open,
// a server that stopped answering) is not coming in time.
const replyGrace = time.Second

// blockCtx returns the ctx of a blocking command of block time d, with
// grace for its reply: it ends then, whatever the connection's read
// timeout, which may be longer, or none (a redigo pool's default), so a
// wait whose reply is lost ends as its timeout would. blockOver reports
// whether err ended such a wait so, with ctx itself alive: the command's
// own timeout, or wctx's.
func blockCtx(ctx context.Context, d, grace time.Duration) (wctx context.Context, cancel context.CancelFunc) {
	return context.WithTimeout(ctx, d+grace)
}

func blockOver(ctx, wctx context.Context, err error) bool {
	return ctx.Err() == nil && (isTimeout(err) || wctx.Err() != nil)
}

// isTimeout reports whether err is a network timeout (a blocking command
// that waited its time out on a connection with a read timeout).
func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}
