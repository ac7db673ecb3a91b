package queue

import (
	"context"
	"fmt"
	"time"
)

// What a Consumer's Claim does with the tasks it claimed before it hands
// them out.

// dropCancelled finishes the claimed tasks whose cancel was asked as
// cancelled, and returns the others.
func (c *Consumer) dropCancelled(ctx context.Context, cs []claimed) ([]claimed, error) {
	kept := cs[:0]
	for _, t := range cs {
		if !t.cancelled {
			kept = append(kept, t)
			continue
		}
		if err := c.st.finishCancelled(ctx, t, time.Time{}); err != nil {
			return nil, err
		}
	}
	return kept, nil
}

// dropExhausted moves the claimed tasks that had MaxAttempts deliveries
// already (under another owner's MaxAttempts, higher than this one's) to
// the dead-letter store without handing them out, as a pool does, and
// returns the others.
func (c *Consumer) dropExhausted(ctx context.Context, cs []claimed) ([]claimed, error) {
	kept := cs[:0]
	for _, t := range cs {
		if t.Attempt <= c.st.maxAttempts {
			kept = append(kept, t)
			continue
		}
		cause := fmt.Errorf("queue: delivery %d exceeds MaxAttempts %d", t.Attempt, c.st.maxAttempts)
		t.Attempt = c.st.maxAttempts // dead-letter it without delivering it
		if _, err := c.st.fail(ctx, t, cause, time.Time{}, true); err != nil {
			return nil, err
		}
	}
	return kept, nil
}

// recordRedeliveries records the delivery of the claimed tasks that were
// delivered before, or that recovery marked: to the low-level API a claim
// is a delivery.
// It returns when the last call that recorded one was sent (sent, the
// claim's, when none did): each is checked against the lease.
func (c *Consumer) recordRedeliveries(ctx context.Context, ts []claimed, sent time.Time) (time.Time, error) {
	for _, t := range ts {
		if t.Attempt > 1 || t.recovered {
			at := time.Now()
			if err := c.st.recordDelivery(ctx, t); err != nil {
				return sent, err
			}
			sent = at
		}
	}
	return sent, nil
}
