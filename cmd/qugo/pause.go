package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"

	"github.com/qugo/queue"
)

// pauseDoc is the JSON output of pause and resume.
type pauseDoc struct {
	Paused    bool  `json:"paused"`    // true after pause, false after resume
	Analysers []int `json:"analysers"` // the queues set (whatever their state before), in analyser order
}

func pauseFlags(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return pauseCommand(fs, "pause", true)
}

func resumeFlags(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return pauseCommand(fs, "resume", false)
}

// pauseCommand builds pause (paused true) or resume: one of -a, -partition
// and -all names the queues.
func pauseCommand(fs *flag.FlagSet, name string, paused bool) func(context.Context, *env, []string) error {
	a := analyserFlag(fs)
	part := &numberArg{}
	fs.Var(part, "partition", "every queue of server `P` (0 <= P < R, the index into -redis)")
	all := fs.Bool("all", false, "every queue of every server")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	return func(ctx context.Context, e *env, args []string) error {
		if len(args) > 0 {
			return usagef("%s takes no arguments, got %q", name, args[0])
		}
		w, analysers, err := e.pauseScope(name, a, part, *all)
		if err != nil {
			return err
		}
		q, err := e.open(ctx, dialOptions{writer: true})
		if err != nil {
			return err
		}
		defer q.Close()
		if paused {
			err = q.Pause(ctx, w)
		} else {
			err = q.Resume(ctx, w)
		}
		if err != nil {
			return err
		}
		if *asJSON {
			return writeJSON(e.stdout, pauseDoc{Paused: paused, Analysers: analysers})
		}
		what := "analyser " + strconv.Itoa(a.n)
		if !a.set {
			what = fmt.Sprintf("%s: analysers %s", w, rangesCell(analysers))
		}
		if paused {
			_, err = fmt.Fprintf(e.stdout, "paused %s; a paused pool finishes the tasks it holds, keeps its lease and claims nothing new until resumed\n", what)
		} else {
			_, err = fmt.Fprintf(e.stdout, "resumed %s\n", what)
		}
		return err
	}
}

// pauseScope checks that exactly one of -a, -partition and -all is given,
// without contacting Redis, and returns the queues it names and their
// analysers, in order.
func (e *env) pauseScope(name string, a, part *numberArg, all bool) (queue.Queues, []int, error) {
	given := 0
	for _, set := range []bool{a.set, part.set, all} {
		if set {
			given++
		}
	}
	switch given {
	case 0:
		return queue.Queues{}, nil, usagef("%s needs one of -a N (one queue), -partition P (every queue of server P) or -all", name)
	case 1:
	default:
		return queue.Queues{}, nil, usagef("%s: give only one of -a, -partition and -all", name)
	}
	l := e.layout()
	var analysers []int
	switch {
	case a.set:
		if err := e.checkAnalyser(a); err != nil {
			return queue.Queues{}, nil, err
		}
		return queue.QueueOf(a.n), []int{a.n}, nil
	case part.set:
		if part.n < 0 || part.n >= l.Partitions {
			return queue.Queues{}, nil, usagef("-partition %d: out of range: servers are 0 to %d (the -redis URLs)", part.n, l.Partitions-1)
		}
		for an := range l.Analysers() {
			if pi, _, _ := l.Serves(an); pi == part.n {
				analysers = append(analysers, an)
			}
		}
		return queue.PartitionQueues(part.n), analysers, nil
	}
	for an := range l.Analysers() {
		analysers = append(analysers, an)
	}
	return queue.AllQueues(), analysers, nil
}
