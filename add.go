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

// routeVerified is routeChecked for a call that only reads: a partition
// with no layout recorded passes, and stays unrecorded (verifyLayout).
func (q *Queue) routeVerified(ctx context.Context, orderID uint64) (pi, qi int, p *partition, err error) {
	pi, qi = q.Route(orderID)
	p = q.parts[pi]
	return pi, qi, p, q.verifyLayout(ctx, p)
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
// and the task may then be in Redis or not. Such a task, or one whose
// call failed for a connection lost mid-way, may also arrive later than
// the tasks added after the error, behind them in its OrderID's order
// (its write was still on its way): a caller that retries a failed add
// may have the task run twice, and the retry before it. Tasks added
// with AddTaskOnce under one key, the first add and its retries, are
// queued once, whichever write comes first, while they land within the
// key's window; an analyse function that tolerates a repeated task needs
// nothing more. At most 4096 calls or 64 MiB of tasks wait per partition;
// a call that finds that line full waits for room, on ctx.
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
// task before writing any. On a Redis error, or when ctx ends part way,
// each partition may have taken all of its tasks, none, or some: whole
// LPUSHes, each the next up to 4096 tasks of one queue in the order given,
// and its scheduled tasks (NotBefore in the future), sent after them in
// chunks of their own.
// The error then joins a *PartitionError for each partition that failed,
// and the IDs are returned all the same (what was taken runs under them).
// A partition whose layout cannot be checked (its server down when the
// Queue first writes to it) is one that failed, having taken nothing; a
// layout that disagrees, on any partition (a *LayoutError), refuses the
// whole call: nothing is written and no ID returned.
// Which tasks were taken cannot be told from their IDs before they run (a
// task waiting in the ready list reads StateUnknown): a caller that must
// neither lose nor repeat a task adds it with AddTaskOnce, whose key makes
// a retry safe, rather than retrying a failed batch. A call whose ctx has
// ended before it began returns ctx's error and writes nothing. It is safe
// for concurrent use.
func (q *Queue) AddTasks(ctx context.Context, tasks []Task) ([]string, error) {
	if q.closed.Load() {
		return nil, ErrClosed
	}
	// Check every task before anything is written.
	for i := range tasks {
		if err := q.checkPayload(tasks[i].Payload); err != nil {
			return nil, fmt.Errorf("task %d: %w", i, err)
		}
		_, err := headersSize(tasks[i].Headers)
		if err == nil {
			err = checkDue(tasks[i].NotBefore)
		}
		if err != nil {
			return nil, fmt.Errorf("task %d: %w", i, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, redisErr("add tasks", err) // sent nothing
	}
	// Group entries per partition, then per queue, keeping task order:
	// count first, so that every group is allocated at its size.
	qs := q.cfg.Queues
	slot := make([]int32, len(tasks)) // partition * Queues + queue
	left := q.counts.get(len(q.parts) * qs)
	adds := make([]*partAdd, len(q.parts))
	for i := range tasks {
		pi, qi := q.Route(tasks[i].OrderID)
		slot[i] = int32(pi*qs + qi)
		left[slot[i]]++
		if adds[pi] == nil {
			adds[pi] = &partAdd{q: q, pi: pi, queues: make([][]any, qs)}
		}
	}
	// Check every partition first, so that a layout mismatch on any of
	// them writes nothing. A partition whose check fails otherwise (its
	// server down at the Queue's first use) fails alone, as when its
	// write fails: the others take their tasks.
	errs := make([]error, len(adds))
	for pi, a := range adds {
		if a == nil {
			continue
		}
		err := q.checkLayout(ctx, q.parts[pi])
		if layoutRefused(err) {
			q.counts.putDirty(left)
			return nil, err
		}
		errs[pi] = err
	}
	ids := q.ids.nextN(len(tasks))
	var buf entryChunks
	defer func() {
		// Every push has returned; only a call its ctx ended may have
		// left a redigo goroutine still writing a resent command's
		// entries (DoContext returns at once then).
		if ctx.Err() == nil {
			buf.release()
		}
	}()
	at := time.Now()
	now := at.UnixMilli()
	for i := range tasks {
		t := &tasks[i]
		pi, qi := int(slot[i])/qs, int(slot[i])%qs
		left[slot[i]]--
		if errs[pi] != nil {
			continue // its layout check failed: nothing goes to it
		}
		h, _ := headersSize(t.Headers) // checked above
		entry := buf.add(entryCap(h, len(t.Payload)), func(b []byte) []byte {
			return appendEntry(b, 0, ids[i], t.OrderID, now, 0, t.Headers, t.Payload)
		})
		// Times, not millisecond counts, are compared: a time far enough
		// in the past has a count that wraps to a large positive one.
		if due := dueMS(t.NotBefore); t.NotBefore.After(at) && due > now {
			adds[pi].schedule(qi, due, ids[i], entry)
			continue
		}
		adds[pi].add(ctx, qi, entry, left[slot[i]])
	}
	q.counts.put(left) // every count is back to zero
	// The partitions' round trips run side by side: the servers take their
	// tasks at once rather than one after the other.
	var wg sync.WaitGroup
	for pi, a := range adds {
		switch {
		case a == nil || errs[pi] != nil:
		case len(q.parts) == 1:
			errs[pi] = a.finish(ctx)
		default:
			wg.Go(func() { errs[pi] = a.finish(ctx) })
		}
	}
	wg.Wait()
	for pi, err := range errs {
		if err != nil {
			errs[pi] = &PartitionError{Partition: pi, Err: err}
		}
	}
	return ids, errors.Join(errs...)
}

// queueCounts lends AddTasks a counter per queue of the layout, all zero.
// A call counts each task up, then down as it encodes it, so it gives them
// back zero again: a layout of many queues costs a call nothing per queue.
type queueCounts struct{ pool sync.Pool }

func (c *queueCounts) get(n int) []int {
	if p, ok := c.pool.Get().(*[]int); ok {
		return *p
	}
	return make([]int, n)
}

// put gives back counts that are all zero.
func (c *queueCounts) put(counts []int) { c.pool.Put(&counts) }

// putDirty gives back counts that may not be zero.
func (c *queueCounts) putDirty(counts []int) {
	clear(counts)
	c.put(counts)
}

// partAdd is one partition's share of an AddTasks call. Its entries go in
// one pipeline, an LPUSH per queue and maxPushArgs entries; an LPUSH is
// sent as soon as it is full, on a goroutine of its own, so that Redis
// takes the first entries of a large call while the pool encodes the
// later ones.
type partAdd struct {
	q      *Queue
	pi     int
	queues [][]any        // per queue: the LPUSH being filled (key, entries...)
	large  []int          // per queue: its large entries (large.go)
	sched  [][]any        // per queue: the scheduled ones (due, ID, entry, ...)
	cmds   chan pushBatch // to the pusher, once it runs
	done   chan error     // the pusher's result
}

// pushBatch is one LPUSH of AddTasks: its arguments, and how many of its
// entries are large.
type pushBatch struct {
	args  []any
	large int
}

// add adds entry to queue qi, after which left more entries come to it.
func (a *partAdd) add(ctx context.Context, qi int, entry []byte, left int) {
	l := a.queues[qi]
	if l == nil {
		l = make([]any, 1, 1+min(left+1, maxPushArgs))
		l[0] = a.q.ready[a.pi][qi]
	}
	l = append(l, entry)
	if len(entry) > largeEntry {
		if a.large == nil {
			a.large = make([]int, len(a.queues))
		}
		a.large[qi]++
	}
	if len(l) == 1+maxPushArgs {
		if a.cmds == nil {
			a.cmds, a.done = make(chan pushBatch, 4), make(chan error, 1)
			go func() { a.done <- a.push(ctx) }()
		}
		a.cmds <- a.batch(qi, l)
		l = nil
	}
	a.queues[qi] = l
}

// batch returns queue qi's LPUSH of args, and starts its next count.
func (a *partAdd) batch(qi int, args []any) pushBatch {
	b := pushBatch{args: args}
	if a.large != nil {
		b.large, a.large[qi] = a.large[qi], 0
	}
	return b
}

// schedule adds the entry of task id, due at the millisecond due, to
// queue qi's scheduled tasks.
func (a *partAdd) schedule(qi int, due int64, id string, entry []byte) {
	if a.sched == nil {
		a.sched = make([][]any, len(a.queues))
	}
	a.sched[qi] = append(a.sched[qi], due, id, entry)
}

// finish sends the LPUSHes still being filled, and returns once every
// command of the partition has its reply.
func (a *partAdd) finish(ctx context.Context) error {
	started := a.cmds != nil
	if !started {
		a.cmds = make(chan pushBatch, len(a.queues))
	}
	for qi, l := range a.queues {
		if len(l) > 1 {
			a.cmds <- a.batch(qi, l)
		}
	}
	close(a.cmds)
	if !started {
		return a.push(ctx)
	}
	return <-a.done
}

// push sends the LPUSHes that come on a.cmds (the push script for one
// with large entries), then the scheduled tasks,
// in one pipeline, and reads the replies. On a Redis Cluster two writes
// of one key are never in flight together: a node may refuse one
// (CLUSTERDOWN while a failover settles, a slot not served yet) and run
// the next, and the router sends the refused one again only after, so a
// queue's second LPUSH waits for the first one's reply there.
func (a *partAdd) push(ctx context.Context) error {
	what := fmt.Sprintf("add tasks to partition %d", a.pi)
	conn, err := getConn(ctx, a.q.parts[a.pi].pool)
	if err != nil {
		for range a.cmds { // let the caller go on
		}
		return redisErr(what, err)
	}
	defer conn.Close()
	var inFlight map[string]bool // keys written since the last replies, on a cluster
	if a.q.parts[a.pi].router != nil {
		inFlight = map[string]bool{}
	}
	sent := 0
	replies := func() error { // flushes, reads every reply due, and returns the first error
		if err := conn.Flush(); err != nil {
			return err
		}
		var first error
		for ; sent > 0; sent-- {
			if _, err := receiveContext(conn, ctx); err != nil && first == nil {
				first = err
			}
		}
		clear(inFlight)
		return first
	}
	send := func(key string, write func() error) {
		if err == nil && inFlight[key] {
			err = replies()
		}
		if err == nil {
			err = write()
			sent++
			if inFlight != nil {
				inFlight[key] = true
			}
		}
	}
	for b := range a.cmds {
		send(b.args[0].(string), func() error { return sendPush(conn, b.args, b.large) })
	}
	for qi, args := range a.sched {
		k := newQueueKeys(a.q.cfg.Prefix, a.pi, qi)
		for len(args) > 0 {
			n := scheduleChunk(args)
			send(k.sched, func() error {
				return scheduleScript.Send(conn, append([]any{k.sched, k.later}, args[:n]...)...)
			})
			args = args[n:]
		}
	}
	if err == nil {
		err = replies()
	}
	return redisErr(what, err)
}

// entryChunk is the size of the buffers AddTasks encodes its entries
// into: one buffer per call sized for all its entries was a large
// allocation, zeroed, its pages new to the process whenever the garbage
// collector had dropped the last call's (a 100,000-task call spent a
// third of its time on that); chunks of the largest small-object size
// are reused from the heap's own spans, and kept between calls.
const entryChunk = 32 << 10

// entryChunkPool keeps AddTasks' chunks (*[entryChunk]byte) for later calls.
var entryChunkPool = sync.Pool{New: func() any { return new([entryChunk]byte) }}

// entryChunks is the buffer of one AddTasks call's entries: chunks of
// entryChunk bytes, a larger entry in a buffer of its own. An entry never
// moves once encoded.
type entryChunks struct {
	cur  []byte // the chunk being filled
	kept []*[entryChunk]byte
}

// add encodes an entry of at most n bytes with encode (which appends it
// to the slice it is given) and returns it, its capacity its length.
func (c *entryChunks) add(n int, encode func([]byte) []byte) []byte {
	if n > entryChunk {
		e := encode(make([]byte, 0, n))
		return e[:len(e):len(e)]
	}
	if cap(c.cur)-len(c.cur) < n {
		ch := entryChunkPool.Get().(*[entryChunk]byte)
		c.kept = append(c.kept, ch)
		c.cur = ch[:0]
	}
	start := len(c.cur)
	c.cur = encode(c.cur)
	return c.cur[start:len(c.cur):len(c.cur)]
}

// release gives the chunks back for later calls; no entry in them may be
// used any more.
func (c *entryChunks) release() {
	for _, ch := range c.kept {
		entryChunkPool.Put(ch)
	}
	c.cur, c.kept = nil, nil
}
