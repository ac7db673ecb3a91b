package queue

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Config holds the settings of a Queue. The zero value works.
type Config struct {
	// Prefix starts every Redis key of the queue, so several queues (or
	// tests) can share one server. It must not contain '{' or '}'.
	// If empty, "qugo" is used.
	Prefix string
	// Queues is Q, the number of queues on each Redis server, at most 4096.
	// It is recorded in Redis at first use and must not change afterwards.
	// If zero, 1 is used.
	Queues int
	// MaxPayload is the largest payload AddTask accepts, in bytes, at most
	// 256 MiB. If zero, 1 MiB is used.
	MaxPayload int

	// Retention, when above zero, keeps the status of every finished task
	// (done or cancelled: added, started and finished times, attempts)
	// for that long after it finished, for Status. It costs about 60
	// bytes of Redis memory per kept task besides its 20-byte ID, and a
	// few bytes per acknowledgement; Redis trims it a bucket of an eighth
	// of Retention at a time, by expiry. At most 90 days. If zero,
	// nothing is kept after a task finishes (Status then reports a
	// finished task as unknown).
	Retention time.Duration

	// The settings below apply only to the pools that Dial makes.

	// DialTimeout bounds connecting to a server, TLS handshake included;
	// at most 1h. If zero, 5s is used.
	DialTimeout time.Duration
	// ReadTimeout bounds waiting for any reply, and writing a command; at
	// most 1h. Blocking waits (a pool's wait for work, up to 1s; a
	// standby's wait for a lease; Consumer.Wait) are cut off by it too: a
	// wait longer than ReadTimeout ends early and costs a new connection,
	// so keep it above 1s. If zero, 10s is used.
	ReadTimeout time.Duration
	// MaxIdle is the number of idle connections kept per server, at most
	// 4096. If zero, 64 is used.
	MaxIdle int
	// TLSConfig configures TLS for rediss:// URLs: a custom CA in RootCAs,
	// a client certificate in Certificates. If nil, rediss:// verifies the
	// server against the system's roots, under the URL's host name. It is
	// an error to set it with a redis:// URL, which would not use it.
	TLSConfig *tls.Config
	// WaitReplicas, when above zero, makes every call that changes a
	// queue's state wait, with Redis's WAIT, until that many replicas of
	// the primary have the write before it reports success: AddTask,
	// AddTasks and AddTaskOnce, and a pool's or Consumer's claims, acks,
	// retries, dead letters, hand-backs, lease acquisitions, renewals and
	// releases, and consumer groups' heartbeats. An AddTask that returned
	// nil then survives a failover to one of those replicas (see
	// Durability in the package doc). Like the settings above it applies
	// to the pools Dial makes, on a standalone primary, a Sentinel's
	// primary and every primary of a Redis Cluster alike; pools given to
	// New are used as they are.
	//
	// Use it when the primary has asynchronous replicas a failover can
	// promote, and losing the last acknowledged tasks (or a lease's
	// fencing token) to a failover costs more than latency. It costs, per
	// round trip that writes, the time for the replicas to acknowledge:
	// WAIT rides in the same pipeline, but the reply waits for the
	// slowest of the n replicas (BenchmarkWaitReplicas measures it). When
	// fewer replicas acknowledge within WaitTimeout, the call returns (or
	// a pool reports and retries) ErrNotReplicated; while fewer than n
	// replicas are connected, every write fails so, and pools make no
	// progress. Reads never wait. At most 100. If zero, writes do not
	// wait for replicas (Redis's default).
	WaitReplicas int
	// WaitTimeout bounds each wait for replicas; it must be less than
	// ReadTimeout, and it is an error to set it without WaitReplicas. Keep
	// it well under PoolConfig.LeaseTTL: a lease renewal waits too. If
	// zero, 1s is used (or half of ReadTimeout, when that is less).
	WaitTimeout time.Duration
}

const (
	defaultPrefix     = "qugo"
	defaultMaxPayload = 1 << 20
	maxMaxPayload     = 256 << 20
	// maxQueues bounds Config.Queues and maxPartitions the number of
	// servers: a queue keeps a key name per queue of each server, and
	// AddTasks a counter per queue, so an absurd count is refused rather
	// than allocated.
	maxQueues     = 4096
	maxPartitions = 4096
	maxMaxIdle    = 4096
	maxTimeout    = time.Hour
)

func (c Config) withDefaults() (Config, error) {
	if c.Prefix == "" {
		c.Prefix = defaultPrefix
	}
	if strings.ContainsAny(c.Prefix, "{}") {
		return c, fmt.Errorf("%w: Prefix %q contains '{' or '}'", ErrBadConfig, c.Prefix)
	}
	if c.Queues == 0 {
		c.Queues = 1
	}
	if c.Queues < 0 || c.Queues > maxQueues {
		return c, fmt.Errorf("%w: Queues %d not in [1, %d]", ErrBadConfig, c.Queues, maxQueues)
	}
	if c.MaxPayload == 0 {
		c.MaxPayload = defaultMaxPayload
	}
	if c.MaxPayload < 0 || c.MaxPayload > maxMaxPayload {
		return c, fmt.Errorf("%w: MaxPayload %d not in [1, %d]", ErrBadConfig, c.MaxPayload, maxMaxPayload)
	}
	if c.Retention < 0 || c.Retention > maxRetention {
		return c, fmt.Errorf("%w: Retention %v not in [0, %v]", ErrBadConfig, c.Retention, maxRetention)
	}
	if c.DialTimeout < 0 || c.DialTimeout > maxTimeout || c.ReadTimeout < 0 || c.ReadTimeout > maxTimeout {
		return c, fmt.Errorf("%w: DialTimeout %v or ReadTimeout %v not in [0, %v]", ErrBadConfig, c.DialTimeout, c.ReadTimeout, maxTimeout)
	}
	if c.MaxIdle < 0 || c.MaxIdle > maxMaxIdle {
		return c, fmt.Errorf("%w: MaxIdle %d not in [0, %d]", ErrBadConfig, c.MaxIdle, maxMaxIdle)
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = 10 * time.Second
	}
	if c.MaxIdle == 0 {
		c.MaxIdle = 64
	}
	return c.waitDefaults()
}

// Queue is a set of partitioned task queues on R Redis servers with Q
// queues each. It is safe for concurrent use. New starts no goroutine
// and makes no connection; Dial pings each server once (reads a cluster's
// slot map), and starts one goroutine per partition behind Sentinel, and
// a cluster router one to read its map again after a redirection; Close
// joins them.
type Queue struct {
	cfg      Config
	parts    []*partition
	ownPools bool           // Close closes the pools (they were made by Dial)
	closers  []func() error // Dial's: cluster routers and sentinel watchers, closed after the pools
	ids      idSource
	closed   atomic.Bool
	adders   []adder    // one per partition: coalesces concurrent AddTask calls
	ready    [][]string // the ready list key of each partition's queues
	waiters  []*waiter  // one per partition: idle pools wait through it
}

// New returns a Queue over the given pools, one per partition, in partition
// order: R = len(pools). The caller keeps ownership of the pools and closes
// them after Close.
func New(pools []*redis.Pool, cfg Config) (*Queue, error) {
	if len(pools) == 0 {
		return nil, ErrNoPartitions
	}
	if len(pools) > maxPartitions {
		return nil, fmt.Errorf("%w: %d partitions, at most %d", ErrBadConfig, len(pools), maxPartitions)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	q := &Queue{cfg: cfg, parts: make([]*partition, len(pools)), adders: make([]adder, len(pools))}
	for i, p := range pools {
		if p == nil {
			return nil, fmt.Errorf("%w: pool %d is nil", ErrBadConfig, i)
		}
		q.parts[i] = &partition{index: i, pool: p, router: routerOf(p)}
		q.waiters = append(q.waiters, newWaiter(q.parts[i]))
		q.ready = append(q.ready, make([]string, cfg.Queues))
		for qi := range q.ready[i] {
			q.ready[i][qi] = newQueueKeys(cfg.Prefix, i, qi).ready
		}
	}
	return q, nil
}

// Dial returns a Queue over pools it makes for the given URLs, one per
// partition, in partition order. A URL is redis://[[user]:password@]host[:port][/db]
// or, for TLS, rediss://...; the scheme is case-insensitive, the port
// defaults to 6379 and the database to 0. TLS verifies the server against
// the system's roots unless Config.TLSConfig says otherwise. Dial pings
// every server once and fails if one is unreachable. Its errors name a
// server by its partition index, never by its URL, so they never hold a
// password. A partition behind Redis Sentinel is
// redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/name[/db]
// with the sentinels' own credentials, if any, in the query
// (?sentinel_user=u&sentinel_password=p): see Sentinel in the package
// documentation. A partition on a Redis Cluster is
// redis+cluster://[[user]:password@]host[:port][,host[:port]...] naming
// seed nodes (rediss+cluster:// for TLS); its queues spread over the
// primaries by hash slot, and the same URL listed R times is R partitions
// on one cluster: see Redis Cluster in the package documentation. Close
// closes the pools.
func Dial(ctx context.Context, urls []string, cfg Config) (*Queue, error) {
	if len(urls) == 0 {
		return nil, ErrNoPartitions
	}
	if len(urls) > maxPartitions {
		return nil, fmt.Errorf("%w: %d partitions, at most %d", ErrBadConfig, len(urls), maxPartitions)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	targets := make([]redisURL, len(urls))
	for i, u := range urls { // all checked before any pool is made
		if targets[i], err = parseRedisURL(u); err != nil {
			return nil, fmt.Errorf("%w: partition %d: %w", ErrBadConfig, i, err)
		}
		if !targets[i].tls && cfg.TLSConfig != nil {
			return nil, fmt.Errorf("%w: partition %d: Config.TLSConfig is set but the URL is redis://, not rediss://", ErrBadConfig, i)
		}
	}
	pools := make([]*redis.Pool, len(urls))
	var closers []func() error // what Close stops besides the pools: routers, sentinel watchers
	closeAll := func() {
		for _, p := range pools {
			if p != nil {
				p.Close()
			}
		}
		for _, c := range closers {
			c()
		}
	}
	// A new connection may follow a restart of the server that lost the
	// layout it had recorded: on a partition whose layout this process has
	// verified, every new connection checks it again (recording it again
	// when the server lost it) before it is used. (On a cluster, a
	// connection is not a server's: there the check is made once.)
	var made atomic.Pointer[Queue]
	recheck := func(i int) func(context.Context, redis.Conn) error {
		return func(ctx context.Context, c redis.Conn) error {
			if q := made.Load(); q != nil && q.parts[i].checked.Load() {
				return q.layoutOn(ctx, c, q.parts[i])
			}
			return nil
		}
	}
	routers := map[string]*clusterRouter{} // partitions on one cluster share its router
	for i, t := range targets {
		var err error
		switch t.topo {
		case standalone:
			pools[i] = newPool(t, cfg, recheck(i))
			err = ping(ctx, pools[i])
		case cluster:
			key := t.clusterKey()
			r := routers[key]
			if r == nil {
				if r, err = newClusterRouter(ctx, t, cfg); err != nil {
					break
				}
				routers[key] = r
				closers = append(closers, r.close)
			}
			pools[i] = r.partitionPool(nil)
		case sentinel:
			var stop func() error
			pools[i], stop, err = newSentinelPool(ctx, t, cfg, recheck(i))
			if stop != nil {
				closers = append(closers, stop)
			}
		}
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("queue: dial partition %d: %w", i, err)
		}
	}
	q, err := New(pools, cfg)
	if err != nil {
		closeAll()
		return nil, err
	}
	q.closers = closers
	made.Store(q)
	q.ownPools = true
	return q, nil
}

// Close marks the queue closed: later calls that use Redis return
// ErrClosed, and a second Close returns nil. It closes the connections
// through which idle pools wait (joining their goroutines; the last pool
// of a partition to return has done so already), closes the pools that
// Dial made, and leaves pools given to New to their owner. Close it after
// every AnalysePool and Consumer on it is done.
func (q *Queue) Close() error {
	if q.closed.Swap(true) {
		return nil
	}
	for _, w := range q.waiters {
		w.close()
	}
	if !q.ownPools {
		return nil
	}
	var errs []error
	for _, p := range q.parts {
		errs = append(errs, p.pool.Close())
	}
	for _, c := range q.closers {
		errs = append(errs, c())
	}
	return errors.Join(errs...)
}

func (q *Queue) checkPayload(p []byte) error {
	if len(p) == 0 {
		return ErrEmptyPayload
	}
	if len(p) > q.cfg.MaxPayload {
		return fmt.Errorf("%w: %d bytes, the limit is %d", ErrPayloadTooLarge, len(p), q.cfg.MaxPayload)
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
		if err != nil {
			return nil, fmt.Errorf("task %d: %w", i, err)
		}
		size += entryCap(h, len(tasks[i].Payload))
	}
	ids := q.ids.nextN(len(tasks))
	buf := make([]byte, 0, size)
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
	now := time.Now().UnixMilli()
	var later [][][]any // scheduled tasks, by partition and queue: due, ID, entry, ...
	for i := range tasks {
		t := &tasks[i]
		pi, qi := int(slot[i])/qs, int(slot[i])%qs
		start := len(buf)
		buf = appendEntry(buf, 0, ids[i], t.OrderID, now, 0, t.Headers, t.Payload)
		entry := buf[start:len(buf):len(buf)]
		if due := t.NotBefore.UnixMilli(); !t.NotBefore.IsZero() && due > now {
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
			n := min(len(args), 3*scriptChunk)
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

// Pool returns the pool of partition i: the one given to New, or the one
// Dial made. On a Redis Cluster its connections route each command to the
// primary that serves its key (one key, or keys of one hash slot, per
// command); on Sentinel they follow the current primary. Use it for keys
// of your own next to the queue's; the queue keeps ownership of the pools
// Dial made.
func (q *Queue) Pool(i int) *redis.Pool { return q.parts[i].pool }
