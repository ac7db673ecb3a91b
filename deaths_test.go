package queue

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestDeathClockStampsOneOrderIDApart(t *testing.T) {
	var c deathClock
	before := time.Now().UnixMilli()
	last := int64(0)
	for range 100 {
		s := c.stamp(7)
		assert.Greater(t, s, last)
		last = s
	}
	assert.GreaterOrEqual(t, c.stamp(7+deathSlots), last+1, "an OrderID of the same slot goes on from it")
	other := c.stamp(8)
	assert.GreaterOrEqual(t, other, before)
	assert.LessOrEqual(t, other, time.Now().UnixMilli(), "another slot's stamp is the time")
	var none *deathClock
	assert.InDelta(t, time.Now().UnixMilli(), none.stamp(7), 1000)
}
