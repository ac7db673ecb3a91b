package queue

import (
	"fmt"
	"math"
	"testing"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// routingQueue returns a Queue with r partitions and q queues that is never
// connected: routing needs no server.
func routingQueue(t *testing.T, r, q int) *Queue {
	t.Helper()
	pools := make([]*redis.Pool, r)
	for i := range pools {
		pools[i] = &redis.Pool{}
	}
	qu, err := New(pools, Config{Queues: q})
	require.NoError(t, err)
	return qu
}

func TestRouteGolden(t *testing.T) {
	t.Parallel()
	tests := []struct {
		r, q      int
		orderID   uint64
		partition int
		queue     int
		analyser  int
	}{
		{1, 1, 0, 0, 0, 0},
		{1, 1, 12345, 0, 0, 0},
		{1, 4, 0, 0, 0, 0},
		{1, 4, 5, 0, 1, 1},
		{1, 4, 7, 0, 3, 3},
		{3, 1, 7, 1, 0, 1},
		{3, 2, 0, 0, 0, 0},
		{3, 2, 1, 1, 0, 1},
		{3, 2, 2, 2, 0, 2},
		{3, 2, 3, 0, 1, 3},
		{3, 2, 4, 1, 1, 4},
		{3, 2, 5, 2, 1, 5},
		{3, 2, 6, 0, 0, 0},
		{3, 2, 11, 2, 1, 5},
		{3, 2, 1000003, 1, 0, 1},
		{4, 3, 1 << 40, 0, 1, 4},
		{3, 2, ^uint64(0), 0, 1, 3},
		{5, 7, ^uint64(0), 0, 3, 15},
		{2, 2, KeyID("foobar"), 0, 0, 0},
		{3, 2, KeyID("order-42"), 2, 0, 2},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("R=%d/Q=%d/id=%d", tt.r, tt.q, tt.orderID), func(t *testing.T) {
			q := routingQueue(t, tt.r, tt.q)
			p, qi := q.Route(tt.orderID)
			assert.Equal(t, tt.partition, p, "partition")
			assert.Equal(t, tt.queue, qi, "queue")
			assert.Equal(t, tt.analyser, q.AnalyserOf(tt.orderID), "analyser")
			assert.Equal(t, tt.analyser, p+tt.r*qi, "analyser a serves partition a %% R, queue a / R")
			assert.Equal(t, tt.r*tt.q, q.Analysers())
		})
	}
}

// TestRouteAgreesWithAnalyser checks that analyser AnalyserOf(id) serves the
// queue Route(id) sends id to, and that every analyser's queue is distinct.
func TestRouteAgreesWithAnalyser(t *testing.T) {
	t.Parallel()
	for _, rq := range [][2]int{{1, 1}, {1, 3}, {2, 1}, {3, 2}, {4, 5}} {
		q := routingQueue(t, rq[0], rq[1])
		for id := uint64(0); id < 500; id++ {
			p, qi := q.Route(id)
			ap, aq, err := q.Layout().Serves(q.AnalyserOf(id))
			require.NoError(t, err)
			assert.Equal(t, [2]int{p, qi}, [2]int{ap, aq}, "R=%d Q=%d id=%d", rq[0], rq[1], id)
		}
		seen := map[[2]int]bool{}
		for a := 0; a < q.Analysers(); a++ {
			p, qi, err := q.Layout().Serves(a)
			require.NoError(t, err)
			assert.False(t, seen[[2]int{p, qi}], "analyser %d shares a queue", a)
			seen[[2]int{p, qi}] = true
		}
		for _, a := range []int{-1, q.Analysers(), q.Analysers() + 10} {
			_, _, err := q.Layout().Serves(a)
			assert.ErrorIs(t, err, ErrAnalyserRange, "analyser %d", a)
		}
	}
}

// TestServesErrorNamesLayout checks that an analyser id out of range is
// refused with the layout it was checked against, so that a missing
// Config.Queues or URL shows in the message.
func TestServesErrorNamesLayout(t *testing.T) {
	t.Parallel()
	_, _, err := Layout{Partitions: 2, Queues: 3}.Serves(6)
	require.ErrorIs(t, err, ErrAnalyserRange)
	assert.EqualError(t, err, "queue: analyser id out of range: 6 not in [0, 6), R*Q for partitions=2 (the URLs or pools given) queues=3 (Config.Queues)")
}

func TestKeyIDGolden(t *testing.T) {
	t.Parallel()
	// Values computed with an independent FNV-1a 64 implementation.
	tests := []struct {
		key  string
		want uint64
	}{
		{"", 0xcbf29ce484222325},
		{"a", 0xaf63dc4c8601ec8c},
		{"foobar", 0x85944171f73967e8},
		{"order-42", 0x7d1deb86a05662d4},
		{"warehouse/7/order/1001", 0x5c806dbd519edd20},
		{"héllo", 0xa35ff71f960240e0},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, KeyID(tt.key), "KeyID(%q)", tt.key)
	}
}

func TestWorkerOfSpreadsOneAnalyser(t *testing.T) {
	t.Parallel()
	// One analyser's OrderIDs all share their residue mod R*Q; workerOf must
	// still use every worker, about evenly.
	for _, tt := range []struct{ analysers, analyser, workers int }{
		{1, 0, 8},
		{6, 3, 8},
		{6, 0, 64},
		{8, 5, 16},
		{64, 0, 64},
	} {
		const n = 20000
		counts := make([]int, tt.workers)
		for i := 0; i < n; i++ {
			id := uint64(i*tt.analysers + tt.analyser)
			w := workerOf(id, tt.workers)
			require.True(t, w >= 0 && w < tt.workers, "workerOf(%d, %d) = %d", id, tt.workers, w)
			assert.Equal(t, w, workerOf(id, tt.workers), "workerOf is not deterministic")
			counts[w]++
		}
		mean := n / tt.workers
		for w, c := range counts {
			assert.True(t, c > mean/2 && c < mean*3/2,
				"analysers=%d analyser=%d workers=%d: worker %d got %d of %d", tt.analysers, tt.analyser, tt.workers, w, c, n)
		}
	}
	for id := uint64(0); id < 100; id++ {
		assert.Zero(t, workerOf(id, 1))
	}
}

// A valid Layout is one a Queue can have, and its methods never divide
// by a product that overflowed: a Layout made by hand past the bounds is
// not valid.
func TestLayoutValid(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		l     Layout
		valid bool
	}{
		{Layout{1, 1}, true},
		{Layout{maxPartitions, 16}, true},
		{Layout{16, maxQueues}, true},
		{Layout{0, 1}, false},
		{Layout{1, 0}, false},
		{Layout{-1, -1}, false},
		{Layout{maxPartitions + 1, 1}, false},
		{Layout{1, maxQueues + 1}, false},
		{Layout{17, maxQueues}, false},
		{Layout{1 << 62, 4}, false}, // R*Q wraps to 0
	} {
		assert.Equal(t, tc.valid, tc.l.Valid(), "%+v", tc.l)
		if tc.valid {
			n := tc.l.Analysers()
			assert.Equal(t, n-1, tc.l.AnalyserOf(uint64(n-1)), "%+v", tc.l)
			assert.Equal(t, int(math.MaxUint64%uint64(n)), tc.l.AnalyserOf(math.MaxUint64), "%+v", tc.l)
		}
	}
}
