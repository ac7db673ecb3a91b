package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/gomodule/redigo/redis"
)

// The waiter's connections: made, served and read here (see waiter.go).

// link is a waiter's pair of connections.
type link struct {
	sub, track redis.Conn
	stop       func() bool // the ctx watch that closes them
	broken     chan error  // 1-buffered: a write failed
	wmu        sync.Mutex  // held to write on track, so that reads go in the order of inflight
	inflight   []*watch    // reads sent on track, in order; nil for a PING (under waiter.mu)
	pings      int         // PINGs not answered (under waiter.mu)
}

func (l *link) close() {
	l.stop()
	l.sub.Close()
	l.track.Close()
}

// send sends the reads of ws in one write.
func (l *link) send(w *waiter, ws []*watch) {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	w.mu.Lock()
	l.inflight = append(l.inflight, ws...) // before the write, so that readReplies finds them
	now := time.Now()
	for _, wt := range ws {
		wt.sent, wt.answered = now, false
	}
	w.mu.Unlock()
	var err error
	for _, wt := range ws {
		if err = l.track.Send(wt.cmd, wt.key); err != nil {
			break
		}
	}
	if err == nil {
		err = l.track.Flush()
	}
	if err != nil {
		select {
		case l.broken <- err:
		default:
		}
	}
}

// connect dials the two connections and turns tracking on. It returns
// errNoTracking when the server refuses (or drops the connection at) a
// command that tracking needs.
func (w *waiter) connect(ctx context.Context) (*link, error) {
	sub, err := w.dial(ctx)
	if err != nil {
		return nil, err
	}
	track, err := w.dial(ctx)
	if err != nil {
		sub.Close()
		return nil, err
	}
	l := &link{sub: sub, track: track, broken: make(chan error, 1)}
	l.stop = context.AfterFunc(ctx, func() { sub.Close(); track.Close() })
	if err := l.setup(); err != nil {
		l.close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: %w", errNoTracking, err)
	}
	return l, nil
}

// dial makes a connection of the partition's pool that is not the pool's:
// it holds connection state (a subscription, tracking) for its whole life.
func (w *waiter) dial(ctx context.Context) (redis.Conn, error) {
	if w.part.router != nil { // a routed connection holds no server's state
		return nil, errNoTracking
	}
	p := w.part.pool
	var c redis.Conn
	var err error
	switch {
	case p.DialContext != nil:
		c, err = p.DialContext(ctx)
	case p.Dial != nil:
		c, err = p.Dial()
	default:
		return nil, errNoTracking
	}
	if err != nil {
		return nil, err
	}
	if wc, ok := c.(*waitConn); ok {
		// Under WaitReplicas: the link only reads, and it sends on one
		// goroutine while it receives on another, which a waitConn does
		// not allow. Its server connection carries no write to wait for.
		c = wc.Conn
	}
	if _, ok := c.(redis.ConnWithTimeout); !ok { // it must wait for replies without a deadline
		c.Close()
		return nil, errNoTracking
	}
	return c, nil
}

func (l *link) setup() error {
	for _, c := range []redis.Conn{l.sub, l.track} {
		if _, err := c.Do("CLIENT", "SETNAME", waiterName); err != nil && !isRedisError(err) {
			return err // a name is only for CLIENT LIST: a refusal does not matter
		}
	}
	id, err := redis.Int64(l.sub.Do("CLIENT", "ID"))
	if err != nil {
		return err
	}
	if err := l.sub.Send("SUBSCRIBE", invalidateChannel); err != nil {
		return err
	}
	if err := l.sub.Flush(); err != nil {
		return err
	}
	r, err := redis.Values(l.sub.Receive())
	if err != nil {
		return err
	}
	if kind, _ := redis.String(r[0], nil); len(r) != 3 || kind != "subscribe" {
		return fmt.Errorf("unexpected reply to SUBSCRIBE: %v", r)
	}
	_, err = l.track.Do("CLIENT", "TRACKING", "ON", "REDIRECT", id)
	return err
}

func isRedisError(err error) bool {
	var re redis.Error
	return errors.As(err, &re)
}

// serve sends the reads queued while connecting and checks the
// connections until ctx ends or a connection fails; two goroutines read
// the connections meanwhile.
func (w *waiter) serve(ctx context.Context, l *link) error {
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer l.close()
	defer func() { // from now on, waits queue for the next link
		w.mu.Lock()
		w.link = nil
		w.mu.Unlock()
	}()
	wg.Go(func() { errc <- w.readInvalidations(l) })
	wg.Go(func() { errc <- w.readReplies(l) })
	w.mu.Lock()
	w.link = l
	var queued []*watch
	for _, wt := range w.queue {
		if !wt.over {
			queued = append(queued, wt)
		}
	}
	clear(w.queue)
	w.queue = w.queue[:0]
	w.mu.Unlock()
	if len(queued) > 0 {
		l.send(w, queued)
	}
	tick := time.NewTicker(waiterRecheck)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errc:
			return err
		case err := <-l.broken:
			return err
		case <-tick.C:
			if n%waiterPing == 0 {
				if err := w.ping(l); err != nil {
					return err
				}
			}
			w.recheck(l)
		}
	}
}

// recheck reads every watched key again, in one write. A wait whose last
// read is still unanswered, a recheck after it was sent, ends instead.
func (w *waiter) recheck(l *link) {
	var batch, unanswered []*watch
	w.mu.Lock()
	late := time.Now().Add(-waiterRecheck / 2)
	for _, ws := range w.watches {
		for _, wt := range ws {
			switch {
			case wt.answered:
				batch = append(batch, wt)
			case !wt.sent.IsZero() && wt.sent.Before(late):
				unanswered = append(unanswered, wt)
			}
		}
	}
	for _, wt := range unanswered {
		w.finishLocked(wt, awokeTimeout, nil)
	}
	w.mu.Unlock()
	if len(batch) > 0 {
		l.send(w, batch)
	}
}

// ping checks both connections: each must have answered the last check.
func (w *waiter) ping(l *link) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	w.mu.Lock()
	late := l.pings > 0
	l.pings = 2
	l.inflight = append(l.inflight, nil)
	w.mu.Unlock()
	if late {
		return errors.New("queue: waiter connection did not answer PING")
	}
	for _, c := range []redis.Conn{l.sub, l.track} {
		if err := c.Send("PING"); err != nil {
			return err
		}
		if err := c.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// readReplies judges each reply of the tracking connection for its wait:
// it ends the wait when the reply shows what the wait is for, or is an
// error, and leaves it waiting otherwise.
func (w *waiter) readReplies(l *link) error {
	for {
		r, err := redis.ReceiveWithTimeout(l.track, 0)
		if err != nil && !isRedisError(err) {
			return err
		}
		w.mu.Lock()
		if len(l.inflight) == 0 {
			w.mu.Unlock()
			return fmt.Errorf("queue: waiter: a reply to no command: %v", r)
		}
		wt := l.inflight[0]
		l.inflight[0] = nil
		l.inflight = l.inflight[1:]
		switch {
		case wt == nil:
			l.pings--
		case wt.over:
		case err != nil:
			w.finishLocked(wt, 0, err)
		default:
			wt.answered, wt.replied = true, true
			if n, _ := redis.Int64(r, nil); wt.ready(n) {
				w.finishLocked(wt, awokeReady, nil)
			}
		}
		w.mu.Unlock()
	}
}

// readInvalidations wakes the waits on each key that tracking names.
func (w *waiter) readInvalidations(l *link) error {
	for {
		r, err := redis.Values(redis.ReceiveWithTimeout(l.sub, 0))
		if err != nil {
			return err
		}
		if len(r) == 0 {
			continue
		}
		switch kind, _ := redis.String(r[0], nil); kind {
		case "pong":
			w.mu.Lock()
			l.pings--
			w.mu.Unlock()
		case "message":
			if len(r) != 3 {
				continue
			}
			keys, ok := r[2].([]any)
			if !ok { // null: a flush
				w.wakeAll()
				continue
			}
			for _, k := range keys {
				if key, err := redis.String(k, nil); err == nil {
					w.wake(key)
				}
			}
		}
	}
}
