package queue

import (
	"slices"
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

// slotWatch is what an owner of a queue on a cluster knew of its slot
// when its tenure began. Its zero value (a queue on one server, or on
// Sentinel's primary) never sees a move.
type slotWatch struct {
	r     *clusterRouter
	slot  int
	moves uint32 // the slot's count of moves then
	addr  string // its primary then, as the map named it
}

// watchSlot returns what the router knows of the slot of st's queue now.
func (st *store) watchSlot() slotWatch {
	r := st.part.router
	if r == nil {
		return slotWatch{}
	}
	slot := keySlot(st.keys.lease)
	w := slotWatch{r: r, slot: slot, moves: r.moves.n[slot].Load()}
	if m := r.slots.Load(); m != nil {
		w.addr = m.addrOf(slot)
	}
	return w
}

// moved reports whether another primary served the slot since w was
// taken. It costs an atomic load.
func (w *slotWatch) moved() bool {
	return w.r != nil && w.r.moves.n[w.slot].Load() != w.moves
}

// now returns the slot's primary as the map names it now.
func (w *slotWatch) now() string {
	if m := w.r.slots.Load(); m != nil {
		return m.addrOf(w.slot)
	}
	return ""
}
