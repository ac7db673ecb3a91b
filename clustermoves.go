package queue

import (
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
)

// A queue's slot served by another primary during a lease tenure.
//
// Without WaitReplicas a failover can lose the old primary's last writes,
// and a cluster hides it: a primary that was stopped and woke after its
// replica took over runs the commands it had queued, answers them as a
// primary would, then becomes the new primary's replica and drops them.
// The router follows the MOVED replies that come next without an error
// reaching the caller, so an owner that kept its lease would go on
// believing those writes made: tasks whose acks were lost stay pending,
// unseen, until the next owner's recovery, which may be the next deploy.
// So the router counts, per slot, the times the primary serving it
// changed, and an owner that sees its queue's count change during its
// tenure ends it and takes the queue again (a pool), or resyncs before
// its next claim (a Consumer): recovery then puts back every task left
// pending, those whose acks were lost with the rest.
//
// A slot migration (resharding) changes the slot's primary too, with
// nothing lost: it costs one such resync.
//
// Sentinel hides it the same way: a primary stopped until the sentinels
// promoted its replica, and woken within the connection's read timeout,
// answers the writes it had queued before it is demoted, and the pool's
// next connections go to the new primary without an error. The
// sentinelPrimary counts the times another primary was named, and its
// queues' owners watch that count as they watch a slot's.

// slotMoves counts, per hash slot, the times the router saw it served by
// another primary than the last one it saw serve it. A slot with no
// primary for a while (its primary failed, no replica promoted yet) that
// comes back to the same one has not moved. Its writers hold the router's
// mu; n is read without it.
type slotMoves struct {
	last  [clusterSlots]int32 // 1 + the index in addrs of the slot's last primary; 0: none seen yet
	addrs []string            // every primary seen
	n     [clusterSlots]atomic.Uint32
}

// index returns 1 + the index of addr in v.addrs, adding it if new.
func (v *slotMoves) index(addr string) int32 {
	i := slices.Index(v.addrs, addr)
	if i < 0 {
		i = len(v.addrs)
		v.addrs = append(v.addrs, addr)
	}
	return int32(i + 1)
}

// seen records that the primary v.addrs[i-1] serves slot.
func (v *slotMoves) seen(slot int, i int32) {
	if last := v.last[slot]; last != i {
		if last != 0 {
			v.n[slot].Add(1)
		}
		v.last[slot] = i
	}
}

// record records the owners of every slot m gives one.
func (v *slotMoves) record(m *slotMap) {
	idx := make([]int32, len(m.primaries))
	for i, a := range m.primaries {
		idx[i] = v.index(a)
	}
	for s, o := range m.owner {
		if o >= 0 {
			v.seen(s, idx[o])
		}
	}
}

// storeSlotsLocked takes m as the slot map. r.mu is held.
func (r *clusterRouter) storeSlotsLocked(m *slotMap) {
	r.moves.record(m)
	r.slots.Store(m)
}

// slotWatch is what an owner of a queue knew of the primary serving it
// when its tenure began: its slot's on a cluster, the primary Sentinel
// named for a Sentinel-watched partition. Its zero value (a queue on one
// server) never sees a move.
type slotWatch struct {
	n     *atomic.Uint32 // the moves counted; nil: none are
	moves uint32         // *n then
	addr  string         // the primary then
	now   func() string  // the primary now
	where string         // what moved: "hash slot N", "Sentinel primary NAME"
}

// watchSlot returns what is known of the primary of st's queue now.
func (st *store) watchSlot() slotWatch {
	if r := st.part.router; r != nil {
		slot := keySlot(st.keys.lease)
		w := slotWatch{n: &r.moves.n[slot], where: "hash slot " + strconv.Itoa(slot), now: func() string {
			if m := r.slots.Load(); m != nil {
				return m.addrOf(slot)
			}
			return ""
		}}
		w.moves = w.n.Load()
		w.addr = w.now()
		return w
	}
	if sp := st.part.primary; sp != nil {
		w := slotWatch{n: &sp.moves, where: "Sentinel primary " + strconv.Quote(sp.name), now: sp.current}
		w.moves = w.n.Load()
		w.addr = w.now()
		return w
	}
	return slotWatch{}
}

// moved reports whether another primary served the queue since w was
// taken. It costs an atomic load.
func (w *slotWatch) moved() bool {
	return w.n != nil && w.n.Load() != w.moves
}

// slotMoved ends a tenure during which another primary came to serve the
// queue (see slotWatch): writes the old primary took may be lost (on a failover
// without WaitReplicas), acks among them, whose tasks would stay pending,
// unseen, while this tenure lasts. Nothing is handed back, the tasks of
// the last claim (tasks) are not run: all are left pending, and the next
// tenure's recovery puts every pending task back in claim order.
func (s *session) slotMoved(tasks []claimed) {
	clear(tasks) // pending in Redis, if the claim was made
	s.claimBuf = tasks[:0]
	s.resyncOwed = true
	from, to := s.watch.addr, s.watch.now()
	how := "from " + from + " to " + to
	if from == to {
		how = "away from " + from + " and back"
	}
	s.cfg.OnError(fmt.Errorf("queue: analyser %d (partition %d queue %d): the primary serving its %s changed (%s) during its lease; "+
		"writes the old primary took may be lost (a failover without WaitReplicas loses its last ones, acks among them): "+
		"resyncing: the lease is taken again and every pending task put back", s.log.analyser, s.st.pi, s.st.qi, s.watch.where, how))
}
