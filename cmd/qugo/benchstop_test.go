package main

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestBenchLeftSay(t *testing.T) {
	t.Parallel()
	assert.Equal(t, "no task is left queued", benchLeftSay(0, nil, " more"))
	assert.Equal(t, "5 tasks are left queued: drain them with qugo bench -verify -partial more", benchLeftSay(5, nil, " more"))
	assert.Equal(t, "what is left stays queued: drain it with qugo bench -verify -partial more", benchLeftSay(0, errors.New("x"), " more"))
}
