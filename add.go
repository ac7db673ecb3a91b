package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Adding tasks: the checks every add makes, AddTask and AddTasks.

func (q *Queue) checkPayload(p []byte) error {
	if len(p) == 0 {
		return ErrEmptyPayload
	}
	if len(p) > q.cfg.MaxPayload {
		return fmt.Errorf("%w: %d bytes, the limit is %d (Config.MaxPayload)", ErrPayloadTooLarge, len(p), q.cfg.MaxPayload)
	}
	return nil
}

// admit refuses a call on a closed queue or with a payload or headers out
// of bounds, and returns the size of the headers' encoded section.
func (q *Queue) admit(payload []byte, headers map[string]string) (int, error) {
	if q.closed.Load() {
		return 0, ErrClosed
	}
	if err := q.checkPayload(payload); err != nil {
		return 0, err
	}
	return headersSize(headers)
}

// routeChecked returns the partition and queue of orderID, with the
// partition's layout verified (recorded on first use).
func (q *Queue) routeChecked(ctx context.Context, orderID uint64) (pi, qi int, p *partition, err error) {
	pi, qi = q.Route(orderID)
	p = q.parts[pi]
	return pi, qi, p, q.checkLayout(ctx, p)
}

// newEntry makes a new task ID and the encoded task for orderID, with
// headers whose encoded section takes hsize bytes.
func (q *Queue) newEntry(orderID uint64, headers map[string]string, hsize int, payload []byte) (id string, entry []byte) {
	id = q.ids.next()
	// 24 bytes hold the varints: an OrderID (10 at most), today's time
	// (6) and no delivery (1).
	entry = appendEntry(make([]byte, 0, entryHeader+24+hsize+len(payload)), 0, id, orderID, time.Now().UnixMilli(), 0, headers, payload)
	return id, entry
}

// AddTask enqueues payload for orderID and returns the new task's ID. When
// it returns nil the task is in Redis and will reach an analyse function;
// with Config.WaitReplicas, it is on that many replicas too. When it
// returns ErrNotReplicated the task was queued on the primary, but may be
// lost with it.
// It is safe for concurrent use: calls made at the same time from many
// goroutines share pipelined round trips, so each costs about one LPUSH.
//
// When ctx ends first, it returns ctx's error. A call still waiting for
// its turn (behind a round trip to a slow or stalled partition) returns at
// once and sent nothing. A call whose round trip is under way waits for
// its reply, bounded by the connection's read timeout and by the calls
// sharing it: the round trip is abandoned once all their ctxs have ended,
// and the task may then be in Redis or not. At most 4096 calls or 64 MiB
// of tasks wait per partition; a call that finds that line full waits
// for room, on ctx.
//
// Options set the task's headers (WithHeaders); they are checked, with
// the payload, before anything is written.
func (q *Queue) AddTask(ctx context.Context, orderID uint64, payload []byte, opts ...AddOption) (string, error) {
	a, err := q.prepareAdd(ctx, orderID, payload, opts)
	if err != nil {
		return "", err
	}
	if !a.due.IsZero() {
		return a.id, q.schedule(ctx, a)
	}
	if err := q.adders[a.pi].add(ctx, a.p.pool, q.ready[a.pi][a.qi], a.entry); err != nil {
		return "", redisErr(fmt.Sprintf("add task to partition %d queue %d", a.pi, a.qi), err)
	}
	return a.id, nil
}

// addition is a task ready to be written: its route, ID and entry, and
// its due time when it is scheduled.
type addition struct {
	pi, qi int
	p      *partition
	id     string
	entry  []byte
	due    time.Time // zero: add it now
}

// prepareAdd checks a task of AddTask, AddTaskOnce or AddTaskAt and its
// options, verifies its partition's layout, and encodes it.
func (q *Queue) prepareAdd(ctx context.Context, orderID uint64, payload []byte, opts []AddOption) (addition, error) {
	var o addOptions
	if len(opts) > 0 {
		o = newAddOptions(opts)
	}
	hsize, err := q.admit(payload, o.headers)
	if err == nil {
		err = checkDue(o.at)
	}
	if err != nil {
		return addition{}, err
	}
	pi, qi, p, err := q.routeChecked(ctx, orderID)
	if err != nil {
		return addition{}, err
	}
	id, entry := q.newEntry(orderID, o.headers, hsize, payload)
	a := addition{pi: pi, qi: qi, p: p, id: id, entry: entry}
	if !o.at.IsZero() && o.at.After(time.Now()) {
		a.due = o.at
	}
	return a, nil
}

// maxPushArgs bounds the values of one LPUSH in AddTasks.
const maxPushArgs = 4096

// AddTasks enqueues many tasks with one pipelined round trip per partition
// they touch; tasks of one queue go in one LPUSH per 4096 tasks. Only
// OrderID, Payload, Headers and NotBefore (see Task) of each Task are
// read. It returns the new IDs in the order of tasks. It validates every
// task before writing any; on a Redis
// error some partitions may have taken their tasks and others not, and the
// IDs are returned all the same so the caller can look them up.
// It is safe for concurrent use.
func (q *Queue) AddTasks(ctx context.Context, tasks []Task) ([]string, error) {
	if q.closed.Load() {
		return nil, ErrClosed
	}
	// Check every task, and size one buffer for all the entries so that
	// it never moves.
	size := 0
	for i := range tasks {
		if err := q.checkPayload(tasks[i].Payload); err != nil {
			return nil, fmt.Errorf("task %d: %w", i, err)
		}
		h, err := headersSize(tasks[i].Headers)
		if err == nil {
			err = checkDue(tasks[i].NotBefore)
		}
		if err != nil {
			return nil, fmt.Errorf("task %d: %w", i, err)
		}
		size += entryCap(h, len(tasks[i].Payload))
	}
	ids := q.ids.nextN(len(tasks))
	bp := getEntryBuf(size)
	defer putEntryBuf(bp) // after every push has returned: nothing reads the entries then
	buf := (*bp)[:0]
	// Group entries per partition, then per queue, keeping task order:
	// count first, so that every group is allocated once, at its size.
	qs := q.cfg.Queues
	slot := make([]int32, len(tasks)) // partition * Queues + queue
	count := make([]int, len(q.parts)*qs)
	for i := range tasks {
		pi, qi := q.Route(tasks[i].OrderID)
		slot[i] = int32(pi*qs + qi)
		count[slot[i]]++
	}
	byPart := make([][][]any, len(q.parts))
	for si, c := range count {
		if c == 0 {
			continue
		}
		pi := si / qs
		if byPart[pi] == nil {
			byPart[pi] = make([][]any, qs)
		}
		byPart[pi][si%qs] = make([]any, 0, c)
	}
	at := time.Now()
	now := at.UnixMilli()
	var later [][][]any // scheduled tasks, by partition and queue: due, ID, entry, ...
	for i := range tasks {
		t := &tasks[i]
		pi, qi := int(slot[i])/qs, int(slot[i])%qs
		start := len(buf)
		buf = appendEntry(buf, 0, ids[i], t.OrderID, now, 0, t.Headers, t.Payload)
		entry := buf[start:len(buf):len(buf)]
		// Times, not millisecond counts, are compared: a time far enough
		// in the past has a count that wraps to a large positive one.
		if due := dueMS(t.NotBefore); t.NotBefore.After(at) && due > now {
			if later == nil {
				later = make([][][]any, len(q.parts))
			}
			if later[pi] == nil {
				later[pi] = make([][]any, qs)
			}
			later[pi][qi] = append(later[pi][qi], due, ids[i], entry)
			continue
		}
		byPart[pi][qi] = append(byPart[pi][qi], entry)
	}
	// Check every partition first, so that a layout mismatch writes nothing.
	for pi, queues := range byPart {
		if queues != nil {
			if err := q.checkLayout(ctx, q.parts[pi]); err != nil {
				return nil, err
			}
		}
	}
	// One round trip per partition, all at once: the servers take their
	// tasks side by side rather than one after the other.
	errs := make([]error, len(byPart))
	var wg sync.WaitGroup
	for pi, queues := range byPart {
		var sched [][]any
		if later != nil {
			sched = later[pi]
		}
		switch {
		case queues == nil:
		case len(q.parts) == 1:
			errs[pi] = q.pushPartition(ctx, pi, queues, sched)
		default:
			wg.Go(func() { errs[pi] = q.pushPartition(ctx, pi, queues, sched) })
		}
	}
	wg.Wait()
	return ids, errors.Join(errs...)
}

// maxKeptEntryBuf bounds the entry buffers kept for later AddTasks calls.
const maxKeptEntryBuf = 32 << 20

// entryBufs keeps AddTasks' entry buffers (*[]byte) for later calls. A
// large new buffer is zeroed, and its pages are new to the process: a
// 100,000-task call spent about as long on that as on encoding its
// entries.
var entryBufs sync.Pool

// getEntryBuf returns a buffer of at least size bytes, kept or new.
func getEntryBuf(size int) *[]byte {
	if bp, ok := entryBufs.Get().(*[]byte); ok {
		if cap(*bp) >= size {
			return bp
		}
		entryBufs.Put(bp) // too small for this call; it may serve another
	}
	b := make([]byte, 0, size)
	return &b
}

// putEntryBuf keeps bp for a later call unless it is too large to keep.
// The caller must hold no entry in it any more.
func putEntryBuf(bp *[]byte) {
	if cap(*bp) <= maxKeptEntryBuf {
		entryBufs.Put(bp)
	}
}

// pushPartition LPUSHes entries (per queue) to partition pi, and adds the
// scheduled ones of sched (per queue: due, ID, entry, ...), in one
// pipeline.
func (q *Queue) pushPartition(ctx context.Context, pi int, queues [][]any, sched [][]any) error {
	p := q.parts[pi] // AddTasks verified its layout
	what := fmt.Sprintf("add tasks to partition %d", pi)
	conn, err := p.pool.GetContext(ctx)
	if err != nil {
		return redisErr(what, err)
	}
	defer conn.Close()
	sent := 0
	for qi, entries := range queues {
		key := q.ready[pi][qi]
		for len(entries) > 0 {
			n := min(len(entries), maxPushArgs)
			args := make([]any, 0, n+1)
			args = append(append(args, key), entries[:n]...)
			if err := conn.Send("LPUSH", args...); err != nil {
				return redisErr(what, err)
			}
			sent++
			entries = entries[n:]
		}
	}
	for qi, args := range sched {
		k := newQueueKeys(q.cfg.Prefix, pi, qi)
		for len(args) > 0 {
			n := scheduleChunk(args)
			if err := scheduleScript.Send(conn, append([]any{k.sched, k.later}, args[:n]...)...); err != nil {
				return redisErr(what, err)
			}
			sent++
			args = args[n:]
		}
	}
	if err := conn.Flush(); err != nil {
		return redisErr(what, err)
	}
	var first error
	for ; sent > 0; sent-- {
		if _, err := receiveContext(conn, ctx); err != nil && first == nil {
			first = err
		}
	}
	return redisErr(what, first)
}
