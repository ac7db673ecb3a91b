package queue

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A queue's slot served by another primary while an owner holds its
// lease: the owner resyncs, and tasks whose acks the old primary took and
// lost run again then, not at the next handover.

func TestSlotMovesCounts(t *testing.T) {
	t.Parallel()
	const a, b, c = "10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"
	r := &clusterRouter{}
	store := func(owners ...string) { // owners of slots 0, 1, 2; "" none
		m := newSlotMap()
		for s, o := range owners {
			if o != "" {
				require.NoError(t, m.assign(int64(s), int64(s), o))
			}
		}
		r.mu.Lock()
		r.storeSlotsLocked(m)
		r.mu.Unlock()
	}
	moves := func() []uint32 { return []uint32{r.moves.n[0].Load(), r.moves.n[1].Load(), r.moves.n[2].Load()} }

	store(a, a, b)
	assert.Equal(t, []uint32{0, 0, 0}, moves(), "the first map moves nothing")
	store(a, a, b)
	assert.Equal(t, []uint32{0, 0, 0}, moves(), "a refresh that finds the same owners")
	store(b, "", b)
	assert.Equal(t, []uint32{1, 0, 0}, moves(), "slot 0 failed over; slot 1 without a primary for a while")
	store(b, a, b)
	assert.Equal(t, []uint32{1, 0, 0}, moves(), "slot 1 back on the primary it had")
	store(a, c, b)
	assert.Equal(t, []uint32{2, 1, 0}, moves(), "slot 0 back, slot 1 on another")
	r.moveSlot(2, c)
	assert.Equal(t, []uint32{2, 1, 1}, moves(), "a MOVED reply")
	r.moveSlot(2, c)
	assert.Equal(t, []uint32{2, 1, 1}, moves(), "a MOVED reply the map had")
}
