package queue

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
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
	// Queues is Q, the number of queues on each Redis server, at most 4096,
	// with R*Q at most 65536 (New and Dial refuse more). It is recorded in
	// Redis at first use and must not change afterwards. If zero, 1 is used.
	Queues int
	// MaxPayload is the largest payload AddTask accepts, in bytes, at most
	// 256 MiB. If zero, 1 MiB is used.
	MaxPayload int

	// Retention, when above zero, keeps the status of every finished task
	// (done or cancelled: added, started and finished times, attempts)
	// for that long after it finished, for Status. It costs about 75
	// bytes of Redis memory per kept task, its ID included, and a few
	// bytes per acknowledgement; Redis trims it a bucket of an eighth
	// of Retention at a time (at least a second, at most an hour), by
	// expiry: a record lasts Retention and up to a bucket more. At most
	// 90 days. If zero,
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
	// maxQueues bounds Config.Queues, maxPartitions the number of
	// servers and maxAnalysers their product: a queue keeps a key name per
	// queue of each server, and AddTasks a counter per queue, so an absurd
	// count is refused rather than allocated.
	maxQueues     = 4096
	maxPartitions = 4096
	maxAnalysers  = 1 << 16 // R*Q
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
	closing  context.Context // ends at Close: running pools and group members stop
	closeNow context.CancelFunc
	deaths   deathClock // stamps the deaths of its tasks, for Replay's order
	adders   []adder    // one per partition: coalesces concurrent AddTask calls
	ready    [][]string // the ready list key of each partition's queues
	waiters  []*waiter  // one per partition: idle pools wait through it
	// layoutSem holds one layout pass at a time (checkLayout): a
	// channel, so that a call waiting for it can give up with its ctx.
	layoutSem chan struct{}
	layoutBy  string      // a nonce of this Queue, naming its layout probes (probeServers)
	counts    queueCounts // AddTasks' counters per queue
	// records says the Queue records the layout where a server has none
	// (it writes: checkLayout); a Queue that only reads (CheckLayout,
	// Stats) records none, even on a server that lost its record.
	records atomic.Bool
	gate    gate // the record gate of its pools (recordgate.go)
}

// checkSize refuses r partitions of cfg's queues past the bounds: at most
// maxPartitions servers and maxAnalysers queues in all.
func checkSize(r int, cfg Config) error {
	if r > maxPartitions {
		return fmt.Errorf("%w: %d partitions, at most %d", ErrBadConfig, r, maxPartitions)
	}
	if r*cfg.Queues > maxAnalysers {
		return fmt.Errorf("%w: %d partitions of %d queues are %d analysers, at most %d", ErrBadConfig, r, cfg.Queues, r*cfg.Queues, maxAnalysers)
	}
	return nil
}

// New returns a Queue over the given pools, one per partition, in partition
// order: R = len(pools). The caller keeps ownership of the pools and closes
// them after Close. A pool's connections are best dialled as Dial's are,
// reading through a buffer of some 32 KiB (redis.DialContextFunc, with a
// net.Conn whose Read goes through a bufio.Reader of that size): redigo's
// own buffer of 4 KiB costs a system call per 4 KiB of a pool's claims.
// Give them a read timeout too (redis.DialReadTimeout; Dial's is
// [Config].ReadTimeout): the package bounds its own blocking waits, but a
// call whose reply is lost on a connection gone half-open otherwise waits
// until its ctx ends, which for a pool's claims is when it loses its
// lease, and a pool that keeps renewing it never does.
func New(pools []*redis.Pool, cfg Config) (*Queue, error) {
	if len(pools) == 0 {
		return nil, ErrNoPartitions
	}
	cfg, err := cfg.withDefaults()
	if err == nil {
		err = checkSize(len(pools), cfg)
	}
	if err != nil {
		return nil, err
	}
	q := &Queue{cfg: cfg, parts: make([]*partition, len(pools)), adders: make([]adder, len(pools)), layoutSem: make(chan struct{}, 1), layoutBy: newNonce() + newNonce()}
	q.closing, q.closeNow = context.WithCancel(context.Background())
	for i, p := range pools {
		if p == nil {
			return nil, fmt.Errorf("%w: pool %d is nil", ErrBadConfig, i)
		}
		q.parts[i] = &partition{index: i, pool: p, router: routerOf(p), primary: primaryOf(p)}
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
// defaults to 6379 and the database to 0. An IPv6 address goes in
// brackets (redis://[::1]:6379); a host with a ':' outside them, or with
// a control character or a space, is refused with ErrBadConfig. TLS verifies the server against
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
// on one cluster: see Redis Cluster in the package documentation (a
// redis:// URL naming a cluster node is refused with ErrBadConfig). Close
// closes the pools.
func Dial(ctx context.Context, urls []string, cfg Config) (*Queue, error) {
	if len(urls) == 0 {
		return nil, ErrNoPartitions
	}
	cfg, err := cfg.withDefaults()
	if err == nil {
		err = checkSize(len(urls), cfg)
	}
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
	// when the server lost it, if this Queue writes) before it is used. (On a cluster, a
	// connection is not a server's: there the check is made once.) A
	// record found gone is noted for the pools' next recheck, which warns
	// that Redis lost its data: it finds the record there again. That
	// includes connections made while a recheck runs (checked is false
	// then): a group member's heartbeat on one would otherwise write to a
	// server laid out anew by a process of another layout, and go on
	// doing so on that connection.
	var made atomic.Pointer[Queue]
	recheck := func(i int) func(context.Context, redis.Conn) error {
		return func(ctx context.Context, c redis.Conn) error {
			if q := made.Load(); q != nil && q.parts[i].once.Load() {
				if !q.records.Load() {
					return q.compareLayoutOn(ctx, c, q.parts[i])
				}
				recorded, err := q.layoutOn(ctx, c, q.parts[i])
				if recorded {
					q.parts[i].regone.Store(true)
				}
				return err
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
			err = pingServer(ctx, pools[i])
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

// Close marks the queue closed: later calls that use Redis (a Consumer's
// among them) return ErrClosed, and a second Close returns nil. It closes the connections
// through which idle pools wait (joining their goroutines; the last pool
// of a partition to return has done so already), closes the pools that
// Dial made, and leaves pools given to New to their owner. Close it after
// every AnalysePool, JoinGroup and Consumer on it is done: one still
// running then stops as when its ctx ends, without waiting for Close, and
// returns ErrClosed; what it cannot write once the connections are closed
// (acks, hand-backs) is left pending, for the queue's next owner to run
// again.
func (q *Queue) Close() error {
	if q.closed.Swap(true) {
		return nil
	}
	if q.closeNow != nil {
		q.closeNow()
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

// whileOpen returns ctx, ended also by Close, and the function that
// releases it (to call when the run it serves returns).
func (q *Queue) whileOpen(ctx context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancel(ctx)
	if q.closing == nil {
		return ctx, cancel
	}
	stop := context.AfterFunc(q.closing, cancel)
	return ctx, func() { stop(); cancel() }
}

// closedErr is the error a run that ended with err returns: ErrClosed in
// place of nil once the queue is closed (Close ended it, or it ended
// anyway as Close came).
func (q *Queue) closedErr(err error) error {
	if err == nil && q.closed.Load() {
		return ErrClosed
	}
	return err
}

// Pool returns the pool of partition i: the one given to New, or the one
// Dial made. On a Redis Cluster its connections route each command to the
// primary that serves its key (one key, or keys of one hash slot, per
// command); on Sentinel they follow the current primary. Use it for keys
// of your own next to the queue's; the queue keeps ownership of the pools
// Dial made. i must be in [0, Layout().Partitions): another panics, as an
// index out of a slice's range does.
func (q *Queue) Pool(i int) *redis.Pool { return q.parts[i].pool }
