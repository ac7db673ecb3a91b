package queue

import (
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/gomodule/redigo/redis"
)

// Conditions that callers test with errors.Is.
var (
	// ErrNoPartitions is returned by New and Dial when given no Redis servers.
	ErrNoPartitions = errors.New("queue: no redis partitions given")
	// ErrLayoutMismatch is returned when a Redis server has been recorded
	// with another partition count, queue count or partition index than
	// this process uses (the error is a *LayoutError), or when two of the
	// partitions this process was given are one Redis server and database
	// (the error names both; nothing was recorded).
	ErrLayoutMismatch = errors.New("queue: layout mismatch")
	// ErrAnalyserRange is returned for an analyser id outside [0, R*Q).
	ErrAnalyserRange = errors.New("queue: analyser id out of range")
	// ErrNilFunc is returned by AnalysePool when given a nil AnalyseFunc.
	ErrNilFunc = errors.New("queue: nil analyse func")
	// ErrEmptyPayload is returned by AddTask and AddTasks for an empty payload.
	ErrEmptyPayload = errors.New("queue: empty payload")
	// ErrPayloadTooLarge is returned for a payload over Config.MaxPayload.
	ErrPayloadTooLarge = errors.New("queue: payload too large")
	// ErrBadHeaders is returned by AddTask, AddTasks and AddTaskOnce for
	// headers over the limits (see Task.Headers): more than 64, an empty
	// key, or more than 8 KiB encoded. Nothing is written.
	ErrBadHeaders = errors.New("queue: bad headers")
	// ErrMalformed marks a record in Redis that does not decode as a task.
	// Such records are moved to the dead-letter store with their raw bytes.
	// AnalysePool also reports it through OnError when recovery moves
	// pending tasks whose claim-sequence record is lost to the dead-letter
	// store (their order is unknown).
	ErrMalformed = errors.New("queue: malformed record")
	// ErrLeaseLost is returned when this process no longer holds the lease
	// of a queue: another owner took it over, or it expired. Claims and acks
	// made with a lost lease are refused inside Redis.
	ErrLeaseLost = errors.New("queue: lease lost")
	// ErrNoTask is returned by Consumer.RemoveTask when the queue is empty.
	ErrNoTask = errors.New("queue: no task")
	// ErrClosed is returned by every call of a Queue that uses Redis once
	// Close was called. A Consumer made before Close does not check it.
	ErrClosed = errors.New("queue: closed")
	// ErrRedisOOM is returned when Redis refuses a write because it reached
	// maxmemory under the noeviction policy. Consumers keep draining, and
	// writes succeed again once memory falls.
	ErrRedisOOM = errors.New("queue: redis is out of memory (maxmemory reached)")
	// ErrReadOnly is returned when the server refused a write because it
	// is a read-only replica: a primary demoted by a failover, still
	// reached by a connection made before it. The write did not run, so
	// sending it again cannot duplicate it. A pool that Dial made for a
	// redis+sentinel:// URL drops the connection and asks the sentinels
	// for the new primary; elsewhere, point the queue at the primary.
	ErrReadOnly = errors.New("queue: redis refused a write: the server is a read-only replica")
	// ErrBadConfig is returned for an invalid Config or PoolConfig value.
	ErrBadConfig = errors.New("queue: bad config")
	// ErrWrongType is returned (and reported by AnalysePool) when a key of
	// a queue holds a value this package did not write: a value of the
	// wrong Redis type, a lease with no expiry, or a claim sequence that is
	// not a count. The call changes
	// nothing; a pool retries with capped backoff and goes on once the key
	// holds a valid value again or is deleted.
	ErrWrongType = errors.New("queue: a queue key holds the wrong type of value")
	// ErrNotReplicated is returned (and reported by AnalysePool) under
	// Config.WaitReplicas when fewer replicas than asked acknowledged a
	// write within Config.WaitTimeout. The write was made on the primary,
	// but it is not known to survive the primary's loss: the outcome is
	// uncertain, as when a reply is lost. A task added so may be in the
	// queue, and adding it again may run it twice; a pool retries its
	// claims, acks and renewals as after any Redis error, so no task is
	// lost or run twice for it.
	ErrNotReplicated = errors.New("queue: write not acknowledged by enough replicas")
)

// LayoutError describes a disagreement between the layout recorded in a
// Redis server and the one this process was configured with.
type LayoutError struct {
	Partition int    // the partition (server) index this process gave it
	Prefix    string // the Config.Prefix the layout is recorded under
	Want      string // this process's layout, "partitions=R queues=Q index=I"
	Got       string // the layout recorded in the server
}

func (e *LayoutError) Error() string {
	return fmt.Sprintf("queue: layout of partition %d under prefix %q: redis has %s, this process uses %s: %s",
		e.Partition, e.Prefix, e.Got, e.Want, e.hint())
}

// hint says which setting to change to agree with the server.
func (e *LayoutError) hint() string {
	var got, want [3]int // partitions, queues, index
	const format = "partitions=%d queues=%d index=%d"
	if _, err := fmt.Sscanf(e.Got, format, &got[0], &got[1], &got[2]); err != nil {
		return "the server's record is not one this package wrote; use another Config.Prefix, or delete the record if nothing uses it"
	}
	if _, err := fmt.Sscanf(e.Want, format, &want[0], &want[1], &want[2]); err != nil {
		return "give the servers in partition order, and the Config.Queues the queues were made with"
	}
	var fix []string
	if got[1] != want[1] {
		fix = append(fix, fmt.Sprintf("set Config.Queues to %d", got[1]))
	}
	if got[0] != want[0] {
		servers := "servers"
		if got[0] == 1 {
			servers = "server"
		}
		fix = append(fix, fmt.Sprintf("give %d %s, not %d", got[0], servers, want[0]))
	}
	if got[2] != want[2] {
		fix = append(fix, fmt.Sprintf("give this server as partition %d, not %d", got[2], want[2]))
	}
	return strings.Join(fix, " and ") + " (or, to start afresh, another Config.Prefix)"
}

// Is reports ErrLayoutMismatch.
func (e *LayoutError) Is(target error) bool { return target == ErrLayoutMismatch }

// PartitionError is the error of one partition in a call that writes to
// several at once (AddTasks): the call's error joins one for each
// partition that failed, and the tasks routed to the others (see
// Queue.Route) were added. Within a failed partition, some queues may
// have taken their tasks.
type PartitionError struct {
	Partition int   // the index of the partition whose tasks were not all added
	Err       error // it names the partition
}

func (e *PartitionError) Error() string { return e.Err.Error() }

func (e *PartitionError) Unwrap() error { return e.Err }

// PanicError is the error an AnalyseFunc's panic is turned into.
type PanicError struct {
	Value any    // the value passed to panic
	Stack []byte // the stack of the panicking goroutine
}

func (e *PanicError) Error() string { return fmt.Sprintf("queue: analyse panicked: %v", e.Value) }

// Unwrap returns the panic value when it is an error.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

// ErrCancelled is the cause (context.Cause) of the ctx of a delivery
// whose task was cancelled ([Queue.Cancel]) while it ran: a function that
// watches its ctx tells a cancel of its task from a stop of the pool,
// whose cause is context.Canceled. The ctx's Err is context.Canceled
// either way.
var ErrCancelled = errors.New("queue: task cancelled")

// ErrGoexit is the error of a delivery whose AnalyseFunc called
// runtime.Goexit (as t.FailNow does in a test): the delivery failed as
// with a panic, and the worker goes on, on a new goroutine.
var ErrGoexit = errors.New("queue: analyse called runtime.Goexit")

// TaskError is a failed delivery of a task: what OnError receives for every
// failed attempt, and what is recorded in the dead-letter store.
type TaskError struct {
	ID      string // the task's ID, as AddTask returned it
	OrderID uint64 // the task's OrderID
	Attempt int    // the 1-based delivery that failed
	Dead    bool   // the task was moved to the dead-letter store
	Err     error  // what the analyse function returned (or the panic, or the timeout)
}

func (e *TaskError) Error() string {
	what := "will retry"
	if e.Dead {
		what = "dead-lettered"
	}
	return fmt.Sprintf("queue: task %s (order %d) attempt %d failed, %s: %v", e.ID, e.OrderID, e.Attempt, what, e.Err)
}

func (e *TaskError) Unwrap() error { return e.Err }

// callerErr returns err, an error the caller handed the package (an
// AnalyseFunc's result, Consumer.Fail's cause), as one that is safe to
// turn into text and to search with errors.Is and errors.As: the package
// does so in the dead-letter store, the retry record, OnError, OnDone and
// its logs, and a panic there would end the process. That is err itself
// when its Error returns and a walk of its chain does not panic; else a
// *callerError. The usual culprit is a typed nil ("var e *myErr; return
// e", a non-nil error holding a nil pointer) whose Error reads its
// receiver. It costs a call of err's Error and a walk of its chain, made
// only for failures.
func callerErr(err error) error {
	if err == nil {
		return nil
	}
	text, p, ok := errorText(err)
	walk := walks(err)
	if ok && walk {
		return err
	}
	if !ok {
		what := fmt.Sprintf("%T", err)
		if v := reflect.ValueOf(err); v.Kind() == reflect.Pointer && v.IsNil() {
			what += " (a nil pointer)"
		}
		text = fmt.Sprintf("queue: error of type %s: its Error method panicked: %v", what, p)
	}
	e := &callerError{text: text}
	if walk {
		e.err = err
	}
	return e
}

// errorText calls err's Error, and reports what a panic in it panicked
// with.
func errorText(err error) (text string, panicked any, ok bool) {
	defer func() {
		if !ok {
			panicked = recover()
		}
	}()
	text = err.Error()
	return text, nil, true
}

// walks reports whether errors.Is and errors.As go through err's chain
// (its Unwrap, Is and As methods) without a panic.
func walks(err error) (ok bool) {
	defer func() {
		if !ok {
			recover()
		}
	}()
	var target *callerError
	errors.Is(err, errWalk)
	errors.As(err, &target)
	return true
}

// errWalk is what walks looks for: nothing has it in its chain.
var errWalk = errors.New("queue: no error is this one")

// callerError stands for a caller's error that is not safe to use as it
// is (see callerErr). Its text is the error's own or, when its Error
// panicked, one that says so and names the error's type; Unwrap returns
// the error, for errors.Is and errors.As, unless a walk of its chain
// panicked too (its Unwrap, Is or As): then only the text is kept.
type callerError struct {
	err  error // the caller's error; nil when its chain cannot be walked
	text string
}

func (e *callerError) Error() string { return e.text }

func (e *callerError) Unwrap() error { return e.err }

// wrongTypeReply starts the error a script returns, before any write, when
// one of its keys holds the wrong type (see typeCheck).
const wrongTypeReply = "QUGOWRONGTYPE"

// redisErr classifies an error from a Redis call and prefixes it with what
// was being done. Refusals by our scripts become sentinel errors.
func redisErr(what string, err error) error {
	if err == nil {
		return nil
	}
	var re redis.Error
	if errors.As(err, &re) {
		msg := string(re)
		switch {
		case isReadOnly(re):
			return fmt.Errorf("queue: %s: %w: %s", what, ErrReadOnly, msg)
		case strings.Contains(msg, staleReply):
			return fmt.Errorf("queue: %s: %w", what, ErrLeaseLost)
		case strings.HasPrefix(msg, "OOM"):
			return fmt.Errorf("queue: %s: %w: %s", what, ErrRedisOOM, msg)
		case strings.Contains(msg, "WRONGTYPE"): // Redis's own, or wrongTypeReply
			return fmt.Errorf("queue: %s: %w: %s", what, ErrWrongType, strings.TrimPrefix(msg, wrongTypeReply+" "))
		case strings.HasPrefix(msg, badValueReply):
			return fmt.Errorf("queue: %s: %w: %s", what, ErrWrongType, strings.TrimPrefix(msg, badValueReply+" "))
		}
	}
	return fmt.Errorf("queue: %s: %w", what, err)
}

// isReadOnly reports a READONLY reply: the server is a replica, and the
// write was refused before it ran. A script's write refused inside the
// script says so too, after the script's name on older servers.
func isReadOnly(err error) bool {
	var re redis.Error
	if !errors.As(err, &re) {
		return false
	}
	return strings.HasPrefix(string(re), "READONLY ") || strings.Contains(string(re), "-READONLY ")
}
