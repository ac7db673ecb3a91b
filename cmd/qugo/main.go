// Command qugo inspects and repairs the queues of github.com/qugo/queue:
// per-analyser statistics, pending, scheduled and dead tasks, replaying and
// purging dead tasks, pausing and resuming queues, cancelling a task and
// telling its status, consumer groups, routing an OrderID or string key
// to its analyser, and a web dashboard of all of it (qugo serve).
//
// Run "qugo -h" for its usage, or see README.md next to this file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/qugo/queue"
)

// Exit statuses a script can rely on.
const (
	exitOK      = 0 // the command did what was asked
	exitRuntime = 1 // Redis unreachable, layout mismatch, a failed Redis call or bench order check
	exitUsage   = 2 // bad flags or arguments; nothing was sent to Redis
)

const defaultRedis = "redis://127.0.0.1:6379"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second signal kills the process
	}()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usageText = `Usage: qugo [global flags] command [flags] [arguments]

qugo inspects the Redis queues of github.com/qugo/queue.

Commands:
  stats   [-watch DURATION] [-json]     one row per analyser: depth, scheduled,
                                        pending, dead, counters, paused, owner,
                                        oldest pending age
  pending -a N [-json]                  tasks analyser N has claimed and not finished
  dead    -a N [-json]                  analyser N's dead-letter store
  replay  -a N [-json] [ID...]          move dead tasks (all without IDs) back to ready
  purge   -a N [-json] (ID... | -all)   delete dead tasks; -all deletes every one
  scheduled -a N [-limit N] [-offset N] [-json]
                                        tasks of analyser N waiting for their due
                                        time, earliest first (100 without -limit)
  pause   (-a N | -partition P | -all) [-json]
                                        pause one queue, every queue of server P,
                                        or all: their pools finish what they hold
                                        and claim nothing new
  resume  (-a N | -partition P | -all) [-json]
                                        undo pause
  cancel  -order O -id ID [-retention DURATION] [-json]
                                        cancel a task, and say where it was
  status  -order O -id ID [-retention DURATION] [-json]
                                        where a task is in its life: scheduled,
                                        pending, retrying, dead, done, cancelled
                                        (finished tasks: with the queue's Config.Retention)
  group   NAME [-watch DURATION] [-json]
                                        a consumer group: members, weights,
                                        heartbeats, assigned analysers and the
                                        leases each member holds
  route   [-json] [ORDER-ID...] [-key STRING...]
                                        partition, queue and analyser of an OrderID
                                        or string key; needs no server
  bench   [-n N] [-orders K] [-workers W] [-fill | -verify [-partial]] [-json]
                                        add N tasks over K OrderIDs and drain them
                                        with W workers per analyser: throughput,
                                        latency percentiles, order check; under
                                        prefix "qugo-bench-RxQ" unless -prefix is given;
                                        on an embedded miniredis when no -redis,
                                        $QUEUE_REDIS or $REDIS_URL is given
  serve   [-listen ADDRESS] [-token TOKEN] [-group NAME...]
                                        a web dashboard: every queue with its
                                        rates, pending, scheduled and dead tasks,
                                        task lookup; with a token, replay, purge,
                                        pause, resume and cancel (on
                                        127.0.0.1:8081; token also $QUGO_TOKEN)
  help                                  this text

Global flags (also accepted after the command):
  -redis URLS    comma-separated Redis URLs, in partition order, as the
                 producers and analysers use them: redis://, rediss:// (TLS),
                 redis+cluster://host:port,host:port (a Redis Cluster),
                 redis+sentinel://host:26379,host:26379/primaryname
                 (default $QUEUE_REDIS, else $REDIS_URL, else
                 redis://127.0.0.1:6379, but for bench, which then starts
                 an embedded miniredis; an empty variable counts as unset)
  -queues Q      queues on each server (default 1)
  -prefix P      key prefix of the queue (default "qugo")

Run "qugo COMMAND -h" for a command's flags.

Output: tables for people; with -json, one JSON document on one line with
snake_case field names (see README.md), so "stats -watch 2s -json" is JSON lines.

Exit status:
  0  success
  1  runtime error: Redis unreachable, layout mismatch (another number or order
     of -redis URLs, or another -queues, than the queue was created with),
     a failed Redis call, a failed bench order check (or a bench -verify
     with nothing to verify, a bench whose -timeout ran out, or one that
     met tasks it did not add); for serve, a -listen address it cannot
     listen on
  2  usage error: bad flags or arguments; nothing was sent to Redis (or,
     for cancel and status, an -id whose record shows another OrderID
     than -order: nothing was written; a task in the ready list, or
     finished, has no such record, and -order is taken at its word)
Errors go to standard error, prefixed "qugo: ".
`

// usageError is a bad flag or argument: exit status 2. A refusal that
// the command's usage would not help with (an environment variable's
// value, an ID that belongs to another order) has noHint, and is told
// without the pointer to -h.
type usageError struct {
	msg    string
	noHint bool
}

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// env is what a command runs with: the global flags and the outputs.
type env struct {
	globals
	stdout, stderr io.Writer
	set            map[string]bool // the flags given on the command line
	cmd            string          // the command's name, once known
}

// command is one subcommand. flags registers its own flags on fs and
// returns the function that runs it with the remaining arguments.
type command struct {
	name  string
	usage string // the argument synopsis after the name
	flags func(fs *flag.FlagSet) func(ctx context.Context, e *env, args []string) error
}

var commands = []command{
	{"stats", "[-watch DURATION] [-json]", statsFlags},
	{"pending", "-a N [-json]", pendingFlags},
	{"dead", "-a N [-json]", deadFlags},
	{"replay", "-a N [-json] [ID...]", replayFlags},
	{"purge", "-a N [-json] (ID... | -all)", purgeFlags},
	{"scheduled", "-a N [-limit N] [-offset N] [-json]", scheduledFlags},
	{"pause", "(-a N | -partition P | -all) [-json]", pauseFlags},
	{"resume", "(-a N | -partition P | -all) [-json]", resumeFlags},
	{"cancel", "-order O -id ID [-retention DURATION] [-json]", cancelFlags},
	{"status", "-order O -id ID [-retention DURATION] [-json]", statusFlags},
	{"group", "NAME [-watch DURATION] [-json]", groupFlags},
	{"route", "[-json] [ORDER-ID...] [-key STRING...]", routeFlags},
	{"serve", "[-listen ADDRESS] [-token TOKEN] [-group NAME...] [-timeout DURATION] [-sample DURATION] [-window DURATION]", serveFlags},
	{"bench", "[-n N] [-orders K] [-workers W] [-producers P] [-batch B] [-size BYTES] [-rate N] [-timeout DURATION] [-fill | -verify [-partial]] [-json]", benchFlags},
}

// run runs qugo with args (without the program name) and returns its exit
// status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{globals: defaultGlobals(), stdout: stdout, set: map[string]bool{}}
	stderr = scrubbing{w: stderr, g: &e.globals}
	e.stderr = stderr
	err := e.run(ctx, args)
	var ue *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &ue), errors.Is(err, queue.ErrBadConfig), errors.Is(err, queue.ErrAnalyserRange):
		if ue != nil && ue.noHint {
			fmt.Fprintf(stderr, "qugo: %v\n", err)
			return exitUsage
		}
		help := "qugo -h"
		if e.cmd != "" {
			help = "qugo " + e.cmd + " -h"
		}
		fmt.Fprintf(stderr, "qugo: %v\nRun '%s' for usage.\n", err, help)
		return exitUsage
	default:
		if le, ok := errors.AsType[*queue.LayoutError](err); ok {
			// Said in flags, not in the library's Config fields.
			urls, _ := e.urls()
			fmt.Fprintf(stderr, "qugo: %s\n", layoutAdvice(le, urls))
			return exitRuntime
		}
		fmt.Fprintf(stderr, "qugo: %v\n", err)
		// A deadline is bench's -timeout, which its error tells of.
		if hint := redisHint(err, ""); hint != "" && !errors.Is(err, context.DeadlineExceeded) {
			fmt.Fprintf(stderr, "qugo: %s\n", hint)
		}
		return exitRuntime
	}
}

// scrubbing writes what it is given to w with the passwords of -redis
// replaced. Errors and logs go to standard error, and what a server says
// in an error is not ours to vouch for: one that repeats the command it
// refuses repeats AUTH's password. Each write is one message (a line of
// fmt, a slog record), so no password is split between two.
type scrubbing struct {
	w io.Writer
	g *globals
}

func (s scrubbing) Write(p []byte) (int, error) {
	if _, err := io.WriteString(s.w, scrubSecrets(string(p), []string{s.g.redis})); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (e *env) run(ctx context.Context, args []string) error {
	fs := newFlagSet("qugo")
	e.globals.register(fs)
	err := fs.Parse(args)
	fs.Visit(func(f *flag.Flag) { e.set[f.Name] = true })
	if err := e.redisIsCommand(); err != nil {
		return err
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(e.stdout, usageText)
		}
		return flagError(err)
	}
	args = fs.Args()
	if len(args) == 0 {
		if _, err := e.urls(); e.set["redis"] && err != nil {
			// "qugo -redis stats": the command was taken as the URL.
			return usagef("no command given, and the value of -redis is no URL (%v): does -redis lack its URL?", err)
		}
		return usagef("no command given")
	}
	name, args := args[0], args[1:]
	if name == "help" {
		fmt.Fprint(e.stdout, usageText)
		return nil
	}
	for _, c := range commands {
		if c.name == name {
			return e.runCommand(ctx, c, args)
		}
	}
	return usagef("unknown command %q", name)
}

func (e *env) runCommand(ctx context.Context, c command, args []string) error {
	e.cmd = c.name
	fs := newFlagSet("qugo " + c.name)
	do := c.flags(fs)
	own := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { own[f.Name] = true })
	e.globals.register(fs)
	operands, err := parseInterspersed(fs, args)
	fs.Visit(func(f *flag.Flag) { e.set[f.Name] = true })
	if err := e.redisIsCommand(); err != nil {
		return err
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(e.stdout, "Usage: qugo [global flags] %s %s\n\nFlags:\n", c.name, c.usage)
			printFlags(e.stdout, fs, own)
			fmt.Fprint(e.stdout, "\nThe global flags -redis, -queues and -prefix are accepted too; see qugo -h.\n")
		}
		return err
	}
	if err := e.globals.validate(); err != nil {
		return e.redisFromEnv(err)
	}
	return do(ctx, e, operands)
}

// redisIsCommand refuses a -redis given on the command line whose value
// is the name of a command: the URL was left out, and the flag took the
// command as its value ("qugo -redis stats"), leaving no command, or
// the command's flags to be taken for global ones.
func (e *env) redisIsCommand() error {
	if !e.set["redis"] {
		return nil
	}
	name := strings.TrimSpace(e.redis)
	if name != "help" && !slices.ContainsFunc(commands, func(c command) bool { return c.name == name }) {
		return nil
	}
	return usagef("-redis needs a URL, and was given %q, a command: give the URL after -redis (qugo -redis redis://HOST:PORT %s)", name, name)
}

// redisFromEnv names the variable the -redis URLs came from ($QUEUE_REDIS
// or $REDIS_URL) in a refusal of them: the caller gave no -redis to look
// for.
func (e *env) redisFromEnv(err error) error {
	var ue *usageError
	name, _ := redisEnv()
	if e.set["redis"] || name == "" || !errors.As(err, &ue) || !strings.HasPrefix(ue.msg, "-redis: ") {
		return err
	}
	return &usageError{msg: fmt.Sprintf("$%s (no -redis given): %s", name, strings.TrimPrefix(ue.msg, "-redis: ")), noHint: true}
}

// newFlagSet returns a flag set that reports its errors to run instead of
// printing them.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// flagError turns a flag package error into a usage error.
func flagError(err error) error {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	return &usageError{msg: err.Error()}
}

// parseInterspersed parses fs from args, allowing flags after operands
// ("replay ID -a 3"), and returns the operands. Everything after "--" is
// an operand, and so is a negative number that is no flag's value
// ("route -1"): the command says what is wrong with it.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var operands []string
	for {
		n := negativeOperand(fs, args)
		if err := fs.Parse(args[:n]); err != nil {
			return nil, flagError(err)
		}
		rest := fs.Args()
		at := n - len(rest) // rest is args[at:n]
		if at > 0 && args[at-1] == "--" {
			return append(operands, args[at:]...), nil
		}
		if at == len(args) {
			return operands, nil
		}
		operands = append(operands, args[at])
		args = args[at+1:]
	}
}

// negativeOperand returns the place in args of the first negative number
// that is an operand, not a flag's value, before any "--"; len(args) if
// there is none.
func negativeOperand(fs *flag.FlagSet, args []string) int {
	for i, a := range args {
		if a == "--" {
			break
		}
		if len(a) < 2 || a[0] != '-' || a[1] < '0' || a[1] > '9' {
			continue
		}
		if i > 0 && takesValue(fs, args[i-1]) {
			continue
		}
		return i
	}
	return len(args)
}

// takesValue reports whether arg is a flag of fs that takes the next
// argument as its value: "-a", not "-a=3" nor a bool flag.
func takesValue(fs *flag.FlagSet, arg string) bool {
	name, ok := strings.CutPrefix(arg, "-")
	if !ok || strings.Contains(name, "=") {
		return false
	}
	f := fs.Lookup(strings.TrimPrefix(name, "-"))
	if f == nil {
		return false
	}
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return !ok || !b.IsBoolFlag()
}

// printFlags prints the flags of fs named in only, each with its default
// unless that is the zero value.
func printFlags(w io.Writer, fs *flag.FlagSet, only map[string]bool) {
	fs.VisitAll(func(f *flag.Flag) {
		if !only[f.Name] {
			return
		}
		name, help := flag.UnquoteUsage(f)
		switch f.DefValue {
		case "", "0", "false", "0s":
		default:
			help += " (default " + f.DefValue + ")"
		}
		line := "  -" + f.Name
		if name != "" {
			line += " " + name
		}
		fmt.Fprintf(w, "%s\n    \t%s\n", line, strings.ReplaceAll(help, "\n", "\n    \t"))
	})
}
