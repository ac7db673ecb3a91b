package queue

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Bug: MaxHeldBytes does not bound the held tasks by more than one task
// at a time, as documented ("A task larger than it is still claimed,
// alone"): with tasks held and some budget left, the claim script takes
// its first task whatever its size (its budget check starts with the
// second one), so a task many times MaxHeldBytes joins those held. Here
// 3 KiB is held under a 4 KiB bound and a 100 KiB task is claimed beside
// it.
func TestAuditLargeTaskClaimedBesideHeldOnes(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx, cancel := context.WithCancel(bounded(t))
	defer cancel()
	addAll(t, q, []Task{{OrderID: 1, Payload: make([]byte, 3000)}, {OrderID: 2, Payload: make([]byte, 100_000)}})
	release := make(chan struct{})
	started := make(chan struct{}, 2)
	errc := runPool(ctx, q, PoolConfig{Workers: 2, Prefetch: 4, MaxHeldBytes: 4096, ExitOnEmpty: true},
		func(ctx context.Context, task Task) error {
			started <- struct{}{}
			if len(task.Payload) == 3000 {
				<-release
			}
			return nil
		})
	receive(t, started)
	time.Sleep(100 * time.Millisecond) // give the fetcher every chance to claim more than it may
	assert.Zero(t, len(started), "the 100 KiB task was claimed (and started) while the 3 KiB one was held")
	close(release)
	require.NoError(t, receive(t, errc))
	assert.Zero(t, s.do(t, "LLEN", k.ready))
}
