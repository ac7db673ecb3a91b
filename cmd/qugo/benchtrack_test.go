package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestTracker(t *testing.T) {
	t.Parallel()
	type delivery struct {
		order        uint64
		total, place uint32
	}
	for _, tc := range []struct {
		name    string
		want    int64 // tasks expected; 0 for verify mode
		partial bool  // verify -partial
		got     []delivery
		foreign int
		check   orderCheck
	}{
		{"in order", 3, false, []delivery{{1, 2, 1}, {2, 1, 1}, {1, 2, 2}}, 0,
			orderCheck{OK: true, Handled: 3}},
		{"redelivered after a crash", 0, false, []delivery{{1, 3, 1}, {1, 3, 2}, {1, 3, 1}, {1, 3, 2}, {1, 3, 3}}, 0,
			orderCheck{OK: true, Handled: 5, Duplicates: 2}},
		{"out of order", 0, false, []delivery{{1, 2, 2}, {1, 2, 1}}, 0,
			orderCheck{Handled: 2, OutOfOrder: 2}},
		{"missing in verify", 0, false, []delivery{{1, 3, 1}, {1, 3, 3}}, 0,
			orderCheck{Handled: 2, OutOfOrder: 1, Missing: 1}},
		{"first ones lost in verify", 0, false, []delivery{{1, 4, 3}, {1, 4, 4}}, 0,
			orderCheck{Handled: 2, OutOfOrder: 1, Missing: 2}},
		{"partial: after an earlier drain", 0, true, []delivery{{1, 4, 3}, {2, 2, 2}, {1, 4, 3}, {1, 4, 4}}, 0,
			orderCheck{OK: true, Handled: 4, Duplicates: 1}},
		{"partial: missing after the first seen", 0, true, []delivery{{1, 4, 2}, {1, 4, 4}}, 0,
			orderCheck{Handled: 2, OutOfOrder: 1, Missing: 1}},
		{"partial: an earlier one after the first seen", 0, true, []delivery{{1, 4, 3}, {1, 4, 2}, {1, 4, 4}}, 0,
			orderCheck{Handled: 3, OutOfOrder: 1}},
		// A bench stopped by -timeout added each OrderID's first tasks
		// only: -partial does not miss the ones never added.
		{"partial: the last ones never added", 0, true, []delivery{{1, 9, 2}, {1, 9, 3}, {2, 9, 1}}, 0,
			orderCheck{OK: true, Handled: 3}},
		{"partial: a gap before the last seen", 0, true, []delivery{{1, 9, 2}, {1, 9, 5}}, 0,
			orderCheck{Handled: 2, OutOfOrder: 1, Missing: 2}},
		{"missing in bench", 3, false, []delivery{{1, 2, 1}, {1, 2, 2}}, 0,
			orderCheck{Handled: 2, Missing: 1}},
		{"foreign", 0, false, []delivery{{1, 1, 1}}, 1,
			orderCheck{Handled: 1, Foreign: 1}},
		{"nothing", 0, false, nil, 0, orderCheck{}},
	} {
		tr := newTracker(tc.want, tc.want > 0, tc.partial)
		for _, d := range tc.got {
			tr.handle(d.order, benchPayload(d.total, d.place), time.Now())
		}
		for range tc.foreign {
			assert.False(t, tr.handle(9, []byte("not a bench task"), time.Now()), tc.name)
		}
		assert.Equal(t, tc.check, tr.check(), tc.name)
		if tc.want > 0 && tc.check.OK {
			select {
			case <-tr.done:
			default:
				t.Errorf("%s: done did not close", tc.name)
			}
		}
	}
}
