package queue

import (
	"fmt"
	"hash/fnv"
)

// Layout is the shape of a deployment: R partitions (Redis servers) with Q
// queues each, R*Q analysers in all. Its methods are the routing contract,
// pure arithmetic that never changes:
//
//   - the tasks of OrderID id go to partition id % R, queue (id / R) % Q;
//   - analyser a serves partition a % R, queue a / R;
//   - so OrderID id is served by analyser id % (R*Q).
//
// A Layout is a plain value, safe to copy and to use concurrently. Its
// methods expect it to be Valid.
type Layout struct {
	Partitions int // R
	Queues     int // Q
}

// Valid reports whether l is a layout a Queue can have: at least one
// partition and one queue, at most 4096 of each, and at most 65536
// analysers (R*Q). The methods of a Layout that is not valid may panic.
func (l Layout) Valid() bool {
	return l.Partitions > 0 && l.Queues > 0 && l.Partitions <= maxPartitions && l.Queues <= maxQueues &&
		l.Partitions*l.Queues <= maxAnalysers
}

// Route returns the partition and the queue within it that hold the tasks
// of orderID: orderID % R and (orderID / R) % Q.
func (l Layout) Route(orderID uint64) (partition, queue int) {
	r, q := uint64(l.Partitions), uint64(l.Queues)
	return int(orderID % r), int((orderID / r) % q)
}

// AnalyserOf returns the analyser that serves orderID: orderID % (R*Q).
func (l Layout) AnalyserOf(orderID uint64) int {
	return int(orderID % uint64(l.Analysers()))
}

// Analysers returns R*Q, the number of analysers (and queues) in all.
func (l Layout) Analysers() int { return l.Partitions * l.Queues }

// Serves returns the partition and queue that analyser a serves: a % R and
// a / R. It returns an error wrapping ErrAnalyserRange for an a outside
// [0, R*Q).
func (l Layout) Serves(a int) (partition, queue int, err error) {
	if a < 0 || a >= l.Analysers() {
		return 0, 0, fmt.Errorf("%w: %d not in [0, %d), R*Q for partitions=%d (the URLs or pools given) queues=%d (Config.Queues)",
			ErrAnalyserRange, a, l.Analysers(), l.Partitions, l.Queues)
	}
	return a % l.Partitions, a / l.Partitions, nil
}

// KeyID hashes a string key to an OrderID with FNV-1a (64 bit). The hash is
// frozen: the same key gives the same OrderID in every version. Every
// string has one, the empty string too (14695981039346656037), so keys
// left empty by mistake all share one OrderID and run one at a time, in
// order: check that a key is set before hashing it.
func KeyID(key string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(key))
	return h.Sum64()
}

// workerOf spreads OrderIDs over w workers. OrderIDs of one analyser share
// their residue mod R*Q, so the ID is mixed (splitmix64's finaliser) first.
func workerOf(orderID uint64, w int) int {
	z := orderID + 0x9e3779b97f4a7c15
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	z ^= z >> 31
	return int(z % uint64(w))
}

// Layout returns the queue's layout: R = the number of pools or URLs it was
// given, Q = Config.Queues.
func (q *Queue) Layout() Layout { return Layout{Partitions: len(q.parts), Queues: q.cfg.Queues} }

// Route is q.Layout().Route(orderID).
func (q *Queue) Route(orderID uint64) (partition, queue int) { return q.Layout().Route(orderID) }

// AnalyserOf is q.Layout().AnalyserOf(orderID).
func (q *Queue) AnalyserOf(orderID uint64) int { return q.Layout().AnalyserOf(orderID) }

// Analysers is q.Layout().Analysers(): R*Q.
func (q *Queue) Analysers() int { return q.Layout().Analysers() }
