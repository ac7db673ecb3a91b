package main

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
)

// A bench stopped while adding counts as added at least what it handled
// and what is left: a batch whose AddTasks call the stop cut short may
// have been added, though no call counted it (490 counted, 490 handled
// and 5 left were said once, where 495 were added).
func TestAddedAtLeast(t *testing.T) {
	t.Parallel()
	readFailed := errors.New("read failed")
	for _, tc := range []struct {
		name                   string
		counted, handled, left int64
		leftErr                error
		want                   int64
	}{
		{"a cut batch that was added", 490, 490, 5, nil, 495},
		{"the counts agree", 500, 490, 10, nil, 500},
		{"a cut batch that was not added", 500, 480, 10, nil, 500},
		{"a fill, nothing handled", 300, 0, 310, nil, 310},
		{"the count of what is left failed", 490, 495, 0, readFailed, 495},
		{"nothing added", 0, 0, 0, nil, 0},
	} {
		assert.Equal(t, tc.want, addedAtLeast(tc.counted, tc.handled, tc.left, tc.leftErr), tc.name)
	}
}

func TestBenchLeftSay(t *testing.T) {
	t.Parallel()
	assert.Equal(t, "no task is left queued", benchLeftSay(0, nil, " more"))
	assert.Equal(t, "5 tasks are left queued: drain them with qugo bench -verify -partial more", benchLeftSay(5, nil, " more"))
	assert.Equal(t, "what is left stays queued: drain it with qugo bench -verify -partial more", benchLeftSay(0, errors.New("x"), " more"))
}
