package queue

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// The shared set of DispatchFree holds a line per OrderID the pool holds,
// up to Prefetch: it keeps as many emptied lines, so that a drain of many
// OrderIDs reuses them instead of allocating a line and a buffer a task.
// A worker's own set keeps maxFreeOrders. Past maxFreeOrders a kept line
// keeps a small buffer only, so an idle pool still holds little.
func TestLineSetKeepsLinesForReuse(t *testing.T) {
	s := &session{cfg: PoolConfig{Prefetch: 1024}}
	for _, tc := range []struct {
		shared bool
		keep   int
	}{{true, 1024}, {false, maxFreeOrders}} {
		ls := newLineSet(s, tc.shared)
		fill := func() {
			for i := range uint64(1100) {
				o := ls.newOrder(i)
				o.push(claimed{})
				ls.orders[i] = o
			}
		}
		fill()
		// One line with a large buffer (an OrderID with a long run of tasks).
		for range maxFreeTasks {
			ls.orders[0].push(claimed{})
		}
		for i := range uint64(1100) {
			ls.drop(ls.orders[i])
		}
		assert.Len(t, ls.free, tc.keep, "shared %v", tc.shared)
		for i, o := range ls.free {
			assert.LessOrEqual(t, cap(o.tasks), maxFreeTasks, "line %d", i)
			if i >= maxFreeOrders {
				assert.LessOrEqual(t, cap(o.tasks), maxSpareTasks, "line %d", i)
			}
		}
		if tc.shared {
			allocs := testing.AllocsPerRun(1, func() {
				for i := range uint64(1000) {
					o := ls.newOrder(i)
					o.push(claimed{})
					ls.orders[i] = o
				}
				for i := range uint64(1000) {
					ls.drop(ls.orders[i])
				}
			})
			assert.Zero(t, allocs, "allocations reusing the kept lines")
		}
	}
}
