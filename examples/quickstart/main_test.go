package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
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

// More OrderIDs than tasks: only those with a task are counted and
// listed, never as "0 of 0 tasks".
func TestRunMoreOrdersThanTasks(t *testing.T) {
	t.Setenv("REDIS_URL", "") // the embedded miniredis
	var out strings.Builder
	if err := run(context.Background(), &out, 20, 10, 2, "quickstart-test", 0); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{
		"-orders 20 is more than -tasks 10: using 10 OrderIDs, one task each\n",
		"added 10 tasks over 10 OrderIDs in ",
		"order 1009: 1 of 1 task ran, in order\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "0 of 0") || strings.Contains(got, "order 1010:") {
		t.Errorf("OrderIDs without a task are listed:\n%s", got)
	}
}

// The server in REDIS_URL is named without its password.
func TestRunHidesThePassword(t *testing.T) {
	mr := miniredis.RunT(t)
	mr.RequireAuth("sekret")
	t.Setenv("REDIS_URL", "redis://:sekret@"+mr.Addr())
	var out strings.Builder
	if err := run(context.Background(), &out, 2, 4, 1, "quickstart-test", 0); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	if want := "using redis://" + mr.Addr() + "\n"; !strings.Contains(got, want) {
		t.Errorf("output lacks %q:\n%s", want, got)
	}
	if strings.Contains(got, "sekret") {
		t.Errorf("output shows the password:\n%s", got)
	}
}
