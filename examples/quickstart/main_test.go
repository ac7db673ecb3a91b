package main

import (
	"testing"
	"time"
)

func TestCheckFlags(t *testing.T) {
	for _, c := range []struct {
		orders, tasks, workers int
		work                   time.Duration
		ok                     bool
	}{
		{8, 400, 4, time.Millisecond, true},
		{1, 1, 1, 0, true},
		{0, 400, 4, time.Millisecond, false},
		{8, -5, 4, time.Millisecond, false},
		{8, 400, 0, time.Millisecond, false},
		{8, 400, 4, -time.Millisecond, false}, // it made every task panic, and the run blame the queue
	} {
		err := checkFlags(c.orders, c.tasks, c.workers, c.work)
		if (err == nil) != c.ok {
			t.Errorf("checkFlags(%d, %d, %d, %v) = %v", c.orders, c.tasks, c.workers, c.work, err)
		}
	}
}
