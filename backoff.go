package queue

import (
	"context"
	"math/rand/v2"
	"time"
)

// backoff waits between retries of a failing Redis call: 50ms doubling to
// 5s, with jitter, and returns early when ctx ends.
type backoff struct{ n int }

const (
	backoffMin = 50 * time.Millisecond
	backoffMax = 5 * time.Second
)

func (b *backoff) reset() { b.n = 0 }

func (b *backoff) next() time.Duration {
	d := backoffMin << min(b.n, 10)
	b.n++
	d = min(d, backoffMax)
	return d/2 + rand.N(d/2+1)
}

func (b *backoff) wait(ctx context.Context) error { return sleep(ctx, b.next()) }

// sleep waits d or until ctx ends, and returns ctx's error in that case.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
