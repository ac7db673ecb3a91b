package queue

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestDeathClockStampsOneOrderIDApart(t *testing.T) {
	var c deathClock
	before := time.Now().UnixMilli()
	last := int64(0)
	for range 100 {
		s := c.stamp(7, 0)
		assert.Greater(t, s, last)
		last = s
	}
	assert.GreaterOrEqual(t, c.stamp(7+deathSlots, 0), last+1, "an OrderID of the same slot goes on from it")
	other := c.stamp(8, 0)
	assert.GreaterOrEqual(t, other, before)
	assert.LessOrEqual(t, other, time.Now().UnixMilli(), "another slot's stamp is the time")
	var none *deathClock
	assert.InDelta(t, time.Now().UnixMilli(), none.stamp(7, 0), 1000)
}

// A floor (the latest death the queue recorded when the store took the
// lease) puts every stamp past it, of any slot, and a slot's stamps go on
// from there a millisecond apart.
func TestDeathClockStampsPastTheFloor(t *testing.T) {
	var c deathClock
	floor := time.Now().Add(time.Minute).UnixMilli()
	assert.Equal(t, floor+1, c.stamp(7, floor))
	assert.Equal(t, floor+2, c.stamp(7, floor), "a millisecond apart")
	assert.Equal(t, floor+1, c.stamp(8, floor), "another slot's")
	past := time.Now().Add(-time.Minute).UnixMilli()
	assert.InDelta(t, time.Now().UnixMilli(), c.stamp(9, past), 1000, "a floor in the past: the time")
	var none *deathClock
	assert.Equal(t, floor+1, none.stamp(7, floor))
}

// An acquisition's lastDeathField gives the floor it holds, but for a
// value this package did not write: not a count, or one so far ahead of
// the clock that no burst of deaths made it.
func TestDeathFloorOfGarbageIsNone(t *testing.T) {
	now := time.Now().UnixMilli()
	ahead := now + time.Hour.Milliseconds()
	assert.Equal(t, ahead, deathFloor(strconv.FormatInt(ahead, 10), now))
	assert.Equal(t, int64(0), deathFloor("", now), "none recorded (an earlier release's store)")
	for _, v := range []string{"x1", "-5", "1e12", " 17", strconv.FormatInt(now+2*maxDeathsAhead.Milliseconds(), 10),
		"99999999999999999999", "9223372036854775807", "0000000000000001"} {
		assert.Equal(t, int64(0), deathFloor(v, now), "%q", v)
	}
}

// deadStamp reads the death stamp of a record as encodeDead wrote it.
func TestDeadStampReadsTheRecord(t *testing.T) {
	ms := time.Now().UnixMilli()
	assert.Equal(t, ms, deadStamp(encodeDead(encodeTask(Task{ID: "a", OrderID: 1, Payload: []byte("x")}, 300), 300, "boom", ms)))
	assert.Equal(t, ms, deadStamp(encodeDead([]byte("raw"), 0, "", ms)))
	for _, b := range [][]byte{nil, {}, {0x01, 1, 2}, {deadVersion}, {deadVersion, 0x80}, {deadVersion, 1}} {
		assert.Equal(t, int64(0), deadStamp(b), "%q", b)
	}
}
