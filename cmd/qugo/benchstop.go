package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/qugo/queue"
)

// How a bench stops before it is done (-timeout, a signal), and what it
// says then.

// errBenchTimeout is the cause of a bench's ctx when -timeout runs out.
var errBenchTimeout = errors.New("bench: -timeout ran out")

// benchStopReason says why the bench's ctx has ended: "-timeout D ran
// out" or "interrupted"; "" while it runs. Its deadline having passed
// counts as ended: a read it cut may return before ctx says so.
func benchStopReason(ctx context.Context, o benchOptions) string {
	deadline, _ := ctx.Deadline()
	switch {
	case errors.Is(context.Cause(ctx), errBenchTimeout) || (ctx.Err() == nil && !time.Now().Before(deadline)):
		return fmt.Sprintf("-timeout %v ran out", o.timeout)
	case ctx.Err() != nil:
		return "interrupted"
	}
	return ""
}

// benchErr returns err, or, when the bench's ctx has ended, why: the
// errors of calls that ctx cut short say nothing the reason does not.
func benchErr(ctx context.Context, o benchOptions, err error) error {
	if why := benchStopReason(ctx, o); why != "" {
		return fmt.Errorf("bench: %s (%w)", why, err)
	}
	return err
}

// benchLeft says how many tasks a stopped bench left in the queue, and
// how to drain them, more after the command (see benchLeftSay).
func benchLeft(q *queue.Queue, more string) string {
	left, err := benchLeftCount(q)
	return benchLeftSay(left, err, more)
}

// benchLeftCount returns how many tasks a stopped bench left in the
// queue, ready or pending. Its ctx has ended: the count is read within a
// short time of its own.
func benchLeftCount(q *queue.Queue) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	stats, err := q.Stats(ctx)
	if err != nil {
		return 0, err
	}
	var left int64
	for _, s := range stats {
		left += s.Ready + s.Pending
	}
	return left, nil
}

// benchLeftSay says that left tasks are left in the queue, as
// benchLeftCount counted them (err when it could not), and how to drain
// them, more after the command.
func benchLeftSay(left int64, err error, more string) string {
	switch {
	case err != nil:
		return "what is left stays queued: drain it with qugo bench -verify -partial" + more
	case left == 0:
		return "no task is left queued"
	}
	return fmt.Sprintf("%d tasks are left queued: drain them with qugo bench -verify -partial%s", left, more)
}

// benchTimeoutHint is the advice for a bench that -timeout stopped, to
// go before more advice: a longer -timeout, "or" more; "" for one stopped
// otherwise.
func benchTimeoutHint(why, more string) string {
	if !strings.HasPrefix(why, "-timeout") {
		return ""
	}
	return "give a longer -timeout" + more + "; "
}

// addedAtLeast returns how many tasks a bench stopped while adding is
// known to have added: counted, the tasks of the AddTasks calls that
// returned, or, when more, the tasks it handled (each once) and those
// left queued (left, unless leftErr says it could not be read): a batch
// whose call the stop cut short may have been added too, and counted
// nowhere else.
func addedAtLeast(counted, handledOnce, left int64, leftErr error) int64 {
	if leftErr != nil {
		return max(counted, handledOnce)
	}
	return max(counted, handledOnce+left)
}
